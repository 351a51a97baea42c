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
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import math
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import rasterio
import rasterio.errors
import torch
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine, array_bounds, from_bounds
from rasterio.windows import Window
from torch.utils.data import DataLoader, Dataset

from sciadapt.datamodules.timeseries import resolve_path
from sciadapt.errors import ConfigError, DataError
from sciadapt.registry import DATAMODULES, suggest
from sciadapt.datamodules.sampling import EpochShuffleSampler, apply_resume

TASKS = ("segmentation", "regression")
SAMPLERS = ("random", "grid")
SPLITS = ("x", "y", "boxes", "scenes")
NORMALISE = ("auto", "config", "compute", "none")
FRAME_LAYOUTS = ("files", "bands")
SPLIT_NAMES = ("train", "val", "test")

#: GeoTIFF tags read as the acquisition date of a file (first one present wins).
DATE_TAGS = ("ACQUISITION_DATE", "DATE_ACQUIRED", "acquisition_date", "date")
_DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
_STATS_MAX_PIXELS = 1 << 20  # per train region; larger regions are read decimated for mean/std
_SCAN_ROWS = 1024  # label rows per read while counting classes
_MAX_OPEN = 64  # open files kept per process
_GLOB_CHARS = "*?["


# ---------------------------------------------------------------------------------------- readers
def _parse_date(value: str) -> dt.date | None:
    """An ISO date/datetime or a TIFF ``YYYY:MM:DD HH:MM:SS`` stamp; None when unparseable."""
    text = value.strip()
    if len(text) >= 10 and text[4] == ":" and text[7] == ":":
        text = f"{text[:4]}-{text[5:7]}-{text[8:]}"
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError:
        try:
            return dt.datetime.strptime(text[:8], "%Y%m%d").date()
        except ValueError:
            return None


class RasterReader:
    """One open raster: windowed reads plus the metadata the alignment checks need.

    Attributes:
        path: The file.
        height: Rows.
        width: Columns.
        count: Bands per time step.
        n_times: Time steps stored in the file (T of a ``(T, H, W, C)`` array; 1 for GeoTIFF).
        crs: Coordinate reference system, None when the file has none.
        transform: Pixel-to-CRS affine transform (identity without georeferencing).
        descriptions: Band names stored in the file (None where a band has none).
        nodata: The file's nodata value, or None.
        dates: Acquisition date per time step (None where unknown).
    """

    path: str
    height: int
    width: int
    count: int
    n_times: int
    crs: CRS | None
    transform: Affine
    descriptions: list[str | None]
    nodata: float | None
    dates: list[dt.date | None]

    def read(self, indexes: Sequence[int], row: int, col: int, height: int, width: int, time: int = 0) -> np.ndarray:
        """Bands ``indexes`` (0-based) of time step ``time`` in a window, native dtype, ``(k, h, w)``."""
        raise NotImplementedError

    def read_decimated(
        self,
        indexes: Sequence[int],
        row: int,
        col: int,
        height: int,
        width: int,
        out_shape: tuple[int, int],
        time: int = 0,
    ) -> np.ndarray:
        """Like :meth:`read` but nearest-neighbour subsampled to ``out_shape`` (for statistics)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""


class _GdalReader(RasterReader):
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with warnings.catch_warnings():
                # A file without georeferencing is legal here (no location_coords, no CRS checks).
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                self._src = rasterio.open(path)
        except rasterio.errors.RasterioIOError as err:
            raise DataError(
                f"cannot open raster {path}: {err}. Fix: check that it is a complete GeoTIFF "
                f"(`gdalinfo {path}`), re-create or re-download it, or remove it from the config"
            ) from err
        src = self._src
        self.height, self.width, self.count, self.n_times = src.height, src.width, src.count, 1
        self.crs = src.crs
        self.transform = src.transform
        self.descriptions = list(src.descriptions)
        self.nodata = src.nodata
        tags = src.tags()
        stamp = next((tags[k] for k in DATE_TAGS if k in tags), None)
        self.dates = [_parse_date(stamp) if stamp else None]

    def _fail(self, err: Exception, row: int, col: int, height: int, width: int) -> DataError:
        return DataError(
            f"cannot read rows {row}..{row + height}, columns {col}..{col + width} of {self.path}: {err}. "
            "Fix: the file is corrupt or truncated; re-create it (`gdalinfo -checksum` finds bad blocks)"
        )

    def read(self, indexes: Sequence[int], row: int, col: int, height: int, width: int, time: int = 0) -> np.ndarray:
        try:
            return self._src.read([i + 1 for i in indexes], window=Window(col, row, width, height))
        except (rasterio.errors.RasterioError, OSError) as err:
            raise self._fail(err, row, col, height, width) from err

    def read_decimated(
        self,
        indexes: Sequence[int],
        row: int,
        col: int,
        height: int,
        width: int,
        out_shape: tuple[int, int],
        time: int = 0,
    ) -> np.ndarray:
        try:
            return self._src.read(
                [i + 1 for i in indexes],
                window=Window(col, row, width, height),
                out_shape=(len(indexes), *out_shape),
                resampling=Resampling.nearest,
            )
        except (rasterio.errors.RasterioError, OSError) as err:
            raise self._fail(err, row, col, height, width) from err

    def close(self) -> None:
        self._src.close()


class _NpyReader(RasterReader):
    """An eo-learn style feature array, memory-mapped; georeferenced by a sibling ``bbox.geojson``."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as err:
            raise DataError(
                f"cannot read array {path}: {err}. Fix: check that it is a complete .npy file (np.load) "
                "or remove it from the config"
            ) from err
        if arr.ndim == 2:
            arr = arr[None, :, :, None]
        elif arr.ndim == 3:
            arr = arr[None]
        elif arr.ndim != 4:
            raise DataError(
                f"array {path} has shape {arr.shape}; expected (T, H, W, C), (H, W, C) or (H, W) as eo-learn "
                "stores features. Fix: reshape it or convert it to GeoTIFF"
            )
        self._arr = arr  # (T, H, W, C)
        self.n_times, self.height, self.width, self.count = (int(s) for s in arr.shape)
        self.descriptions = [None] * self.count
        self.nodata = None
        self.crs, self.transform = self._georef(Path(path).parent)
        self.dates = self._dates(Path(path).parent)

    def _georef(self, folder: Path) -> tuple[CRS | None, Affine]:
        box = folder / "bbox.geojson"
        if not box.is_file():
            return None, Affine.identity()
        try:
            geo = json.loads(box.read_text())
            crs = CRS.from_user_input(geo["crs"]["properties"]["name"])
            xs = [p[0] for ring in geo["coordinates"] for p in ring]
            ys = [p[1] for ring in geo["coordinates"] for p in ring]
        except (ValueError, KeyError, TypeError, IndexError, rasterio.errors.CRSError) as err:
            raise DataError(
                f"{box}: cannot read the patch bounds ({type(err).__name__}: {err}); expected a GeoJSON polygon "
                "with a named crs as eo-learn writes it. Fix: repair or delete the file (without it the patch "
                "has no CRS)"
            ) from err
        return crs, from_bounds(min(xs), min(ys), max(xs), max(ys), self.width, self.height)

    def _dates(self, folder: Path) -> list[dt.date | None]:
        stamps = folder / "timestamps.json"
        if stamps.is_file():
            try:
                values = json.loads(stamps.read_text())
            except ValueError:
                values = None
            # The file lists the dates of the patch's time-dependent features; only an array with
            # exactly that many time steps is dated by it (eo-learn's REFERENCE_SCENES are not).
            if isinstance(values, list) and len(values) == self.n_times and self.n_times > 1:
                return [_parse_date(str(v)) for v in values]
        return [None] * self.n_times

    def read(self, indexes: Sequence[int], row: int, col: int, height: int, width: int, time: int = 0) -> np.ndarray:
        block = self._arr[time, row : row + height, col : col + width][..., list(indexes)]  # (h, w, k)
        return np.ascontiguousarray(np.moveaxis(block, -1, 0))

    def read_decimated(
        self,
        indexes: Sequence[int],
        row: int,
        col: int,
        height: int,
        width: int,
        out_shape: tuple[int, int],
        time: int = 0,
    ) -> np.ndarray:
        rows = np.linspace(row, row + height - 1, out_shape[0]).round().astype(int)
        cols = np.linspace(col, col + width - 1, out_shape[1]).round().astype(int)
        block = self._arr[time][np.ix_(rows, cols, np.asarray(indexes, np.intp))]
        return np.ascontiguousarray(np.moveaxis(block, -1, 0))


