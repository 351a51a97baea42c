"""Checks of a raster ``data:`` section that its signature cannot express (values that depend on each other).

Choices and bounds of single values are ``Literal`` / ``Annotated`` types in the signature of
:class:`~sciadapt.datamodules.raster.datamodule.RasterDataModule`; the config layer checks those.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sciadapt.errors import ConfigError

if TYPE_CHECKING:
    from sciadapt.datamodules.raster.datamodule import RasterDataModule

SPLIT_NAMES = ("train", "val", "test")


def check_config(dm: RasterDataModule, label_map: Any) -> None:
    """Raise one :class:`ConfigError` listing every inconsistency of ``dm``'s settings.

    Args:
        dm: The datamodule, its settings stored.
        label_map: ``label_map`` as given (``dm.label_map`` is None when it was not a mapping of integers).
    """
    problems: list[str] = list(dm._argument_problems)  # the signature's own checks come first
    if dm.requested_bands is not None:
        dupes = sorted({b for b in dm.requested_bands if dm.requested_bands.count(b) > 1})
        if dupes:
            problems.append(f"data.bands: lists {', '.join(map(repr, dupes))} more than once")
        if not dm.requested_bands:
            problems.append("data.bands: is empty; list the bands to read or leave it null (all bands)")
    mean, std = dm.config_mean, dm.config_std
    if (mean is None) != (std is None):
        problems.append("data.mean and data.std: give both (per-band statistics) or neither")
    elif mean is not None and std is not None:
        if len(mean) != len(std):
            problems.append(f"data.mean has {len(mean)} values but data.std has {len(std)}; give one per band")
        if dm.requested_bands is not None and len(mean) != len(dm.requested_bands):
            problems.append(
                f"data.mean/std: {len(mean)} values for {len(dm.requested_bands)} data.bands; give one per band"
            )
        if any(s <= 0 for s in std):
            problems.append(f"data.std: every value must be > 0, got {std}")
        if dm.normalise in ("compute", "none"):
            problems.append(
                f"data.mean/std are given but data.normalise={dm.normalise} would ignore them. Fix: remove them "
                "or set data.normalise=config"
            )
    if dm.normalise == "config" and mean is None:
        problems.append("data.normalise=config needs data.mean and data.std (one value per band)")
    if dm.split in ("x", "y"):
        f = dm.split_fractions
        if len(f) != 3 or any(not isinstance(v, int | float) or v < 0 for v in f):
            problems.append(f"data.split_fractions: expected three numbers >= 0 [train, val, test], got {f}")
        elif not math.isclose(sum(f), 1.0, abs_tol=1e-6) or f[0] <= 0:
            problems.append(f"data.split_fractions: must sum to 1 with train > 0, got {f}")
    if dm.split == "boxes":
        problems.extend(check_boxes(dm.split_boxes))
    if dm.split == "scenes":
        problems.extend(check_scene_split(dm.split_scenes))
    if dm.task == "regression":
        given: tuple[tuple[str, Any], ...] = (
            ("label_map", label_map),
            ("n_classes", dm.requested_n_classes),
            ("class_names", dm.class_names),
        )
        for key, value in given:
            if value is not None:
                problems.append(f"data.{key}: only for task=segmentation; remove it for task=regression")
    else:
        n = dm.requested_n_classes
        if n is not None and 0 <= dm.ignore_index < n:
            problems.append(
                f"data.ignore_index={dm.ignore_index} is one of the {n} classes; choose a value outside "
                f"0..{n - 1} (e.g. -1 or 255)"
            )
        if dm.class_names is not None and n is not None and len(dm.class_names) != n:
            problems.append(f"data.class_names: {len(dm.class_names)} names for n_classes={n}")
        if label_map is not None and dm.label_map is None:
            problems.append(f"data.label_map: expected a mapping of integer labels, got {label_map!r}")
    if problems:
        raise ConfigError(problems)


def int_map(value: Any) -> dict[int, int] | None:
    """A YAML/CLI label map with integer (or integer-string) keys and values; None if it is not one."""
    if not isinstance(value, Mapping):
        return None
    try:
        return {int(k): int(v) for k, v in value.items()}
    except (TypeError, ValueError):
        return None


def check_boxes(boxes: dict[str, list[list[float]]] | None) -> list[str]:
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


def check_scene_split(split: dict[str, list[int]] | None) -> list[str]:
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
