"""Chips: how a window of a scene becomes a sample, the chip datasets of a split and the train sampler."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sciadapt.datamodules.raster.scenes import Scene, location_of, read_labels, read_window, temporal_coords_of
from sciadapt.datamodules.sampling import EpochShuffleSampler


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
