"""Raster scenes (GeoTIFF and anything else GDAL reads) and their masks, cut into chips for dense tasks.

Reading
    Files are read with rasterio *windowed* reads, one chip at a time, so a scene never has to fit
    in memory. NumPy ``.npy`` arrays shaped ``(T, H, W, C)``, ``(H, W, C)`` or ``(H, W)`` (the way
    eo-learn stores EOPatch features) are read through a memory map; a ``bbox.geojson`` and a
    ``timestamps.json`` next to them give CRS, bounds and acquisition dates. A torchgeo
    ``RasterDataset`` subclass can be named (``torchgeo: NAIP``): it finds the files under
    ``images`` with its own filename pattern and supplies band names and dates from file names;
    the chips are then read by this module, in each file's native grid.

Scenes and frames
    A scene is ``frames`` time steps on one pixel grid plus (optionally) one mask. With
    ``frame_layout="files"`` consecutive ``images`` form a scene (``frames=3``: files 0-2 are scene
    0, files 3-5 scene 1, each group in time order); a ``(T, H, W, C)`` array counts as T files.
    With ``frame_layout="bands"`` each GeoTIFF holds ``frames x bands`` bands, frame-major (band
    ``b`` of frame ``t`` is band ``t * n + b`` of the file, as HLS multi-temporal stacks are
    written). Every frame and the mask must share CRS, transform and shape (checked).

Splits
    ``split="x"`` cuts every scene into train/val/test column bands by ``split_fractions``, left
    to right ("train on the left half, test on the right": ``[0.5, 0.0, 0.5]``); ``"y"`` does the
    same top to bottom; ``"boxes"`` takes ``split_boxes`` (fractional ``[top, left, bottom,
    right]`` boxes per split, applied to every scene); ``"scenes"`` gives whole scenes to splits by
    index (``split_scenes``). Chips never cross a split border, so no pixel is seen by two splits.

Sampling
    Train chips are drawn uniformly inside the train regions (``sampler="random"``,
    ``chips_per_epoch`` per epoch) or laid on a grid (``"grid"``, step ``stride``). Validation and
    test chips lie on a grid with step ``stride`` (default: ``chip_size``); the last chip of a row
    or column is moved back to end at the region edge, so every pixel is covered. Chip positions
    and augmentations are a function of (seed, epoch, index) only: workers and resumed runs see
    the same chips.

A sample is ``{"x": float32 (C, T, H, W) normalised, "y": int64 (H, W) class labels with
ignore_index on nodata (segmentation) or float32 (H, W) targets (regression), "mask": float32
(H, W) 1 valid / 0 nodata, "meta": {"window": int64 (4,) [row_off, col_off, h, w], "scene": int}}``
plus ``"temporal_coords"`` float32 (T, 2) (year, day of year) when every frame has an acquisition
date and ``"location_coords"`` float32 (2,) (lat, lon of the chip centre) when every scene has a
CRS. ``y`` is absent when no masks are given. Batched, ``x`` is ``B C T H W`` (Prithvi's layout).

Modules: :mod:`.readers` (windowed file reads), :mod:`.scenes` (files -> scenes, grid checks),
:mod:`.torchgeo_files` (the torchgeo adapter), :mod:`.chips` (samples, chip datasets, sampler),
:mod:`.stats` (normalisation statistics, label counts), :mod:`.checks` (settings that depend on
each other) and :mod:`.datamodule` (the registered ``raster`` datamodule).
"""

from sciadapt.datamodules.raster.chips import (
    ChipDataset,
    ChipSpec,
    EpochChipSampler,
    grid_starts,
    make_sample,
    map_labels,
)
from sciadapt.datamodules.raster.datamodule import RasterDataModule
from sciadapt.datamodules.raster.readers import DATE_TAGS, RasterReader, close_rasters, open_raster
from sciadapt.datamodules.raster.scenes import (
    Frame,
    Scene,
    build_scenes,
    check_same_grid,
    expand_paths,
    location_of,
    read_labels,
    read_window,
    temporal_coords_of,
)

__all__ = [
    "DATE_TAGS",
    "ChipDataset",
    "ChipSpec",
    "EpochChipSampler",
    "Frame",
    "RasterDataModule",
    "RasterReader",
    "Scene",
    "build_scenes",
    "check_same_grid",
    "close_rasters",
    "expand_paths",
    "grid_starts",
    "location_of",
    "make_sample",
    "map_labels",
    "open_raster",
    "read_labels",
    "read_window",
    "temporal_coords_of",
]
