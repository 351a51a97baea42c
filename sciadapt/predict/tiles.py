"""Scene-scale dense prediction with bounded memory: overlapping tiles, smooth seams, a COG out.

The scene is read one batch of tiles at a time (rasterio windowed reads) and never held whole.
Tiles overlap by ``overlap`` pixels; each tile's output is weighted by a window that is 1 in
the tile's interior and ramps down (cosine or linear) over the overlap on every side that has a
neighbour, so seams blend smoothly and a pixel-wise model gives exactly its whole-scene result.
Weighted sums are accumulated in a buffer one tile tall and one scene wide: after each row of
tiles, the rows no later tile touches are final, are divided by their weight sums, and go to the
output file, so memory is O(chip_size x width), not O(height x width).

Output: the rows are written, whole blocks at a time (each block written once), into a tiled,
compressed GeoTIFF next to ``out_path``; that file is then copied by GDAL's COG driver (which
adds overviews, block by block) into ``out_path``: a Cloud-Optimized GeoTIFF with the input's CRS
and transform. Segmentation writes the argmax class map (uint8, nodata 255); regression writes
the ``n_outputs`` blended outputs as float32 (nodata NaN). ``scores_path`` additionally writes the
blended model outputs of a segmentation model (float32, one band per output).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
import torch
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.windows import Window

from sciadapt.datamodules.raster import (
    Scene,
    build_scenes,
    expand_paths,
    location_of,
    read_window,
    temporal_coords_of,
)
from sciadapt.errors import ConfigError, ShapeError
from sciadapt.registry import suggest

BLENDS = ("cosine", "linear")
TASKS = ("segmentation", "regression")
OUT_DTYPES = ("uint8", "uint16", "int16", "int32", "float32", "float64")


def edge_ramp(length: int, overlap: int, blend: str, start: bool, end: bool) -> np.ndarray:
    """1-D tile weights: 1 inside, ramping towards 0 over ``overlap`` pixels at a ramped edge.

    The ramp takes values at pixel centres, ``u = (d + 0.5) / overlap`` for distance ``d`` from
    the edge, so it never reaches 0 (a pixel covered by one tile keeps its value). Two opposite
    ramps over the same ``overlap`` pixels sum to 1 (``sin^2 + cos^2``, or ``u + (1 - u)``).

    Args:
        length: Tile length in pixels.
        overlap: Ramp length.
        blend: ``"cosine"`` (``sin^2(pi u / 2)``) or ``"linear"`` (``u``).
        start: Ramp at index 0 (a neighbouring tile lies before).
        end: Ramp at the last index (a neighbouring tile lies after).
    """
    w = np.ones(length, np.float32)
    if overlap <= 0:
        return w
    u = (np.arange(overlap, dtype=np.float64) + 0.5) / overlap
    ramp = (np.sin(np.pi / 2 * u) ** 2 if blend == "cosine" else u).astype(np.float32)
    n = min(overlap, length)
    if start:
        w[:n] = np.minimum(w[:n], ramp[:n])
    if end:
        w[length - n :] = np.minimum(w[length - n :], ramp[:n][::-1])
    return w


def tile_starts(size: int, chip: int, step: int) -> list[int]:
    """Tile offsets along one axis: every ``step``, the last tile ending at the edge (one tile if small)."""
    if size <= chip:
        return [0]
    out = list(range(0, size - chip + 1, step))
    if out[-1] != size - chip:
        out.append(size - chip)
    return out


class _StripWriter:
    """Appends row strips to a tiled GeoTIFF, writing whole block rows only (each block once)."""

    def __init__(self, dst: Any, block: int) -> None:
        self.dst = dst
        self.block = block
        self.pending: list[np.ndarray] = []
        self.rows = 0
        self.next_row = 0

    def append(self, strip: np.ndarray) -> None:  # (bands, n, W)
        self.pending.append(strip)
        self.rows += strip.shape[1]
        if self.rows >= self.block:
            self._write(self.rows // self.block * self.block)

    def _write(self, n: int) -> None:
        data = np.concatenate(self.pending, axis=1) if len(self.pending) > 1 else self.pending[0]
        self.dst.write(data[:, :n], window=Window(0, self.next_row, data.shape[2], n))
        self.next_row += n
        rest = data[:, n:]
        self.pending = [np.ascontiguousarray(rest)] if rest.shape[1] else []
        self.rows = rest.shape[1]

    def close(self) -> None:
        if self.rows:
            self._write(self.rows)


def cog_copy(src: Path, dst: Path, block: int, compress: str, resampling: str) -> bool:
    """Copy a tiled GeoTIFF into a Cloud-Optimized GeoTIFF; True if GDAL's COG driver did it.

    Without the COG driver (GDAL < 3.1) the classic recipe is used: internal overviews on the
    source, then a GTiff copy with ``COPY_SRC_OVERVIEWS=YES`` (the layout the COG driver writes).
    """
    tmp = dst.with_name(f".{dst.name}.part")
    try:
        with rasterio.Env() as env:
            has_cog = "COG" in env.drivers()
        if has_cog:
            rasterio.shutil.copy(
                src,
                tmp,
                driver="COG",
                BLOCKSIZE=block,
                COMPRESS=compress,
                OVERVIEW_RESAMPLING=resampling,
                BIGTIFF="IF_SAFER",
            )
        else:
            with rasterio.open(src, "r+") as ds:
                factors = [2**k for k in range(1, 32) if max(ds.width, ds.height) / 2**k >= block]
                if factors:
                    ds.build_overviews(factors, Resampling[resampling.lower()])
            rasterio.shutil.copy(
                src,
                tmp,
                driver="GTiff",
                TILED="YES",
                BLOCKXSIZE=block,
                BLOCKYSIZE=block,
                COMPRESS=compress,
                COPY_SRC_OVERVIEWS="YES",
                BIGTIFF="IF_SAFER",
            )
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written copy never stays beside the output
        raise
    return has_cog


def _check_args(
    chip_size: int,
    overlap: int,
    batch_size: int,
    n_outputs: int,
    blend: str,
    task: str,
    out_dtype: str | None,
    block_size: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> None:
    problems = []
    if chip_size < 1:
        problems.append(f"chip_size: must be >= 1, got {chip_size}")
    if not 0 <= overlap < chip_size:
        problems.append(f"overlap: must be in 0..chip_size-1 ({chip_size - 1}), got {overlap}")
    if batch_size < 1:
        problems.append(f"batch_size: must be >= 1, got {batch_size}")
    for key, choices, value in (("blend", BLENDS, blend), ("task", TASKS, task)):
        if value not in choices:
            problems.append(
                f"{key}: unknown value {value!r}.{suggest(value, choices)} Choose one of: {', '.join(choices)}"
            )
    if out_dtype is not None and out_dtype not in OUT_DTYPES:
        problems.append(f"out_dtype: {out_dtype!r} is not one of {', '.join(OUT_DTYPES)}")
    if task == "segmentation" and n_outputs < 2:
        problems.append(
            f"n_outputs={n_outputs}: a segmentation model gives one score per class (>= 2); for one logit, "
            "return torch.cat([-logit, logit], 1) or use task=regression"
        )
    if n_outputs < 1:
        problems.append(f"n_outputs: must be >= 1, got {n_outputs}")
    if block_size < 16 or block_size % 16:
        problems.append(f"block_size: must be a multiple of 16 (GeoTIFF tiles), got {block_size}")
    if (mean is None) != (std is None):
        problems.append("mean and std: give both (the training statistics) or neither")
    elif mean is not None and std is not None and (len(mean) != len(std) or any(s <= 0 for s in std)):
        problems.append(f"mean/std: need equal lengths and std > 0, got {len(mean)} / {list(std)}")
    if problems:
        raise ConfigError(problems, source="predict_scene")


def predict_scene(
    model_fn: Callable[..., torch.Tensor],
    image_paths: str | Sequence[str],
    out_path: str | Path,
    chip_size: int = 224,
    overlap: int = 32,
    bands: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 8,
    n_outputs: int = 2,
    out_dtype: str | None = None,
    blend: str = "cosine",
    task: str = "segmentation",
    band_names: Sequence[str] | None = None,
    frames: int | None = None,
    frame_layout: str = "files",
    nodata: float | None = None,
    scores_path: str | Path | None = None,
    with_coords: bool = False,
    device: str | torch.device | None = None,
    block_size: int = 512,
    compress: str = "DEFLATE",
    gdal_cache_mb: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Predict a whole (possibly larger-than-memory) scene tile by tile into a Cloud-Optimized GeoTIFF.

    Args:
        model_fn: ``model_fn(x) -> (B, n_outputs, chip, chip)`` for ``x`` float32 ``(B, C, T, chip,
            chip)`` (normalised; nodata pixels 0); logits, probabilities or regression values. With
            ``with_coords`` it is called as ``model_fn(x, temporal_coords=..., location_coords=...)``.
        image_paths: The scene's image file(s): one file, or one file per frame in time order.
        out_path: The COG to write (replaced atomically when complete).
        chip_size: Tile size fed to the model.
        overlap: Pixels shared by neighbouring tiles (blended); 0 gives abutting tiles.
        bands: Bands to read by name (see :func:`sciadapt.datamodules.raster.build_scenes`).
        mean: Per-band means of the training data (``RasterDataModule.prediction_settings()``).
        std: Per-band standard deviations; None with ``mean`` None feeds raw values.
        batch_size: Tiles per model call.
        n_outputs: Channels the model returns.
        out_dtype: Output pixel type; default uint8 class map (uint16 beyond 255 classes) for
            segmentation, float32 for regression.
        blend: Seam window: ``"cosine"`` or ``"linear"``.
        task: ``"segmentation"`` (argmax class map) or ``"regression"`` (the outputs themselves).
        band_names: Names of the files' bands in file order, when the files store none.
        frames: Time steps of the scene; None: one per file (or T of a ``(T, H, W, C)`` array).
        frame_layout: ``"files"`` or ``"bands"`` (frames stacked in the bands of one file).
        nodata: Image nodata value overriding the files' own; such pixels get the output's nodata.
        scores_path: Also write the blended model outputs here (segmentation; float32 COG).
        with_coords: Pass ``temporal_coords`` (B, T, 2) and ``location_coords`` (B, 2) of each tile.
        device: Move each batch there before calling the model (None: leave it on the CPU).
        block_size: Internal tile size of the output files (multiple of 16).
        compress: GDAL compression of the outputs.
        gdal_cache_mb: GDAL block cache while predicting (GDAL's default is 5 % of RAM).
        progress: Called as ``progress(done_tiles, total_tiles)`` after each batch.

    Returns:
        ``{"path", "scores_path", "tiles", "seconds", "tiles_per_s", "height", "width", "cog"}``;
        ``cog`` is True when GDAL's COG driver wrote the file.

    Raises:
        ConfigError: Invalid arguments. DataError: unreadable files, missing bands, misaligned frames.
        ShapeError: The model returned another shape than ``(B, n_outputs, chip, chip)``.
    """
    _check_args(chip_size, overlap, batch_size, n_outputs, blend, task, out_dtype, block_size, mean, std)
    paths = expand_paths(list(image_paths) if not isinstance(image_paths, str) else image_paths, "images")
    if frames is None:
        if frame_layout == "bands":
            raise ConfigError("frames: required with frame_layout=bands (how many frames the bands hold)")
        from sciadapt.datamodules.raster import open_raster

        frames = sum(open_raster(p).n_times for p in paths)
    scenes, names = build_scenes(paths, None, bands, band_names, frames, frame_layout, nodata)
    if len(scenes) != 1:
        raise ConfigError(f"image_paths make {len(scenes)} scenes; predict_scene takes one (call it once per scene)")
    scene = scenes[0]
    if mean is not None and len(mean) != len(names):
        raise ConfigError(f"mean/std have {len(mean)} values but {len(names)} bands are read ({', '.join(names)})")
    if with_coords and (scene.crs is None or not scene.dated):
        raise ConfigError(
            "with_coords needs acquisition dates for every frame and a CRS; "
            f"{scene.name} has {'no CRS' if scene.crs is None else 'undated frames'}"
        )
    seg = task == "segmentation"
    dtype = out_dtype or (("uint8" if n_outputs <= 255 else "uint16") if seg else "float32")
    is_float = np.dtype(dtype).kind == "f"
    fill: float = float("nan") if is_float else float(np.iinfo(np.dtype(dtype)).max)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=int(gdal_cache_mb) * 2**20):
        outputs = [(out, n_outputs if not seg else 1, dtype, fill, "NEAREST" if seg else "AVERAGE")]
        if scores_path is not None:
            outputs.append((Path(scores_path), n_outputs, "float32", float("nan"), "AVERAGE"))
        tmps = [o[0].with_name(f".{o[0].name}.tiled.tmp.tif") for o in outputs]
        try:
            n_tiles = _run_tiles(
                model_fn,
                scene,
                outputs,
                tmps,
                chip_size,
                overlap,
                mean,
                std,
                batch_size,
                n_outputs,
                blend,
                seg,
                with_coords,
                device,
                block_size,
                compress,
                progress,
            )
            cog = True
            for (path, *_rest, resampling), tmp in zip(outputs, tmps, strict=True):
                cog &= cog_copy(tmp, path, block_size, compress, resampling)
        finally:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    return {
        "path": str(out),
        "scores_path": str(scores_path) if scores_path is not None else None,
        "tiles": n_tiles,
        "seconds": seconds,
        "tiles_per_s": n_tiles / max(seconds, 1e-9),
        "height": scene.height,
        "width": scene.width,
        "cog": cog,
    }


