"""Scenes: image files grouped into time steps on one pixel grid, bands picked by name, grids checked;
plus windowed reads of a scene's pixels and labels and its time and location coordinates."""

from __future__ import annotations

import datetime as dt
import glob
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import Affine, array_bounds

from sciadapt.datamodules.raster.readers import RasterReader, _GdalReader, open_raster
from sciadapt.datamodules.timeseries import resolve_path
from sciadapt.errors import DataError
from sciadapt.registry import suggest

_GLOB_CHARS = "*?["


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
    labels: np.ndarray = open_raster(scene.mask).read([0], row, col, height, width)[0]
    return labels


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