_OPEN: OrderedDict[tuple[int, str], RasterReader] = OrderedDict()


def open_raster(path: str) -> RasterReader:
    """The reader of ``path``, opened once per process (a small LRU of open files).

    Keyed by process id too: rasterio handles must not cross a fork into DataLoader workers.
    """
    key = (os.getpid(), path)
    reader = _OPEN.get(key)
    if reader is not None:
        _OPEN.move_to_end(key)
        return reader
    if not os.path.exists(path):
        raise DataError(f"raster file {path} does not exist. Fix: check data.images / data.masks")
    reader = _NpyReader(path) if path.lower().endswith(".npy") else _GdalReader(path)
    _OPEN[key] = reader
    while len(_OPEN) > _MAX_OPEN:
        _, old = _OPEN.popitem(last=False)
        old.close()
    return reader


def close_rasters() -> None:
    """Close every file this process opened (tests call it before deleting their folders)."""
    while _OPEN:
        _, reader = _OPEN.popitem()
        reader.close()


# ---------------------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class Frame:
    """One time step of a scene: which bands of which file (and which time step of an array)."""

    path: str
    indexes: tuple[int, ...]  # 0-based band indexes of the selected bands, in the order of `bands`
    time: int = 0
    date: dt.date | None = None
    nodata: float | None = None


@dataclass(frozen=True)
class Scene:
    """Frames on one pixel grid plus an optional mask file (picklable: paths, not handles)."""

    frames: tuple[Frame, ...]
    mask: str | None
    height: int
    width: int
    crs: str | None  # WKT
    transform: tuple[float, ...]  # affine coefficients a, b, c, d, e, f
    mask_nodata: float | None = None

    @property
    def name(self) -> str:
        """The first frame's file name (for messages)."""
        return Path(self.frames[0].path).name

    @property
    def dated(self) -> bool:
        """Whether every frame has an acquisition date."""
        return all(f.date is not None for f in self.frames)


def _crs_name(crs: CRS | None) -> str:
    if crs is None:
        return "none"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()[:60]


def _warp_hint(ref: RasterReader, other: RasterReader) -> str:
    west, south, east, north = array_bounds(ref.height, ref.width, ref.transform)
    crs = _crs_name(ref.crs)
    return (
        f"resample it onto the image grid, e.g. `gdalwarp -t_srs {crs} -te {west:.10g} {south:.10g} {east:.10g} "
        f"{north:.10g} -ts {ref.width} {ref.height} -r near {other.path} aligned.tif`"
    )


def check_same_grid(ref: RasterReader, other: RasterReader, role: str) -> None:
    """Raise :class:`DataError` unless ``other`` covers exactly the pixel grid of ``ref``.

    Transforms may differ by float noise (Sen1Floods11 labels differ in the 15th digit): the far
    corner of the grid must land within 1 % of a pixel and the pixel sizes agree to 1e-6.
    """
    if (other.height, other.width) != (ref.height, ref.width):
        raise DataError(
            f"{role} {other.path} is {other.height} x {other.width} px but image {ref.path} is "
            f"{ref.height} x {ref.width} px; they must cover the same pixel grid. Fix: {_warp_hint(ref, other)}"
        )
    if (ref.crs is None) != (other.crs is None) or (ref.crs is not None and ref.crs != other.crs):
        raise DataError(
            f"{role} {other.path} has CRS {_crs_name(other.crs)} but image {ref.path} has CRS {_crs_name(ref.crs)}. "
            f"Fix: {_warp_hint(ref, other)}"
        )
    a, b = ref.transform, other.transform
    size = max(abs(a.a), abs(a.e), 1e-300)
    scale_ok = all(abs(p - q) <= 1e-6 * size for p, q in ((a.a, b.a), (a.b, b.b), (a.d, b.d), (a.e, b.e)))
    corners = [(0, 0), (ref.width, ref.height)]
    shift = max(max(abs(x1 - x2), abs(y1 - y2)) for x1, y1, x2, y2 in ((*(a @ c), *(b @ c)) for c in corners))
    if not scale_ok or shift > 0.01 * size:
        raise DataError(
            f"{role} {other.path} is misaligned with image {ref.path}: transform {tuple(b)[:6]} vs "
            f"{tuple(a)[:6]} (corners off by up to {shift / size:.3g} px). Fix: {_warp_hint(ref, other)}"
        )


def _match_band(name: str, names: list[str]) -> int | None:
    if name in names:
        return names.index(name)
    folded = [n.casefold() for n in names]
    return folded.index(name.casefold()) if folded.count(name.casefold()) == 1 else None


def expand_paths(value: list[str] | str, key: str) -> list[str]:
    """Config paths (``~``, ``pkg://`` and glob patterns allowed) as a list of files, in order.

    Raises:
        DataError: If a file is missing, a pattern matches nothing, or a path is a folder.
    """
    out: list[str] = []
    for item in [value] if isinstance(value, str) else list(value):
        path = str(resolve_path(str(item)))
        if any(ch in path for ch in _GLOB_CHARS):
            found = sorted(glob.glob(path))
            if not found:
                raise DataError(f"data.{key}: pattern {item!r} matches no file. Fix: check the folder and pattern")
            out.extend(found)
        elif os.path.isdir(path):
            raise DataError(
                f"data.{key}: {item} is a folder. Fix: list its files or a pattern such as '{item.rstrip('/')}/*.tif'"
                " (or name a torchgeo dataset in data.torchgeo to search it)"
            )
        elif not os.path.exists(path):
            raise DataError(f"data.{key}: file {item} does not exist. Fix: check the path")
        else:
            out.append(path)
    return out


