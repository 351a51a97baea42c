"""The gridded datamodule: the ``data: {name: gridded}`` schema and what a model of it follows."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import lightning as L
import numpy as np
import pandas as pd
import torch
import xarray as xr
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.utils.data import DataLoader

from sciadapt.datamodules.gridded.features import FORCING_NAMES, latitude_area_weights
from sciadapt.datamodules.gridded.grids import curvilinear_area_weights, projected_area_weights
from sciadapt.datamodules.gridded.loader import GriddedDataset, GriddedLoader, collate_gridded, compact_to_device
from sciadapt.datamodules.gridded.reader import StoreReader
from sciadapt.datamodules.gridded.stats import (
    StatsLocation,
    _dask_chunks,
    default_stats_location,
    load_statistics,
    stats_key,
)
from sciadapt.datamodules.gridded.store import (
    LSM_NAMES,
    OROGRAPHY_NAMES,
    Engine,
    StoreInfo,
    VarPlan,
    check_regular_times,
    freq_alias,
    inspect_store,
    open_xarray,
    select_channels,
    store_kind,
)
from sciadapt.datamodules.gridded.transforms import RainTransform, rate_factor
from sciadapt.datamodules.sampling import ShardedEpochSampler, apply_resume
from sciadapt.errors import ConfigError, DataError, ShapeError
from sciadapt.registry import DATAMODULES
from sciadapt.spec import FromData, Ge, Gt

log = logging.getLogger(__name__)

_DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
# Non-zarr inputs smaller than this are held in memory by each worker; larger ones are read lazily.
_IN_MEMORY_BYTES = 256 * 2**20


class GriddedDataModule(L.LightningDataModule):
    """Gridded weather/climate states from a zarr store, netCDF or GRIB file (the schema of ``data:``).

    Nothing is read on construction. Metadata (channels, grid, times) is read on first use of a
    property; statistics on :meth:`setup` (or :attr:`stats`), from the cache when present.

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
        crs: The CRS of a projected (``y``/``x``) grid whose file does not declare one, any string
            pyproj reads (``EPSG:3035``, proj4, WKT); it wins over the file's. None: the file's
            (CF ``grid_mapping`` variable or ``crs_wkt``/``proj4`` attribute).
        transform: ``"dbr"``: precipitation read as dBR (``10 log10`` of the rain rate in mm/h; dry
            pixels one floor value), as radar nowcasting works (see :mod:`.transforms`); normalisation
            and statistics are then of dBR and forecasts are turned back into mm/h
            (:meth:`to_output_units`). ``"none"``: values as stored.
        rain_threshold: The "no rain" rate (mm/h) of ``transform=dbr``.
        patch: ``[height, width]``: train on windows of this size cut from the grid (validation
            and test see the whole grid). Each train sample takes the most varied of 4 random
            windows of its states (a dry radar window teaches nothing). None: the whole grid.
        shuffle_seed: Seed of the per-epoch train order (the stage runner sets it per stage).
    """

    def __init__(
        self,
        path: str,
        variables: Annotated[list[str] | None, FromData] = None,
        levels: list[int] | None = None,
        time_step: str | None = None,
        n_input: Annotated[int, Ge(1), FromData] = 1,
        n_lead: Annotated[int, Ge(1)] = 1,
        split: Literal["fractions", "dates"] = "fractions",
        split_fractions: list[float] | None = None,
        split_dates: list[str] | None = None,
        static_fields: bool = True,
        forcings: bool = True,
        nan_policy: Literal["mask", "error"] = "mask",
        batch_size: Annotated[int, Ge(1)] = 1,
        eval_batch_size: Annotated[int, Ge(1)] = 1,
        num_workers: Annotated[int, Ge(0)] = 2,
        prefetch_factor: Annotated[int, Ge(1)] = 2,
        stats: Literal["auto", "require", "recompute"] = "auto",
        stats_path: str | None = None,
        engine: Engine | None = None,
        member: Annotated[int, Ge(0)] = 0,
        crs: str | None = None,
        transform: Literal["none", "dbr"] = "none",
        rain_threshold: Annotated[float, Gt(0)] = 0.1,
        patch: list[int] | None = None,
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
        self.crs = crs
        self.transform = transform
        self.rain_threshold = float(rain_threshold)
        self.patch = None if patch is None else tuple(int(v) for v in patch)
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
        """What the signature cannot say (durations, dates, sums); choices and bounds are its types."""
        problems: list[str] = []
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
        if self.patch is not None and (len(self.patch) != 2 or min(self.patch) < 1):
            problems.append(f"data.patch: expected [height, width] of at least 1 pixel each, got {list(self.patch)}")
        if problems:
            raise ConfigError(problems)

    # ------------------------------------------------------------------ metadata
    @property
    def kind(self) -> str:
        """``"zarr"``, ``"netcdf"`` or ``"grib"``."""
        kind: str = store_kind(Path(self.path), self.engine)
        return kind

    def _load_info(self) -> StoreInfo:
        if self._info is None:
            kind = self.kind
            ds = open_xarray(self.path, kind, self.engine, chunks=None)
            try:
                info = inspect_store(ds, self.path, kind, self.engine, crs=self.crs)
                static = {n: self._read_static_raw(ds, info, n) for n in self._static_candidates(info)}
            finally:
                ds.close()
            self._native_step = check_regular_times(info.times, self.path)
            if info.lat.ndim != 1 or info.lon.ndim != 1:
                raise DataError(f"{self.path}: latitude/longitude must be 1-D coordinates of a regular grid")
            for name, coord in ((info.lat_dim, info.lat), (info.lon_dim, info.lon)):
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
        for group in (LSM_NAMES, OROGRAPHY_NAMES):
            hit = next((n for n in group if n in info.static), None)
            if hit is None and group is OROGRAPHY_NAMES and "z" in info.static:
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
    def value_transform(self) -> RainTransform | None:
        """The transform applied on read (``data.transform``), None for values as stored."""
        if self.transform == "none":
            return None
        info = self._load_info()
        assert self._plans is not None
        factors = {p.name: rate_factor(p.name, info.units.get(p.name, {}), self.path) for p in self._plans}
        return RainTransform(factors, self.rain_threshold)

    @property
    def transform_tag(self) -> str:
        """``"none"``, or the transform and its threshold (``"dbr@0.1"``): what a model's inputs were."""
        return self.transform if self.transform == "none" else f"{self.transform}@{self.rain_threshold:g}"

    @property
    def output_units(self) -> list[str | None]:
        """Units of each channel as :meth:`to_output_units` gives it (None where the store says none)."""
        info = self._load_info()
        assert self._plans is not None
        out: list[str | None] = []
        for p in self._plans:
            unit = "mm/h" if self.transform == "dbr" else info.units.get(p.name, {}).get("units")
            out.extend([unit] * p.n_channels)
        return out

    def to_output_units(self, arr: Any) -> Any:
        """Denormalised values ``(..., C, H, W)`` in the units forecasts are written and scored in:
        rain rates in mm/h under ``transform=dbr`` (dry pixels 0), else unchanged."""
        t = self.value_transform
        if t is None:
            return arr
        self._check_channels(arr, "to_output_units")
        return t.to_rate(np.asarray(arr))

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
    def grid_kind(self) -> str:
        """``"latlon"`` (1-D latitude/longitude), ``"projected"`` (y/x with a CRS) or ``"curvilinear"``
        (2-D latitude/longitude only)."""
        kind: str = self.info.grid_kind
        return kind

    @property
    def crs_wkt(self) -> str | None:
        """The projection of a projected grid as WKT, else None."""
        grid = self.info.grid
        return None if grid is None else grid.crs_wkt

    @property
    def flip_lat(self) -> bool:
        """Whether rows are reversed on read: latitude (or projected y) ascending in the store, or
        a curvilinear grid whose first row lies south of its last (rows come north to south)."""
        info = self.info
        if info.grid_kind == "curvilinear":
            assert info.grid is not None and info.grid.lat2d is not None
            lat2d = info.grid.lat2d
            return lat2d.shape[0] > 1 and bool(np.nanmean(lat2d[0]) < np.nanmean(lat2d[-1]))
        lat = info.lat
        return len(lat) > 1 and bool(lat[1] > lat[0])

    @property
    def flip_lon(self) -> bool:
        """Whether columns are reversed on read (longitude or projected x descending in the store)."""
        info = self.info
        if info.grid_kind == "curvilinear":
            return False
        lon = info.lon
        return len(lon) > 1 and bool(lon[1] < lon[0])

    def _oriented(self, field: np.ndarray) -> np.ndarray:
        field = field[::-1] if self.flip_lat else field
        return (field[:, ::-1] if self.flip_lon else field).copy()

    @property
    def lat(self) -> np.ndarray:
        """Latitudes in degrees, north to south: ``(H,)`` on a lat-lon grid, else ``(H, W)``."""
        grid = self.info.grid
        if grid is not None and grid.lat2d is not None and grid.kind != "latlon":
            return self._oriented(grid.lat2d)
        lat: np.ndarray = self.info.lat
        return lat[::-1].copy() if self.flip_lat else lat.copy()

    @property
    def lon(self) -> np.ndarray:
        """Longitudes in degrees: ``(W,)`` ascending on a lat-lon grid, in the store's convention
        (0..360 or -180..180), else ``(H, W)``."""
        grid = self.info.grid
        if grid is not None and grid.lon2d is not None and grid.kind != "latlon":
            return self._oriented(grid.lon2d)
        lon: np.ndarray = self.info.lon
        return lon[::-1].copy() if self.flip_lon else lon.copy()

    @property
    def y(self) -> np.ndarray:
        """Row coordinate ``(H,)`` in output order (projected y, latitude, or positions)."""
        y: np.ndarray = self.info.lat
        return y[::-1].copy() if self.flip_lat else y.copy()

    @property
    def x(self) -> np.ndarray:
        """Column coordinate ``(W,)`` in output order (projected x, longitude, or positions)."""
        x: np.ndarray = self.info.lon
        return x[::-1].copy() if self.flip_lon else x.copy()

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return len(self.info.lat), len(self.info.lon)

    @property
    def area_weights(self) -> np.ndarray:
        """Cell-area weights normalised to mean 1, in output order: ``cos(lat)`` ``(H,)`` on a lat-lon
        grid; ``(H, W)`` true cell areas on a projected grid (plane area over the projection's areal
        scale factor) or a curvilinear one (spherical areas from the 2-D latitude/longitude)."""
        kind = self.grid_kind
        weights: np.ndarray
        if kind == "projected":
            assert self.crs_wkt is not None
            weights = projected_area_weights(self.crs_wkt, self.x, self.y, self.lat, self.lon)
        elif kind == "curvilinear":
            weights = curvilinear_area_weights(self.lat, self.lon)
        else:
            weights = latitude_area_weights(self.lat)
        return weights

    @property
    def grid_spacing_km(self) -> float:
        """The distance between neighbouring cells at the grid's centre, in km (along a row; great
        circle from the latitudes/longitudes, so it holds on every kind of grid)."""
        h, w = self.grid_shape
        lat, lon = self.lat, self.lon
        i, j = h // 2, min(w // 2, w - 2) if w > 1 else 0
        if w < 2:
            return float("nan")
        if lat.ndim == 1:
            la1 = la2 = float(lat[i])
            lo1, lo2 = float(lon[j]), float(lon[j + 1])
        else:
            la1, la2, lo1, lo2 = float(lat[i, j]), float(lat[i, j + 1]), float(lon[i, j]), float(lon[i, j + 1])
        p1, p2, dl = np.deg2rad(la1), np.deg2rad(la2), np.deg2rad(lo2 - lo1)
        cos_angle = np.sin(p1) * np.sin(p2) + np.cos(p1) * np.cos(p2) * np.cos(dl)
        return float(6371.0088 * np.arccos(np.clip(cos_angle, -1.0, 1.0)))

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
                f"time step ({freq_alias(native)}). Fix: use a multiple, e.g. '{freq_alias(native)}' or "
                f"'{freq_alias(native * 6)}'"
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
                if raw_name in LSM_NAMES:
                    names.append("land_sea_mask")
                else:
                    std = field.std()
                    field = (field - field.mean()) / (std if std > 0 else 1.0)
                    names.append("orography")
                fields.append(field)
            lat2 = self.lat if self.lat.ndim == 2 else self.lat[:, None]
            lon2 = self.lon if self.lon.ndim == 2 else self.lon[None, :]
            lat = np.broadcast_to(np.deg2rad(lat2), (h, w))
            lon = np.broadcast_to(np.deg2rad(lon2), (h, w))
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
        key: str = stats_key(times[0], times[self._train_stop() - 1], self.time_step, member)
        t = self.value_transform
        return key if t is None else f"{key};transform={t.key}"

    def prepare_data(self) -> None:
        """Compute and cache the statistics once (Lightning calls this on one process only)."""
        self._load_stats()

    def _load_stats(self) -> dict[str, np.ndarray]:
        if self._stats is None:
            info = self._load_info()
            assert self._plans is not None
            self._stats, self._stats_where = load_statistics(
                info,
                self._plans,
                self.variables,
                self.stats_location,
                self._stats_key(),
                mode=self.stats_mode,
                explicit_path=self.stats_path is not None,
                train_stop=self._train_stop(),
                lag=self.stride,
                member=self.member,
                transform=self.value_transform,
            )
        return self._stats

    def scaler_state(self) -> dict[str, Any]:
        """The train-split normalisation of every channel (``scaler.json`` of a run): per-channel
        ``mean``, ``std`` and ``tendency_std``, keyed by channel name."""
        stats = self._load_stats()
        return {
            "variables": list(self.variables),
            **{k: [float(v) for v in np.asarray(stats[k]).reshape(-1)] for k in ("mean", "std", "tendency_std")},
        }

    def load_scaler_state(self, state: dict[str, Any]) -> None:
        """Normalise with the statistics a run kept (:meth:`scaler_state`, its ``scaler.json``)
        instead of the store's own; the channels must be this datamodule's, in order."""
        if list(state["variables"]) != self.variables:
            raise DataError(
                f"the saved scaler is for channels {state['variables']}, but {self.path} gives {self.variables}: "
                "select the same data.variables and data.levels as the run that saved it"
            )
        self._stats = {k: np.asarray(state[k], dtype=np.float64) for k in ("mean", "std", "tendency_std")}

    @property
    def stats(self) -> dict[str, np.ndarray]:
        """Per-channel ``mean``, ``std`` and ``tendency_std`` (of ``state(t+time_step) - state(t)``), ``(C,)``."""
        return dict(self._load_stats())

    @property
    def tendency_scale(self) -> np.ndarray:
        """``tendency_std / std`` per channel: a normalised tendency of 1 moves the normalised state this much."""
        s = self._load_stats()
        return np.asarray(s["tendency_std"] / s["std"])

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
            out: np.ndarray = fields[-1]  # (C, H, W), the train time mean
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
            reader = StoreReader(info, plans, self.member, in_memory=False, transform=self.value_transform)
            try:
                parts = []
                for plan in plans:
                    arr = reader.lazy(ds[plan.name], plan).isel({info.time_dim: slice(0, stop)}).data
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
        return StoreReader(info, self._plans, self.member, in_memory, transform=self.value_transform)

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
                patch=self._patch_shape() if name == "train" else None,
                seed=self.shuffle_seed,
                fill=self._fill(stats),
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
                    freq_alias(self.time_step),
                )
        self._datasets = datasets

    def _fill(self, stats: dict[str, np.ndarray]) -> np.ndarray | None:
        """What a missing value becomes in a sample: the dry dBR value under ``transform=dbr`` (the
        radar saw nothing there, and the channel mean would be light rain), else None (the mean, 0)."""
        t = self.value_transform
        if t is None:
            return None
        return np.asarray((t.floor - stats["mean"]) / stats["std"], dtype=np.float32)

    def _patch_shape(self) -> tuple[int, int] | None:
        if self.patch is None:
            return None
        h, w = self.grid_shape
        ph, pw = self.patch
        if ph > h or pw > w:
            # a pipeline's default window on a smaller radar: along that side the window is the grid
            log.info(
                "data.patch %d x %d exceeds the %d x %d grid of %s: windows of %d x %d",
                ph,
                pw,
                h,
                w,
                self.path,
                min(ph, h),
                min(pw, w),
            )
        return min(ph, h), min(pw, w)

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
        loader: DataLoader = GriddedLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate_gridded,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
            **workers,
        )
        return loader

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
            "lat": np.asarray(self.lat, dtype=np.float64).tolist(),
            "lon": np.asarray(self.lon, dtype=np.float64).tolist(),
            "time_step_hours": self.time_step_hours,
            "static_names": self.static_names,
            "forcing_names": self.forcing_names,
            "n_input": self.n_input,
            "transform": self.transform_tag,
        }

    def check_signature(self, signature: dict[str, Any], source: str = "the checkpoint") -> None:
        """Raise :class:`DataError` when this data does not match what a model was trained on.

        Args:
            signature: A :meth:`data_signature` stored with the model.
            source: How messages name where the signature came from.
        """
        mine = self.data_signature()
        problems = []
        if signature.get("transform", "none") != mine["transform"]:
            problems.append(
                f"transform: {source} was trained on values transformed as {signature.get('transform', 'none')!r}, "
                f"the data config gives {mine['transform']!r} (data.transform / data.rain_threshold)"
            )
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
        """What the model and task follow (the config layer fills builder parameters of these names).

        ``grid_kind`` is ``"latlon"``, ``"projected"`` or ``"curvilinear"``; ``lat``/``lon`` are
        ``(H,)``/``(W,)`` lists on a lat-lon grid and ``(H, W)`` nested lists otherwise, as is
        ``area_weights`` (``(H,)`` cos-latitude, else ``(H, W)`` cell areas); ``grid_crs`` is the
        projection's WKT (None unless projected); ``state_mean``/``state_std`` are the normalisation
        per channel and ``value_transform`` the transform of the values (``"none"`` or ``"dbr@0.1"``).
        """
        return {
            "grid_kind": self.grid_kind,
            "grid_crs": self.crs_wkt,
            "lat": np.asarray(self.lat, dtype=np.float64).tolist(),
            "lon": np.asarray(self.lon, dtype=np.float64).tolist(),
            "n_channels": int(self.n_channels),
            "n_forcings": int(self.n_forcings),
            "n_static": int(self.n_static),
            "n_input": int(self.n_input),
            "variables": list(self.variables),
            "tendency_scale": [float(v) for v in np.asarray(self.tendency_scale).reshape(-1)],
            "area_weights": np.asarray(self.area_weights, dtype=np.float64).tolist(),
            "time_step_hours": float(self.time_step_hours),
            "grid_spacing_km": self.grid_spacing_km,
            "state_mean": [float(v) for v in np.asarray(self.stats["mean"]).reshape(-1)],
            "state_std": [float(v) for v in np.asarray(self.stats["std"]).reshape(-1)],
            "value_transform": self.transform_tag,
        }

    def describe(self) -> str:
        """One line for logs and tables: store, channels, grid, step, samples per split."""
        name = Path(self.path).name
        if self._info is None:
            return f"{name} ({self.split} split)"
        h, w = self.grid_shape
        lat, lon = self.lat, self.lon
        chans = ", ".join(self.variables[:6]) + (" ..." if self.n_channels > 6 else "")
        where = (
            f"lat {lat[0]:g}..{lat[-1]:g} lon {lon[0]:g}..{lon[-1]:g}"
            if lat.ndim == 1
            else f"{self.grid_kind} grid, lat {np.nanmin(lat):.4g}..{np.nanmax(lat):.4g} "
            f"lon {np.nanmin(lon):.4g}..{np.nanmax(lon):.4g}"
        )
        text = (
            f"{name} ({self.kind}; {self.n_channels} channels [{chans}] on {h}x{w} "
            f"{where}; step {freq_alias(self.time_step)}; "
            f"n_input {self.n_input}, n_lead {self.n_lead}; {self.n_forcings} forcings, "
            f"{self.n_static} static"
        )
        if self._datasets is not None:
            n = {k: len(v) for k, v in self._datasets.items()}
            text += f"; samples train {n['train']:,} / val {n['val']:,} / test {n['test']:,}"
        if self._stats_where is not None:
            text += f"; stats in {self._stats_where}"
        return text + ")"


DATAMODULES.register("gridded")(GriddedDataModule)
