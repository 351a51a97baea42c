"""``sciadapt data prepare``: netCDF/GRIB archives or radar frames into one chunked zarr store, out of core.

Inputs are many files (a glob or a list; one time step per file is normal), sorted by time: a
time held by two files is refused naming both, as are files of different grids or projections.
netCDF, zarr and GRIB go through xarray; radar composites through pysteps' importers
(:mod:`.radar`, ``format="knmi_hdf5"`` ...). The store keeps the grid: lat-lon as before, or
``y``/``x`` with a CF ``crs`` grid-mapping variable (``crs_wkt``, ``spatial_ref``, ``proj4``) and 2-D
``latitude``/``longitude`` for projected grids, and the 2-D latitude/longitude of curvilinear ones.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from sciadapt.datamodules.gridded.datamodule import GriddedDataModule
from sciadapt.datamodules.gridded.grids import _LAT_NAMES, _LON_NAMES, GRID_MAPPING, crs_attrs, crs_from_dataset
from sciadapt.datamodules.gridded.store import (
    _TIME_DIMS,
    _as_datetimes,
    _find_dim,
    check_regular_times,
    inspect_store,
    open_xarray,
    proj_before_eccodes,
    require_cfgrib,
    select_channels,
    store_kind,
)
from sciadapt.errors import DataError

log = logging.getLogger(__name__)


def _expand_inputs(inputs: list[str] | str) -> list[str]:
    items = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    files: list[str] = []
    for item in items:
        item = str(Path(str(item)).expanduser())
        matches = sorted(glob.glob(item)) if any(ch in item for ch in "*?[") else [item]
        if not matches:
            raise DataError(f"data prepare: no file matches {item!r}")
        files += matches
    for f in files:
        if not Path(f).exists():
            raise DataError(f"data prepare: input {f} does not exist")
    return files


def _open_inputs(files: list[str], engine: str | None) -> xr.Dataset:
    proj_before_eccodes()
    kinds = {store_kind(Path(f), engine) for f in files}
    if len(kinds) > 1:
        raise DataError(f"data prepare: inputs mix formats ({', '.join(sorted(kinds))}); convert one format at a time")
    kind = kinds.pop()
    if len(files) == 1:
        ds: xr.Dataset = open_xarray(files[0], kind, engine, chunks={})
        return ds
    files = _check_frames(files, kind, engine)
    if kind == "grib":
        require_cfgrib(files[0])
    kw: dict[str, Any] = {"backend_kwargs": {"indexpath": ""}} if kind == "grib" else {}
    try:
        return xr.open_mfdataset(
            files,
            engine="cfgrib" if kind == "grib" else ("zarr" if kind == "zarr" else engine),
            combine="by_coords",
            # only time-dependent variables are joined along time; static fields are taken once
            data_vars="minimal",
            coords="minimal",
            compat="override",
            join="exact",
            chunks={},
            decode_timedelta=True,
            **kw,
        )
    except Exception as err:
        raise DataError(
            f"data prepare: cannot combine {len(files)} inputs by their coordinates: {type(err).__name__}: {err}. "
            "Fix: give files that tile one time axis (same variables and grid)"
        ) from err


def _check_frames(files: list[str], kind: str, engine: str | None) -> list[str]:
    """``files`` sorted by their first time, after checking that they share one grid and projection
    and that no time is held by two of them (metadata only)."""
    first: dict[str, Any] = {}
    seen: dict[Any, str] = {}
    starts: dict[str, Any] = {}
    for f in files:
        ds = open_xarray(f, kind, engine, chunks={})
        try:
            # a file of one step may hold its time as a scalar coordinate (GRIB)
            time_dim = _find_dim(ds, _TIME_DIMS) or next((n for n in _TIME_DIMS if n in ds.coords), None)
            if time_dim is None:
                raise DataError(f"data prepare: {f} has no time coordinate (looked for {', '.join(_TIME_DIMS)})")
            times = _as_datetimes(np.atleast_1d(ds[time_dim].values), f, time_dim)
            sizes = {str(d): int(n) for d, n in ds.sizes.items() if d != time_dim}
            crs, _ = crs_from_dataset(ds, f)
        finally:
            ds.close()
        if not first:
            first = {"file": f, "sizes": sizes, "crs": crs}
        elif sizes != first["sizes"]:
            raise DataError(
                f"data prepare: {f} has the grid {sizes} but {first['file']} has {first['sizes']}; files of one "
                "store share one grid. Fix: prepare them separately or regrid them first"
            )
        elif (crs is None) != (first["crs"] is None) or (crs is not None and not crs == first["crs"]):
            raise DataError(
                f"data prepare: {f} and {first['file']} have different projections "
                f"({'none' if crs is None else crs.name} / {'none' if first['crs'] is None else first['crs'].name}). "
                "Fix: prepare them separately or reproject them first"
            )
        for t in times:
            if t in seen:
                raise DataError(
                    f"data prepare: {seen[t]} and {f} both hold time {np.datetime_as_string(t, 's')}. "
                    "Fix: give each time once (remove or trim one of them)"
                )
            seen[t] = f
        starts[f] = times.min() if len(times) else np.datetime64("NaT")
    return sorted(files, key=lambda name: (starts[name], name))


def _keep_grid(ds: xr.Dataset, info: Any) -> xr.Dataset:
    """The store's grid metadata in CF form: a ``crs`` grid-mapping variable named by every field
    (projected grids) and the 2-D latitude/longitude as coordinates (projected and curvilinear)."""
    grid = info.grid
    if grid is None or grid.kind == "latlon":
        return ds
    for name in (*_LAT_NAMES, *_LON_NAMES):
        if name in ds.variables and set(ds[name].dims) == {grid.row_dim, grid.col_dim} and name not in ds.coords:
            ds = ds.set_coords(name)
    if grid.kind == "projected":
        assert grid.crs_wkt is not None
        if grid.mapping_name is not None and grid.mapping_name in ds.variables:
            ds = ds.drop_vars(grid.mapping_name)
        if grid.lat2d is not None and not any(n in ds.coords for n in _LAT_NAMES):
            dims = (grid.row_dim, grid.col_dim)
            ds = ds.assign_coords(
                latitude=(dims, grid.lat2d, {"standard_name": "latitude", "units": "degrees_north"}),
                longitude=(dims, grid.lon2d, {"standard_name": "longitude", "units": "degrees_east"}),
            )
        for name in ds.data_vars:
            ds[name].attrs["grid_mapping"] = GRID_MAPPING
            ds[name].encoding.pop("grid_mapping", None)
        ds[GRID_MAPPING] = xr.DataArray(np.int32(0), attrs=crs_attrs(grid.crs_wkt))
    return ds


#: file suffixes of HDF5 radar composites, read through ``--format`` (pysteps' importers)
RADAR_SUFFIXES = (".h5", ".hdf5", ".hdf")


def prepare_store(
    inputs: list[str] | str,
    out: str,
    variables: list[str] | None = None,
    levels: list[int] | None = None,
    chunks: dict[str, int] | None = None,
    engine: str | None = None,
    progress: bool = True,
    scheduler: str | None = None,
    overwrite: bool = False,
    format: str | None = None,
    crs: str | None = None,
    nodata: float | None = None,
) -> Path:
    """Convert netCDF/GRIB file(s) or radar frames into a chunked zarr store and compute its statistics.

    The data are written with dask (float32, zstd-compressed, one time step per chunk by default)
    to ``<out>.tmp-<pid>`` and renamed to ``out`` only when complete, so an interrupted run never
    leaves a half-written store under the final name. The statistics of the default datamodule
    settings (``split_fractions`` [0.7, 0.15, 0.15], the store's own time step, member 0) are
    written into the store (``.sciadapt_stats.json``); other settings compute theirs on first use.

    Args:
        inputs: A file, a glob pattern, or a list of them (combined along their coordinates,
            sorted by time).
        out: The zarr store to create.
        variables: Variables to keep (time-dependent ones by name; static fields are always kept);
            None: all.
        levels: Pressure levels to keep; None: all.
        chunks: Chunk length per dimension name; default one time step per chunk and whole other
            dimensions.
        engine: xarray engine of the inputs; None: from the file names.
        progress: Show a progress bar.
        scheduler: None (dask's threaded scheduler), ``"local"`` (start a ``dask.distributed``
            LocalCluster) or the address of a running dask scheduler (``tcp://host:8786``).
        overwrite: Replace an existing ``out``.
        format: None (netCDF/zarr/GRIB through xarray, told from ``engine`` or the names) or a
            pysteps importer for radar composites (``knmi_hdf5``, ``odim_hdf5``, ``bom_rf3`` ...;
            needs ``pip install 'sciadapt[nowcast]'``).
        crs: The CRS of a projected grid whose files declare none (or declare a wrong one), any
            string pyproj reads (``EPSG:3035``, proj4, WKT).
        nodata: The raw missing-value code of ODIM radar files (``format`` ``odim_hdf5`` or
            ``opera_hdf5``) whose datasets declare none (``what/nodata``); a file's own code wins.

    Returns:
        The path of the store.

    Raises:
        DataError: Missing inputs, variables or levels, irregular or repeated times, files of
            different grids or projections, a projected grid without a CRS, a radar file whose
            missing-value code is unknown, or an existing ``out``.
    """
    from sciadapt.runs import check_output_location

    files = _expand_inputs(inputs)
    target = Path(out).expanduser()
    if target.exists() and not overwrite:
        raise DataError(f"data prepare: {target} already exists. Fix: remove it or pass overwrite (--overwrite)")
    # the store's place is checked before any input is read; a store of an earlier run killed
    # part-way is cleaned up (its temporaries never carry the final name)
    check_output_location(target, "data prepare: the output store", folder=True)
    _clean_leftovers(target)
    fmt = None if format in (None, "netcdf", "zarr", "grib") else format
    if fmt is not None:
        from sciadapt.datamodules.gridded.radar import open_radar

        ds = open_radar(files, fmt, crs, nodata)
    else:
        if nodata is not None:
            raise DataError(
                "data prepare: --nodata is for radar files read through --format odim_hdf5 (or opera_hdf5). "
                "Fix: leave it out, or give the --format"
            )
        if format is None and engine is None and any(Path(f).suffix.lower() in RADAR_SUFFIXES for f in files):
            # HDF5 radar composites (KNMI, ODIM/OPERA) are not CF netCDF: xarray finds no time in them
            raise DataError(
                f"data prepare: {files[0]} looks like an HDF5 radar composite, which needs its importer. "
                "Fix: give --format knmi_hdf5 (KNMI), --format odim_hdf5 (ODIM/OPERA) or another pysteps "
                'importer (pip install -e ".[nowcast]"); a CF netCDF-4 file with an .h5 name: --engine h5netcdf'
            )
        if format == "zarr" and engine is None:
            engine = "zarr"
        elif format == "grib" and engine is None:
            engine = "cfgrib"
        ds = _open_inputs(files, engine)
    source = files[0] if len(files) == 1 else f"{files[0]} (+{len(files) - 1} files)"
    info = inspect_store(ds, source, "netcdf", engine, crs=crs)
    check_regular_times(info.times, source)
    keep_static = list(info.static)
    if variables is not None or levels is not None:
        _, plans = select_channels(info, variables, levels)
        names = [p.name for p in plans]
        ds = ds[names + [s for s in keep_static if s not in names]]
        if levels is not None and info.level_dim is not None:
            ds = ds.sel({info.level_dim: [v for v in info.levels if any(math.isclose(float(v), lv) for lv in levels)]})  # type: ignore[union-attr]
    # Scalar and auxiliary coordinates (GRIB's step, surface, valid_time...) are not needed to train;
    # a projected or curvilinear grid keeps its 2-D latitude/longitude and its projection.
    grid_coords = set(_LAT_NAMES + _LON_NAMES) if info.grid_kind != "latlon" else set()
    ds = ds.drop_vars([c for c in ds.coords if c not in ds.dims and c not in grid_coords])
    ds = _keep_grid(ds, info)
    sizes = dict(ds.sizes)
    chunk_spec = {d: -1 for d in sizes}
    chunk_spec[info.time_dim] = 1
    for k, v in (chunks or {}).items():
        if k not in sizes:
            raise DataError(f"data prepare: chunks names dimension {k!r}; the data has {', '.join(map(str, sizes))}")
        chunk_spec[k] = int(v)
    from zarr.codecs import ZstdCodec

    encoding: dict[str, dict[str, Any]] = {}
    for name in ds.data_vars:
        var = ds[name]
        if var.ndim == 0:  # the grid-mapping variable
            continue
        if np.issubdtype(var.dtype, np.floating) and var.dtype != np.float32:
            ds[name] = var.astype(np.float32)
        ds[name].encoding = {}
        spec = tuple(sizes[d] if chunk_spec[d] == -1 else min(chunk_spec[d], sizes[d]) for d in ds[name].dims)
        encoding[str(name)] = {"chunks": spec, "compressors": [ZstdCodec(level=3)]}
    ds = ds.chunk({d: (sizes[d] if c == -1 else c) for d, c in chunk_spec.items()})
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    client = None
    try:
        delayed = ds.to_zarr(tmp, mode="w", encoding=encoding, compute=False, consolidated=False)
        if scheduler is None:
            # our own pool: when a chunk fails, leaving the block waits for the chunks still being written,
            # so the half-written store removed below stays removed
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                if progress:
                    from dask.diagnostics import ProgressBar

                    with ProgressBar():
                        delayed.compute(scheduler="threads", pool=pool)
                else:
                    delayed.compute(scheduler="threads", pool=pool)
        else:
            client = _dask_client(scheduler)
            future = client.compute(delayed)
            if progress:
                from distributed import progress as dprogress

                dprogress(future)
            future.result()
        try:
            dm = GriddedDataModule(str(tmp), engine="zarr", stats="recompute", num_workers=0)
            dm.setup()
        except DataError as err:
            log.warning("%s: statistics not computed (%s); they will be computed on first use", target, err)
        if target.exists():
            old = target.with_name(f"{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        ds.close()
        if client is not None:
            client.close()
    return target


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a leftover's writer may still be at work)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _clean_leftovers(target: Path) -> list[Path]:
    """Remove what an earlier ``data prepare`` of ``target`` left when it was killed; return it.

    ``<store>.tmp-<pid>`` is a half-written store: removed. ``<store>.old-<pid>`` is the store an
    overwrite was replacing: removed when the new store is in place, else moved back to ``target``.
    Temporaries of a writer that still runs here are left alone.
    """
    cleaned: list[Path] = []
    if not target.parent.is_dir():
        return cleaned
    for kind in ("tmp", "old"):
        for path in sorted(target.parent.glob(f"{glob.escape(target.name)}.{kind}-*")):
            suffix = path.name[len(target.name) + len(kind) + 2 :]
            if not suffix.isdigit() or _running(int(suffix)):
                continue
            if kind == "old" and not target.exists():
                os.replace(path, target)
                log.warning(
                    "data prepare: %s was left by an overwrite that was killed; restored it as %s", path, target
                )
                continue
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            log.warning("data prepare: removed %s, left by an earlier run that was killed part-way", path)
            cleaned.append(path)
    return cleaned


def _dask_client(scheduler: str) -> Any:
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise DataError(
            f"data prepare: scheduler={scheduler!r} needs dask.distributed. Fix: pip install 'dask[distributed]', "
            "or leave the scheduler unset for dask's threads"
        ) from err
    if scheduler == "local":
        return Client(LocalCluster(processes=True))
    return Client(scheduler)
