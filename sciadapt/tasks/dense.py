"""Dense prediction: semantic segmentation and pixel-wise regression on image (series) backbones.

Both tasks keep their evaluation state bounded: validation and test accumulate a ``(K, K)``
confusion matrix (segmentation) or per-output sums (regression) batch by batch, so scores are
exact over the whole split (not means of per-batch scores) at a memory cost independent of its
size. Score definitions are in :mod:`sciadapt.metrics.dense`; in particular a class absent from
both truth and prediction has NaN IoU/F1 and is left out of ``miou`` and ``mean_f1``.

The test (and every baseline) also keeps each image's own accumulator (``K * K`` integers or
``C * 5`` floats per image, in test order) in ``test_window_scores``: the comparison's bootstrap
over test images rescores resampled sets of images from them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, ClassVar

import torch
from torch import Tensor, nn

from sciadapt.errors import ConfigError, DataError
from sciadapt.heads.regress import RegressionHead, as_maps
from sciadapt.heads.segment import SegmentationHead
from sciadapt.metrics.bootstrap import WindowScores
from sciadapt.metrics.dense import (
    confusion_matrix,
    confusion_per_sample,
    index_threshold_labels,
    iou_per_class,
    pixel_accuracy,
    regression_scores,
    regression_sums,
    regression_window_scores,
    segmentation_scores,
    segmentation_window_scores,
)
from sciadapt.registry import TASKS
from sciadapt.spec import FromData
from sciadapt.tasks.base import Task
from sciadapt.types import Batch


class DenseTask(Task):
    """A task whose validation scores come from one accumulator summed over the epoch.

    Subclasses implement :meth:`accumulate` (one batch -> an accumulator tensor) and
    :meth:`epoch_scores` (summed accumulator -> the scalars logged as ``val/<name>``).
    """

    WINDOW_UNIT: ClassVar[str] = "test images"

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__(backbone, head)
        self._val_acc: Tensor | None = None
        self._test_images: list[Tensor] = []

    def accumulate(self, pred: Tensor, batch: Mapping[str, Any]) -> Tensor:
        raise NotImplementedError

    def accumulate_per_image(self, pred: Tensor, batch: Mapping[str, Any]) -> Tensor:
        """One accumulator per image of the batch, ``(B, *acc)``; their sum is :meth:`accumulate`'s."""
        raise NotImplementedError

    def window_scores(self, images: Tensor) -> dict[str, WindowScores]:
        """The table metrics as per-image accumulators of ``images`` ``(N, *acc)`` (test order)."""
        raise NotImplementedError

    def epoch_scores(self, acc: Tensor) -> dict[str, float]:
        raise NotImplementedError

    def on_validation_epoch_start(self) -> None:
        self._val_acc = None

    def validation_metrics(self, pred: Tensor, batch: Batch) -> dict[str, Tensor]:
        # summed here and scored once per epoch (on_validation_epoch_end): an IoU averaged over
        # batches is not the split's IoU
        acc = self.accumulate(pred.detach(), batch)
        self._val_acc = acc if self._val_acc is None else self._val_acc + acc
        return {}

    def on_validation_epoch_end(self) -> None:
        if self._val_acc is None:
            return
        acc, self._val_acc = self._val_acc, None
        if self.trainer.world_size > 1:
            acc = self.trainer.strategy.reduce(acc, reduce_op="sum")
        for name, value in self.epoch_scores(acc.cpu()).items():
            self.log(f"val/{name}", value, sync_dist=False)

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._test_images = []

    def collect_test_outputs(self, pred: Tensor, batch: Batch) -> dict[str, Tensor]:
        images = self.accumulate_per_image(pred.detach(), batch).cpu()
        self._test_images.append(images)  # for the comparison's intervals (see the module docstring)
        return {"acc": images.sum(0, keepdim=True)}

    def on_test_epoch_end(self) -> None:
        images, self._test_images = self._test_images, []
        super().on_test_epoch_end()
        if images:
            self.test_window_scores = self.window_scores(torch.cat(images))