def _run_tiles(
    model_fn: Callable[..., torch.Tensor],
    scene: Scene,
    outputs: list[tuple[Path, int, str, float, str]],
    tmps: list[Path],
    chip: int,
    overlap: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    batch_size: int,
    n_outputs: int,
    blend: str,
    seg: bool,
    with_coords: bool,
    device: str | torch.device | None,
    block: int,
    compress: str,
    progress: Callable[[int, int], None] | None,
) -> int:
    """The tile loop: read, predict, blend into the strip buffer, flush finished rows."""
    H, W = scene.height, scene.width
    step = chip - overlap
    rows, cols = tile_starts(H, chip, step), tile_starts(W, chip, step)
    total = len(rows) * len(cols)
    mu = np.asarray(mean, np.float32)[:, None, None, None] if mean is not None else None
    sd = np.asarray(std, np.float32)[:, None, None, None] if std is not None else None
    time_coords = torch.from_numpy(temporal_coords_of(scene)) if with_coords else None

    buf_rows = min(chip, H)
    acc = np.zeros((n_outputs, buf_rows, W), np.float32)  # weighted sums of model outputs
    wsum = np.zeros((buf_rows, W), np.float32)
    valid = np.zeros((buf_rows, W), bool)
    # Weights depend only on which sides of a tile have neighbours: cache the 1-D ramps.
    ramps: dict[tuple[int, bool, bool], np.ndarray] = {}

    def ramp(length: int, start: bool, end: bool) -> np.ndarray:
        key = (length, start, end)
        if key not in ramps:
            ramps[key] = edge_ramp(length, overlap, blend, start, end)
        return ramps[key]

    dsts = []
    for (_path, count, dtype, fill, _res), tmp in zip(outputs, tmps, strict=True):
        profile = {
            "driver": "GTiff",
            "height": H,
            "width": W,
            "count": count,
            "dtype": dtype,
            "nodata": fill,
            "crs": scene.crs,
            "transform": Affine(*scene.transform),
            "tiled": True,
            "blockxsize": block,
            "blockysize": block,
            "compress": compress,
            "BIGTIFF": "IF_SAFER",
        }
        dsts.append(rasterio.open(tmp, "w", **profile))
    writers = [_StripWriter(d, block) for d in dsts]
    done = 0
    try:
        for k, y in enumerate(rows):
            th = min(chip, H - y)
            wy = ramp(th, y > 0, y + th < H)
            for b0 in range(0, len(cols), batch_size):
                bcols = cols[b0 : b0 + batch_size]
                x0 = bcols[0]
                x1 = min(bcols[-1] + chip, W)
                raw, ok = read_window(scene, y, x0, th, x1 - x0)  # (C, T, th, span), (th, span)
                if mu is not None and sd is not None:
                    raw = (raw - mu) / sd
                    raw[:, :, ~ok] = 0.0
                batch = np.zeros((len(bcols), raw.shape[0], raw.shape[1], chip, chip), np.float32)
                for i, c in enumerate(bcols):
                    tw = min(chip, W - c)
                    batch[i, :, :, :th, :tw] = raw[:, :, :, c - x0 : c - x0 + tw]
                xb = torch.from_numpy(batch)  # (B, C, T, chip, chip)
                kwargs: dict[str, torch.Tensor] = {}
                if with_coords:
                    assert time_coords is not None
                    kwargs["temporal_coords"] = time_coords.expand(len(bcols), -1, -1)
                    locs = [location_of(scene, y + th / 2, c + min(chip, W - c) / 2) for c in bcols]
                    kwargs["location_coords"] = torch.tensor(locs, dtype=torch.float32)
                if device is not None:
                    xb = xb.to(device)
                    kwargs = {key: v.to(device) for key, v in kwargs.items()}
                with torch.inference_mode():
                    pred = model_fn(xb, **kwargs)
                if tuple(pred.shape) != (len(bcols), n_outputs, chip, chip):
                    raise ShapeError(
                        f"model_fn returned {tuple(pred.shape)}; expected (B, n_outputs, H, W) = "
                        f"({len(bcols)}, {n_outputs}, {chip}, {chip}) for input {tuple(xb.shape)}"
                    )
                pred_np = pred.detach().float().cpu().numpy()
                for i, c in enumerate(bcols):
                    tw = min(chip, W - c)
                    w = wy[:, None] * ramp(tw, c > 0, c + tw < W)[None, :]  # (th, tw)
                    acc[:, :th, c : c + tw] += pred_np[i, :, :th, :tw] * w
                    wsum[:th, c : c + tw] += w
                    valid[:th, c : c + tw] = ok[:, c - x0 : c - x0 + tw]
                done += len(bcols)
                if progress is not None:
                    progress(done, total)
            # Rows above the next tile row are final: blend, write, and shift the buffer up.
            n = (rows[k + 1] if k + 1 < len(rows) else H) - y
            # In place: these rows leave the buffer below, so no scene-wide temporary is needed.
            blended = np.divide(acc[:, :n], wsum[None, :n], out=acc[:, :n])  # (n_outputs, n, W)
            bad = ~valid[:n]
            for (_path, _count, dtype, fill, _res), writer, is_scores in zip(
                outputs, writers, [False] + [True] * (len(outputs) - 1), strict=True
            ):
                if seg and not is_scores:
                    strip = blended.argmax(axis=0).astype(dtype)[None]
                else:
                    strip = blended.astype(dtype)
                strip[:, bad] = fill
                writer.append(strip)
            keep = buf_rows - n
            if keep > 0:
                acc[:, :keep] = acc[:, n:].copy()
                wsum[:keep] = wsum[n:].copy()
                valid[:keep] = valid[n:].copy()
            acc[:, keep:] = 0.0
            wsum[keep:] = 0.0
            valid[keep:] = False
        for writer in writers:
            writer.close()
    finally:
        for d in dsts:
            d.close()
    return total


def overview_count(path: str | Path) -> int:
    """Number of internal overviews of band 1 (a COG of a scene larger than a block has some)."""
    with rasterio.open(path) as src:
        return len(src.overviews(1))


def is_cog(path: str | Path) -> bool:
    """Whether GDAL reports the Cloud-Optimized layout (``LAYOUT=COG``) and the file is tiled."""
    with rasterio.open(path) as src:
        layout = src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT", "")
        return layout.upper() == "COG" and bool(src.profile.get("tiled"))
