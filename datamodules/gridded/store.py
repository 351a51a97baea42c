"""Opening and inspecting gridded stores: format, layout, regular time axis, channel selection.

Everything here reads metadata only (coordinates, attributes, encodings), never array data,
except :func:`read_layout`'s static fields (a few 2-D invariants).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import re
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import xarray as xr

from sciadapt.datamodules.gridded.grids import _LAT_NAMES, _LON_NAMES, Grid, detect_grid
from sciadapt.errors import DataError
from sciadapt.registry import suggest

Engine = Literal["zarr", "h5netcdf", "netcdf4", "scipy", "cfgrib"]

_TIME_DIMS = ("time", "valid_time", "datetime", "t")
_LAT_DIMS = ("latitude", "lat")
_LON_DIMS = ("longitude", "lon")
_LEVEL_DIMS = ("level", "isobaricInhPa", "pressure_level", "plev", "lev")
_MEMBER_DIMS = ("number", "member", "realization", "ensemble")
LSM_NAMES = ("land_sea_mask", "lsm")
OROGRAPHY_NAMES = ("geopotential_at_surface", "orography", "orog", "z_surface", "surface_geopotential")
_GRIB_SUFFIXES = (".grib", ".grb", ".grib1", ".grib2", ".grb2")
_NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf", ".h5", ".hdf5")


@dataclasses.dataclass
class StoreInfo:
    """What a store holds, read from its metadata only (no array data).

    Attributes:
        path: The store or file.
        kind: ``"zarr"``, ``"netcdf"`` or ``"grib"``.
        engine: The xarray engine used to open it (None: xarray's choice).
        time_dim / lat_dim / lon_dim: Names of those dimensions in the store.
        level_dim: Name of the pressure-level dimension, None when there is none.
        member_dim: Name of an ensemble-member dimension, None when there is none.
        times: The time coordinate, ``datetime64[ns]``.
        lat / lon: The coordinates as stored (any orientation).
        levels: The level coordinate as stored, None without a level dimension.
        dynamic: Variables with a time axis: name -> dims (store order).
        static: Variables on the grid without a time axis: name -> dims.
        decode: name -> (fill value, scale factor, add offset) for raw zarr reads (None where unset).
        time_chunks: name -> chunk length along time (1 when unchunked).
        bytes_per_step: name -> bytes of one time step (at least float32 per value).
        member_count: Size of the member dimension (0 without one).
        grid: The horizontal grid (kind, CRS, 2-D latitude/longitude); ``lat_dim``/``lon_dim``
            name its row/column dimensions (``y``/``x`` on a projected grid) and ``lat``/``lon``
            hold their 1-D coordinates (``y``/``x`` values, or positions when there are none).
    """

    path: str
    kind: str
    engine: str | None
    time_dim: str
    lat_dim: str
    lon_dim: str
    level_dim: str | None
    member_dim: str | None
    times: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    levels: np.ndarray | None
    dynamic: dict[str, tuple[str, ...]]
    static: dict[str, tuple[str, ...]]
    decode: dict[str, tuple[float | None, float | None, float | None]]
    time_chunks: dict[str, int]
    bytes_per_step: dict[str, int]
    member_count: int = 0
    grid: Grid | None = None
    #: name -> the units and accumulation time (``units``, ``accutime`` minutes) of each dynamic variable, when given
    units: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def grid_kind(self) -> str:
        """``"latlon"``, ``"projected"`` or ``"curvilinear"``."""
        return "latlon" if self.grid is None else self.grid.kind

    @property
    def n_members(self) -> int:
        """Ensemble members in the store (0 without a member dimension)."""
        return 0 if self.member_dim is None else self.member_count


def store_kind(path: Path, engine: str | None = None) -> str:
    """``"zarr"``, ``"grib"`` or ``"netcdf"`` from the engine or, without one, the path.

    Raises:
        DataError: If the path's format cannot be told and no engine is given.
    """
    if engine == "zarr":
        return "zarr"
    if engine == "cfgrib":
        return "grib"
    if engine is not None:
        return "netcdf"
    if path.suffix.lower() == ".zarr" or (
        path.is_dir() and any((path / m).exists() for m in ("zarr.json", ".zgroup", ".zmetadata"))
    ):
        return "zarr"
    if path.suffix.lower() in _GRIB_SUFFIXES:
        return "grib"
    if path.suffix.lower() in _NETCDF_SUFFIXES:
        return "netcdf"
    raise DataError(
        f"{path}: cannot tell the format from the name (expected a .zarr store, a netCDF file "
        f"({', '.join(_NETCDF_SUFFIXES)}) or a GRIB file ({', '.join(_GRIB_SUFFIXES)})). "
        "Fix: set data.engine (zarr, h5netcdf, netcdf4, scipy or cfgrib)"
    )


def require_cfgrib(path: str) -> None:
    if importlib.util.find_spec("cfgrib") is None:
        raise DataError(
            f"{path}: reading GRIB needs the optional cfgrib reader, which is not installed. "
            "Fix: pip install 'sciadapt[grib]' (cfgrib + ecCodes), or convert the file once with "
            "`sciadapt data prepare` on a machine that has it"
        )


@functools.cache
def proj_before_eccodes() -> None:
    """Initialise pyproj's bundled PROJ before xarray can load ecCodes.

    With the ``grib`` extra installed, xarray imports cfgrib (and the ecCodes wheel's libraries)
    on its first open of *any* file. PROJ initialised after that fails ("no database context
    specified") and the process can abort at exit ("double free"); measured here with torchgeo /
    rasterio used after a gridded read in one process. In the other order both work.
    """
    if importlib.util.find_spec("cfgrib") is None or importlib.util.find_spec("pyproj") is None:
        return
    import pyproj

    pyproj.CRS.from_epsg(4326)


def open_xarray(path: str, kind: str, engine: str | None, chunks: Any) -> xr.Dataset:
    """Open a store with xarray; ``chunks=None`` gives lazy numpy-backed arrays (no dask).

    Args:
        path: The store or file.
        kind: As returned by :func:`store_kind`.
        engine: An xarray engine, or None for the default of ``kind``.
        chunks: Passed to xarray: None (no dask), ``{}`` (the store's chunks) or a mapping.

    Raises:
        DataError: If the file is missing, unreadable, or its reader is not installed.
    """
    proj_before_eccodes()
    p = Path(path)
    if not p.exists():
        hint = ""
        if kind == "zarr":
            hint = " Create it from netCDF/GRIB files with `sciadapt data prepare <files> <store.zarr>`."
        raise DataError(f"gridded data {path} does not exist; check data.path.{hint}")
    try:
        if kind == "zarr":
            return cast(xr.Dataset, xr.open_zarr(path, chunks=chunks, consolidated=_zarr_consolidated(p)))
        if kind == "grib":
            require_cfgrib(path)
            # indexpath="" keeps cfgrib from writing a .idx file next to the (maybe read-only) input
            return xr.open_dataset(
                path, engine="cfgrib", chunks=chunks, backend_kwargs={"indexpath": ""}, decode_timedelta=True
            )
        return xr.open_dataset(path, engine=engine, chunks=chunks, decode_timedelta=True)
    except DataError:
        raise
    except (ImportError, ValueError) as err:
        text = str(err)
        if "dependencies may not be installed" in text or "h5py" in text or "netCDF4" in text:
            raise DataError(
                f"{path}: no netCDF reader is installed for this file ({text.splitlines()[0]}). "
                "Fix: pip install h5netcdf (netCDF-4/HDF5 files) or netCDF4"
            ) from err
        raise DataError(f"cannot open gridded data {path}: {type(err).__name__}: {err}") from err
    except Exception as err:  # backends raise many types (OSError, KeyError, FileNotFoundError...)
        raise DataError(f"cannot open gridded data {path}: {type(err).__name__}: {err}") from err


def _zarr_consolidated(path: Path) -> bool:
    """Whether a zarr store has consolidated metadata (asking avoids xarray's fallback warning)."""
    if (path / ".zmetadata").exists():
        return True
    meta = path / "zarr.json"
    if meta.is_file():
        try:
            return json.loads(meta.read_text()).get("consolidated_metadata") is not None
        except (OSError, json.JSONDecodeError):
            return False
    return False


def _find_dim(ds: xr.Dataset, candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        if name in ds.dims:
            return name
    return None


def _as_datetimes(values: Any, path: str, dim: str) -> np.ndarray:
    try:
        return cast(np.ndarray, pd.DatetimeIndex(values).values.astype("datetime64[ns]"))
    except (TypeError, ValueError) as err:
        raise DataError(
            f"{path}: the '{dim}' coordinate is not made of standard-calendar timestamps ({err}). "
            "Fix: convert it (e.g. ds.convert_calendar('standard')) and re-create the store"
        ) from err


def inspect_store(ds: xr.Dataset, path: str, kind: str, engine: str | None, crs: str | None = None) -> StoreInfo:
    """Read the layout of an opened store (dims, coordinates, variables, grid); no array data.

    Args:
        ds: The opened store.
        path: How messages name it.
        kind: As returned by :func:`store_kind`.
        engine: The xarray engine it was opened with.
        crs: A CRS for a projected grid whose file does not declare one (``data.crs``).

    Raises:
        DataError: If the store lacks a time dimension or a grid (latitude/longitude, or y/x with
            a CRS or 2-D latitude/longitude), or has no variable on them.
    """
    dims = list(ds.dims)
    time_dim = _find_dim(ds, _TIME_DIMS)
    if time_dim is None:
        raise DataError(
            f"{path}: no time dimension (looked for {', '.join(_TIME_DIMS)}; the store has "
            f"{', '.join(map(str, dims)) or 'none'}). Fix: rename it, e.g. ds.rename({{'<name>': 'time'}})"
        )
    grid = detect_grid(ds, path, crs)
    if grid is None:
        missing = "latitude" if _find_dim(ds, _LAT_DIMS) is None else "longitude"
        cands = _LAT_DIMS if missing == "latitude" else _LON_DIMS
        raise DataError(
            f"{path}: no {missing} dimension (looked for {', '.join(cands)}, or y/x with a CRS; the store has "
            f"{', '.join(map(str, dims)) or 'none'}). Fix: rename it, e.g. ds.rename({{'<name>': '{cands[0]}'}})"
        )
    lat_dim, lon_dim = grid.row_dim, grid.col_dim
    not_fields = {grid.mapping_name} if grid.mapping_name else set()
    if grid.kind != "latlon":
        not_fields |= {n for n in (*_LAT_NAMES, *_LON_NAMES) if n in ds.variables}
    level_dim = _find_dim(ds, _LEVEL_DIMS)
    member_dim = _find_dim(ds, _MEMBER_DIMS)
    allowed_dyn = {time_dim, lat_dim, lon_dim, level_dim, member_dim} - {None}
    dynamic: dict[str, tuple[str, ...]] = {}
    static: dict[str, tuple[str, ...]] = {}
    for key, var in ds.variables.items():
        vname = str(key)
        vdims = tuple(str(d) for d in var.dims)
        if vname in ds.dims or vname in not_fields or lat_dim not in vdims or lon_dim not in vdims:
            continue
        if time_dim in vdims and set(vdims) <= allowed_dyn:
            dynamic[vname] = vdims
        elif time_dim not in vdims and set(vdims) <= {lat_dim, lon_dim, member_dim} - {None}:
            static[vname] = vdims
    if not dynamic:
        raise DataError(
            f"{path}: no variable has ({time_dim}, {lat_dim}, {lon_dim}) dimensions "
            f"(variables: {', '.join(map(str, ds.data_vars)) or 'none'}); nothing to train on"
        )
    decode: dict[str, tuple[float | None, float | None, float | None]] = {}
    time_chunks: dict[str, int] = {}
    bytes_per_step: dict[str, int] = {}
    for name, vdims in dynamic.items():
        enc = ds[name].encoding
        fill = enc.get("_FillValue", enc.get("missing_value"))
        if fill is not None and np.ndim(fill) == 0 and np.isnan(float(fill)):
            fill = None  # NaN fill values are NaN already
        scale, offset = enc.get("scale_factor"), enc.get("add_offset")
        decode[name] = (
            None if fill is None or np.ndim(fill) else float(fill),
            None if scale is None else float(scale),
            None if offset is None else float(offset),
        )
        chunks = enc.get("chunks") or enc.get("chunksizes")
        time_chunks[name] = int(chunks[vdims.index(time_dim)]) if chunks else 1
        shape = ds[name].shape
        per_step = int(np.prod([s for d, s in zip(vdims, shape, strict=True) if d != time_dim]))
        bytes_per_step[name] = per_step * max(ds[name].dtype.itemsize, 4)
    times = _as_datetimes(ds[time_dim].values, path, time_dim)
    info = StoreInfo(
        path=path,
        kind=kind,
        engine=engine,
        time_dim=time_dim,
        lat_dim=lat_dim,
        lon_dim=lon_dim,
        level_dim=level_dim,
        member_dim=member_dim,
        times=times,
        lat=_axis_values(ds, lat_dim),
        lon=_axis_values(ds, lon_dim),
        levels=None if level_dim is None else np.asarray(ds[level_dim].values),
        dynamic=dynamic,
        static=static,
        decode=decode,
        time_chunks=time_chunks,
        bytes_per_step=bytes_per_step,
        member_count=0 if member_dim is None else int(ds.sizes[member_dim]),
        grid=grid,
        units={name: _unit_attrs(ds[name].attrs) for name in dynamic},
    )
    return info


def _unit_attrs(attrs: dict[Any, Any]) -> dict[str, Any]:
    """The ``units`` and ``accutime`` (minutes) of a variable, where its attributes give them."""
    out: dict[str, Any] = {}
    if isinstance(attrs.get("units"), str):
        out["units"] = attrs["units"]
    accutime = attrs.get("accutime")
    if isinstance(accutime, int | float | np.number) and float(accutime) > 0:
        out["accutime"] = float(accutime)
    return out


def _axis_values(ds: xr.Dataset, dim: str) -> np.ndarray:
    """A grid dimension's 1-D coordinate, or the positions 0..n-1 when it has none (curvilinear)."""
    if dim in ds.coords:
        return np.asarray(ds[dim].values, dtype=np.float64)
    return np.arange(ds.sizes[dim], dtype=np.float64)


def check_regular_times(times: np.ndarray, source: str) -> pd.Timedelta:
    """The store's time step; a :class:`DataError` naming the first irregular index otherwise.

    Args:
        times: ``datetime64`` time coordinate.
        source: How messages name the store.

    Returns:
        The (single) spacing of the time axis.
    """
    if len(times) < 2:
        raise DataError(f"{source}: has {len(times)} time step(s); samples need at least two")
    ns = times.astype("datetime64[ns]").astype(np.int64)
    steps = np.diff(ns)
    values, counts = np.unique(steps, return_counts=True)
    step = int(values[np.argmax(counts)])  # the usual spacing; the odd ones are the errors
    if step <= 0:
        step = int(values[values > 0][0]) if (values > 0).any() else step
    bad = np.flatnonzero(steps != step)
    if bad.size:
        i = int(bad[0]) + 1
        gap = pd.Timedelta(int(steps[bad[0]]), "ns")
        if gap <= pd.Timedelta(0):
            what = "repeats" if gap == pd.Timedelta(0) else "goes back in time from"
            detail = f"time index {i} ({pd.Timestamp(times[i])}) {what} index {i - 1} ({pd.Timestamp(times[i - 1])})"
        else:
            detail = (
                f"time index {i} ({pd.Timestamp(times[i])}) comes {gap} after index {i - 1} "
                f"({pd.Timestamp(times[i - 1])})"
            )
        raise DataError(
            f"{source}: time steps are not regular: the spacing is {pd.Timedelta(step, 'ns')} but {detail}; "
            f"{bad.size} irregular step(s) in all. Fix: put the store on a regular axis, e.g. "
            f"ds.reindex(time=pd.date_range(start, end, freq='{freq_alias(pd.Timedelta(step, 'ns'))}')) "
            "(missing steps become NaN, then use data.nan_policy=mask), and drop duplicated times"
        )
    return pd.Timedelta(step, "ns")


def freq_alias(td: pd.Timedelta) -> str:
    hours = td / pd.Timedelta(hours=1)
    if float(hours).is_integer():
        return f"{int(hours)}h"
    return f"{int(td / pd.Timedelta(minutes=1))}min"


def _level_name(value: Any) -> str:
    v = float(value)
    return str(int(v)) if v.is_integer() else f"{v:g}"


# ------------------------------------------------------------------------------------------ channels


@dataclasses.dataclass
class VarPlan:
    """How to read one store variable into consecutive channels of a sample.

    Attributes:
        name: Variable name in the store.
        dims: Its dims in store order.
        level_index: Positions in the store's level axis, in channel order (None: no level axis).
        channel_start: First channel this variable fills.
        n_channels: Channels it fills (levels, or 1).
    """

    name: str
    dims: tuple[str, ...]
    level_index: list[int] | None
    channel_start: int
    n_channels: int


def select_channels(
    info: StoreInfo, variables: list[str] | None, levels: list[int] | None
) -> tuple[list[str], list[VarPlan]]:
    """Resolve ``data.variables`` / ``data.levels`` against the store.

    Entries of ``variables`` are store variables (one channel per selected level for variables on
    levels) or single channels written ``<var>_<level>``.

    Returns:
        Channel names in order, and one read plan per store variable.

    Raises:
        DataError: A variable or level that the store does not hold (listing what it holds).
    """
    store_levels = [] if info.levels is None else [float(v) for v in info.levels]
    names_available = sorted(info.dynamic)
    channel_names_available = []
    for name in names_available:
        if info.level_dim is not None and info.level_dim in info.dynamic[name]:
            channel_names_available += [f"{name}_{_level_name(v)}" for v in store_levels]
        else:
            channel_names_available.append(name)

    wanted_levels: list[float] | None = None
    if levels is not None:
        if info.level_dim is None:
            raise DataError(
                f"{info.path}: data.levels={levels} but the store has no pressure-level dimension "
                f"(looked for {', '.join(_LEVEL_DIMS)}). Fix: remove data.levels"
            )
        missing = [lv for lv in levels if not any(math.isclose(float(lv), s) for s in store_levels)]
        if missing:
            avail = [_level_name(v) for v in sorted(store_levels)]
            raise DataError(
                f"{info.path}: level(s) {', '.join(_level_name(m) for m in missing)} (data.levels) not in the "
                f"store's '{info.level_dim}' axis. Available levels: {', '.join(avail)}. Fix: choose data.levels "
                "among them, or leave it null for all"
            )
        wanted_levels = sorted(float(v) for v in levels)

    request = list(variables) if variables is not None else names_available
    if not request:
        raise DataError(f"{info.path}: data.variables is empty; list at least one variable or leave it null")
    plans: list[VarPlan] = []
    channels: list[str] = []
    by_var: dict[str, VarPlan] = {}
    for entry in request:
        var, level = entry, None
        if entry not in info.dynamic:
            match = re.fullmatch(r"(.+)_(-?\d+(?:\.\d+)?)", entry)
            base = match.group(1) if match is not None else ""
            if match is not None and info.level_dim is not None and info.level_dim in info.dynamic.get(base, ()):
                var, level = base, float(match.group(2))
                if not any(math.isclose(level, s) for s in store_levels):
                    raise DataError(
                        f"{info.path}: data.variables entry {entry!r}: variable {var!r} has no level "
                        f"{_level_name(level)}. Available levels: "
                        + ", ".join(_level_name(v) for v in sorted(store_levels))
                    )
            else:
                if entry in info.static:
                    raise DataError(
                        f"{info.path}: data.variables entry {entry!r} has no time axis (a static field); "
                        "static fields are added to batch['static'] when data.static_fields=true. "
                        "Fix: remove it from data.variables"
                    )
                hint = suggest(entry, names_available + channel_names_available)
                raise DataError(
                    f"{info.path}: variable {entry!r} (data.variables) is not in the store.{hint} "
                    f"Available variables: {', '.join(names_available)}"
                    + (f"; channels: {', '.join(channel_names_available)}" if store_levels else "")
                )
        has_levels = info.level_dim is not None and info.level_dim in info.dynamic[var]
        if has_levels:
            chosen = [level] if level is not None else (wanted_levels or sorted(store_levels))
            idx = [next(i for i, s in enumerate(store_levels) if math.isclose(c, s)) for c in chosen]
        else:
            idx = None
        if var in by_var:
            raise DataError(
                f"{info.path}: data.variables lists {var!r} more than once (as {entry!r}); "
                "list each variable once (all its levels, or one <var>_<level> entry)"
            )
        names = [f"{var}_{_level_name(store_levels[i])}" for i in idx] if idx is not None else [var]
        plan = VarPlan(var, info.dynamic[var], idx, len(channels), len(names))
        by_var[var] = plan
        plans.append(plan)
        channels += names
    return channels, plans