class SegmentationTask(DenseTask):
    """Per-pixel classification into ``n_classes``; ``y`` is ``(B, H, W)`` integer labels.

    Validation logs ``val/miou`` and ``val/accuracy``; the test gives the keys of
    :func:`sciadapt.metrics.dense.segmentation_scores` (``miou``, ``mean_f1``, ``accuracy``,
    ``n_pixels``, ``iou/<class>``, ``f1/<class>``).
    """

    #: ``majority``: the training labels' most frequent class; ``ndwi``: McFeeters' water index
    BASELINES: ClassVar[tuple[str, ...]] = ("majority", "ndwi")

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        n_classes: int,
        ignore_index: int,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__(backbone, head)
        self.n_classes = n_classes
        self.ignore_index = ignore_index
        self.class_names = class_names

    def point(self, pred: Tensor) -> Tensor:
        labels: Tensor = self.head.point(pred)  # (B, H, W)
        return labels

    def _confusion(self, labels_pred: Tensor, batch: Mapping[str, Any]) -> Tensor:
        return confusion_matrix(labels_pred, batch["y"], self.n_classes, self.ignore_index, batch.get("mask"))

    def accumulate(self, pred: Tensor, batch: Mapping[str, Any]) -> Tensor:
        return self._confusion(self.point(pred), batch)  # (K, K)

    def accumulate_per_image(self, pred: Tensor, batch: Mapping[str, Any]) -> Tensor:
        return self._confusions(self.point(pred), batch)  # (B, K, K)

    def _confusions(self, labels_pred: Tensor, batch: Mapping[str, Any]) -> Tensor:
        return confusion_per_sample(labels_pred, batch["y"], self.n_classes, self.ignore_index, batch.get("mask"))

    def window_scores(self, images: Tensor) -> dict[str, WindowScores]:
        return segmentation_window_scores(images.numpy(), self.class_names)

    def _scored(self, images: list[Tensor]) -> dict[str, Any]:
        """Scores of per-image confusion matrices, keeping them for the comparison's intervals."""
        stacked = torch.cat(images) if images else torch.zeros(0, self.n_classes, self.n_classes, dtype=torch.long)
        self.test_window_scores = self.window_scores(stacked)
        return segmentation_scores(stacked.sum(0), self.class_names)

    def epoch_scores(self, acc: Tensor) -> dict[str, float]:
        iou = iou_per_class(acc)
        present = ~torch.isnan(iou)
        return {
            "miou": float(iou[present].mean()) if bool(present.any()) else float("nan"),
            "accuracy": pixel_accuracy(acc),
        }

    def evaluate_outputs(self, outs: dict[str, Tensor]) -> dict[str, Any]:
        return segmentation_scores(outs["acc"].sum(0), self.class_names)

    # -- baselines, scored by the same confusion-matrix code ----------------------------------
    def class_counts(self, batches: Iterable[Mapping[str, Any]]) -> Tensor:
        """``(K,)`` valid-pixel count per class over ``batches`` (labels only)."""
        counts = torch.zeros(self.n_classes, dtype=torch.long)
        for batch in batches:
            y = batch["y"]
            conf = confusion_matrix(y, y, self.n_classes, self.ignore_index, batch.get("mask"))
            counts += conf.diagonal().cpu()
        return counts

    def score_constant(self, dm: Any, label: int) -> dict[str, Any]:
        """Scores of predicting ``label`` at every pixel of the test split."""
        images = [self._confusions(torch.full_like(batch["y"], label), batch).cpu() for batch in dm.test_dataloader()]
        return self._scored(images)

    def score_index_baseline(
        self,
        dm: Any,
        score_fn: Callable[[Mapping[str, Any]], Tensor],
        threshold: float = 0.0,
        positive_class: int = 1,
        negative_class: int = 0,
    ) -> dict[str, Any]:
        """Scores of a thresholded per-pixel index (e.g. NDWI > 0 -> water) on the test split.

        Args:
            dm: The datamodule; its ``test_dataloader()`` is read.
            score_fn: Batch -> ``(B, H, W)`` score map (e.g. NDWI computed from named bands of ``x``).
            threshold: Pixels with ``score > threshold`` are predicted ``positive_class``.
            positive_class: Label above the threshold.
            negative_class: Label at or below it (NaN scores included).
        """
        images = []
        for batch in dm.test_dataloader():
            pred = index_threshold_labels(score_fn(batch), batch["y"], threshold, positive_class, negative_class)
            images.append(self._confusions(pred, batch).cpu())
        return self._scored(images)

    def baseline(self, name: str, dm: Any) -> dict[str, Any]:
        """``majority``: the most frequent class of the training labels, predicted everywhere;
        ``ndwi``: McFeeters' water index (GREEN - NIR) / (GREEN + NIR) > 0 -> class 1 (water).

        Raises:
            ConfigError: For another name.
            DataError: If the training split has no valid label.
        """
        if name == "ndwi":
            return self.score_index_baseline(dm, ndwi_score_fn(dm), threshold=0.0)
        if name != "majority":
            raise ConfigError(f"evaluation.baselines: {name!r} is not a segmentation baseline (majority, ndwi)")
        counts = self.class_counts(_train_batches(dm))
        if int(counts.sum()) == 0:
            raise DataError("majority baseline: the training split has no valid label (all nodata/ignore_index)")
        return self.score_constant(dm, int(counts.argmax()))


