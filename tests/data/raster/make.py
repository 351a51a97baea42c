"""Seeded generators of small real-format rasters (GeoTIFF, eo-learn ``.npy`` patches) for the raster tests.

The tests call these functions and write into their own temporary folders; nothing is committed.
Scenes are smooth fields (a few sinusoids per band plus noise) in a projected CRS, so band
statistics, chips and nodata behave like imagery rather than white noise. Labels are a threshold
of band 0 of the first frame, so a test can recompute them from ``x`` after any augmentation.

Run as a script to write a small example set next to this file for manual experiments::

    python tests/data/raster/make.py /tmp/raster-example
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

#: Sentinel-2 band names in the order eo-learn and Sen1Floods11 store them (the latter writes B1, B2, ...).
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
DEFAULT_CRS = "EPSG:32633"
DEFAULT_ORIGIN = (465_000.0, 5_081_000.0)  # UTM 33N, Slovenia (eo-learn's example patch area)
PIXEL = 10.0


def field(height: int, width: int, n_bands: int, seed: int = 0, row0: int = 0, col0: int = 0) -> np.ndarray:
    """Smooth float field ``(n_bands, height, width)`` in about [0, 1], seeded.

    ``row0``/``col0`` place the block inside a larger scene, so blocks written separately join up.
    """
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * np.pi, size=(n_bands, 3))
    periods = rng.uniform(40, 160, size=(n_bands, 2))
    r = np.arange(row0, row0 + height, dtype=np.float64)[:, None]
    c = np.arange(col0, col0 + width, dtype=np.float64)[None, :]
    out = np.empty((n_bands, height, width), np.float64)
    for b in range(n_bands):
        out[b] = (
            0.5
            + 0.2 * np.sin(2 * np.pi * r / periods[b, 0] + phases[b, 0])
            + 0.2 * np.cos(2 * np.pi * c / periods[b, 1] + phases[b, 1])
            + 0.05 * np.sin(2 * np.pi * (r + c) / 23.0 + phases[b, 2])
        )
    return out


def write_scene(
    path: Path,
    height: int = 96,
    width: int = 128,
    n_bands: int = 4,
    seed: int = 0,
    dtype: str = "int16",
    scale: float = 10_000.0,
    descriptions: Sequence[str] | None = ("B02", "B03", "B04", "B8A"),
    crs: str | None = DEFAULT_CRS,
    origin: tuple[float, float] = DEFAULT_ORIGIN,
    pixel: float = PIXEL,
    nodata: float | None = 0,
    nodata_box: tuple[int, int, int, int] | None = None,
    date: str | None = None,
    offset: float = 0.0,
    values: np.ndarray | None = None,
) -> Path:
    """A multi-band GeoTIFF: ``field`` scaled to ``dtype`` (like S2 L1C reflectance x 1e4).

    Args:
        path: Output file.
        height: Rows.
        width: Columns.
        n_bands: Bands.
        seed: Seed of the field.
        dtype: Pixel type.
        scale: Multiplier from the [0, 1] field to stored values.
        descriptions: Band descriptions (names); None writes none.
        crs: CRS; None writes a file without georeferencing.
        origin: Upper-left corner (x, y) in CRS units.
        pixel: Pixel size in CRS units.
        nodata: The file's nodata value.
        nodata_box: ``(row, col, h, w)`` set to ``nodata`` in every band.
        date: ``ACQUISITION_DATE`` tag (ISO date), the acquisition date the datamodule reads.
        offset: Added to the field before scaling (frames of a time series differ by it).
        values: Write these ``(n_bands, height, width)`` values instead of the field.
    """
    if values is None:
        values = (field(height, width, n_bands, seed) + offset) * scale
    data = np.asarray(values).astype(dtype)
    if nodata_box is not None and nodata is not None:
        r, c, h, w = nodata_box
        data[:, r : r + h, c : c + w] = nodata
    profile = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": dtype,
        "nodata": nodata,
    }
    if crs is not None:
        profile["crs"] = crs
        profile["transform"] = from_origin(origin[0], origin[1], pixel, pixel)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions is not None:
            for i, name in enumerate(descriptions[: data.shape[0]], start=1):
                dst.set_band_description(i, name)
        if date is not None:
            dst.update_tags(ACQUISITION_DATE=date)
    return path


def labels_from(band: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Class of every pixel: how many ``thresholds`` its value exceeds (0..len(thresholds))."""
    return np.searchsorted(np.asarray(thresholds, np.float64), band, side="right").astype(np.int16)


def write_mask(
    path: Path,
    image: Path,
    thresholds: Sequence[float] = (0.5,),
    nodata: float | None = None,
    dtype: str = "int16",
    regression: bool = False,
    crs: str | None | bool = True,
    shift_pixels: float = 0.0,
    shape: tuple[int, int] | None = None,
) -> Path:
    """A one-band label raster on the grid of ``image``, derived from its band 1.

    Segmentation labels are ``labels_from(band1 / scale)``; regression targets are ``2 * band1 / 1e4``.
    ``crs``/``shift_pixels``/``shape`` break the alignment on purpose for the bad-input tests.
    """
    with rasterio.open(image) as src:
        band = src.read(1).astype(np.float64) / 10_000.0
        profile = src.profile.copy()
    if regression:
        data = (2.0 * band).astype("float32")
        dtype = "float32"
    else:
        data = labels_from(band, thresholds).astype(dtype)
    if shape is not None:
        data = np.resize(data, shape)
    profile.update(count=1, dtype=dtype, nodata=nodata, height=data.shape[0], width=data.shape[1])
    if crs is not True:
        profile["crs"] = crs if crs else None
    if shift_pixels and profile.get("transform") is not None:
        t = profile["transform"]
        profile["transform"] = t * rasterio.Affine.translation(shift_pixels, 0)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data[None])
    return path