def build_scenes(
    images: list[str],
    masks: list[str] | None = None,
    bands: Sequence[str] | None = None,
    band_names: Sequence[str] | None = None,
    frames: int = 1,
    frame_layout: str = "files",
    nodata: float | None = None,
    dataset_bands: Sequence[str] | None = None,
    dataset_dates: dict[str, dt.date | None] | None = None,
) -> tuple[list[Scene], list[str]]:
    """Group image files into scenes, select bands by name and check that grids line up.

    Args:
        images: Image files in order (see the module docstring for how frames group).
        masks: One mask file per scene, or None.
        bands: Band names to read, in this order; None reads every band.
        band_names: Names of the file's bands in file order (per frame); they take precedence
            over the names stored in the files (so files can be renamed to a model's band names).
        frames: Time steps per scene.
        frame_layout: ``"files"`` or ``"bands"``.
        nodata: Image nodata value overriding the files' own.
        dataset_bands: Band names a torchgeo dataset class declares (used when ``band_names`` is None).
        dataset_dates: Dates a torchgeo dataset parsed from file names, by path.

    Returns:
        The scenes and the names of the selected bands.

    Raises:
        DataError: Missing band, misaligned frames or masks, wrong file counts, unreadable files.
    """
    if not images:
        raise DataError("data.images lists no file. Fix: give at least one image file or pattern")
    readers = [open_raster(p) for p in images]
    groups: list[list[RasterReader]] = []
    i = 0
    while i < len(readers):
        group: list[RasterReader] = []
        steps = 0
        while steps < frames and i < len(readers):
            r = readers[i]
            steps += frames if frame_layout == "bands" and isinstance(r, _GdalReader) else r.n_times
            group.append(r)
            i += 1
        if steps != frames:
            per = ", ".join(f"{Path(r.path).name}: {r.n_times}" for r in group)
            raise DataError(
                f"data.frames={frames} but the files of scene {len(groups)} hold {steps} time step(s) ({per}). "
                f"Fix: give {frames} image file(s) per scene (data.images has {len(images)}), or set data.frames "
                "to the number of time steps per scene"
            )
        groups.append(group)
    if masks is not None and len(masks) != len(groups):
        raise DataError(
            f"data.masks lists {len(masks)} file(s) but data.images makes {len(groups)} scene(s) "
            f"({len(images)} file(s), frames={frames}). Fix: give one mask per scene, in the same order"
        )

    scenes: list[Scene] = []
    selected: list[str] | None = None
    for g, group in enumerate(groups):
        ref = group[0]
        scene_frames: list[Frame] = []
        for r in group:
            if r is not ref:
                check_same_grid(ref, r, "frame")
            per_frame = r.count
            if frame_layout == "bands" and isinstance(r, _GdalReader):
                if r.count % frames:
                    raise DataError(
                        f"{r.path} has {r.count} bands, not a multiple of data.frames={frames} "
                        "(frame_layout=bands stores frames x bands bands, frame-major). Fix: check data.frames "
                        "or use frame_layout=files"
                    )
                per_frame = r.count // frames
            names = _file_band_names(r, per_frame, band_names, dataset_bands)
            idx, chosen = _select(r.path, names, per_frame, bands)
            if selected is None:
                selected = chosen
            elif len(chosen) != len(selected):
                raise DataError(
                    f"{r.path} has {len(chosen)} bands but {images[0]} has {len(selected)}; every frame must give "
                    "the same bands. Fix: set data.bands to the bands to read"
                )
            if frame_layout == "bands" and isinstance(r, _GdalReader):
                for t in range(frames):
                    scene_frames.append(
                        Frame(r.path, tuple(t * per_frame + k for k in idx), 0, None, _nodata(r, nodata))
                    )
            else:
                for t in range(r.n_times):
                    date = r.dates[t]
                    if dataset_dates is not None and dataset_dates.get(r.path) is not None:
                        date = dataset_dates[r.path]
                    scene_frames.append(Frame(r.path, tuple(idx), t, date, _nodata(r, nodata)))
        mask_path, mask_nodata = None, None
        if masks is not None:
            m = open_raster(masks[g])
            check_same_grid(ref, m, "mask")
            if m.n_times != 1:
                raise DataError(f"mask {m.path} has {m.n_times} time steps; a mask is one (H, W) label grid per scene")
            mask_path, mask_nodata = m.path, m.nodata
        scenes.append(
            Scene(
                frames=tuple(scene_frames),
                mask=mask_path,
                height=ref.height,
                width=ref.width,
                crs=ref.crs.to_wkt() if ref.crs is not None else None,
                transform=tuple(ref.transform)[:6],
                mask_nodata=mask_nodata,
            )
        )
    assert selected is not None
    return scenes, selected


def _nodata(r: RasterReader, override: float | None) -> float | None:
    return override if override is not None else r.nodata


def _file_band_names(
    r: RasterReader, per_frame: int, band_names: Sequence[str] | None, dataset_bands: Sequence[str] | None
) -> list[str] | None:
    for source, given in (("data.band_names", band_names), ("the torchgeo dataset's all_bands", dataset_bands)):
        if given:
            if len(given) != per_frame:
                raise DataError(
                    f"{source} names {len(given)} bands but {r.path} has {per_frame} per frame. Fix: list one "
                    "name per band of the file, in file order"
                )
            return list(given)
    desc = r.descriptions[:per_frame]
    return [str(d) for d in desc] if all(desc) else None


def _select(
    path: str, names: list[str] | None, per_frame: int, bands: Sequence[str] | None
) -> tuple[list[int], list[str]]:
    if bands is None:
        return list(range(per_frame)), names or [f"band_{k + 1}" for k in range(per_frame)]
    if names is None:
        raise DataError(
            f"{path} stores no band names, so data.bands {list(bands)} cannot be found in it. Fix: set "
            f"data.band_names to the names of its {per_frame} bands in file order"
        )
    idx = []
    for b in bands:
        k = _match_band(b, names)
        if k is None:
            raise DataError(
                f"{path}: band {b!r} (data.bands) is not in the file.{suggest(b, names)} Its bands: "
                f"{', '.join(names)}. Fix: use one of those names in data.bands, or rename the file's bands "
                "with data.band_names"
            )
        idx.append(k)
    return idx, list(bands)