class PixelRegressionTask(DenseTask):
    """Per-pixel regression; ``y`` is ``(B, C, H, W)`` (or ``(B, H, W)`` with one output).

    Validation logs ``val/rmse`` and ``val/mae``; the test gives ``rmse``, ``mae``, ``r2``,
    ``n_pixels`` (and per-output ``rmse/<name>``, ``mae/<name>``, ``r2/<name>`` with several
    outputs), over the observed (``mask == 1``) pixels.
    """

    #: ``mean``: the training targets' mean of each output
    BASELINES: ClassVar[tuple[str, ...]] = ("mean",)

    def __init__(self, backbone: nn.Module, head: nn.Module, output_names: list[str] | None = None) -> None:
        super().__init__(backbone, head)
        self.output_names = output_names

    def point(self, pred: Tensor) -> Tensor:
        values: Tensor = self.head.point(pred)  # (B, C, H, W)
        return values

    def accumulate(self, pred: Tensor, batch: Mapping[str, Any]) -> Tensor:
        p = self.point(pred)
        y, mask = as_maps(p, batch["y"], batch.get("mask"))
        return regression_sums(p, y.to(p.device), None if mask is None else mask.to(p.device))  # (C, 5)

    def accumulate_per_image(self, pred: Tensor, batch: Mapping[str, Any]) -> Tensor:
        p = self.point(pred)
        y, mask = as_maps(p, batch["y"], batch.get("mask"))
        m = None if mask is None else mask.to(p.device)
        return regression_sums(p, y.to(p.device), m, per_sample=True)  # (B, C, 5)

    def window_scores(self, images: Tensor) -> dict[str, WindowScores]:
        return regression_window_scores(images.numpy(), self.output_names)

    def epoch_scores(self, acc: Tensor) -> dict[str, float]:
        scores = regression_scores(acc)
        return {"rmse": scores["rmse"], "mae": scores["mae"]}

    def evaluate_outputs(self, outs: dict[str, Tensor]) -> dict[str, Any]:
        return regression_scores(outs["acc"].sum(0), self.output_names)

    def baseline(self, name: str, dm: Any) -> dict[str, Any]:
        """``mean``: the training targets' mean of each output, predicted everywhere (R^2 about 0).

        Raises:
            ConfigError: For another name.
        """
        if name != "mean":
            raise ConfigError(f"evaluation.baselines: {name!r} is not a pixel-regression baseline (mean)")
        train: Tensor | None = None
        for batch in _train_batches(dm):
            y = batch["y"]
            y = y if y.dim() == 4 else y.unsqueeze(1)  # (B, C, H, W)
            mask = batch.get("mask")
            s = regression_sums(y, y, mask if mask is None or mask.dim() == 4 else mask.unsqueeze(1))
            train = s if train is None else train + s
        if train is None or bool((train[:, 0] == 0).any()):
            raise DataError("mean baseline: the training split has an output without observed pixels")
        mean = (train[:, 3] / train[:, 0]).float()  # (C,)
        images = []
        for batch in dm.test_dataloader():
            y = batch["y"]
            shape = (y.shape[0], mean.numel(), *y.shape[-2:])
            pred = mean.view(1, -1, 1, 1).expand(shape)
            y, mask = as_maps(pred, y, batch.get("mask"))
            images.append(regression_sums(pred, y, mask, per_sample=True))
        if not images:
            raise DataError("mean baseline: the test split is empty")
        stacked = torch.cat(images)  # (N, C, 5)
        self.test_window_scores = self.window_scores(stacked)
        return regression_scores(stacked.sum(0), self.output_names)


def _train_batches(dm: Any) -> Iterable[Mapping[str, Any]]:
    """The training batches of ``dm``, setting it up for ``fit`` first if it was only set up for test."""
    try:
        loader = dm.train_dataloader()
    except (AttributeError, RuntimeError, KeyError, TypeError):
        dm.setup("fit")
        loader = dm.train_dataloader()
    return loader  # type: ignore[no-any-return]


