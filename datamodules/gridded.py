"""Gridded weather and climate states (zarr, netCDF, GRIB) as samples of past and future states.

A sample holds ``n_input`` consecutive states (the last one is the *current* state, at time index
``t``) and ``n_lead`` future states, all ``time_step`` apart. Batches follow DESIGN.md's gridded
layout ``B T C H W``:

======================  ===============================  =================================================
key                     shape (per batch)                what
======================  ===============================  =================================================
``x``                   ``(B, n_input, C, H, W)``        normalised prognostic states, the last is ``t``
``y``                   ``(B, n_lead, C, H, W)``         normalised states at ``t + k * time_step``
``mask`` / ``x_mask``   same as ``y`` / ``x``            1 observed, 0 where the store holds NaN (then the
                                                         value in ``x``/``y`` is 0)
``forcings``            ``(B, n_input + n_lead, F, H, W)`` cos/sin of local time of day and of the year
                                                         progress, for every state of ``x`` then ``y``
``static``              ``(B, S, H, W)``                 land-sea mask, normalised orography (when the
                                                         store has them), sin/cos latitude, sin/cos
                                                         longitude
``meta["time_index"]``  ``(B,)``                         ``t``, the index of the current state in the store
======================  ===============================  =================================================

Channels are the selected variables in order; a variable on pressure levels becomes one channel per
level named ``<var>_<level>`` (``z_500``), levels ascending; a surface variable keeps its name.
The grid is returned **north to south** (latitude descending, as ERA5 stores it) and **west to east**
(longitude ascending, in the store's own convention, 0..360 or -180..180); stores in the other
orientation are flipped on read. Regional (limited-area) grids work the same way.

The training hot path reads numpy straight from zarr (one orthogonal selection per variable and
sample, no dask graph) in DataLoader worker processes, each with its own store handle; netCDF and
GRIB files go through xarray's lazy backends, or are held in memory per worker when small. Dask is
used only out of core, once: for the normalisation statistics and by :func:`prepare_store`.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import xarray as xr
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.utils.data import DataLoader, Dataset

from sciadapt.datamodules.zarr_chunks import ChunkDecoder, chunk_decoder, decode_all
from sciadapt.errors import ConfigError, DataError, ShapeError
from sciadapt.registry import DATAMODULES, suggest
from sciadapt.runs import read_json, write_json
from sciadapt.datamodules.sampling import ShardedEpochSampler, apply_resume, shard_indices  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

SPLITS = ("fractions", "dates")
NAN_POLICIES = ("mask", "error")
STATS_MODES = ("auto", "require", "recompute")
ENGINES = ("zarr", "h5netcdf", "netcdf4", "scipy", "cfgrib")
FORCING_NAMES = ("cos_local_time", "sin_local_time", "cos_year_progress", "sin_year_progress")
STATS_ATTR = "sciadapt_stats"
STATS_FORMAT = 1

_TIME_DIMS = ("time", "valid_time", "datetime", "t")
_LAT_DIMS = ("latitude", "lat")
_LON_DIMS = ("longitude", "lon")
_LEVEL_DIMS = ("level", "isobaricInhPa", "pressure_level", "plev", "lev")
_MEMBER_DIMS = ("number", "member", "realization", "ensemble")
_LSM_NAMES = ("land_sea_mask", "lsm")
_OROGRAPHY_NAMES = ("geopotential_at_surface", "orography", "orog", "z_surface", "surface_geopotential")
_GRIB_SUFFIXES = (".grib", ".grb", ".grib1", ".grib2", ".grb2")
_NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf", ".h5", ".hdf5")
_DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
# Non-zarr inputs smaller than this are held in memory by each worker; larger ones are read lazily.
_IN_MEMORY_BYTES = 256 * 2**20
# Dask chunks for the statistics pass: about this many bytes of one variable per task.
_STATS_CHUNK_BYTES = 64 * 2**20
_YEAR_SECONDS = 365.24219 * 86400.0
_NAN_FIX = "set data.nan_policy=mask (NaNs become 0 with mask 0) or fill the gaps in the store"


# ------------------------------------------------------------------------------------------ store


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


def _require_cfgrib(path: str) -> None:
    if importlib.util.find_spec("cfgrib") is None:
        raise DataError(
            f"{path}: reading GRIB needs the optional cfgrib reader, which is not installed. "
            "Fix: pip install 'sciadapt[grib]' (cfgrib + ecCodes), or convert the file once with "
            "`sciadapt data prepare` on a machine that has it"
        )


@functools.cache
def _proj_before_eccodes() -> None:
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
    _proj_before_eccodes()
    p = Path(path)
    if not p.exists():
        hint = ""
        if kind == "zarr":
            hint = " Create it from netCDF/GRIB files with `sciadapt data prepare <files> <store.zarr>`."
        raise DataError(f"gridded data {path} does not exist; check data.path.{hint}")
    try:
        if kind == "zarr":
            return xr.open_zarr(path, chunks=chunks, consolidated=_zarr_consolidated(p))
        if kind == "grib":
            _require_cfgrib(path)
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
        return pd.DatetimeIndex(values).values.astype("datetime64[ns]")
    except (TypeError, ValueError) as err:
        raise DataError(
            f"{path}: the '{dim}' coordinate is not made of standard-calendar timestamps ({err}). "
            "Fix: convert it (e.g. ds.convert_calendar('standard')) and re-create the store"
        ) from err


def inspect_store(ds: xr.Dataset, path: str, kind: str, engine: str | None) -> StoreInfo:
    """Read the layout of an opened store (dims, coordinates, variables); no array data.

    Raises:
        DataError: If the store lacks a time, latitude or longitude dimension or has no variable on them.
    """
    dims = list(ds.dims)
    found = {}
    for what, cands in (("time", _TIME_DIMS), ("latitude", _LAT_DIMS), ("longitude", _LON_DIMS)):
        name = _find_dim(ds, cands)
        if name is None:
            raise DataError(
                f"{path}: no {what} dimension (looked for {', '.join(cands)}; the store has "
                f"{', '.join(map(str, dims)) or 'none'}). Fix: rename it, e.g. ds.rename({{'<name>': '{cands[0]}'}})"
            )
        found[what] = name
    time_dim, lat_dim, lon_dim = found["time"], found["latitude"], found["longitude"]
    level_dim = _find_dim(ds, _LEVEL_DIMS)
    member_dim = _find_dim(ds, _MEMBER_DIMS)
    allowed_dyn = {time_dim, lat_dim, lon_dim, level_dim, member_dim} - {None}
    dynamic: dict[str, tuple[str, ...]] = {}
    static: dict[str, tuple[str, ...]] = {}
    for key, var in ds.variables.items():
        vname = str(key)
        vdims = tuple(str(d) for d in var.dims)
        if vname in ds.dims or lat_dim not in vdims or lon_dim not in vdims:
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
        lat=np.asarray(ds[lat_dim].values, dtype=np.float64),
        lon=np.asarray(ds[lon_dim].values, dtype=np.float64),
        levels=None if level_dim is None else np.asarray(ds[level_dim].values),
        dynamic=dynamic,
        static=static,
        decode=decode,
        time_chunks=time_chunks,
        bytes_per_step=bytes_per_step,
        member_count=0 if member_dim is None else int(ds.sizes[member_dim]),
    )
    return info


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
            f"ds.reindex(time=pd.date_range(start, end, freq='{_freq_alias(pd.Timedelta(step, 'ns'))}')) "
            "(missing steps become NaN, then use data.nan_policy=mask), and drop duplicated times"
        )
    return pd.Timedelta(step, "ns")


def _freq_alias(td: pd.Timedelta) -> str:
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


# ------------------------------------------------------------------------------------------ reading


def _nd_buffer(array: np.ndarray) -> Any:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype().nd_buffer.from_numpy_array(array)


def _level_selector(index: list[int]) -> tuple[slice | np.ndarray, bool]:
    """How to read level positions: a forward slice when they are evenly spaced (and whether to
    reverse it afterwards: zarr slices only step forward), else the positions themselves."""
    if len(index) == 1:
        return slice(index[0], index[0] + 1), False
    step = index[1] - index[0]
    if step != 0 and all(b - a == step for a, b in zip(index, index[1:], strict=False)):
        lo, hi = min(index[0], index[-1]), max(index[0], index[-1])
        return slice(lo, hi + 1, abs(step)), step < 0
    return np.asarray(index), False


class StoreReader:
    """Reads ``(T, L, H, W)`` float32 blocks of the planned variables; picklable, opened lazily.

    Each process (the main one, every DataLoader worker) opens its own handle on first read, so
    no file handle or zarr event loop crosses a fork.

    Args:
        info: The store layout.
        plans: What to read of each variable.
        member: Ensemble member index, used when the store has a member dimension.
        in_memory: Load the selected data once per process (small non-zarr files).
    """

    def __init__(self, info: StoreInfo, plans: list[VarPlan], member: int, in_memory: bool) -> None:
        self.info = info
        self.plans = plans
        self.member = member
        self.in_memory = in_memory
        self._handle: dict[str, Any] | None = None
        self._dataset: xr.Dataset | None = None
        self._pid = -1
        # name -> (decoder, level positions or None for all in order) for zarr arrays whose
        # chunks decode straight into our buffers
        self._direct: dict[str, tuple[ChunkDecoder, list[int] | None]] = {}
        self._threads = 1  # decoding threads of this process

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"], state["_dataset"], state["_pid"], state["_direct"] = None, None, -1, {}
        return state

    def _open(self) -> dict[str, Any]:
        if self._handle is not None and self._pid == os.getpid():
            return self._handle
        info = self.info
        if info.kind == "zarr":
            import zarr

            worker = torch.utils.data.get_worker_info()
            if worker is not None:
                # zarr decodes in a thread pool as large as the machine; with several worker
                # processes that oversubscribes the cores, so each takes its share of them
                cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
                zarr.config.set({"threading.max_workers": max(1, cores // worker.num_workers)})
            try:
                group = zarr.open_group(info.path, mode="r")
                handle: dict[str, Any] = {p.name: group[p.name] for p in self.plans}
            except Exception as err:
                raise DataError(f"cannot open zarr store {info.path}: {type(err).__name__}: {err}") from err
            self._direct = {}
            for p in self.plans:
                decoder = chunk_decoder(handle[p.name]) if self._whole_steps(p) else None
                if decoder is not None:
                    every = p.level_index is None or p.level_index == list(range(handle[p.name].shape[1]))
                    self._direct[p.name] = (decoder, None if every else p.level_index)
            self._threads = int(zarr.config.get("threading.max_workers") or os.cpu_count() or 1)
        else:
            ds = open_xarray(info.path, info.kind, info.engine, chunks=None)
            handle = {}
            for p in self.plans:
                da = self._select(ds[p.name], p)
                handle[p.name] = np.asarray(da.values) if self.in_memory else da
            if self.in_memory:
                ds.close()
            else:
                self._dataset = ds
        self._handle, self._pid = handle, os.getpid()
        return handle

    def _whole_steps(self, plan: VarPlan) -> bool:
        """Whether ``plan``'s variable is stored as (time, [level,] lat, lon), without a member axis."""
        info = self.info
        levels = (info.level_dim,) if plan.level_index is not None else ()
        return plan.dims == (info.time_dim, *levels, info.lat_dim, info.lon_dim)

    def _select(self, da: xr.DataArray, plan: VarPlan) -> xr.DataArray:
        """The variable as (time, level, lat, lon) (or without level), member chosen; lazy."""
        info = self.info
        if info.member_dim is not None and info.member_dim in da.dims:
            da = da.isel({info.member_dim: self.member})
        if plan.level_index is not None:
            da = da.isel({info.level_dim: plan.level_index})  # type: ignore[dict-item]
            return da.transpose(info.time_dim, info.level_dim, info.lat_dim, info.lon_dim)  # type: ignore[arg-type]
        return da.transpose(info.time_dim, info.lat_dim, info.lon_dim)

    def read(self, plan: VarPlan, start: int, stop: int, step: int, out: np.ndarray | None = None) -> np.ndarray:
        """States ``start, start+step, ... < stop`` of one variable as (T, L, H, W), decoded.

        Args:
            plan: The variable.
            start / stop / step: The time indices.
            out: Where to write them, a float32 (T, L, H, W) view (any strides: a flipped or
                channel-sliced view of a batch buffer); zarr then decodes straight into it.

        Returns:
            ``out``, or a new array in store orientation when ``out`` is None.

        Raises:
            DataError: If the data cannot be read or decoded (a corrupt or truncated chunk).
        """
        try:
            return self._read_raw(plan, start, stop, step, out)
        except DataError:
            raise
        except Exception as err:  # codec errors, truncated files, HDF5 errors...
            bad = self._first_unreadable(plan, start, stop, step)
            raise DataError(
                f"{self.info.path}: cannot read variable {plan.name!r} at time index {bad} "
                f"({pd.Timestamp(self.info.times[bad])}): {type(err).__name__}: {err}. The chunk holding it is "
                "corrupt or truncated. Fix: re-create the store (sciadapt data prepare) or restore that file"
            ) from err

    def _read_raw(self, plan: VarPlan, start: int, stop: int, step: int, out: np.ndarray | None) -> np.ndarray:
        handle = self._open()
        info = self.info
        src = handle[plan.name]
        if info.kind != "zarr":
            block = (
                src[start:stop:step]
                if isinstance(src, np.ndarray)
                else src.isel({info.time_dim: slice(start, stop, step)}).values
            )
            block = np.asarray(block)
            block = block[:, None] if plan.level_index is None else block
            if out is None:
                return block
            out[...] = block
            return out
        plain = self.info.decode.get(plan.name) == (None, None, None)
        direct = self._direct.get(plan.name)
        if out is not None and plain and direct is not None:
            # whole chunks, one per time step, decoded straight into place (see zarr_chunks);
            # ``pick``: a subset or another order of the levels, copied from a scratch chunk
            decoder, pick = direct
            ts = range(start, stop, step)
            steps = [out[k] if plan.level_index is not None else out[k, 0] for k in range(len(ts))]
            tail = (0,) * (src.ndim - 1)
            jobs = [((t, *tail), o) for t, o in zip(ts, steps, strict=True)]
            for (t, _), o, ok in zip(jobs, steps, decode_all(decoder, jobs, self._threads, pick), strict=True):
                if not ok:  # no chunk file (zarr's fill value) or a frame without its size
                    block = np.asarray(src[t])
                    o[...] = block if pick is None else block[pick]
            return out
        sel: list[Any] = []
        reverse = False
        for d in plan.dims:
            if d == info.time_dim:
                sel.append(slice(start, stop, step))
            elif d == info.level_dim:
                level_sel, reverse = _level_selector(plan.level_index or [])
                sel.append(level_sel)
            elif d == info.member_dim:
                sel.append(self.member)
            else:
                sel.append(slice(None))
        kept = [d for d in plan.dims if d != info.member_dim]
        order = [kept.index(d) for d in (info.time_dim, info.level_dim, info.lat_dim, info.lon_dim) if d in kept]
        # slices and integers take zarr's basic selection, much faster than an orthogonal one
        basic = all(isinstance(v, slice | int) for v in sel)
        if out is not None and basic and src.dtype == np.float32 and plain:
            # Decode straight into the caller's buffer: ``out`` viewed in the store's axis order.
            target = out[:, 0] if plan.level_index is None else (out[:, ::-1] if reverse else out)
            src.get_basic_selection(tuple(sel), out=_nd_buffer(target.transpose(np.argsort(order))))
            return out
        block = np.asarray(src[tuple(sel)] if basic else src.oindex[tuple(sel)]).transpose(order)
        block = self._decode(plan.name, block[:, ::-1] if reverse else block)
        block = block[:, None] if plan.level_index is None else block
        if out is None:
            return block
        out[...] = block
        return out

    def _first_unreadable(self, plan: VarPlan, start: int, stop: int, step: int) -> int:
        """The first time index of ``range(start, stop, step)`` that fails to read on its own."""
        for t in range(start, min(stop, len(self.info.times)), step):
            try:
                self._read_raw(plan, t, t + 1, 1, None)
            except Exception:
                return t
        return start

    def _decode(self, name: str, block: np.ndarray) -> np.ndarray:
        fill, scale, offset = self.info.decode.get(name, (None, None, None))
        if fill is None and scale is None and offset is None:
            return block
        out = block.astype(np.float32)
        if fill is not None:
            out[block == fill] = np.nan
        if scale is not None:
            out *= np.float32(scale)
        if offset is not None:
            out += np.float32(offset)
        return out


