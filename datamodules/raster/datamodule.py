"""The raster datamodule: scenes cut into chips of train/val/test regions (see the package docstring)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from sciadapt.config import check_arguments
from sciadapt.datamodules.raster.checks import SPLIT_NAMES, check_config, int_map
from sciadapt.datamodules.raster.chips import ChipDataset, ChipSpec, EpochChipSampler, grid_starts
from sciadapt.datamodules.raster.scenes import Scene, build_scenes, expand_paths
from sciadapt.datamodules.raster.stats import Region, compute_stats, scan_labels
from sciadapt.datamodules.raster.torchgeo_files import torchgeo_files
from sciadapt.datamodules.sampling import apply_resume
from sciadapt.errors import ConfigError, DataError
from sciadapt.registry import DATAMODULES
from sciadapt.spec import FromData, Ge

_DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)


class RasterDataModule(L.LightningDataModule):
    """Raster scenes and masks cut into chips (the config schema of ``data:`` for dense tasks).

    Chips of raster scenes for segmentation or pixel-wise regression. File metadata is read on
    first use (``bands``, ``describe()``), the label scan and statistics in :meth:`setup`, which
    is idempotent. Choices and bounds are in the signature (the config layer checks them); the
    constructor checks the settings that depend on each other.

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

    Raises:
        ConfigError: If settings contradict each other (see :func:`~sciadapt.datamodules.raster.checks.check_config`).
    """

    # set by @check_arguments on every instance before __init__ runs
    _argument_problems: list[str]

    @check_arguments("data")
    def __init__(
        self,
        images: list[str] | str,
        masks: list[str] | str | None = None,
        bands: Annotated[list[str] | None, FromData] = None,
        band_names: list[str] | None = None,
        frames: Annotated[int, Ge(1)] = 1,
        frame_layout: Literal["files", "bands"] = "files",
        torchgeo: str | None = None,
        task: Literal["segmentation", "regression"] = "segmentation",
        n_classes: Annotated[int | None, Ge(1), FromData] = None,
        class_names: Annotated[list[str] | None, FromData] = None,
        label_map: dict[int, int] | None = None,
        ignore_index: Annotated[int, FromData] = -1,
        nodata: float | None = None,
        chip_size: Annotated[int, Ge(1)] = 224,
        sampler: Literal["random", "grid"] = "random",
        chips_per_epoch: Annotated[int | None, Ge(1)] = None,
        stride: Annotated[int | None, Ge(1)] = None,
        split: Literal["x", "y", "boxes", "scenes"] = "x",
        split_fractions: list[float] | None = None,
        split_boxes: dict[str, list[list[float]]] | None = None,
        split_scenes: dict[str, list[int]] | None = None,
        normalise: Literal["auto", "config", "compute", "none"] = "auto",
        mean: list[float] | None = None,
        std: list[float] | None = None,
        augment: bool = False,
        batch_size: Annotated[int, Ge(1)] = 8,
        eval_batch_size: Annotated[int, Ge(1)] = 16,
        num_workers: Annotated[int, Ge(0)] = 0,
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
        self.label_map = int_map(label_map) if label_map is not None else None
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
        check_config(self, label_map)

        self._scenes: list[Scene] | None = None
        self._bands: list[str] | None = None
        self._mean: np.ndarray | None = None
        self._std: np.ndarray | None = None
        self._n_classes: int | None = None
        self.class_counts: dict[str, dict[int, int]] = {}
        self._positions: dict[str, np.ndarray] | None = None
        self._regions: np.ndarray | None = None

    # ------------------------------------------------------------------ metadata
    def _open(self) -> list[Scene]:
        if self._scenes is None:
            dataset_bands, dataset_dates = None, None
            roots = [self.images] if isinstance(self.images, str) else list(self.images)
            if self.torchgeo is not None:
                images, dataset_bands, dataset_dates = torchgeo_files(self.torchgeo, roots)
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
    def regions(self, split: str) -> list[Region]:
        """``(scene, row, col, h, w)`` of every region of ``split`` (empty regions left out)."""
        out: list[Region] = []
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
                self._mean, self._std = compute_stats(scenes, regions["train"], len(self.bands))
        if self.task == "segmentation" and scenes[0].mask is not None:
            self._n_classes, self.class_counts = scan_labels(
                scenes, regions, self.label_map, self.ignore_index, self.requested_n_classes, self.class_names
            )
        elif self.task == "segmentation":
            self._n_classes = self.requested_n_classes
        self._positions = positions

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


# the class is the registered builder: its __init__ is the config schema of `data: {name: raster}`
DATAMODULES.register("raster")(RasterDataModule)
