"""Normalisation statistics and label counts, read from the train (and every split's) regions."""

from __future__ import annotations

import math

import numpy as np

from sciadapt.datamodules.raster.readers import open_raster
from sciadapt.datamodules.raster.scenes import Scene
from sciadapt.errors import ConfigError, DataError

#: ``(scene, row, col, h, w)`` of one rectangle of a split
Region = tuple[int, int, int, int, int]

_STATS_MAX_PIXELS = 1 << 20  # per train region; larger regions are read decimated for mean/std
_SCAN_ROWS = 1024  # label rows per read while counting classes


def compute_stats(scenes: list[Scene], regions: list[Region], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean/std over valid train pixels of every frame (big regions read decimated).

    Args:
        scenes: The scenes.
        regions: The train regions ``(scene, row, col, h, w)``.
        n: Bands per frame.

    Returns:
        ``mean`` and ``std``, float64 ``(n,)``; a constant band gets std 1.

    Raises:
        DataError: If every train pixel is nodata.
    """
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


def scan_labels(
    scenes: list[Scene],
    regions: dict[str, list[Region]],
    label_map: dict[int, int] | None,
    ignore_index: int,
    n_classes: int | None,
    class_names: list[str] | None,
) -> tuple[int, dict[str, dict[int, int]]]:
    """Count label pixels per split (after ``label_map``) and check them against the classes.

    Args:
        scenes: The scenes (each with a mask).
        regions: The regions of every split.
        label_map: Label remapping applied before counting.
        ignore_index: Label left out of the counts.
        n_classes: The configured number of classes; None: the largest label + 1.
        class_names: The configured class names, checked against the number of classes.

    Returns:
        The number of classes and the pixel count per class of every split.

    Raises:
        DataError: Non-integer labels, a label outside the classes, or no labelled pixel.
        ConfigError: If ``class_names`` does not name every class.
    """
    lut = label_map
    counts: dict[str, dict[int, int]] = {}
    where: dict[int, str] = {}
    for k, split_regions in regions.items():
        acc: dict[int, int] = {}
        for s, r0, c0, h, w in split_regions:
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
        acc.pop(ignore_index, None)
        counts[k] = dict(sorted(acc.items()))
    labels = sorted({v for split_counts in counts.values() for v in split_counts})
    n = n_classes if n_classes is not None else (max(labels) + 1 if labels else 0)
    bad = [v for v in labels if v < 0 or v >= n]
    if bad:
        v = bad[0]
        raise DataError(
            f"mask {where[v]} holds label {v}, which is neither a class 0..{n - 1} nor data.ignore_index "
            f"({ignore_index}). Fix: map it with data.label_map (e.g. {{{v}: {ignore_index}}} to ignore "
            "it), or raise data.n_classes"
        )
    if n == 0:
        raise DataError(
            "the masks hold no labelled pixel outside nodata/ignore_index. Fix: check data.masks and data.ignore_index"
        )
    if class_names is not None and len(class_names) != n:
        raise ConfigError(f"data.class_names has {len(class_names)} names but the labels give {n} classes")
    return int(n), counts