# ------------------------------------------------------------------------------------------ features


def time_forcings(times: np.ndarray, lon: np.ndarray, n_lat: int, out: np.ndarray | None = None) -> np.ndarray:
    """Forcings ``(T, 4, H, W)`` float32: cos/sin of local time of day and of the year progress.

    Local time is UTC plus ``lon / 15`` hours, so the first two channels vary along longitude;
    the year progress (fraction of a tropical year since 1970, as GraphCast uses) is uniform.

    Args:
        times: ``datetime64`` timestamps (UTC) of the states.
        lon: Longitudes in degrees, ``(W,)``.
        n_lat: ``H``.
        out: Array to write into (default: a new one).
    """
    seconds = times.astype("datetime64[s]").astype(np.int64).astype(np.float64)  # (T,)
    day_frac = (seconds % 86400.0) / 86400.0
    local = 2 * np.pi * (day_frac[:, None] + lon[None, :] / 360.0)  # (T, W)
    year = 2 * np.pi * ((seconds / _YEAR_SECONDS) % 1.0)  # (T,)
    if out is None:
        out = np.empty((len(times), 4, n_lat, len(lon)), dtype=np.float32)
    out[:, 0] = np.cos(local)[:, None, :]
    out[:, 1] = np.sin(local)[:, None, :]
    out[:, 2] = np.cos(year)[:, None, None]
    out[:, 3] = np.sin(year)[:, None, None]
    return out


def latitude_area_weights(lat: np.ndarray) -> np.ndarray:
    """``cos(latitude)`` normalised to mean 1, ``(H,)`` float64 (the loss and metric weights)."""
    w = np.cos(np.deg2rad(np.asarray(lat, dtype=np.float64)))
    w = np.clip(w, 0.0, None)
    return w / w.mean()


# ------------------------------------------------------------------------------------------ sampling


# ------------------------------------------------------------------------------------------ dataset