@TASKS.register("segmentation")
def build_segmentation(
    backbone: nn.Module,
    head: nn.Module,
    n_classes: Annotated[int, FromData] = 2,
    ignore_index: Annotated[int, FromData] = -1,
    class_names: Annotated[list[str] | None, FromData] = None,
) -> SegmentationTask:
    """Semantic segmentation task (cross-entropy from the head; IoU/F1/accuracy scores).

    Args:
        backbone: injected by the runner.
        head: injected by the runner; a segmentation head (``upernet``, ``fcn``, ``conv_decoder``, ``unet``).
        n_classes: Number of classes; follows the data.
        ignore_index: Label left out of loss and scores; follows the data.
        class_names: Names for the per-class scores (``iou/<name>``); default the class indices.

    Raises:
        ConfigError: If the head does not predict ``n_classes`` classes or the names do not fit.
    """
    problems = []
    if not isinstance(head, SegmentationHead):
        problems.append(
            f"task segmentation needs a segmentation head (upernet, fcn, conv_decoder, unet), got {type(head).__name__}"
        )
    else:
        if head.n_classes != n_classes:
            problems.append(f"head predicts {head.n_classes} classes but task.n_classes={n_classes}: make them agree")
        if head.ignore_index != ignore_index:
            problems.append(
                f"head.ignore_index={head.ignore_index} but task.ignore_index={ignore_index}: make them agree"
            )
    if class_names is not None and len(class_names) != n_classes:
        problems.append(f"task.class_names: expected {n_classes} names, one per class, got {len(class_names)}")
    if problems:
        raise ConfigError(problems)
    return SegmentationTask(backbone, head, n_classes, ignore_index, class_names)


@TASKS.register("pixel_regression")
def build_pixel_regression_task(
    backbone: nn.Module,
    head: nn.Module,
    output_names: Annotated[list[str] | None, FromData] = None,
) -> PixelRegressionTask:
    """Pixel-wise regression task (masked loss from the head; RMSE/MAE/R^2 scores).

    Args:
        backbone: injected by the runner.
        head: injected by the runner; a regression head (``pixel_regression``, ``unet_regression``).
        output_names: Names for the per-output scores when there are several outputs.

    Raises:
        ConfigError: If the head is not a regression head or the names do not fit.
    """
    if not isinstance(head, RegressionHead):
        raise ConfigError(
            f"task pixel_regression needs a pixel_regression head (or unet_regression), got {type(head).__name__}"
        )
    if output_names is not None and len(output_names) != head.n_outputs:
        raise ConfigError(
            f"task.output_names: expected {head.n_outputs} names, one per output, got {len(output_names)}"
        )
    return PixelRegressionTask(backbone, head, output_names)


# band names that mean green and near-infrared in the datasets we read (HLS, Sentinel-2 L1C/L2A)
_GREEN = ("green", "b03", "b3")
_NIR = ("nir", "nir_narrow", "b08", "b8", "b8a", "nir_broad")


def ndwi_score_fn(dm: Any) -> Callable[[Mapping[str, Any]], Tensor]:
    """Batch -> NDWI map ``(B, H, W)`` on reflectances (the datamodule's normalisation undone).

    Raises:
        ConfigError: If the data has no green or no near-infrared band (names as in HLS or Sentinel-2).
    """
    names = [str(b).lower() for b in dm.bands]
    green = next((names.index(n) for n in _GREEN if n in names), None)
    nir = next((names.index(n) for n in _NIR if n in names), None)
    if green is None or nir is None:
        raise ConfigError(
            f"evaluation.baselines: ndwi needs a green and a near-infrared band; the data has {list(dm.bands)} "
            "(names like GREEN/B03 and NIR/NIR_NARROW/B08)"
        )
    mean = torch.as_tensor(dm.mean, dtype=torch.float32)
    std = torch.as_tensor(dm.std, dtype=torch.float32)

    def score(batch: Mapping[str, Any]) -> Tensor:
        x: Tensor = batch["x"]  # (B, C, T, H, W), normalised; the last frame is scored
        g = x[:, green, -1] * std[green] + mean[green]
        n = x[:, nir, -1] * std[nir] + mean[nir]
        return (g - n) / (g + n)  # NaN where both are 0 -> predicted "not water"

    return score