def read_window(scene: Scene, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The raw (un-normalised) pixels of a window and where they are valid.

    Returns:
        ``x`` float32 ``(C, T, h, w)`` with NaN/nodata replaced by 0, and ``valid`` bool ``(h, w)``:
        False where any selected band of any frame is nodata or NaN.
    """
    stack = []
    valid = np.ones((height, width), bool)
    for f in scene.frames:
        raw = open_raster(f.path).read(f.indexes, row, col, height, width, f.time)
        arr = raw.astype(np.float32)
        bad = np.isnan(arr).any(axis=0)
        if f.nodata is not None and not math.isnan(f.nodata):
            bad |= (raw == np.asarray(f.nodata).astype(raw.dtype)).any(axis=0)
        valid &= ~bad
        stack.append(arr)
    x = np.stack(stack, axis=1)  # (C, T, h, w)
    x[:, :, ~valid] = 0.0
    return x, valid


def read_labels(scene: Scene, row: int, col: int, height: int, width: int) -> np.ndarray:
    """Band 1 of the scene's mask in a window, native dtype ``(h, w)``."""
    assert scene.mask is not None
    return open_raster(scene.mask).read([0], row, col, height, width)[0]


@lru_cache(maxsize=256)
def _crs_from_wkt(wkt: str) -> CRS:
    return CRS.from_wkt(wkt)


def location_of(scene: Scene, row: float, col: float) -> tuple[float, float] | None:
    """(lat, lon) in degrees of pixel position (row, col) of ``scene``; None without a CRS."""
    if scene.crs is None:
        return None
    x, y = Affine(*scene.transform) @ (col, row)
    crs = _crs_from_wkt(scene.crs)
    if crs.is_geographic and crs.to_epsg() == 4326:
        return float(y), float(x)
    from rasterio.warp import transform as warp

    lon, lat = warp(crs, "EPSG:4326", [x], [y])
    return float(lat[0]), float(lon[0])


def temporal_coords_of(scene: Scene) -> np.ndarray:
    """(T, 2) float32 (year, day of year) of a dated scene, the encoding Prithvi-EO TL takes."""
    return np.array([[f.date.year, f.date.timetuple().tm_yday] for f in scene.frames if f.date], np.float32)


def _torchgeo_files(name: str, roots: list[str]) -> tuple[list[str], list[str] | None, dict[str, dt.date | None]]:
    """Files, band names and file-name dates found by the torchgeo ``RasterDataset`` class ``name``."""
    import torchgeo.datasets as tgd

    classes = sorted(
        n for n in dir(tgd) if isinstance(getattr(tgd, n), type) and issubclass(getattr(tgd, n), tgd.RasterDataset)
    )
    cls = getattr(tgd, name, None)
    if name not in classes or cls is None:
        raise ConfigError(
            f"data.torchgeo: {name!r} is not a torchgeo RasterDataset class.{suggest(name, classes)} "
            f"Available: {', '.join(classes)}"
        )
    if cls.separate_files:
        raise ConfigError(
            f"data.torchgeo: {name} stores one file per band (separate_files), which this datamodule does not "
            "read. Fix: stack the bands into one GeoTIFF per scene (`gdal_merge.py -separate`) and list the files "
            "in data.images without data.torchgeo"
        )
    paths = [str(resolve_path(r)) for r in roots]
    regex = re.compile(cls.filename_regex, re.VERBOSE)
    try:
        ds = cls(paths=paths)
    except tgd.DatasetNotFoundError as err:
        raise DataError(
            f"data.torchgeo={name}: no file under {', '.join(paths)} matches its pattern "
            f"{cls.filename_glob!r} / {cls.filename_regex.strip()[:80]!r}. Fix: point data.images at the folder "
            "holding the files"
        ) from err
    index: Any = getattr(ds, "index", None)
    if hasattr(index, "columns") and "filepath" in index.columns:  # torchgeo >= 0.8: a GeoDataFrame
        files = [str(p) for p in index["filepath"]]
    else:  # older releases index an R-tree; the class's regex decides which files count
        files = [str(f) for f in sorted(ds.files) if regex.match(os.path.basename(f))]
    # Dates are parsed here from the class's own filename_regex/date_format, so they do not depend
    # on how a torchgeo release stores time in its index.
    dates: dict[str, dt.date | None] = {}
    for path in files:
        match = regex.match(os.path.basename(path))
        groups = match.groupdict() if match else {}
        stamp = groups.get("date") or groups.get("start")
        try:
            dates[path] = dt.datetime.strptime(stamp, cls.date_format).date() if stamp else None
        except ValueError:
            dates[path] = None
    return files, (list(cls.all_bands) or None), dates


# ------------------------------------------------------------------------------------- datasets
def _augment(arr: np.ndarray, hflip: bool, vflip: bool, k: int) -> np.ndarray:
    """Flip/rotate over the last two axes (H, W): the same op for every band, frame and the mask."""
    if hflip:
        arr = arr[..., ::-1]
    if vflip:
        arr = arr[..., ::-1, :]
    if k:
        arr = np.rot90(arr, k, axes=(-2, -1))
    return np.ascontiguousarray(arr)


def map_labels(raw: np.ndarray, label_map: dict[int, int] | None) -> np.ndarray:
    """Integer labels as int64 with ``label_map`` applied (values not in the map are kept)."""
    out = raw.astype(np.int64)
    if label_map:
        values, inverse = np.unique(out, return_inverse=True)
        mapped = np.array([label_map.get(int(v), int(v)) for v in values], np.int64)
        out = mapped[inverse].reshape(raw.shape)
    return out


@dataclass
class ChipSpec:
    """How a chip becomes a sample: normalisation, labels, coordinates."""

    chip: int
    mean: np.ndarray  # (C,)
    std: np.ndarray  # (C,)
    task: str
    ignore_index: int
    label_map: dict[int, int] | None
    with_time: bool
    with_location: bool


def make_sample(
    scene_i: int, scene: Scene, spec: ChipSpec, row: int, col: int, aug: tuple[bool, bool, int] | None
) -> dict[str, Any]:
    """Read, normalise, label and (optionally) augment one chip; see the module docstring for the layout."""
    c = spec.chip
    raw, valid = read_window(scene, row, col, c, c)
    x = (raw - spec.mean[:, None, None, None]) / spec.std[:, None, None, None]  # (C, T, H, W)
    x[:, :, ~valid] = 0.0
    x = x.astype(np.float32, copy=False)
    y: np.ndarray | None = None
    ok = valid
    if scene.mask is not None:
        lab = read_labels(scene, row, col, c, c)
        bad = ~valid
        nod = scene.mask_nodata
        if nod is not None and not math.isnan(nod):
            bad = bad | (lab == np.asarray(nod).astype(lab.dtype))
        if spec.task == "segmentation":
            if lab.dtype.kind == "f":
                bad = bad | np.isnan(lab)
                lab = np.nan_to_num(lab, nan=spec.ignore_index)
            y = map_labels(lab, spec.label_map)
            y[bad] = spec.ignore_index
            ok = y != spec.ignore_index
        else:
            y = lab.astype(np.float32)
            bad = bad | np.isnan(y)
            y[bad] = 0.0
            ok = ~bad
    mask = ok.astype(np.float32)
    if aug is not None:
        x = _augment(x, *aug)
        mask = _augment(mask, *aug)
        if y is not None:
            y = _augment(y, *aug)
    item: dict[str, Any] = {
        "x": torch.from_numpy(x),
        "mask": torch.from_numpy(mask),
        "meta": {"window": torch.tensor([row, col, c, c], dtype=torch.int64), "scene": scene_i},
    }
    if y is not None:
        item["y"] = torch.from_numpy(y)
    if spec.with_time:
        item["temporal_coords"] = torch.from_numpy(temporal_coords_of(scene))
    if spec.with_location:
        loc = location_of(scene, row + c / 2, col + c / 2)
        assert loc is not None
        item["location_coords"] = torch.tensor(loc, dtype=torch.float32)
    return item


class ChipDataset(Dataset):
    """Chips of one split: fixed grid positions, or uniform random positions inside regions.

    Index ``j`` may exceed ``len(self)``: the train sampler yields ``epoch * len + k``, and the chip
    (position for random sampling, augmentation always) is drawn from ``(seed, j)``. So a chip
    depends only on seed, epoch and index, whichever worker reads it.

    Args:
        scenes: The scenes.
        spec: Normalisation and label settings.
        length: Chips per epoch.
        positions: ``(N, 3)`` int64 ``[scene, row, col]`` of grid chips (grid sampling).
        regions: ``(R, 5)`` int64 ``[scene, row, col, h, w]`` to draw from (random sampling).
        seed: Seed of positions and augmentations.
        augment: Random flips and 90-degree rotations.
    """

    def __init__(
        self,
        scenes: list[Scene],
        spec: ChipSpec,
        length: int,
        positions: np.ndarray | None = None,
        regions: np.ndarray | None = None,
        seed: int = 0,
        augment: bool = False,
    ) -> None:
        self.scenes = scenes
        self.spec = spec
        self.length = length
        self.positions = positions
        self.regions = regions
        self.seed = seed
        self.augment = augment
        if regions is not None and len(regions):
            c = spec.chip
            area = (regions[:, 3] - c + 1) * (regions[:, 4] - c + 1)
            self._cum = np.cumsum(area / area.sum())

    def __len__(self) -> int:
        return self.length

    def window(self, j: int) -> tuple[int, int, int]:
        """``(scene, row, col)`` of chip ``j`` (without reading it)."""
        if self.positions is not None:
            s, r, c = self.positions[j % len(self.positions)]
            return int(s), int(r), int(c)
        assert self.regions is not None
        rng = np.random.default_rng([self.seed, 0, j])
        k = min(int(np.searchsorted(self._cum, rng.random(), side="right")), len(self.regions) - 1)
        s, r0, c0, h, w = (int(v) for v in self.regions[k])
        chip = self.spec.chip
        return s, r0 + int(rng.integers(0, h - chip + 1)), c0 + int(rng.integers(0, w - chip + 1))

    def __getitem__(self, j: int) -> dict[str, Any]:
        s, r, c = self.window(j)
        aug = None
        if self.augment:
            rng = np.random.default_rng([self.seed, 1, j])
            aug = (bool(rng.integers(2)), bool(rng.integers(2)), int(rng.integers(4)))
        return make_sample(s, self.scenes[s], self.spec, r, c, aug)


class EpochChipSampler(EpochShuffleSampler):
    """The project's per-epoch permutation, offset by ``epoch * n`` so chips differ between epochs."""

    def positions(self, shard: list[int]) -> list[int]:
        base = self.epoch * self.n
        return [base + int(i) for i in shard]


def grid_starts(start: int, length: int, chip: int, stride: int) -> list[int]:
    """Chip offsets covering ``[start, start + length)``; the last one ends at the edge."""
    if length < chip:
        return []
    out = list(range(start, start + length - chip + 1, stride))
    if out[-1] != start + length - chip:
        out.append(start + length - chip)
    return out


# ----------------------------------------------------------------------------------- datamodule
class RasterDataModule(L.LightningDataModule):
    """Chips of raster scenes for segmentation or pixel-wise regression.

    The arguments are those of :func:`build_raster` (the config schema); see its docstring. File
    metadata is read on first use (``bands``, ``describe()``), the label scan and statistics in
    :meth:`setup`, which is idempotent.
    """

    def __init__(
        self,
        images: list[str] | str,
        masks: list[str] | str | None = None,
        bands: list[str] | None = None,
        band_names: list[str] | None = None,
        frames: int = 1,
        frame_layout: str = "files",
        torchgeo: str | None = None,
        task: str = "segmentation",
        n_classes: int | None = None,
        class_names: list[str] | None = None,
        label_map: dict[int, int] | None = None,
        ignore_index: int = -1,
        nodata: float | None = None,
        chip_size: int = 224,
        sampler: str = "random",
        chips_per_epoch: int | None = None,
        stride: int | None = None,
        split: str = "x",
        split_fractions: list[float] | None = None,
        split_boxes: dict[str, list[list[float]]] | None = None,
        split_scenes: dict[str, list[int]] | None = None,
        normalise: str = "auto",
        mean: list[float] | None = None,
        std: list[float] | None = None,
        augment: bool = False,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.images = images
        self.masks = masks
        self.requested_bands = list(bands) if bands is not None else None
        self.band_names = list(band_names) if band_names is not None else None
        self.frames = int(frames)
        self.frame_layout = frame_layout
        self.torchgeo = torchgeo
        self.task = task
        self.requested_n_classes = n_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.label_map = _int_map(label_map) if label_map is not None else None
        self.ignore_index = int(ignore_index)
        self.nodata = nodata
        self.chip_size = int(chip_size)
        self.sampler = sampler
        self.chips_per_epoch = chips_per_epoch
        self.stride = int(stride) if stride is not None else self.chip_size
        self.split = split
        self.split_fractions = list(split_fractions) if split_fractions is not None else list(_DEFAULT_FRACTIONS)
        self.split_boxes = split_boxes
        self.split_scenes = split_scenes
        self.normalise = normalise
        self.config_mean = list(mean) if mean is not None else None
        self.config_std = list(std) if std is not None else None
        self.augment = bool(augment)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.shuffle_seed = 0  # set per stage by the stage runner
        # (epoch, batches done) of a run preempted mid-epoch, for the next train sampler
        self.train_resume: tuple[int, int] | None = None
        self._validate(label_map)

        self._scenes: list[Scene] | None = None
        self._bands: list[str] | None = None
        self._mean: np.ndarray | None = None
        self._std: np.ndarray | None = None
        self._n_classes: int | None = None
        self.class_counts: dict[str, dict[int, int]] = {}
        self._positions: dict[str, np.ndarray] | None = None
        self._regions: np.ndarray | None = None

    # ------------------------------------------------------------------ config checks
    def _validate(self, label_map: Any) -> None:
        problems: list[str] = []
        for key, choices, value in (
            ("task", TASKS, self.task),
            ("sampler", SAMPLERS, self.sampler),
            ("split", SPLITS, self.split),
            ("normalise", NORMALISE, self.normalise),
            ("frame_layout", FRAME_LAYOUTS, self.frame_layout),
        ):
            if value not in choices:
                problems.append(
                    f"data.{key}: unknown value {value!r}.{suggest(value, choices)} Choose one of: {', '.join(choices)}"
                )
        for key, minimum in (
            ("chip_size", 1),
            ("frames", 1),
            ("batch_size", 1),
            ("eval_batch_size", 1),
            ("num_workers", 0),
            ("stride", 1),
        ):
            if getattr(self, key) < minimum:
                problems.append(f"data.{key}: must be >= {minimum}, got {getattr(self, key)}")
        if self.chips_per_epoch is not None and self.chips_per_epoch < 1:
            problems.append(
                f"data.chips_per_epoch: must be >= 1 (or null: about one chip per chip area), got {self.chips_per_epoch}"
            )
        if self.requested_bands is not None:
            dupes = sorted({b for b in self.requested_bands if self.requested_bands.count(b) > 1})
            if dupes:
                problems.append(f"data.bands: lists {', '.join(map(repr, dupes))} more than once")
            if not self.requested_bands:
                problems.append("data.bands: is empty; list the bands to read or leave it null (all bands)")
        mean, std = self.config_mean, self.config_std
        if (mean is None) != (std is None):
            problems.append("data.mean and data.std: give both (per-band statistics) or neither")
        elif mean is not None and std is not None:
            if len(mean) != len(std):
                problems.append(f"data.mean has {len(mean)} values but data.std has {len(std)}; give one per band")
            if self.requested_bands is not None and len(mean) != len(self.requested_bands):
                problems.append(
                    f"data.mean/std: {len(mean)} values for {len(self.requested_bands)} data.bands; give one per band"
                )
            if any(s <= 0 for s in std):
                problems.append(f"data.std: every value must be > 0, got {std}")
            if self.normalise in ("compute", "none"):
                problems.append(
                    f"data.mean/std are given but data.normalise={self.normalise} would ignore them. Fix: remove them "
                    "or set data.normalise=config"
                )
        if self.normalise == "config" and mean is None:
            problems.append("data.normalise=config needs data.mean and data.std (one value per band)")
        if self.split in ("x", "y"):
            f = self.split_fractions
            if len(f) != 3 or any(not isinstance(v, int | float) or v < 0 for v in f):
                problems.append(f"data.split_fractions: expected three numbers >= 0 [train, val, test], got {f}")
            elif not math.isclose(sum(f), 1.0, abs_tol=1e-6) or f[0] <= 0:
                problems.append(f"data.split_fractions: must sum to 1 with train > 0, got {f}")
        if self.split == "boxes":
            problems.extend(_check_boxes(self.split_boxes))
        if self.split == "scenes":
            problems.extend(_check_scene_split(self.split_scenes))
        if self.task == "regression":
            given: tuple[tuple[str, Any], ...] = (
                ("label_map", label_map),
                ("n_classes", self.requested_n_classes),
                ("class_names", self.class_names),
            )
            for key, value in given:
                if value is not None:
                    problems.append(f"data.{key}: only for task=segmentation; remove it for task=regression")
        else:
            n = self.requested_n_classes
            if n is not None and n < 1:
                problems.append(f"data.n_classes: must be >= 1, got {n}")
            if n is not None and 0 <= self.ignore_index < n:
                problems.append(
                    f"data.ignore_index={self.ignore_index} is one of the {n} classes; choose a value outside "
                    f"0..{n - 1} (e.g. -1 or 255)"
                )
            if self.class_names is not None and n is not None and len(self.class_names) != n:
                problems.append(f"data.class_names: {len(self.class_names)} names for n_classes={n}")
            if label_map is not None and self.label_map is None:
                problems.append(f"data.label_map: expected a mapping of integer labels, got {label_map!r}")
        if problems:
            raise ConfigError(problems)

    # ------------------------------------------------------------------ metadata
    def _open(self) -> list[Scene]:
        if self._scenes is None:
            dataset_bands, dataset_dates = None, None
            roots = [self.images] if isinstance(self.images, str) else list(self.images)
            if self.torchgeo is not None:
                images, dataset_bands, dataset_dates = _torchgeo_files(self.torchgeo, roots)
            else:
                images = expand_paths(self.images, "images")
            masks = expand_paths(self.masks, "masks") if self.masks is not None else None
            scenes, bands = build_scenes(
                images,
                masks,
                self.requested_bands,
                self.band_names,
                self.frames,
                self.frame_layout,
                self.nodata,
                dataset_bands,
                dataset_dates,
            )
            if self.config_mean is not None and len(self.config_mean) != len(bands):
                raise ConfigError(
                    f"data.mean/std have {len(self.config_mean)} values but {len(bands)} bands are read "
                    f"({', '.join(bands)}); give one value per band"
                )
            for s in scenes:
                if s.height < self.chip_size or s.width < self.chip_size:
                    side = min(s.height, s.width)
                    hint = f"{side // 16 * 16} (a multiple of a ViT's patch size 16)" if side >= 16 else str(side)
                    raise DataError(
                        f"image {s.frames[0].path} is {s.height} x {s.width} px, smaller than one chip "
                        f"(data.chip_size={self.chip_size}). Fix: set data.chip_size to at most {hint}, or drop the file"
                    )
            if self.split == "scenes":
                assert self.split_scenes is not None
                bad = sorted({i for ids in self.split_scenes.values() for i in ids if i >= len(scenes)})
                if bad:
                    raise ConfigError(
                        f"data.split_scenes: scene index(es) {bad} out of range; there are {len(scenes)} scenes (0..{len(scenes) - 1})"
                    )
            self._scenes, self._bands = scenes, bands
        return self._scenes

    @property
    def scenes(self) -> list[Scene]:
        """The scenes, in config order."""
        return list(self._open())

    @property
    def bands(self) -> list[str]:
        """Names of the bands in ``x``, in channel order."""
        self._open()
        assert self._bands is not None
        return list(self._bands)

    @property
    def n_bands(self) -> int:
        """Channels C of ``x``."""
        return len(self.bands)

    @property
    def mean(self) -> list[float]:
        """Per-band mean subtracted from ``x`` (from the config or computed on the train regions)."""
        self.setup()
        assert self._mean is not None
        return [float(v) for v in self._mean]

    @property
    def std(self) -> list[float]:
        """Per-band standard deviation ``x`` is divided by."""
        self.setup()
        assert self._std is not None
        return [float(v) for v in self._std]

    @property
    def n_classes(self) -> int | None:
        """Classes of a segmentation task (config ``n_classes`` or the largest label + 1); None for regression."""
        if self.task != "segmentation":
            return None
        if self.requested_n_classes is not None:
            return int(self.requested_n_classes)
        self.setup()
        return self._n_classes

    @property
    def with_time(self) -> bool:
        """Whether samples carry ``temporal_coords`` (every frame of every scene is dated)."""
        return all(s.dated for s in self._open())

    @property
    def with_location(self) -> bool:
        """Whether samples carry ``location_coords`` (every scene has a CRS)."""
        return all(s.crs is not None for s in self._open())

    def facts(self) -> dict[str, Any]:
        """What the backbone, head and task must agree with (passed to builders by parameter name)."""
        return {
            "bands": self.bands,
            "n_bands": self.n_bands,
            "in_chans": self.n_bands,
            "num_frames": self.frames,
            "img_size": self.chip_size,
            "n_classes": self.n_classes,
            "ignore_index": self.ignore_index,
            # the segmentation task names its per-class scores (iou/<name>) with these
            "class_names": self.class_names,
        }

    def describe(self) -> str:
        """One line for logs and tables: scenes, bands, frames, split, chips per split."""
        scenes = self._open()
        names = ", ".join(s.name for s in scenes[:2]) + (f" +{len(scenes) - 2}" if len(scenes) > 2 else "")
        rule = {
            "x": f"x split {self.split_fractions}",
            "y": f"y split {self.split_fractions}",
            "boxes": "box split",
            "scenes": "scene split",
        }[self.split]
        head = f"{len(scenes)} scene(s) ({names}); {self.n_bands} bands x {self.frames} frame(s); chip {self.chip_size}; {rule}"
        if self._positions is None:
            return head
        n = {k: len(self._dataset(k)) for k in SPLIT_NAMES}
        if self.task == "regression":
            extra = "; regression"
        else:
            extra = f"; {self.n_classes} classes" if self._scenes and self._scenes[0].mask else "; unlabelled"
        return f"{head}; chips train {n['train']:,} ({self.sampler}) / val {n['val']:,} / test {n['test']:,}{extra}"

    # ------------------------------------------------------------------ regions
    def regions(self, split: str) -> list[tuple[int, int, int, int, int]]:
        """``(scene, row, col, h, w)`` of every region of ``split`` (empty regions left out)."""
        out: list[tuple[int, int, int, int, int]] = []
        for i, s in enumerate(self._open()):
            H, W = s.height, s.width
            if self.split in ("x", "y"):
                k = SPLIT_NAMES.index(split)
                f = np.concatenate([[0.0], np.cumsum(self.split_fractions)])
                size = W if self.split == "x" else H
                a, b = round(f[k] * size), round(min(f[k + 1], 1.0) * size)
                box = (0, a, H, b - a) if self.split == "x" else (a, 0, b - a, W)
                boxes = [box]
            elif self.split == "boxes":
                assert self.split_boxes is not None
                boxes = []
                for top, left, bottom, right in self.split_boxes.get(split, []):
                    r0, r1, c0, c1 = round(top * H), round(bottom * H), round(left * W), round(right * W)
                    boxes.append((r0, c0, r1 - r0, c1 - c0))
            else:
                assert self.split_scenes is not None
                boxes = [(0, 0, H, W)] if i in self.split_scenes.get(split, []) else []
            out.extend((i, *b) for b in boxes if b[2] > 0 and b[3] > 0)
        c = self.chip_size
        for si, r, col, h, w in out:
            if h < c or w < c:
                key = {"x": "split_fractions", "y": "split_fractions", "boxes": "split_boxes", "scenes": "split_scenes"}
                raise DataError(
                    f"the {split} region of {self._open()[si].name} (rows {r}..{r + h}, columns {col}..{col + w}) is "
                    f"{h} x {w} px, smaller than one chip (data.chip_size={c}). Fix: lower data.chip_size or enlarge "
                    f"the region (data.{key[self.split]})"
                )
        return out

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Open the scenes, lay out chips, fit the normaliser and count classes; later calls return at once."""
        if self._positions is not None:
            return
        scenes = self._open()
        regions = {k: self.regions(k) for k in SPLIT_NAMES}
        if not regions["train"]:
            raise DataError(f"the train split is empty ({self.split} split). Fix: give it a region or scene")
        positions = {}
        for k in SPLIT_NAMES:
            pos: list[tuple[int, int, int]] = []
            for s, r, c, h, w in regions[k]:
                pos.extend(
                    (s, rr, cc)
                    for rr in grid_starts(r, h, self.chip_size, self.stride)
                    for cc in grid_starts(c, w, self.chip_size, self.stride)
                )
            positions[k] = np.asarray(pos, np.int64).reshape(-1, 3)
        self._regions = np.asarray(regions["train"], np.int64).reshape(-1, 5)
        if self._mean is None:
            if self.config_mean is not None and self.normalise in ("auto", "config"):
                self._mean = np.asarray(self.config_mean, np.float64)
                self._std = np.asarray(self.config_std, np.float64)
            elif self.normalise == "none":
                self._mean, self._std = np.zeros(len(self.bands)), np.ones(len(self.bands))
            else:
                self._mean, self._std = self._compute_stats(scenes, regions["train"])
        if self.task == "segmentation" and scenes[0].mask is not None:
            self._scan_labels(scenes, regions)
        elif self.task == "segmentation":
            self._n_classes = self.requested_n_classes
        self._positions = positions

    def _compute_stats(
        self, scenes: list[Scene], regions: list[tuple[int, int, int, int, int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-band mean/std over valid train pixels of every frame (big regions read decimated)."""
        n = len(self.bands)
        total = np.zeros(n)
        sq = np.zeros(n)
        count = 0
        for s, r0, c0, h, w in regions:
            scene = scenes[s]
            step = max(1, math.ceil(math.sqrt(h * w / _STATS_MAX_PIXELS)))
            strip = 256 * step
            for r in range(r0, r0 + h, strip):
                sh = min(strip, r0 + h - r)
                out_shape = (max(1, math.ceil(sh / step)), max(1, math.ceil(w / step)))
                arrs = []
                valid = np.ones(out_shape, bool)
                for f in scene.frames:
                    reader = open_raster(f.path)
                    if step == 1:
                        raw = reader.read(f.indexes, r, c0, sh, w, f.time)
                    else:
                        raw = reader.read_decimated(f.indexes, r, c0, sh, w, out_shape, f.time)
                    arr = raw.astype(np.float64)
                    bad = np.isnan(arr).any(axis=0)
                    if f.nodata is not None and not math.isnan(f.nodata):
                        bad |= (raw == np.asarray(f.nodata).astype(raw.dtype)).any(axis=0)
                    valid &= ~bad
                    arrs.append(arr)
                for arr in arrs:
                    v = arr[:, valid]  # (C, n_valid)
                    total += v.sum(axis=1)
                    sq += (v * v).sum(axis=1)
                    count += v.shape[1]
        if count == 0:
            raise DataError(
                "every train pixel is nodata, so data.normalise cannot compute band statistics. Fix: check data.nodata "
                "and the train region, or give data.mean and data.std"
            )
        mean = total / count
        std = np.sqrt(np.maximum(sq / count - mean**2, 0.0))
        # A constant band (e.g. an all-zero cirrus band) would divide by zero; it stays unscaled.
        std[std < 1e-12] = 1.0
        return mean, std

    def _scan_labels(self, scenes: list[Scene], regions: dict[str, list[tuple[int, int, int, int, int]]]) -> None:
        """Count label pixels per split (after ``label_map``) and check them against the classes."""
        lut = self.label_map
        counts: dict[str, dict[int, int]] = {}
        where: dict[int, str] = {}
        for k in SPLIT_NAMES:
            acc: dict[int, int] = {}
            for s, r0, c0, h, w in regions[k]:
                scene = scenes[s]
                reader = open_raster(scene.mask or "")
                for r in range(r0, r0 + h, _SCAN_ROWS):
                    block = reader.read([0], r, c0, min(_SCAN_ROWS, r0 + h - r), w)[0]
                    if scene.mask_nodata is not None and not math.isnan(scene.mask_nodata):
                        block = block[block != np.asarray(scene.mask_nodata).astype(block.dtype)]
                    if block.dtype.kind == "f":
                        block = block[~np.isnan(block)]  # NaN labels are nodata
                        if (block != np.round(block)).any():
                            raise DataError(
                                f"mask {scene.mask} holds non-integer values; task=segmentation needs class labels. "
                                "Fix: set data.task=regression for continuous targets, or round the labels"
                            )
                    values, freq = np.unique(block, return_counts=True)
                    for v, m in zip(values.tolist(), freq.tolist(), strict=True):
                        v = int(v)
                        v = lut.get(v, v) if lut else v
                        acc[v] = acc.get(v, 0) + int(m)
                        where.setdefault(v, scene.mask or "")
            acc.pop(self.ignore_index, None)
            counts[k] = dict(sorted(acc.items()))
        labels = sorted({v for split_counts in counts.values() for v in split_counts})
        n = self.requested_n_classes if self.requested_n_classes is not None else (max(labels) + 1 if labels else 0)
        bad = [v for v in labels if v < 0 or v >= n]
        if bad:
            v = bad[0]
            raise DataError(
                f"mask {where[v]} holds label {v}, which is neither a class 0..{n - 1} nor data.ignore_index "
                f"({self.ignore_index}). Fix: map it with data.label_map (e.g. {{{v}: {self.ignore_index}}} to ignore "
                "it), or raise data.n_classes"
            )
        if n == 0:
            raise DataError(
                "the masks hold no labelled pixel outside nodata/ignore_index. Fix: check data.masks and data.ignore_index"
            )
        if self.class_names is not None and len(self.class_names) != n:
            raise ConfigError(f"data.class_names has {len(self.class_names)} names but the labels give {n} classes")
        self._n_classes = int(n)
        self.class_counts = counts

    def majority_class(self) -> int:
        """The most frequent class of the train split (the majority-class baseline predicts it)."""
        self.setup()
        counts = self.class_counts.get("train") or {}
        if not counts:
            raise DataError("no class counts: the datamodule has no masks or task=regression")
        return max(counts, key=lambda v: counts[v])

    # ------------------------------------------------------------------ datasets
    def _spec(self) -> ChipSpec:
        assert self._mean is not None and self._std is not None
        return ChipSpec(
            chip=self.chip_size,
            mean=self._mean.astype(np.float32),
            std=self._std.astype(np.float32),
            task=self.task,
            ignore_index=self.ignore_index,
            label_map=self.label_map,
            with_time=self.with_time,
            with_location=self.with_location,
        )

    def _train_seed(self) -> int:
        return self.seed * 1_000_003 + self.shuffle_seed

    def _dataset(self, split: str) -> ChipDataset:
        self.setup()
        assert self._positions is not None
        spec = self._spec()
        if split == "train" and self.sampler == "random":
            assert self._regions is not None
            n = self.chips_per_epoch
            if n is None:
                area = float(((self._regions[:, 3]) * (self._regions[:, 4])).sum())
                n = max(1, round(area / self.chip_size**2))
            return ChipDataset(
                self._open(), spec, n, regions=self._regions, seed=self._train_seed(), augment=self.augment
            )
        pos = self._positions[split]
        if split == "train":
            return ChipDataset(
                self._open(), spec, len(pos), positions=pos, seed=self._train_seed(), augment=self.augment
            )
        return ChipDataset(self._open(), spec, len(pos), positions=pos, seed=self.seed, augment=False)

    def dataset(self, split: str) -> ChipDataset:
        """The chip dataset of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        if split not in SPLIT_NAMES:
            raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
        return self._dataset(split)

    def _loader(self, split: str, batch_size: int) -> DataLoader:
        ds = self._dataset(split)
        sampler = None
        if split == "train":
            sampler = apply_resume(EpochChipSampler(len(ds), seed=self._train_seed()), self, batch_size)
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Train chips, a fresh draw (random) or order (grid) each epoch."""
        return self._loader("train", self.batch_size)

    def val_dataloader(self) -> DataLoader:
        """Validation chips on a grid, in scene/row/column order."""
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        """Test chips on a grid, in scene/row/column order."""
        return self._loader("test", self.eval_batch_size)

    # ------------------------------------------------------------------ state for prediction
    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Raw band values of a normalised ``x`` (``C T H W`` or ``B C T H W``), e.g. for index baselines."""
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device)
        shape: tuple[int, ...] = (1, -1, 1, 1, 1) if x.dim() == 5 else (-1, 1, 1, 1)
        return x * std.view(shape) + mean.view(shape)

    def scaler_state(self) -> dict[str, Any]:
        """Bands, statistics and geometry a trained model depends on (JSON-serialisable)."""
        self.setup()
        return {
            "bands": self.bands,
            "mean": self.mean,
            "std": self.std,
            "chip_size": self.chip_size,
            "frames": self.frames,
            "task": self.task,
            "n_classes": self.n_classes,
            "class_names": self.class_names,
            "ignore_index": self.ignore_index,
        }

    def load_scaler_state(self, state: dict[str, Any]) -> None:
        """Use stored statistics (from :meth:`scaler_state`) instead of computing them.

        Raises:
            DataError: If the state's bands or geometry differ from this module's config.
        """
        if list(state.get("bands", [])) != self.bands:
            raise DataError(
                f"the stored statistics are for bands {state.get('bands')} but this data reads {self.bands}. "
                "Fix: use the run's data config (data.bands / data.band_names)"
            )
        self._mean = np.asarray(state["mean"], np.float64)
        self._std = np.asarray(state["std"], np.float64)
        if state.get("n_classes") is not None and self.requested_n_classes is None:
            self.requested_n_classes = int(state["n_classes"])

    def prediction_settings(self) -> dict[str, Any]:
        """Keyword arguments of :func:`sciadapt.predict.tiles.predict_scene` that follow this data."""
        return {
            "chip_size": self.chip_size,
            "bands": self.bands,
            "band_names": self.band_names,
            "mean": self.mean,
            "std": self.std,
            "frames": self.frames,
            "frame_layout": self.frame_layout,
            "nodata": self.nodata,
            "task": self.task,
        }


def _int_map(value: Any) -> dict[int, int] | None:
    """A YAML/CLI label map with integer (or integer-string) keys and values; None if it is not one."""
    if not hasattr(value, "items"):
        return None
    try:
        return {int(k): int(v) for k, v in value.items()}
    except (TypeError, ValueError):
        return None


def _check_boxes(boxes: dict[str, list[list[float]]] | None) -> list[str]:
    if not boxes or "train" not in boxes:
        return [
            "data.split=boxes needs data.split_boxes with at least a train box, e.g. {train: [[0, 0, 1, 0.5]], test: [[0, 0.5, 1, 1]]} ([top, left, bottom, right] fractions)"
        ]
    problems = []
    unknown = [k for k in boxes if k not in SPLIT_NAMES]
    if unknown:
        problems.append(f"data.split_boxes: unknown split(s) {unknown}; use train, val, test")
    flat = []
    for k, items in boxes.items():
        for j, b in enumerate(items or []):
            ok = isinstance(b, list | tuple) and len(b) == 4 and all(isinstance(v, int | float) for v in b)
            if not ok or not (0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1):
                problems.append(
                    f"data.split_boxes.{k}[{j}]: expected [top, left, bottom, right] fractions with 0 <= top < bottom <= 1 "
                    f"and 0 <= left < right <= 1, got {b}"
                )
            else:
                flat.append((k, j, b))
    for i, (k1, j1, a) in enumerate(flat):
        for k2, j2, b in flat[i + 1 :]:
            if k1 != k2 and a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                problems.append(
                    f"data.split_boxes: {k1}[{j1}] {a} overlaps {k2}[{j2}] {b}; one split would see the other's pixels"
                )
    return problems


def _check_scene_split(split: dict[str, list[int]] | None) -> list[str]:
    if not split or "train" not in split:
        return [
            "data.split=scenes needs data.split_scenes with at least train, e.g. {train: [0, 1], val: [2], test: [3]}"
        ]
    problems = []
    seen: dict[int, str] = {}
    for k, ids in split.items():
        if k not in SPLIT_NAMES:
            problems.append(f"data.split_scenes: unknown split {k!r}; use train, val, test")
        for i in ids or []:
            if not isinstance(i, int) or i < 0:
                problems.append(f"data.split_scenes.{k}: scene indexes are integers >= 0, got {i!r}")
            elif i in seen and seen[i] != k:
                problems.append(f"data.split_scenes: scene {i} is in both {seen[i]} and {k}")
            else:
                seen[i] = k
    return problems


@DATAMODULES.register("raster")
def build_raster(
    images: list[str] | str,
    masks: list[str] | str | None = None,
    bands: list[str] | None = None,
    band_names: list[str] | None = None,
    frames: int = 1,
    frame_layout: str = "files",
    torchgeo: str | None = None,
    task: str = "segmentation",
    n_classes: int | None = None,
    class_names: list[str] | None = None,
    label_map: dict[int, int] | None = None,
    ignore_index: int = -1,
    nodata: float | None = None,
    chip_size: int = 224,
    sampler: str = "random",
    chips_per_epoch: int | None = None,
    stride: int | None = None,
    split: str = "x",
    split_fractions: list[float] | None = None,
    split_boxes: dict[str, list[list[float]]] | None = None,
    split_scenes: dict[str, list[int]] | None = None,
    normalise: str = "auto",
    mean: list[float] | None = None,
    std: list[float] | None = None,
    augment: bool = False,
    batch_size: int = 8,
    eval_batch_size: int = 16,
    num_workers: int = 0,
    seed: int = 0,
) -> RasterDataModule:
    """Raster scenes and masks cut into chips (the config schema of ``data:`` for dense tasks).

    Args:
        images: Image files (GeoTIFF or anything GDAL reads; eo-learn ``.npy`` arrays), a list or one
            path; glob patterns and ``pkg://`` allowed. With ``torchgeo``: the folder(s) to search.
        masks: One label file per scene (band 1), same grid as its images; None for unlabelled data.
        bands: Band names to read, in this order (matched to ``band_names`` or the files' band
            descriptions, case-insensitively when unambiguous); None reads every band.
        band_names: Names of the files' bands in file order (per frame). They win over the names
            stored in the files, so files can be renamed to the band names a backbone was trained on.
        frames: Time steps T per scene.
        frame_layout: ``"files"``: consecutive groups of files (in time order) form a scene; a
            ``(T, H, W, C)`` array counts as T files. ``"bands"``: each GeoTIFF holds ``frames x
            bands`` bands, frame-major.
        torchgeo: Name of a torchgeo ``RasterDataset`` class (e.g. ``NAIP``) that finds the files
            under ``images`` and supplies band names (``all_bands``) and dates (from file names).
        task: ``"segmentation"`` (int64 class labels) or ``"regression"`` (float32 targets).
        n_classes: Number of classes; None counts them from the labels (largest label + 1).
        class_names: Optional names of the classes, for tables.
        label_map: Label remapping applied before everything else, e.g. ``{0: -1, 8: 5}``; labels not
            listed stay as they are.
        ignore_index: Label of pixels to ignore (nodata, unlabelled).
        nodata: Image nodata value overriding the files' own (NaN is always nodata).
        chip_size: Chip height and width in pixels (the model's ``img_size``).
        sampler: Train chips: ``"random"`` (uniform inside the train regions) or ``"grid"``.
        chips_per_epoch: Train chips per epoch for random sampling; None: train area / chip area.
        stride: Grid step (grid train sampling, validation and test); None: ``chip_size``.
        split: ``"x"`` or ``"y"`` (fractions along x/y of every scene), ``"boxes"``, ``"scenes"``.
        split_fractions: ``[train, val, test]`` fractions for ``x``/``y`` splits, left to right or top
            to bottom; default ``[0.6, 0.2, 0.2]``. Zero leaves a split empty.
        split_boxes: ``{train: [[top, left, bottom, right], ...], val: ..., test: ...}`` in fractions
            of each scene; boxes of different splits must not overlap.
        split_scenes: ``{train: [scene indexes], val: [...], test: [...]}``.
        normalise: ``"auto"`` (``mean``/``std`` when given, else computed), ``"config"``,
            ``"compute"`` (per band over the valid train pixels of every frame) or ``"none"``.
        mean: Per-band means, one per selected band.
        std: Per-band standard deviations.
        augment: Random flips and 90-degree rotations of train chips, the same for every band,
            frame and the mask.
        batch_size: Train batch size.
        eval_batch_size: Validation/test batch size.
        num_workers: DataLoader worker processes.
        seed: Seed of chip positions and augmentations.

    Returns:
        The datamodule; files are opened on first use.
    """
    return RasterDataModule(
        images=images,
        masks=masks,
        bands=bands,
        band_names=band_names,
        frames=frames,
        frame_layout=frame_layout,
        torchgeo=torchgeo,
        task=task,
        n_classes=n_classes,
        class_names=class_names,
        label_map=label_map,
        ignore_index=ignore_index,
        nodata=nodata,
        chip_size=chip_size,
        sampler=sampler,
        chips_per_epoch=chips_per_epoch,
        stride=stride,
        split=split,
        split_fractions=split_fractions,
        split_boxes=split_boxes,
        split_scenes=split_scenes,
        normalise=normalise,
        mean=mean,
        std=std,
        augment=augment,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        num_workers=num_workers,
        seed=seed,
    )