def write_timeseries(
    folder: Path,
    frames: int = 3,
    height: int = 64,
    width: int = 64,
    n_bands: int = 3,
    seed: int = 0,
    step: float = 0.1,
    dates: Sequence[str] | None = None,
    layout: str = "files",
) -> list[Path]:
    """A time series whose frame t is frame 0 plus ``t * step`` (in [0, 1] units), float32.

    ``layout="files"`` writes one file per frame; ``"bands"`` one file with ``frames * n_bands``
    bands, frame-major (band b of frame t is band ``t * n_bands + b + 1``).
    """
    base = field(height, width, n_bands, seed)
    names = [f"C{b}" for b in range(n_bands)]
    dates = list(dates) if dates is not None else [f"2021-0{t + 3}-15" for t in range(frames)]
    if layout == "files":
        return [
            write_scene(
                folder / f"frame_{t}.tif",
                dtype="float32",
                scale=1.0,
                values=base + t * step,
                descriptions=names,
                nodata=None,
                date=dates[t],
            )
            for t in range(frames)
        ]
    stacked = np.concatenate([base + t * step for t in range(frames)])
    return [
        write_scene(
            folder / "stack.tif",
            dtype="float32",
            scale=1.0,
            values=stacked,
            descriptions=[f"{n}_t{t}" for t in range(frames) for n in names],
            nodata=None,
        )
    ]


def write_eopatch(
    folder: Path,
    frames: int = 3,
    height: int = 41,
    width: int = 40,
    n_bands: int = 13,
    seed: int = 0,
    classes: Sequence[int] = (0, 1, 2, 3, 4, 8),
) -> Path:
    """A miniature of an eo-learn EOPatch folder: ``REFERENCE_SCENES.npy`` (T, H, W, C) float32,
    ``LULC.npy`` (H, W, 1) uint16, ``bbox.geojson`` (UTM bounds) and ``timestamps.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    base = field(height, width, n_bands, seed).transpose(1, 2, 0) * 0.3  # (H, W, C) reflectance
    scenes = np.stack([base + 0.01 * t for t in range(frames)]).astype(np.float32)  # (T, H, W, C)
    np.save(folder / "REFERENCE_SCENES.npy", scenes)
    idx = labels_from(base[..., 1] / 0.3, np.linspace(0.3, 0.7, len(classes) - 1).tolist())
    lulc = np.asarray(classes, np.uint16)[idx][..., None]  # (H, W, 1)
    np.save(folder / "LULC.npy", lulc)
    x0, y1 = DEFAULT_ORIGIN
    x1, y0 = x0 + width * PIXEL, y1 - height * PIXEL
    bbox = {
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
        "type": "Polygon",
        "coordinates": [[[x0, y0], [x0, y1], [x1, y1], [x1, y0], [x0, y0]]],
    }
    (folder / "bbox.geojson").write_text(json.dumps(bbox))
    stamps = [f"2016-0{t + 4}-1{t}T10:00:0{t}" for t in range(frames)]
    (folder / "timestamps.json").write_text(json.dumps(stamps))
    return folder


def write_large_scene(
    path: Path,
    size: int = 20_000,
    n_bands: int = 3,
    block: int = 512,
    crs: str = DEFAULT_CRS,
) -> Path:
    """A ``size x size`` uint16 tiled, compressed GeoTIFF written block by block (bounded memory).

    The pattern (a ramp plus a small per-block texture) compresses well, so a 20,000^2 scene
    costs a few hundred MB of disk and well under a minute on one core.
    """
    profile = {
        "driver": "GTiff",
        "height": size,
        "width": size,
        "count": n_bands,
        "dtype": "uint16",
        "crs": crs,
        "transform": from_origin(DEFAULT_ORIGIN[0], DEFAULT_ORIGIN[1], PIXEL, PIXEL),
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "zlevel": 1,
        "predictor": 2,
        "nodata": 0,
        "BIGTIFF": "IF_SAFER",
    }
    rr, cc = np.mgrid[0:block, 0:block].astype(np.uint32)
    texture = ((rr * 7 + cc * 3) % 64).astype(np.uint32)
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, block):
            h = min(block, size - r0)
            for c0 in range(0, size, block):
                w = min(block, size - c0)
                base = (r0 // block * 37 + c0 // block * 11) % 4000 + 1000
                tile = np.empty((n_bands, h, w), np.uint16)
                for b in range(n_bands):
                    tile[b] = (base + 500 * b + texture[:h, :w]).astype(np.uint16)
                dst.write(tile, window=Window(c0, r0, w, h))
    return path


def main(out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    image = write_scene(folder / "scene.tif", nodata_box=(0, 0, 8, 8), date="2021-06-01")
    write_mask(folder / "mask.tif", image)
    write_timeseries(folder / "series")
    write_eopatch(folder / "eopatch")
    print(f"wrote example rasters to {folder}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent / "example"))


def contract_config(folder: Path, seed: int = 0) -> dict[str, Any]:
    """The ``data:`` keys (less ``name``) of a small datamodule on fresh data in ``folder``: what the
    contract tests in tests/unit/test_contracts.py build every registered datamodule from."""
    image = write_scene(
        folder / "scene.tif", height=96, width=128, seed=seed, nodata_box=(0, 0, 8, 8), date="2021-06-01"
    )
    mask = write_mask(folder / "mask.tif", image, thresholds=(0.5,))
    return {
        "images": str(image),
        "masks": str(mask),
        "chip_size": 32,
        "split_fractions": [0.5, 0.25, 0.25],
        "batch_size": 4,
    }