def _empty(shape: tuple[int, ...], shared: bool, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A tensor; in a DataLoader worker, allocated in shared memory.

    The batch then crosses to the main process without the copy that moving an ordinary tensor
    into shared memory costs (default_collate allocates its output the same way).
    """
    if not shared:
        return torch.empty(shape, dtype=dtype)
    proto = torch.empty(0, dtype=dtype)
    storage = proto._typed_storage()._new_shared(math.prod(shape), device=proto.device)
    return proto.new(storage).resize_(shape)


_ONE = torch.ones(())


class _SlotPool:
    """Shared-memory batch buffers that one worker process re-uses.

    Fresh shared memory costs a page fault per 4 KiB page on first write, as much as decoding the
    data on a VM; so a worker keeps a few batch buffers and refills one once the training process
    has let go of every tensor viewing it (:class:`GriddedLoader` frees the slot). ``flags`` (in
    shared memory, travelling with each batch) holds 1 for a slot in use.
    """

    def __init__(self, n_slots: int, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.flags = _empty((n_slots,), True, torch.int32)
        self.flags.zero_()
        self.buffers = [{k: _empty(shape, True) for k, shape in shapes.items()} for _ in range(n_slots)]
        self.key = f"{os.getpid()}-{id(self)}"  # names this pool in the training process's cache
        self.announced: set[int] = set()  # slots whose storage the training process has been sent
        self.flags_sent = False

    def acquire(self) -> int | None:
        """A free slot, marked in use; None when all are held (the caller allocates afresh)."""
        flags = self.flags.numpy()
        free = np.flatnonzero(flags == 0)
        if free.size == 0:
            return None
        slot = int(free[0])
        flags[slot] = 1
        return slot


class _SlotRef:
    """A batch built in slot ``slot`` of worker pool ``pool``, sent instead of its tensors.

    Passing a shared storage between processes costs a file-descriptor hand-over (a socket round
    trip to the worker) per storage per batch, measured at about 1.4 ms of CPU per batch here. A
    slot's storage and the pool's flags therefore cross once, on first use (``storage`` /
    ``flags`` set); afterwards the reference alone crosses and :class:`GriddedLoader` rebuilds
    ``x``, ``y`` and ``forcings`` as views of the storage it kept. (Not a tuple: pin_memory must
    pass it through untouched.)
    """

    def __init__(
        self,
        pool: str,
        slot: int,
        layout: tuple[int, ...],
        storage: torch.Tensor | None,
        flags: torch.Tensor | None,
    ) -> None:
        self.pool = pool
        self.slot = slot
        self.layout = layout  # (B, n_input, n_lead, C, F, H, W)
        self.storage = storage
        self.flags = flags


def _views(flat: torch.Tensor, layout: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """``x``, ``y`` and ``forcings`` of a batch laid out in one flat float32 buffer."""
    n_b, n_in, n_ld, c, n_f, h, w = layout
    n_states = n_b * (n_in + n_ld) * c * h * w
    states = flat[:n_states].view(n_b, n_in + n_ld, c, h, w)
    forcings = flat[n_states : n_states + n_b * (n_in + n_ld) * n_f * h * w].view(n_b, n_in + n_ld, n_f, h, w)
    return {"x": states[:, :n_in], "y": states[:, n_in:], "forcings": forcings}


def compact_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t.to(device)``, but a broadcast view (a stride-0 dimension) moves only its distinct
    values and is expanded again on the device (``.to`` would materialise it on the host first)."""
    if 0 not in t.stride():
        return t.to(device, non_blocking=True)
    base = t[tuple(slice(0, 1) if st == 0 else slice(None) for st in t.stride())]
    return base.contiguous().to(device, non_blocking=True).expand(t.shape)


def collate_gridded(data: Any) -> Any:
    """DataLoader ``collate_fn``: batches come ready from :meth:`GriddedDataset.__getitems__`."""
    if isinstance(data, dict):
        return data
    return torch.utils.data.default_collate(data)


class GriddedLoader(DataLoader):
    """A DataLoader that hands recycled batch buffers back to the workers.

    A batch built in a re-used buffer arrives as a :class:`_SlotRef`; the loader rebuilds its tensors
    from the slot's storage (sent once) and frees the slot once nothing in this process holds a view of it any more
    (their use count is checked at every ``next``; a tensor, view, ``detach()``ed alias or numpy
    array of them keeps the slot busy, so a consumer that keeps batches only makes the worker
    allocate fresh buffers, never overwrites what it kept).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: list[tuple[torch.Tensor, int, Any]] = []
        # pool -> {"flags": tensor, "slots": {slot: untyped storage}}: what the workers sent once
        self._pools: dict[str, dict[str, Any]] = {}

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        inner = super().__iter__()
        while True:
            self._release()
            try:
                batch = next(inner)
            except StopIteration:
                return
            ref = batch.pop("_slot", None) if isinstance(batch, dict) else None
            if ref is not None:
                storage = self._storage(ref)
                flat = torch.empty(0, dtype=torch.float32).set_(storage, 0, (storage.nbytes() // 4,), (1,))
                batch.update(_views(flat, ref.layout))
                del flat
                self._held.append((self._pools[ref.pool]["flags"], ref.slot, storage))
            if isinstance(batch, dict) and "_time_index" in batch:
                batch = self.dataset.complete(batch)  # type: ignore[attr-defined]
            yield batch

    def _storage(self, ref: _SlotRef) -> Any:
        pool = self._pools.get(ref.pool)
        if pool is None:
            self._forget_dead_workers()
            pool = self._pools[ref.pool] = {"flags": None, "slots": {}}
        if ref.flags is not None:
            pool["flags"] = ref.flags
        if ref.storage is not None:
            pool["slots"][ref.slot] = ref.storage.untyped_storage()
        return pool["slots"][ref.slot]

    def _forget_dead_workers(self) -> None:
        """Drop the buffers of worker processes that have exited (workers restarted each epoch)."""
        for key in list(self._pools):
            try:
                os.kill(int(key.split("-")[0]), 0)
            except (ProcessLookupError, ValueError):
                del self._pools[key]
            except PermissionError:
                pass

    def _release(self) -> None:
        still = []
        for flags, slot, storage in self._held:
            # 1: only our own (cached) handle on the storage is left
            if torch._C._storage_Use_Count(storage._cdata) == 1:
                flags[slot] = 0
            else:
                still.append((flags, slot, storage))
        self._held = still


class GriddedDataset(Dataset):
    """Samples of one split; builds whole batches in place (see :meth:`__getitems__`).

    Args:
        reader: The store reader (opened lazily in each process).
        indices: Current-state time index ``t`` of every sample.
        n_input / n_lead: States before (including) and after ``t``.
        stride: ``time_step`` in store time steps.
        mean / std: Per-channel normalisation, ``(C,)``.
        flip_lat / flip_lon: Reverse the store's latitude / longitude axis on read.
        static: ``(S, H, W)`` float32, the same for every sample.
        forcings: Add the ``forcings`` entry.
        times: The store's time axis (``datetime64[ns]``).
        lon: Output longitudes ``(W,)`` (for local time).
        channels: Channel names (for messages).
        nan_policy: ``"mask"`` or ``"error"``.
    """

    def __init__(
        self,
        reader: StoreReader,
        indices: np.ndarray,
        n_input: int,
        n_lead: int,
        stride: int,
        mean: np.ndarray,
        std: np.ndarray,
        flip_lat: bool,
        flip_lon: bool,
        static: np.ndarray,
        forcings: bool,
        times: np.ndarray,
        lon: np.ndarray,
        channels: list[str],
        nan_policy: str,
    ) -> None:
        self.reader = reader
        self.indices = np.asarray(indices, dtype=np.int64)
        self.n_input = n_input
        self.n_lead = n_lead
        self.stride = stride
        self.mean = mean.astype(np.float32)[:, None, None]  # (C, 1, 1)
        self.inv_std = (1.0 / std).astype(np.float32)[:, None, None]
        self.flip_lat = flip_lat
        self.flip_lon = flip_lon
        self.static = torch.from_numpy(np.ascontiguousarray(static, dtype=np.float32))
        self.forcings = forcings
        self.times = times
        self.lon = lon
        self.channels = channels
        self.nan_policy = nan_policy
        self.n_lat = len(reader.info.lat)
        self.recycle_slots = 0  # buffers per worker to re-use; GriddedDataModule sets it for its loaders
        self._pools: dict[tuple[int, ...], _SlotPool] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pools"] = {}
        return state

    def __len__(self) -> int:
        return len(self.indices)

    def _fill(self, dst: np.ndarray, start: int, stop: int) -> None:
        """Write physical states ``start, start+stride, ... < stop`` into ``dst`` (T, C, H, W)."""
        for plan in self.reader.plans:
            view = dst[:, plan.channel_start : plan.channel_start + plan.n_channels]  # (T, L, H, W)
            if self.flip_lat:
                view = view[..., ::-1, :]
            if self.flip_lon:
                view = view[..., ::-1]
            self.reader.read(plan, start, stop, self.stride, out=view)

    def read_states(self, t: int) -> np.ndarray:
        """Physical-unit states ``t - (n_input-1)*stride .. t + n_lead*stride`` as (T, C, H, W) float32."""
        s = self.stride
        block = np.empty((self.n_input + self.n_lead, len(self.channels), self.n_lat, len(self.lon)), np.float32)
        self._fill(block, t - (self.n_input - 1) * s, t + self.n_lead * s + 1)
        return block

    def __getitems__(self, positions: list[int]) -> dict[str, Any]:
        """A whole batch, built in place: the DataLoader hands it to :func:`collate_gridded` as it is.

        The states of every sample's window (``n_input`` past and ``n_lead`` future, one zarr read
        per variable) and the forcings are decoded straight into one (in a worker, shared-memory,
        re-used) buffer and normalised there, so a state is written once and the batch crosses
        to the training process as a single shared storage. What the training process already
        has is not sent: :meth:`complete` adds ``static``, the all-ones masks of a batch without
        missing values (broadcast views, stride 0) and ``meta`` there.
        """
        shared = torch.utils.data.get_worker_info() is not None
        n_b, n_in, n_ld, s = len(positions), self.n_input, self.n_lead, self.stride
        n_t, c, h, w = n_in + n_ld, len(self.channels), self.n_lat, len(self.lon)
        n_f = len(FORCING_NAMES) if self.forcings else 0
        size = n_b * n_t * (c + n_f) * h * w
        pool, slot = None, None
        if shared and self.recycle_slots > 0:
            pool = self._pools.get((size,))
            if pool is None:
                pool = self._pools[(size,)] = _SlotPool(self.recycle_slots, {"flat": (size,)})
            slot = pool.acquire()
        flat = pool.buffers[slot]["flat"] if pool is not None and slot is not None else _empty((size,), shared)
        n_states = n_b * n_t * c * h * w
        states = flat[:n_states].view(n_b, n_t, c, h, w)
        forcings = flat[n_states:].view(n_b, n_t, n_f, h, w)
        ss = states.numpy()
        ts = [int(self.indices[i]) for i in positions]
        for b, t in enumerate(ts):
            # the whole window in one read per variable: zarr's per-call cost is paid once, not twice
            self._fill(ss[b], t - (n_in - 1) * s, t + n_ld * s + 1)
        ss -= self.mean
        ss *= self.inv_std
        batch: dict[str, Any] = {"_time_index": ts}  # plain ints: pickled inline, no shared tensor of its own
        if pool is not None and slot is not None:
            # x (B, n_input, C, H, W), y (B, n_lead, C, H, W) and forcings are views of the slot's
            # buffer, rebuilt from it by GriddedLoader: the storage crosses once per slot
            batch["_slot"] = _SlotRef(
                pool.key,
                slot,
                (n_b, n_in, n_ld, c, n_f, h, w),
                flat if slot not in pool.announced else None,
                pool.flags if not pool.flags_sent else None,
            )
            pool.announced.add(slot)
            pool.flags_sent = True
        else:
            batch.update(x=states[:, :n_in], y=states[:, n_in:])  # views of the one buffer
        for key, part, first in (("x_mask", ss[:, :n_in], -(n_in - 1)), ("mask", ss[:, n_in:], 1)):
            mask = self._mask(part, ts, first=first, shared=shared)
            if mask is not None:
                batch[key] = mask
        if self.forcings:
            fs = forcings.numpy()
            for b, t in enumerate(ts):
                time_forcings(self.times[t - (n_in - 1) * s : t + n_ld * s + 1 : s], self.lon, h, out=fs[b])
        if "_slot" not in batch:
            batch["forcings"] = forcings  # (B, T, F, H, W)
        return batch

    def complete(self, batch: dict[str, Any]) -> dict[str, Any]:
        """In the training process: add what :meth:`__getitems__` leaves out (see there)."""
        ts = batch.pop("_time_index", None)
        if ts is not None:
            batch["meta"] = {"time_index": torch.tensor(ts, dtype=torch.int64)}
        x, y = batch["x"], batch["y"]
        if "x_mask" not in batch:
            batch["x_mask"] = _ONE.expand(x.shape)
        if "mask" not in batch:
            batch["mask"] = _ONE.expand(y.shape)
        batch["static"] = self.static[None].expand(x.shape[0], *self.static.shape)  # (B, S, H, W)
        return batch

    def _mask(self, arr: np.ndarray, ts: list[int], first: int, shared: bool) -> torch.Tensor | None:
        """1 where ``arr`` (B, T, C, H, W) is observed (None: everywhere); NaNs there become 0 (or an error)."""
        if not np.isnan(arr.min()):  # min propagates NaN, without a temporary the size of arr
            return None
        nan = np.isnan(arr)
        if self.nan_policy == "error":
            b, k, c = (int(v) for v in np.argwhere(nan)[0][:3])
            j = ts[b] + (first + k) * self.stride
            raise DataError(
                f"{self.reader.info.path}: NaN in channel {self.channels[c]!r} at time index {j} "
                f"({pd.Timestamp(self.times[j])}). Fix: {_NAN_FIX}"
            )
        arr[nan] = 0.0
        mask = _empty(arr.shape, shared)
        np.logical_not(nan, out=mask.numpy(), casting="unsafe")
        return mask

    def __getitem__(self, i: int) -> dict[str, Any]:
        """One sample: the entries of :meth:`__getitems__` without the batch axis."""
        batch = self.complete(self.__getitems__([i]))
        item = {k: v[0] for k, v in batch.items() if k != "meta"}
        item["meta"] = {"time_index": int(batch["meta"]["time_index"][0])}
        return item


# ------------------------------------------------------------------------------------------ statistics


def _default_cache_root() -> Path:
    env = os.environ.get("SCIADAPT_CACHE_DIR")
    root = (
        Path(env).expanduser() if env else Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "sciadapt"
    )
    return root / "gridded_stats"


def is_writable(path: Path) -> bool:
    """True when ``path`` may be written: the OS allows it *and* it has a write permission bit.

    The second test makes a folder marked read-only (``chmod a-w``, like the shared data folder)
    count as read-only even for root, whom the OS would let write anyway.
    """
    try:
        return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)
    except OSError:
        return False


def _store_fingerprint(path: Path) -> str:
    """Path + modification time + size of the store (its metadata files for a zarr directory)."""
    parts = [str(path.resolve())]
    targets = [path]
    if path.is_dir():
        targets += [path / m for m in ("zarr.json", ".zgroup", ".zmetadata", ".zattrs") if (path / m).exists()]
    for p in targets:
        st = p.stat()
        parts.append(f"{p.name}:{st.st_mtime_ns}:{st.st_size}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


class StatsLocation:
    """Where one store's statistics live: a JSON file, or the attributes of a zarr store.

    Both hold ``{"format": 1, "entries": {<stats_key>: {"channels": {<channel>: {"mean", "std",
    "tendency_std", "count"}}}}}``.

    Args:
        path: The JSON file, or the zarr store.
        in_zarr: Keep the statistics in the store's root attributes (key ``sciadapt_stats``):
            they travel with the store, and zarr readers see no foreign file in it.
    """

    def __init__(self, path: Path, in_zarr: bool = False) -> None:
        self.path = path
        self.in_zarr = in_zarr

    def __str__(self) -> str:
        return f"{self.path} (zarr attribute {STATS_ATTR!r})" if self.in_zarr else str(self.path)

    def read(self) -> dict[str, Any]:
        """The stored statistics (empty entries when there are none or they are unreadable)."""
        empty: dict[str, Any] = {"format": STATS_FORMAT, "entries": {}}
        try:
            if self.in_zarr:
                import zarr

                # not the consolidated copy: it is not refreshed when the attributes change
                data = zarr.open_group(str(self.path), mode="r", use_consolidated=False).attrs.get(STATS_ATTR)
            elif self.path.is_file():
                data = read_json(self.path)
            else:
                return empty
        except (OSError, ValueError, KeyError) as err:
            log.warning("ignoring unreadable statistics in %s (%s); they will be recomputed", self, err)
            return empty
        if data is None:
            return empty
        if (
            not isinstance(data, dict)
            or data.get("format") != STATS_FORMAT
            or not isinstance(data.get("entries"), dict)
        ):
            log.warning("ignoring statistics in %s written in another format; they will be recomputed", self)
            return empty
        return data

    def write(self, data: dict[str, Any]) -> None:
        """Replace the stored statistics (atomically: a reader sees the old or the new ones)."""
        if self.in_zarr:
            import zarr

            zarr.open_group(str(self.path), mode="r+", use_consolidated=False).attrs[STATS_ATTR] = data
        else:
            write_json(self.path, data)
            self.path.chmod(0o644)  # a cache others may share, not a secret


def default_stats_location(path: Path, kind: str) -> StatsLocation:
    """Where statistics are cached: in a writable zarr store, else in the user cache folder.

    The cache file (``$SCIADAPT_CACHE_DIR`` or ``~/.cache/sciadapt``, then
    ``gridded_stats/<name>-<hash>.json``) is keyed by the store's path, modification time and
    size, so a re-written store gets fresh statistics; the selection (train period, time step,
    member) keys the entries inside it.
    """
    if kind == "zarr" and path.is_dir() and is_writable(path):
        meta = _zarr_root_meta(path)
        if not meta.exists() or is_writable(meta):
            return StatsLocation(path, in_zarr=True)
    return StatsLocation(_default_cache_root() / f"{path.name}-{_store_fingerprint(path)}.json")


def _zarr_root_meta(path: Path) -> Path:
    return path / "zarr.json" if (path / "zarr.json").exists() else path / ".zattrs"


def stats_key(train_start: Any, train_stop: Any, time_step: pd.Timedelta, member: int | None) -> str:
    """The entry of a statistics file: train period (inclusive), tendency lag and member."""
    return (
        f"train={pd.Timestamp(train_start).isoformat()}..{pd.Timestamp(train_stop).isoformat()};"
        f"step={_freq_alias(time_step)};member={'none' if member is None else member}"
    )


def _dask_chunks(info: StoreInfo, names: Sequence[str]) -> dict[str, int]:
    """Time chunk for the statistics pass: a multiple of the store's chunk, about 64 MB a task."""
    per_step = max(info.bytes_per_step[n] for n in names)
    native = max(info.time_chunks[n] for n in names)
    k = max(1, _STATS_CHUNK_BYTES // max(per_step * native, 1))
    return {info.time_dim: int(native * k)}


def compute_statistics(
    info: StoreInfo, plans: list[VarPlan], channels: list[str], stop: int, lag: int, member: int
) -> dict[str, dict[str, float]]:
    """Per-channel mean, std and std of ``lag``-step tendencies over time indices ``[0, stop)``, with dask.

    One pass over the data, out of core: dask reads the store in ~64 MB chunks and reduces them.
    NaNs are skipped. Unweighted over the grid (every grid point counts once).

    Returns:
        channel -> {"mean", "std", "tendency_std", "count"}.

    Raises:
        DataError: A channel with no observed value in the period, or a period shorter than ``lag``.
    """
    import dask
    import dask.array as da

    if stop <= lag:
        raise DataError(
            f"{info.path}: the train split has {stop} time steps, too few for tendencies over "
            f"{lag} step(s). Fix: give the train split more time (data.split_fractions / data.split_dates) "
            "or lower data.time_step"
        )
    ds = open_xarray(info.path, info.kind, info.engine, chunks=_dask_chunks(info, [p.name for p in plans]))
    reader = StoreReader(info, plans, member, in_memory=False)
    try:
        todo = []
        for plan in plans:
            arr = reader._select(ds[plan.name], plan).isel({info.time_dim: slice(0, stop)}).data
            arr = arr.astype(np.float64)
            if plan.level_index is None:
                arr = arr[:, None]  # (T, 1, H, W)
            tend = arr[lag:] - arr[:-lag]  # (T - lag, L, H, W)
            axes = (0, 2, 3)
            todo.append(
                (
                    da.nanmean(arr, axis=axes),
                    da.nanstd(arr, axis=axes),
                    da.nanstd(tend, axis=axes),
                    da.sum(~da.isnan(arr), axis=axes),
                )
            )
        with np.errstate(invalid="ignore", divide="ignore"):
            results = dask.compute(*todo)
    except Exception as err:  # a corrupt chunk surfaces here as a codec or HDF5 error
        names = ", ".join(repr(p.name) for p in plans)
        raise DataError(
            f"{info.path}: computing the statistics of {names} over time indices 0..{stop - 1} failed: "
            f"{type(err).__name__}: {err}. A chunk of the store is corrupt or truncated. Fix: re-create "
            "the store (sciadapt data prepare) or restore the damaged files"
        ) from err
    finally:
        ds.close()
    out: dict[str, dict[str, float]] = {}
    unseen = []
    for plan, (mean, std, tstd, count) in zip(plans, results, strict=True):
        for k in range(plan.n_channels):
            name = channels[plan.channel_start + k]
            if int(count[k]) == 0:
                unseen.append(name)
            out[name] = {
                "mean": float(mean[k]),
                "std": float(std[k]),
                "tendency_std": float(tstd[k]),
                "count": int(count[k]),
            }
    if unseen:
        t_end = pd.Timestamp(info.times[stop - 1])
        raise DataError(
            f"{info.path}: channel(s) {', '.join(unseen)} have no observed (non-NaN) value in the train "
            f"split (up to {t_end}), so they cannot be normalised. Fix: remove them from data.variables "
            "or change the split"
        )
    return out


# ------------------------------------------------------------------------------------------ datamodule


class GriddedDataModule(L.LightningDataModule):
    """Samples of past and future gridded states from one zarr store, netCDF or GRIB file.

    The arguments are those of :func:`build_gridded` (the config schema); see its docstring.
    Nothing is read on construction. Metadata (channels, grid, times) is read on first use of a
    property; statistics on :meth:`setup` (or :attr:`stats`), from the cache when present.
    """

    def __init__(
        self,
        path: str,
        variables: list[str] | None = None,
        levels: list[int] | None = None,
        time_step: str | None = None,
        n_input: int = 1,
        n_lead: int = 1,
        split: str = "fractions",
        split_fractions: list[float] | None = None,
        split_dates: list[str] | None = None,
        static_fields: bool = True,
        forcings: bool = True,
        nan_policy: str = "mask",
        batch_size: int = 1,
        eval_batch_size: int = 1,
        num_workers: int = 2,
        prefetch_factor: int = 2,
        stats: str = "auto",
        stats_path: str | None = None,
        engine: str | None = None,
        member: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        self.path = str(Path(path).expanduser())
        self.requested_variables = list(variables) if variables is not None else None
        self.requested_levels = list(levels) if levels is not None else None
        self.requested_time_step = time_step
        self.n_input = int(n_input)
        self.n_lead = int(n_lead)
        self.split = split
        self.split_fractions = list(split_fractions) if split_fractions is not None else list(_DEFAULT_FRACTIONS)
        self.split_dates = list(split_dates) if split_dates is not None else None
        self.static_fields = bool(static_fields)
        self.use_forcings = bool(forcings)
        self.nan_policy = nan_policy
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.prefetch_factor = int(prefetch_factor)
        self.stats_mode = stats
        self.stats_path = stats_path
        self.engine = engine
        self.member = int(member)
        self.shuffle_seed = int(shuffle_seed)  # the stage runner sets it per stage
        # (epoch, batches done) of a run preempted mid-epoch, for the next train sampler
        self.train_resume: tuple[int, int] | None = None
        self._validate()

        self._info: StoreInfo | None = None
        self._channels: list[str] | None = None
        self._plans: list[VarPlan] | None = None
        self._native_step: pd.Timedelta | None = None
        self._raw_static: dict[str, np.ndarray] = {}
        self._stats: dict[str, np.ndarray] | None = None
        self._stats_where: StatsLocation | None = None
        self._static: np.ndarray | None = None
        self._static_names: list[str] | None = None
        self._datasets: dict[str, GriddedDataset] | None = None
        self._climatology: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ config checks
    def _validate(self) -> None:
        problems: list[str] = []
        for key, choices, value in (
            ("split", SPLITS, self.split),
            ("nan_policy", NAN_POLICIES, self.nan_policy),
            ("stats", STATS_MODES, self.stats_mode),
        ):
            if value not in choices:
                problems.append(
                    f"data.{key}: unknown value {value!r}.{suggest(value, choices)} Choose one of: {', '.join(choices)}"
                )
        if self.engine is not None and self.engine not in ENGINES:
            problems.append(
                f"data.engine: unknown engine {self.engine!r}.{suggest(self.engine, ENGINES)} "
                f"Choose one of: {', '.join(ENGINES)}, or null to tell from the path"
            )
        for key, minimum in (
            ("n_input", 1),
            ("n_lead", 1),
            ("batch_size", 1),
            ("eval_batch_size", 1),
            ("num_workers", 0),
            ("prefetch_factor", 1),
            ("member", 0),
        ):
            if getattr(self, key) < minimum:
                problems.append(f"data.{key}: must be >= {minimum}, got {getattr(self, key)}")
        if self.requested_time_step is not None:
            try:
                step = pd.Timedelta(self.requested_time_step)
                if step <= pd.Timedelta(0):
                    problems.append(f"data.time_step: must be positive, got {self.requested_time_step!r}")
            except (ValueError, TypeError):
                problems.append(
                    f"data.time_step: cannot parse {self.requested_time_step!r} as a duration; write e.g. '1h', '6h', '1D'"
                )
        if self.requested_levels is not None and not self.requested_levels:
            problems.append("data.levels: is empty; list levels (hPa) or leave it null for all")
        if self.requested_variables is not None and len(set(self.requested_variables)) != len(self.requested_variables):
            problems.append("data.variables: lists a variable more than once")
        if self.split == "fractions":
            f = self.split_fractions
            if len(f) != 3 or any(not isinstance(v, int | float) or v < 0 for v in f):
                problems.append(f"data.split_fractions: expected three fractions [train, val, test] >= 0, got {f}")
            elif not math.isclose(sum(f), 1.0, abs_tol=1e-6) or f[0] <= 0:
                problems.append(f"data.split_fractions: must sum to 1 with a positive train fraction, got {f}")
        if self.split == "dates":
            d = self.split_dates
            if d is None or len(d) != 2:
                problems.append(
                    f"data.split_dates: data.split=dates needs [val_start, test_start] (ISO dates), got {d}"
                )
            else:
                try:
                    a, b = pd.Timestamp(d[0]), pd.Timestamp(d[1])
                    if not a <= b:
                        problems.append(f"data.split_dates: val_start {d[0]} must not be after test_start {d[1]}")
                except (ValueError, TypeError) as err:
                    problems.append(f"data.split_dates: cannot parse {d} as dates ({err})")
        if problems:
            raise ConfigError(problems)

    # ------------------------------------------------------------------ metadata
    @property
    def kind(self) -> str:
        """``"zarr"``, ``"netcdf"`` or ``"grib"``."""
        return store_kind(Path(self.path), self.engine)

    def _load_info(self) -> StoreInfo:
        if self._info is None:
            kind = self.kind
            ds = open_xarray(self.path, kind, self.engine, chunks=None)
            try:
                info = inspect_store(ds, self.path, kind, self.engine)
                static = {n: self._read_static_raw(ds, info, n) for n in self._static_candidates(info)}
            finally:
                ds.close()
            self._native_step = check_regular_times(info.times, self.path)
            if info.lat.ndim != 1 or info.lon.ndim != 1:
                raise DataError(f"{self.path}: latitude/longitude must be 1-D coordinates of a regular grid")
            for name, coord in (("latitude", info.lat), ("longitude", info.lon)):
                if len(coord) > 1 and not (np.all(np.diff(coord) > 0) or np.all(np.diff(coord) < 0)):
                    raise DataError(
                        f"{self.path}: {name} values are not sorted; Fix: ds.sortby('{name}') and re-create the store"
                    )
            if info.member_dim is not None and self.member >= info.n_members:
                raise DataError(
                    f"{self.path}: data.member={self.member} but the store has {info.n_members} members "
                    f"({info.member_dim} 0..{info.n_members - 1}). Fix: choose a member in that range"
                )
            self._channels, self._plans = select_channels(info, self.requested_variables, self.requested_levels)
            self._raw_static = static
            self._info = info
        return self._info

    def _static_candidates(self, info: StoreInfo) -> list[str]:
        out = []
        for group in (_LSM_NAMES, _OROGRAPHY_NAMES):
            hit = next((n for n in group if n in info.static), None)
            if hit is None and group is _OROGRAPHY_NAMES and "z" in info.static:
                hit = "z"  # ERA5's invariant file calls surface geopotential "z"
            if hit is not None:
                out.append(hit)
        return out

    def _read_static_raw(self, ds: xr.Dataset, info: StoreInfo, name: str) -> np.ndarray:
        da = ds[name]
        if info.member_dim is not None and info.member_dim in da.dims:
            da = da.isel({info.member_dim: 0})
        return np.asarray(da.transpose(info.lat_dim, info.lon_dim).values, dtype=np.float64)

    @property
    def info(self) -> StoreInfo:
        """The store's layout (read on first use)."""
        return self._load_info()

    @property
    def variables(self) -> list[str]:
        """Channel names in order (``<var>_<level>`` for variables on levels)."""
        self._load_info()
        assert self._channels is not None
        return list(self._channels)

    @property
    def n_channels(self) -> int:
        """``C``, channels of ``x`` and ``y``."""
        return len(self.variables)

    @property
    def flip_lat(self) -> bool:
        lat = self.info.lat
        return len(lat) > 1 and bool(lat[1] > lat[0])

    @property
    def flip_lon(self) -> bool:
        lon = self.info.lon
        return len(lon) > 1 and bool(lon[1] < lon[0])

    @property
    def lat(self) -> np.ndarray:
        """Latitudes ``(H,)`` in degrees, north to south."""
        lat = self.info.lat
        return lat[::-1].copy() if self.flip_lat else lat.copy()

    @property
    def lon(self) -> np.ndarray:
        """Longitudes ``(W,)`` in degrees, ascending, in the store's convention (0..360 or -180..180)."""
        lon = self.info.lon
        return lon[::-1].copy() if self.flip_lon else lon.copy()

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return len(self.info.lat), len(self.info.lon)

    @property
    def area_weights(self) -> np.ndarray:
        """``cos(lat)`` normalised to mean 1, ``(H,)``, in output (north to south) order."""
        return latitude_area_weights(self.lat)

    @property
    def native_time_step(self) -> pd.Timedelta:
        """Spacing of the store's time axis."""
        self._load_info()
        assert self._native_step is not None
        return self._native_step

    @property
    def time_step(self) -> pd.Timedelta:
        """Spacing between the states of a sample (``data.time_step``, default the store's spacing)."""
        if self.requested_time_step is None:
            return self.native_time_step
        return pd.Timedelta(self.requested_time_step)

    @property
    def time_step_hours(self) -> float:
        """:attr:`time_step` in hours."""
        return float(self.time_step / pd.Timedelta(hours=1))

    @property
    def stride(self) -> int:
        """:attr:`time_step` in store time steps."""
        native, step = self.native_time_step, self.time_step
        ratio = step / native
        if not float(ratio).is_integer() or ratio < 1:
            raise ConfigError(
                f"data.time_step: {self.requested_time_step!r} is not a whole multiple of the store's "
                f"time step ({_freq_alias(native)}). Fix: use a multiple, e.g. '{_freq_alias(native)}' or "
                f"'{_freq_alias(native * 6)}'"
            )
        return int(ratio)

    @property
    def store_times(self) -> pd.DatetimeIndex:
        """Every timestamp of the store."""
        return pd.DatetimeIndex(self.info.times)

    @property
    def forcing_names(self) -> list[str]:
        """Channel names of ``forcings`` (empty when ``forcings=false``)."""
        return list(FORCING_NAMES) if self.use_forcings else []

    @property
    def n_forcings(self) -> int:
        """``F``."""
        return len(self.forcing_names)

    @property
    def static_names(self) -> list[str]:
        """Channel names of ``static``."""
        if self._static_names is None:
            self._build_static()
        assert self._static_names is not None
        return list(self._static_names)

    @property
    def n_static(self) -> int:
        """``S``."""
        return len(self.static_names)

    @property
    def static(self) -> np.ndarray:
        """``(S, H, W)`` float32 static fields (output orientation)."""
        if self._static is None:
            self._build_static()
        assert self._static is not None
        return self._static

    def _build_static(self) -> None:
        self._load_info()
        h, w = self.grid_shape
        names: list[str] = []
        fields: list[np.ndarray] = []
        if self.static_fields:
            for raw_name, raw in self._raw_static.items():
                field = raw[::-1] if self.flip_lat else raw
                field = field[:, ::-1] if self.flip_lon else field
                field = np.nan_to_num(field, nan=0.0)
                if raw_name in _LSM_NAMES:
                    names.append("land_sea_mask")
                else:
                    std = field.std()
                    field = (field - field.mean()) / (std if std > 0 else 1.0)
                    names.append("orography")
                fields.append(field)
            lat = np.deg2rad(self.lat)[:, None] * np.ones((1, w))
            lon = np.ones((h, 1)) * np.deg2rad(self.lon)[None, :]
            for name, field in (
                ("sin_lat", np.sin(lat)),
                ("cos_lat", np.cos(lat)),
                ("sin_lon", np.sin(lon)),
                ("cos_lon", np.cos(lon)),
            ):
                names.append(name)
                fields.append(field)
        self._static_names = names
        self._static = np.stack(fields).astype(np.float32) if fields else np.zeros((0, h, w), np.float32)

    # ------------------------------------------------------------------ splits
    @property
    def split_bounds(self) -> dict[str, tuple[int, int]]:
        """Time-index range ``[start, stop)`` of each split."""
        n = len(self.info.times)
        if self.split == "fractions":
            f = self.split_fractions
            n_train, n_test = int(n * f[0]), int(n * f[2])
            a, b = n_train, n - n_test
        else:
            assert self.split_dates is not None
            times = self.info.times
            a, b = (int(np.searchsorted(times, np.datetime64(pd.Timestamp(d)), side="left")) for d in self.split_dates)
        return {"train": (0, a), "val": (a, b), "test": (b, n)}

    def sample_indices(self, name: str) -> np.ndarray:
        """Current-state index ``t`` of every sample of split ``name``.

        ``t`` and every target state lie in the split; input states before ``t`` may reach back
        into the previous split (they are inputs, never targets).
        """
        lo, hi = self.split_bounds[name]
        s = self.stride
        first = max(lo, (self.n_input - 1) * s)
        last = hi - self.n_lead * s  # exclusive
        return np.arange(first, max(first, last), dtype=np.int64)

    def split_times(self, name: str) -> pd.DatetimeIndex:
        """Timestamps of the current (initial) states of split ``name``."""
        return pd.DatetimeIndex(self.info.times[self.sample_indices(name)])

    @property
    def times(self) -> dict[str, pd.DatetimeIndex]:
        """Initial times of the samples of each split."""
        return {k: self.split_times(k) for k in ("train", "val", "test")}

    def test_initial_times(self) -> pd.DatetimeIndex:
        """Initial times of the test samples, in order."""
        return self.split_times("test")

    def lead_hours(self) -> list[float]:
        """Lead time of each target state, in hours."""
        return [self.time_step_hours * (k + 1) for k in range(self.n_lead)]

    def _train_stop(self) -> int:
        a = self.split_bounds["train"][1]
        if a < 2:
            raise DataError(
                f"{self.path}: the train split has {a} time step(s); it needs at least 2. Fix: "
                + ("raise split_fractions[0]" if self.split == "fractions" else "move data.split_dates[0] later")
            )
        return a

    # ------------------------------------------------------------------ statistics
    @property
    def stats_location(self) -> StatsLocation:
        """Where statistics are read from and written to (``data.stats_path`` when set)."""
        if self.stats_path is not None:
            return StatsLocation(Path(self.stats_path).expanduser())
        return default_stats_location(Path(self.path), self.kind)

    def _stats_key(self) -> str:
        times = self.info.times
        member = self.member if self.info.member_dim is not None else None
        return stats_key(times[0], times[self._train_stop() - 1], self.time_step, member)

    def prepare_data(self) -> None:
        """Compute and cache the statistics once (Lightning calls this on one process only)."""
        self._load_stats()

    def _load_stats(self) -> dict[str, np.ndarray]:
        if self._stats is not None:
            return self._stats
        info = self._load_info()
        channels, plans = self.variables, self._plans
        assert plans is not None
        where = self.stats_location
        key = self._stats_key()
        data = where.read()
        entry = data["entries"].get(key, {})
        known = entry.get("channels", {}) if self.stats_mode != "recompute" else {}
        missing = [c for c in channels if c not in known]
        if missing:
            if self.stats_mode == "require":
                have = sorted(data["entries"])
                raise DataError(
                    f"{self.path}: no statistics for channel(s) {', '.join(missing)} over {key} in {where} "
                    f"(data.stats=require; entries there: {'; '.join(have) or 'none'}). Fix: run "
                    "`sciadapt data prepare` for the store, point data.stats_path at the file the run was "
                    "trained with, or set data.stats=auto to compute them now (one pass over the train split)"
                )
            todo = [p for p in plans if any(channels[p.channel_start + k] in missing for k in range(p.n_channels))]
            t0 = time.perf_counter()
            log.info("computing normalisation statistics of %s for %s", ", ".join(missing), self.path)
            fresh = compute_statistics(info, todo, channels, self._train_stop(), self.stride, self.member)
            log.info("statistics computed in %.1f s", time.perf_counter() - t0)
            known = {**known, **fresh}
            where = self._write_stats(where, key, known)
        self._stats_where = where
        mean = np.array([known[c]["mean"] for c in channels], dtype=np.float64)
        std = np.array([known[c]["std"] for c in channels], dtype=np.float64)
        tstd = np.array([known[c]["tendency_std"] for c in channels], dtype=np.float64)
        # A constant channel would divide by zero; scaling it by 1 keeps it a (shifted) constant.
        std = np.where(std > 0, std, 1.0)
        tstd = np.where(tstd > 0, tstd, std)
        self._stats = {"mean": mean, "std": std, "tendency_std": tstd}
        return self._stats

    def _write_stats(self, where: StatsLocation, key: str, channels: dict[str, Any]) -> StatsLocation:
        """Merge ``channels`` into entry ``key`` of ``where`` (or of the cache file when that fails)."""

        def merge(target: StatsLocation) -> None:
            data = target.read()  # re-read: another process may have added entries meanwhile
            entry = data["entries"].setdefault(key, {"channels": {}})
            entry["channels"].update(channels)
            target.write(data)

        try:
            merge(where)
            return where
        except (OSError, PermissionError) as err:
            if self.stats_path is not None:
                raise DataError(
                    f"cannot write statistics to data.stats_path={where}: {err}. Fix: point it at a writable file"
                ) from err
            fallback = StatsLocation(
                _default_cache_root() / f"{Path(self.path).name}-{_store_fingerprint(Path(self.path))}.json"
            )
            log.warning("cannot write statistics into %s (%s); caching them in %s", where, err, fallback)
            merge(fallback)
            return fallback

    @property
    def stats(self) -> dict[str, np.ndarray]:
        """Per-channel ``mean``, ``std`` and ``tendency_std`` (of ``state(t+time_step) - state(t)``), ``(C,)``."""
        return dict(self._load_stats())

    @property
    def tendency_scale(self) -> np.ndarray:
        """``tendency_std / std`` per channel: a normalised tendency of 1 moves the normalised state this much."""
        s = self._load_stats()
        return s["tendency_std"] / s["std"]

    def _check_channels(self, arr: np.ndarray | torch.Tensor, what: str) -> None:
        c = self.n_channels
        if arr.ndim < 3 or arr.shape[-3] != c:
            raise ShapeError(f"{what}: expected (..., C, H, W) with C={c}, got {tuple(arr.shape)}")

    def normalise(self, arr: Any) -> Any:
        """Physical units -> normalised, on the channel axis ``-3`` (``(..., C, H, W)``); numpy or torch."""
        self._check_channels(arr, "normalise")
        s = self._load_stats()
        return self._affine(arr, 1.0 / s["std"], -s["mean"] / s["std"])

    def denormalise(self, arr: Any) -> Any:
        """Normalised -> physical units, on the channel axis ``-3`` (``(..., C, H, W)``); numpy or torch."""
        self._check_channels(arr, "denormalise")
        s = self._load_stats()
        return self._affine(arr, s["std"], s["mean"])

    @staticmethod
    def _affine(arr: Any, scale: np.ndarray, shift: np.ndarray) -> Any:
        if isinstance(arr, torch.Tensor):
            dtype = arr.dtype if arr.is_floating_point() else torch.float64
            a = torch.as_tensor(scale, dtype=dtype, device=arr.device)[:, None, None]
            b = torch.as_tensor(shift, dtype=dtype, device=arr.device)[:, None, None]
            return arr.to(dtype) * a + b
        arr = np.asarray(arr)
        out = arr * scale[:, None, None] + shift[:, None, None]
        return out.astype(arr.dtype, copy=False) if np.issubdtype(arr.dtype, np.floating) else out

    # ------------------------------------------------------------------ climatology
    def climatology(self, times: Any = None, normalised: bool = False) -> np.ndarray:
        """Climatological state, for ACC and the climatology baseline.

        Two climatologies, both from the train split only (one dask pass on first call, then kept
        in memory): without ``times``, the **time mean per grid point**; with ``times``, the mean
        per grid point and **hour of day (UTC)** at each of them (hours the train split never
        shows fall back to the time mean). A day-of-year climatology needs years of data, which
        the stores this suite is tested on do not have (3 weeks of ERA5), so the seasonal cycle
        is not removed; the hour-of-day one removes the diurnal cycle, the largest signal of
        near-surface fields over weeks.

        Args:
            times: None, or valid times of any shape (``datetime64``, pandas or strings).
            normalised: Return normalised values instead of physical units.

        Returns:
            ``(C, H, W)`` without ``times``, else ``times.shape + (C, H, W)``; float32.
        """
        hours, fields = self._climatology_fields()
        if times is None:
            out = fields[-1]  # (C, H, W), the train time mean
            return (self.normalise(out) if normalised else out).astype(np.float32, copy=False)
        stamps_arr = np.asarray(times, dtype="datetime64[ns]")
        stamps = pd.DatetimeIndex(stamps_arr.ravel())
        pos = np.full(len(stamps), len(hours), dtype=np.int64)  # the last field is the time mean
        lookup = {int(h): i for i, h in enumerate(hours)}
        for j, h in enumerate(stamps.hour):
            pos[j] = lookup.get(int(h), len(hours))
        out = fields[pos]
        if normalised:
            out = self.normalise(out)
        return out.reshape(*stamps_arr.shape, *out.shape[1:]).astype(np.float32, copy=False)

    def _climatology_fields(self) -> tuple[np.ndarray, np.ndarray]:
        if self._climatology is None:
            import dask
            import dask.array as da

            info, plans = self._load_info(), self._plans
            assert plans is not None
            stop = self._train_stop()
            hours_all = pd.DatetimeIndex(info.times[:stop]).hour.to_numpy()
            hours = np.unique(hours_all)
            ds = open_xarray(self.path, self.kind, self.engine, chunks=_dask_chunks(info, [p.name for p in plans]))
            reader = StoreReader(info, plans, self.member, in_memory=False)
            try:
                parts = []
                for plan in plans:
                    arr = reader._select(ds[plan.name], plan).isel({info.time_dim: slice(0, stop)}).data
                    arr = arr.astype(np.float64)
                    if plan.level_index is None:
                        arr = arr[:, None]
                    per_hour = [da.nanmean(arr[np.flatnonzero(hours_all == h)], axis=0) for h in hours]
                    parts.append(da.stack([*per_hour, da.nanmean(arr, axis=0)]))  # (nh + 1, L, H, W)
                with np.errstate(invalid="ignore"):
                    computed = dask.compute(*parts)
            finally:
                ds.close()
            fields = np.concatenate(computed, axis=1)  # (nh + 1, C, H, W), store orientation
            if self.flip_lat:
                fields = fields[..., ::-1, :]
            if self.flip_lon:
                fields = fields[..., ::-1]
            self._climatology = (hours, np.ascontiguousarray(fields, dtype=np.float32))
        return self._climatology

    # ------------------------------------------------------------------ datasets and loaders
    def _reader(self) -> StoreReader:
        info = self._load_info()
        assert self._plans is not None
        in_memory = False
        if info.kind != "zarr":
            n_t = len(info.times)
            total = sum(info.bytes_per_step[p.name] for p in self._plans) * n_t
            in_memory = total <= _IN_MEMORY_BYTES
        return StoreReader(info, self._plans, self.member, in_memory)

    def setup(self, stage: str | None = None) -> None:
        """Read metadata and statistics and build the split datasets; later calls return at once."""
        if self._datasets is not None:
            return
        info = self._load_info()
        stats = self._load_stats()
        reader = self._reader()
        datasets = {}
        for name in ("train", "val", "test"):
            datasets[name] = GriddedDataset(
                reader,
                self.sample_indices(name),
                self.n_input,
                self.n_lead,
                self.stride,
                stats["mean"],
                stats["std"],
                self.flip_lat,
                self.flip_lon,
                self.static,
                self.use_forcings,
                info.times,
                self.lon,
                self.variables,
                self.nan_policy,
            )
        if len(datasets["train"]) == 0:
            lo, hi = self.split_bounds["train"]
            need = (self.n_input - 1 + self.n_lead) * self.stride + 1
            raise DataError(
                f"{self.path}: the train split ({hi - lo} time steps) holds no sample: one needs "
                f"(n_input - 1 + n_lead) * time_step + 1 = {need} consecutive steps. Fix: lower data.n_input "
                f"({self.n_input}), data.n_lead ({self.n_lead}) or data.time_step, or give train more time"
            )
        for name in ("val", "test"):
            if len(datasets[name]) == 0:
                log.warning(
                    "%s: the %s split holds no sample (n_lead %d at %s); its loader will be empty",
                    self.path,
                    name,
                    self.n_lead,
                    _freq_alias(self.time_step),
                )
        self._datasets = datasets

    def dataset(self, name: str) -> GriddedDataset:
        """The dataset of split ``name`` (runs :meth:`setup` when needed)."""
        self.setup()
        assert self._datasets is not None
        return self._datasets[name]

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        ds = self.dataset(name)
        # train: a per-epoch order, sharded over the DDP ranks by the sampler itself. Evaluation:
        # time order, left to Lightning, which shards it only for a distributed trainer (a sampler
        # that shards whenever a process group is up would make the runner's one-device test
        # after a DDP fit score this rank's half of the test split only)
        sampler = (
            apply_resume(ShardedEpochSampler(len(ds), seed=self.shuffle_seed, shuffle=True), self, batch_size)
            if shuffle
            else None
        )
        workers: dict[str, Any] = {}
        if self.num_workers > 0:
            workers = {"persistent_workers": True, "prefetch_factor": self.prefetch_factor}
        # enough re-used buffers per worker for its prefetched batches, the one being trained on
        # and the one before it (a `for` loop still holds it while asking for the next)
        ds.recycle_slots = self.prefetch_factor + 3 if self.num_workers > 0 else 0
        return GriddedLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate_gridded,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
            **workers,
        )

    def train_dataloader(self) -> DataLoader:
        """Train samples in a per-epoch deterministic order, sharded over DDP ranks."""
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation samples in time order (sharded over DDP ranks)."""
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test samples in time order (sharded over DDP ranks)."""
        return self._loader("test", self.eval_batch_size, shuffle=False)

    # ------------------------------------------------------------------ evaluation helpers
    def evaluation_arrays(self, split: str = "test") -> dict[str, Any]:
        """Physical-unit arrays of a split for scoring forecasts and baselines.

        Returns:
            ``{"initial": (N, C, H, W), "truth": (N, n_lead, C, H, W) (NaN where missing),
            "mask": (N, n_lead, C, H, W), "init_times": DatetimeIndex (N,),
            "valid_times": datetime64 (N, n_lead)}``.
        """
        ds = self.dataset(split)
        n, c, (h, w) = len(ds), self.n_channels, self.grid_shape
        initial = np.empty((n, c, h, w), np.float32)
        truth = np.empty((n, self.n_lead, c, h, w), np.float32)
        for i in range(n):
            block = ds.read_states(int(ds.indices[i]))  # (T, C, H, W) physical
            initial[i] = block[self.n_input - 1]
            truth[i] = block[self.n_input :]
        idx = ds.indices
        valid = self.info.times[idx[:, None] + self.stride * np.arange(1, self.n_lead + 1)[None, :]]
        return {
            "initial": initial,
            "truth": truth,
            "mask": (~np.isnan(truth)).astype(np.float32),
            "init_times": pd.DatetimeIndex(self.info.times[idx]),
            "valid_times": valid,
        }

    def data_signature(self) -> dict[str, Any]:
        """What a model trained on this data depends on (store in checkpoints; see :meth:`check_signature`)."""
        return {
            "variables": self.variables,
            "lat": [float(v) for v in self.lat],
            "lon": [float(v) for v in self.lon],
            "time_step_hours": self.time_step_hours,
            "static_names": self.static_names,
            "forcing_names": self.forcing_names,
            "n_input": self.n_input,
        }

    def check_signature(self, signature: dict[str, Any], source: str = "the checkpoint") -> None:
        """Raise :class:`DataError` when this data does not match what a model was trained on.

        Args:
            signature: A :meth:`data_signature` stored with the model.
            source: How messages name where the signature came from.
        """
        mine = self.data_signature()
        problems = []
        for key in ("variables", "static_names", "forcing_names"):
            if key in signature and list(signature[key]) != mine[key]:
                problems.append(f"{key}: {source} has {signature[key]}, the store gives {mine[key]}")
        for key in ("lat", "lon"):
            if key in signature:
                theirs = np.asarray(signature[key], dtype=np.float64)
                ours = np.asarray(mine[key])
                if theirs.shape != ours.shape or not np.allclose(theirs, ours, atol=1e-6):
                    problems.append(
                        f"{key}: {source} has {len(theirs)} points {theirs[:1].tolist()}..{theirs[-1:].tolist()}, "
                        f"the store {len(ours)} points {ours[:1].tolist()}..{ours[-1:].tolist()}"
                    )
        for key in ("time_step_hours", "n_input"):
            if key in signature and not math.isclose(float(signature[key]), float(mine[key])):
                problems.append(f"{key}: {source} has {signature[key]}, the data config gives {mine[key]}")
        if problems:
            raise DataError(
                f"{self.path} does not match the grid/channels the model was trained on: "
                + "; ".join(problems)
                + ". Fix: regrid or re-select the store to the training grid and variables (sciadapt data "
                "prepare with the same variables/levels), or use the training data config"
            )

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move a batch to the device without materialising its broadcast views: the all-ones
        masks and the static fields travel as one value / one field and are expanded there."""
        if device.type == "cpu" or not isinstance(batch, dict):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        return {
            k: compact_to_device(v, device) if isinstance(v, torch.Tensor) else move_data_to_device(v, device)
            for k, v in batch.items()
        }

    def facts(self) -> dict[str, Any]:
        """What the model and task follow (the config layer fills builder parameters of these names)."""
        return {
            "lat": [float(v) for v in self.lat],
            "lon": [float(v) for v in self.lon],
            "n_channels": int(self.n_channels),
            "n_forcings": int(self.n_forcings),
            "n_static": int(self.n_static),
            "n_input": int(self.n_input),
            "variables": list(self.variables),
            "tendency_scale": [float(v) for v in np.asarray(self.tendency_scale).reshape(-1)],
            "area_weights": [float(v) for v in np.asarray(self.area_weights).reshape(-1)],
            "time_step_hours": float(self.time_step_hours),
        }

    def describe(self) -> str:
        """One line for logs and tables: store, channels, grid, step, samples per split."""
        name = Path(self.path).name
        if self._info is None:
            return f"{name} ({self.split} split)"
        h, w = self.grid_shape
        lat, lon = self.lat, self.lon
        chans = ", ".join(self.variables[:6]) + (" ..." if self.n_channels > 6 else "")
        text = (
            f"{name} ({self.kind}; {self.n_channels} channels [{chans}] on {h}x{w} "
            f"lat {lat[0]:g}..{lat[-1]:g} lon {lon[0]:g}..{lon[-1]:g}; step {_freq_alias(self.time_step)}; "
            f"n_input {self.n_input}, n_lead {self.n_lead}; {self.n_forcings} forcings, "
            f"{self.n_static} static"
        )
        if self._datasets is not None:
            n = {k: len(v) for k, v in self._datasets.items()}
            text += f"; samples train {n['train']:,} / val {n['val']:,} / test {n['test']:,}"
        if self._stats_where is not None:
            text += f"; stats in {self._stats_where}"
        return text + ")"


@DATAMODULES.register("gridded")
def build_gridded(
    path: str,
    variables: list[str] | None = None,
    levels: list[int] | None = None,
    time_step: str | None = None,
    n_input: int = 1,
    n_lead: int = 1,
    split: str = "fractions",
    split_fractions: list[float] | None = None,
    split_dates: list[str] | None = None,
    static_fields: bool = True,
    forcings: bool = True,
    nan_policy: str = "mask",
    batch_size: int = 1,
    eval_batch_size: int = 1,
    num_workers: int = 2,
    prefetch_factor: int = 2,
    stats: str = "auto",
    stats_path: str | None = None,
    engine: str | None = None,
    member: int = 0,
    shuffle_seed: int = 0,
) -> GriddedDataModule:
    """Gridded weather/climate states from a zarr store, netCDF or GRIB file (the schema of ``data:``).

    Args:
        path: A ``.zarr`` store (preferred; make one with ``sciadapt data prepare``), a netCDF file
            or a GRIB file (needs ``pip install 'sciadapt[grib]'``).
        variables: Store variables to use, in channel order; a variable on pressure levels gives one
            channel per level (``z_500``), and a single level may be named ``<var>_<level>``.
            None: every variable with (time, latitude, longitude) dimensions.
        levels: Pressure levels (hPa) of the variables on levels; None: all levels of the store.
        time_step: Spacing between the states of a sample, a pandas duration ("1h", "6h", "1D"), a
            whole multiple of the store's spacing; None: the store's spacing.
        n_input: Past states in ``x`` (the last one is the current state).
        n_lead: Future states in ``y``. Changing it (e.g. per rollout stage) re-uses the cached statistics.
        split: ``"fractions"`` (``split_fractions`` of the time axis, in order) or ``"dates"``
            (``split_dates``).
        split_fractions: ``[train, val, test]`` fractions of the time steps, summing to 1; default
            ``[0.7, 0.15, 0.15]``. A zero fraction leaves that split empty.
        split_dates: ``[val_start, test_start]``: train is everything before val_start, test
            everything from test_start on.
        static_fields: Add ``static``: land-sea mask and normalised orography when the store has them,
            then sin/cos latitude and sin/cos longitude. False: ``S = 0``.
        forcings: Add ``forcings``: cos/sin of local time of day and of the year progress per state.
            False: ``F = 0``.
        nan_policy: ``"mask"`` (NaN -> 0 with mask 0) or ``"error"`` (a DataError naming the channel
            and time).
        batch_size: Train batch size.
        eval_batch_size: Validation/test batch size.
        num_workers: DataLoader worker processes (each opens its own store handle; persistent).
        prefetch_factor: Batches each worker loads ahead.
        stats: ``"auto"`` (use cached statistics, compute and cache the missing ones), ``"require"``
            (error when they are not cached, e.g. to never scan a huge store by accident) or
            ``"recompute"``.
        stats_path: Statistics file to use instead of the default (``<store>/.sciadapt_stats.json``
            for a writable zarr store, else ``$SCIADAPT_CACHE_DIR`` or ``~/.cache/sciadapt``
            ``/gridded_stats/<name>-<hash of path, mtime, size>.json``).
        engine: xarray engine (zarr, h5netcdf, netcdf4, scipy, cfgrib); None: from the path.
        member: Ensemble member to use when the store has a member dimension (number/member/realization).
        shuffle_seed: Seed of the per-epoch train order (the stage runner sets it per stage).

    Returns:
        The datamodule; the store is opened on first use.
    """
    return GriddedDataModule(
        path=path,
        variables=variables,
        levels=levels,
        time_step=time_step,
        n_input=n_input,
        n_lead=n_lead,
        split=split,
        split_fractions=split_fractions,
        split_dates=split_dates,
        static_fields=static_fields,
        forcings=forcings,
        nan_policy=nan_policy,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor,
        stats=stats,
        stats_path=stats_path,
        engine=engine,
        member=member,
        shuffle_seed=shuffle_seed,
    )


# ------------------------------------------------------------------------------------------ prepare


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
    _proj_before_eccodes()
    kinds = {store_kind(Path(f), engine) for f in files}
    if len(kinds) > 1:
        raise DataError(f"data prepare: inputs mix formats ({', '.join(sorted(kinds))}); convert one format at a time")
    kind = kinds.pop()
    if len(files) == 1:
        return open_xarray(files[0], kind, engine, chunks={})
    if kind == "grib":
        _require_cfgrib(files[0])
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
) -> Path:
    """Convert netCDF/GRIB file(s) into a chunked zarr store and compute its statistics.

    The data are written with dask (float32, zstd-compressed, one time step per chunk by default)
    to ``<out>.tmp-<pid>`` and renamed to ``out`` only when complete, so an interrupted run never
    leaves a half-written store under the final name. The statistics of the default datamodule
    settings (``split_fractions`` [0.7, 0.15, 0.15], the store's own time step, member 0) are
    written into the store (``.sciadapt_stats.json``); other settings compute theirs on first use.

    Args:
        inputs: A file, a glob pattern, or a list of them (combined along their coordinates).
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

    Returns:
        The path of the store.

    Raises:
        DataError: Missing inputs, variables or levels, irregular times, or an existing ``out``.
    """
    files = _expand_inputs(inputs)
    target = Path(out).expanduser()
    if target.exists() and not overwrite:
        raise DataError(f"data prepare: {target} already exists. Fix: remove it or pass overwrite (--overwrite)")
    ds = _open_inputs(files, engine)
    source = files[0] if len(files) == 1 else f"{files[0]} (+{len(files) - 1} files)"
    info = inspect_store(ds, source, "netcdf", engine)
    check_regular_times(info.times, source)
    keep_static = list(info.static)
    if variables is not None or levels is not None:
        _, plans = select_channels(info, variables, levels)
        names = [p.name for p in plans]
        ds = ds[names + [s for s in keep_static if s not in names]]
        if levels is not None and info.level_dim is not None:
            ds = ds.sel({info.level_dim: [v for v in info.levels if any(math.isclose(float(v), lv) for lv in levels)]})  # type: ignore[union-attr]
    # Scalar and auxiliary coordinates (GRIB's step, surface, valid_time...) are not needed to train.
    ds = ds.drop_vars([c for c in ds.coords if c not in ds.dims])
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
            if progress:
                from dask.diagnostics import ProgressBar

                with ProgressBar():
                    delayed.compute()
            else:
                delayed.compute()
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
