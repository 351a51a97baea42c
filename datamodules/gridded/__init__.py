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

Grids may be regular lat-lon, projected ``y``/``x`` with a CRS, or curvilinear with 2-D latitude and
longitude (:mod:`.grids`); ``facts()["grid_kind"]`` says which, and ``area_weights`` follow the grid.

Modules: :mod:`.store` (opening, layout, time axis, channels), :mod:`.grids` (grid kinds, CRS, area
weights), :mod:`.radar` (radar frames through pysteps), :mod:`.reader` (block reads),
:mod:`.features` (forcings, static fields), :mod:`.loader` (batches, buffers, DataLoader),
:mod:`.stats` (statistics and their cache), :mod:`.datamodule`, :mod:`.prepare`.
"""

from sciadapt.datamodules.gridded.datamodule import GriddedDataModule
from sciadapt.datamodules.gridded.features import FORCING_NAMES, latitude_area_weights, time_forcings
from sciadapt.datamodules.gridded.grids import Grid, curvilinear_area_weights, detect_grid, projected_area_weights
from sciadapt.datamodules.gridded.loader import GriddedDataset, GriddedLoader, collate_gridded, compact_to_device
from sciadapt.datamodules.gridded.prepare import prepare_store
from sciadapt.datamodules.gridded.reader import StoreReader
from sciadapt.datamodules.gridded.stats import (
    STATS_ATTR,
    STATS_FORMAT,
    StatsLocation,
    compute_statistics,
    default_stats_location,
    is_writable,
    stats_key,
)
from sciadapt.datamodules.gridded.store import (
    StoreInfo,
    VarPlan,
    check_regular_times,
    inspect_store,
    open_xarray,
    select_channels,
    store_kind,
)
from sciadapt.datamodules.sampling import ShardedEpochSampler, apply_resume, shard_indices

__all__ = [
    "FORCING_NAMES",
    "STATS_ATTR",
    "STATS_FORMAT",
    "GriddedDataModule",
    "GriddedDataset",
    "GriddedLoader",
    "Grid",
    "ShardedEpochSampler",
    "StatsLocation",
    "StoreInfo",
    "StoreReader",
    "VarPlan",
    "apply_resume",
    "check_regular_times",
    "collate_gridded",
    "compact_to_device",
    "compute_statistics",
    "curvilinear_area_weights",
    "default_stats_location",
    "detect_grid",
    "inspect_store",
    "is_writable",
    "latitude_area_weights",
    "open_xarray",
    "prepare_store",
    "projected_area_weights",
    "select_channels",
    "shard_indices",
    "stats_key",
    "store_kind",
    "time_forcings",
]
