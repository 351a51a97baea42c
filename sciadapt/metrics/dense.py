"""Scores of dense (per-pixel) predictions, computed from accumulators of bounded size.

Segmentation is scored from a ``(K, K)`` confusion matrix (rows: truth, columns: prediction) that
is summed over batches, so a test set of any size costs ``K * K`` integers. Regression is scored
from per-output sums ``(n, sum e^2, sum |e|, sum y, sum y^2)`` in float64, summed the same way.

Definitions, per class ``k`` with ``tp``, ``fp``, ``fn`` read off the confusion matrix:

- **IoU** = ``tp / (tp + fp + fn)``; **F1** = ``2 tp / (2 tp + fp + fn)`` (the Dice score).
- A class that appears neither in the truth nor in the prediction has ``tp + fp + fn == 0``: its
  IoU and F1 are undefined, reported as NaN and left out of ``miou`` / ``mean_f1`` (the
  ``nanmean`` convention of mmseg and torchmetrics' ``ignore_index``-free IoU). A class that is
  predicted but never true scores 0 and does count.
- **accuracy** = ``trace / sum``: overall pixel accuracy.
- Pixels whose label equals ``ignore_index`` (or whose ``mask`` is 0) never enter the matrix.
- **RMSE** = ``sqrt(sum e^2 / n)``, **MAE** = ``sum |e| / n`` and **R^2** = ``1 - SSE / SST`` with
  ``SST = sum (y - mean y)^2`` over the observed pixels of each output; the overall R^2 is the
  unweighted mean over outputs (scikit-learn's ``uniform_average``), RMSE and MAE pool all outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from sciadapt.errors import DataError, ShapeError
from sciadapt.metrics.bootstrap import Statistic, WindowScores

#: Columns of the regression accumulator returned by :func:`regression_sums`.
REGRESSION_SUMS = ("n", "sse", "sae", "sum_y", "sum_y2")


def _valid_pixels(target: Tensor, ignore_index: int | None, mask: Tensor | None) -> Tensor:
    valid = torch.ones_like(target, dtype=torch.bool)
    if ignore_index is not None:
        valid &= target != ignore_index
    if mask is not None:
        if mask.shape != target.shape:
            raise ShapeError(f"mask: expected the labels' shape {tuple(target.shape)}, got {tuple(mask.shape)}")
        valid &= mask.bool()
    return valid


def confusion_matrix(
    pred: Tensor,
    target: Tensor,
    n_classes: int,
    ignore_index: int | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Counts of (true class, predicted class) over the valid pixels.

    Args:
        pred: Predicted labels, any shape, integer.
        target: True labels, same shape as ``pred``.
        n_classes: ``K``.
        ignore_index: Label value that marks pixels to leave out (nodata).
        mask: Optional, same shape; pixels where it is 0 are left out too.

    Returns:
        ``(K, K)`` int64 matrix on ``target``'s device; entry ``[t, p]`` counts pixels of class
        ``t`` predicted as ``p``.

    Raises:
        ShapeError: If the shapes differ.
        DataError: If a valid label or prediction lies outside ``[0, K)``.
    """
    if pred.shape != target.shape:
        raise ShapeError(f"labels: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    valid = _valid_pixels(target, ignore_index, mask)
    t, p = _checked_labels(pred, target, valid, n_classes, ignore_index)
    return torch.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def confusion_per_sample(
    pred: Tensor,
    target: Tensor,
    n_classes: int,
    ignore_index: int | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """:func:`confusion_matrix` of every sample (the first axis) on its own: ``(B, K, K)`` int64,
    whose sum over samples is the batch's matrix. Arguments and errors as there."""
    if pred.shape != target.shape:
        raise ShapeError(f"labels: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    valid = _valid_pixels(target, ignore_index, mask)
    b = target.shape[0]
    sample = torch.arange(b, device=target.device).view(-1, *[1] * (target.dim() - 1)).expand_as(target)[valid]
    t, p = _checked_labels(pred, target, valid, n_classes, ignore_index)
    kk = n_classes * n_classes
    return torch.bincount(sample * kk + t * n_classes + p, minlength=b * kk).reshape(b, n_classes, n_classes)


def _checked_labels(
    pred: Tensor, target: Tensor, valid: Tensor, n_classes: int, ignore_index: int | None
) -> tuple[Tensor, Tensor]:
    """The valid pixels' labels and predictions (int64), checked to lie in ``[0, K)``."""
    t = target[valid].long()
    p = pred[valid].long().to(t.device)
    if t.numel():
        for name, v in (("label", t), ("prediction", p)):
            lo, hi = int(v.min()), int(v.max())
            if lo < 0 or hi >= n_classes:
                bad = lo if lo < 0 else hi
                raise DataError(
                    f"{name} value {bad} outside the {n_classes} classes [0, {n_classes - 1}]: set n_classes to "
                    f"cover every class, or ignore_index (now {ignore_index}) to the nodata value"
                )
    return t, p


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` in float64, NaN where ``den == 0``."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(den, math.nan))


def iou_per_class(confusion: Tensor) -> Tensor:
    """``(K,)`` float64 IoU; NaN for a class absent from both truth and prediction."""
    tp = confusion.diagonal()
    return _ratio(tp, confusion.sum(0) + confusion.sum(1) - tp)


def f1_per_class(confusion: Tensor) -> Tensor:
    """``(K,)`` float64 F1 (Dice); NaN for a class absent from both truth and prediction."""
    tp = confusion.diagonal()
    return _ratio(2 * tp, confusion.sum(0) + confusion.sum(1))


def pixel_accuracy(confusion: Tensor) -> float:
    """Share of valid pixels predicted correctly (NaN when there are none)."""
    total = int(confusion.sum())
    return float(confusion.diagonal().sum()) / total if total else math.nan


def _nanmean(v: Tensor) -> float:
    keep = ~torch.isnan(v)
    return float(v[keep].mean()) if bool(keep.any()) else math.nan


def segmentation_scores(confusion: Tensor, class_names: Sequence[str] | None = None) -> dict[str, float]:
    """Every segmentation score of a summed confusion matrix, as a flat dict of floats.

    Keys: ``miou``, ``mean_f1``, ``accuracy``, ``n_pixels`` and, per class, ``iou/<name>`` and
    ``f1/<name>`` (``<name>`` from ``class_names``, else the class index).

    Raises:
        ValueError: If ``class_names`` does not have one name per class.
    """
    k = confusion.shape[0]
    names = [str(i) for i in range(k)] if class_names is None else [str(n) for n in class_names]
    if len(names) != k:
        raise ValueError(f"class_names: expected {k} names, one per class, got {len(names)}")
    iou, f1 = iou_per_class(confusion), f1_per_class(confusion)
    out = {
        "miou": _nanmean(iou),
        "mean_f1": _nanmean(f1),
        "accuracy": pixel_accuracy(confusion),
        "n_pixels": float(confusion.sum()),
    }
    out.update({f"iou/{n}": float(v) for n, v in zip(names, iou, strict=True)})
    out.update({f"f1/{n}": float(v) for n, v in zip(names, f1, strict=True)})
    return out


def index_threshold_confusion(
    score: Tensor,
    target: Tensor,
    threshold: float = 0.0,
    n_classes: int = 2,
    positive_class: int = 1,
    negative_class: int = 0,
    ignore_index: int | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Confusion matrix of a per-pixel score map thresholded into two classes.

    A pixel is predicted ``positive_class`` where ``score > threshold`` and ``negative_class``
    elsewhere; a NaN score (e.g. ``0 / 0`` in a normalised difference index) is not above the
    threshold, so it counts as a negative prediction rather than being dropped: the baseline is
    scored on exactly the pixels the model is scored on.

    Args:
        score: Per-pixel score, same shape as ``target`` (e.g. NDWI ``(B, H, W)``).
        target: True labels.
        threshold: Decision threshold.
        n_classes: ``K`` of the returned matrix (the labels may have more than two classes).
        positive_class: Label predicted above the threshold.
        negative_class: Label predicted at or below it.
        ignore_index: Label value left out.
        mask: Optional validity mask (0: left out).

    Returns:
        ``(K, K)`` int64 confusion matrix, combinable with the model's by summation.
    """
    pred = index_threshold_labels(score, target, threshold, positive_class, negative_class)
    return confusion_matrix(pred, target, n_classes, ignore_index=ignore_index, mask=mask)


def index_threshold_labels(
    score: Tensor, target: Tensor, threshold: float = 0.0, positive_class: int = 1, negative_class: int = 0
) -> Tensor:
    """The labels :func:`index_threshold_confusion` scores: ``positive_class`` where ``score > threshold``.

    Raises:
        ShapeError: If ``score`` and ``target`` differ in shape.
    """
    if score.shape != target.shape:
        raise ShapeError(f"index baseline: score {tuple(score.shape)} and labels {tuple(target.shape)} differ")
    return torch.where(score > threshold, positive_class, negative_class)


def regression_sums(pred: Tensor, target: Tensor, mask: Tensor | None = None, per_sample: bool = False) -> Tensor:
    """Per-output accumulator ``(C, 5)`` float64 of ``(n, sse, sae, sum_y, sum_y2)`` (``(B, C, 5)``,
    one per sample, with ``per_sample``).

    Args:
        pred: ``(B, C, H, W)`` prediction.
        target: ``(B, C, H, W)`` target.
        mask: ``(B, C, H, W)`` or ``(B, 1, H, W)``; pixels where it is 0 are left out (their target
            may be NaN).

    Raises:
        ShapeError: If the shapes do not agree.
    """
    if pred.dim() != 4 or pred.shape != target.shape:
        raise ShapeError(
            f"regression scores: expected B C H W pairs, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    p, y = pred.detach().double(), target.detach().double()
    if mask is None:
        w = torch.ones_like(y)
    else:
        if mask.dim() != 4 or mask.shape[1] not in (1, y.shape[1]) or mask.shape[2:] != y.shape[2:]:
            raise ShapeError(
                f"regression mask: expected (B, C or 1, H, W) for {tuple(y.shape)}, got {tuple(mask.shape)}"
            )
        w = mask.to(y.device).double().expand_as(y)
    keep = w > 0
    err = torch.where(keep, p - y, 0.0)
    y = torch.where(keep, y, 0.0)
    w = keep.double()
    dims = (2, 3) if per_sample else (0, 2, 3)
    return torch.stack(
        [w.sum(dims), err.square().sum(dims), err.abs().sum(dims), y.sum(dims), y.square().sum(dims)], dim=-1
    )


def regression_scores(sums: Tensor, output_names: Sequence[str] | None = None) -> dict[str, float]:
    """RMSE, MAE and R^2 from summed :func:`regression_sums` accumulators.

    Keys: ``rmse``, ``mae``, ``r2``, ``n_pixels``; with more than one output also ``rmse/<name>``,
    ``mae/<name>`` and ``r2/<name>`` per output. R^2 is NaN for an output whose observed targets
    are constant (``SST == 0``) or absent.
    """
    s = sums.double()
    n, sse, sae, sy, sy2 = s.unbind(1)
    sst = sy2 - sy.square() / n.clamp_min(1)
    r2 = torch.where((n > 0) & (sst > 0), 1 - sse / sst.clamp_min(1e-300), torch.full_like(n, math.nan))
    total = float(n.sum())
    out = {
        "rmse": math.sqrt(float(sse.sum()) / total) if total else math.nan,
        "mae": float(sae.sum()) / total if total else math.nan,
        "r2": _nanmean(r2),
        "n_pixels": total,
    }
    if s.shape[0] > 1:
        names = [str(i) for i in range(s.shape[0])] if output_names is None else [str(x) for x in output_names]
        rmse, mae = _ratio(sse, n).sqrt(), _ratio(sae, n)
        for i, name in enumerate(names):
            out[f"rmse/{name}"] = float(rmse[i])
            out[f"mae/{name}"] = float(mae[i])
            out[f"r2/{name}"] = float(r2[i])
    return out


# -- the same scores of resampled images, for the comparison's bootstrap intervals ----------------
def _np_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        out: np.ndarray = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def _nanmean_last(v: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the finite entries (NaN where none, no warning)."""
    finite = np.isfinite(v)
    return _np_ratio(np.where(finite, v, 0.0).sum(axis=-1), finite.sum(axis=-1).astype(np.float64))


def _column(each: Statistic, i: int) -> Statistic:
    """Column ``i`` of a statistic with one value per class or output, ``(R, K) -> (R,)``."""

    def picked(total: np.ndarray) -> np.ndarray:
        out: np.ndarray = each(total)[:, i]
        return out

    return picked


def _averaged(each: Statistic) -> Statistic:
    """The mean over the defined classes or outputs of a statistic with one value per class or output."""

    def mean(total: np.ndarray) -> np.ndarray:
        return _nanmean_last(each(total))

    return mean


def _iou_each(c: np.ndarray) -> np.ndarray:  # (R, K, K) -> (R, K)
    tp = np.diagonal(c, axis1=1, axis2=2)
    return _np_ratio(tp, c.sum(axis=1) + c.sum(axis=2) - tp)


def _f1_each(c: np.ndarray) -> np.ndarray:  # (R, K, K) -> (R, K)
    return _np_ratio(2 * np.diagonal(c, axis1=1, axis2=2), c.sum(axis=1) + c.sum(axis=2))


def _accuracy(c: np.ndarray) -> np.ndarray:  # (R, K, K) -> (R,)
    return _np_ratio(np.trace(c, axis1=1, axis2=2), c.sum(axis=(1, 2)))


def segmentation_window_scores(
    confusions: np.ndarray, class_names: Sequence[str] | None = None
) -> dict[str, WindowScores]:
    """:func:`segmentation_scores` as per-image accumulators (:mod:`sciadapt.metrics.bootstrap`).

    Args:
        confusions: ``(N, K, K)`` confusion matrix of every test image, in test order
            (:func:`confusion_per_sample`).
        class_names: As :func:`segmentation_scores`.

    Returns:
        ``{"miou", "mean_f1", "accuracy", "iou/<name>", "f1/<name>"}``: each recomputed from the summed
        matrices of any set of images, so a bootstrap replicate scores its images as the test scores all.
    """
    k = confusions.shape[-1]
    names = [str(i) for i in range(k)] if class_names is None else [str(n) for n in class_names]
    sums = np.asarray(confusions, dtype=np.float64)
    out = {
        "miou": WindowScores(sums, _averaged(_iou_each)),
        "mean_f1": WindowScores(sums, _averaged(_f1_each)),
        "accuracy": WindowScores(sums, _accuracy),
    }
    for i, name in enumerate(names):
        out[f"iou/{name}"] = WindowScores(sums, _column(_iou_each, i))
        out[f"f1/{name}"] = WindowScores(sums, _column(_f1_each, i))
    return out


def _rmse_each(s: np.ndarray) -> np.ndarray:  # (R, C, 5) -> (R, C)
    out: np.ndarray = np.sqrt(_np_ratio(s[..., 1], s[..., 0]))
    return out


def _mae_each(s: np.ndarray) -> np.ndarray:
    return _np_ratio(s[..., 2], s[..., 0])


def _r2_each(s: np.ndarray) -> np.ndarray:
    n, sse, sy, sy2 = s[..., 0], s[..., 1], s[..., 3], s[..., 4]
    sst = sy2 - sy**2 / np.maximum(n, 1)
    out: np.ndarray = np.where((n > 0) & (sst > 0), 1 - sse / np.where(sst > 0, sst, 1.0), np.nan)
    return out


def _rmse_pooled(s: np.ndarray) -> np.ndarray:  # (R, C, 5) -> (R,): every output's pixels together
    out: np.ndarray = np.sqrt(_np_ratio(s[..., 1].sum(-1), s[..., 0].sum(-1)))
    return out


def _mae_pooled(s: np.ndarray) -> np.ndarray:
    return _np_ratio(s[..., 2].sum(-1), s[..., 0].sum(-1))


def regression_window_scores(sums: np.ndarray, output_names: Sequence[str] | None = None) -> dict[str, WindowScores]:
    """:func:`regression_scores` as per-image accumulators (:mod:`sciadapt.metrics.bootstrap`).

    Args:
        sums: ``(N, C, 5)`` :func:`regression_sums` of every test image (``per_sample=True``), in test order.
        output_names: As :func:`regression_scores`.

    Returns:
        ``{"rmse", "mae", "r2"}`` (and per output ``rmse/<name>``, ``mae/<name>``, ``r2/<name>`` with
        several outputs), recomputed from the summed accumulators of any set of images.
    """
    c = sums.shape[1]
    acc = np.asarray(sums, dtype=np.float64)
    out = {
        "rmse": WindowScores(acc, _rmse_pooled),
        "mae": WindowScores(acc, _mae_pooled),
        "r2": WindowScores(acc, _averaged(_r2_each)),
    }
    if c > 1:
        names = [str(i) for i in range(c)] if output_names is None else [str(x) for x in output_names]
        for i, name in enumerate(names):
            out[f"rmse/{name}"] = WindowScores(acc, _column(_rmse_each, i))
            out[f"mae/{name}"] = WindowScores(acc, _column(_mae_each, i))
            out[f"r2/{name}"] = WindowScores(acc, _column(_r2_each, i))
    return out
