"""Next-frame forecasting of image series: the Sun's full-disk images (Surya, a Solaris-style 3-D Swin).

The input is ``x`` ``(B, C, T, H, W)`` (``T`` past frames of ``C`` channels), the target ``y`` the
``(B, C, H, W)`` frame ``lead`` steps after the last input, ``mask`` ``(B, C, H, W)`` 1 where ``y`` is
valid (the ``sdo`` datamodule flags pixels off the solar disk 0).

The forecast is the backbone's own: Surya's pre-training decoder and the 3-D Swin's forecast decoder
map the last block back to full-resolution images (upstream fine-tunes them as they are rather than
adding a new decoder), so the backbone is built with ``head: forecast`` and its last feature level,
of kind ``forecast``, is the prediction. The ``grid`` head passes it through with a shape check; the
task owns the loss, as the rollout task does. Channels a stage adds (``new_channels``) grow that
decoder with the patch embedding, and the scores follow the backbone's channel names.

Loss: the MSE over the valid pixels (``mask`` 1) of every channel, in the data's scaled units.
Test scores, in the same units: ``rmse`` and ``mae``, the means over channels of each channel's RMSE
and MAE over its valid pixels of the whole split, and per channel ``rmse/<name>`` and ``mae/<name>``.
Each test image keeps its sums (valid pixels, squared and absolute errors per channel), so the
comparison's bootstrap over test images recomputes every score from resampled images
(:mod:`sciadapt.metrics.bootstrap`); the ``persistence`` baseline (the last input frame held)
is scored by the same code on the same images.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from sciadapt.errors import ConfigError, DataError, ShapeError
from sciadapt.heads.grid import GridHead
from sciadapt.metrics.bootstrap import WindowScores, column_scores
from sciadapt.metrics.dense import regression_sums
from sciadapt.registry import TASKS
from sciadapt.spec import FromData
from sciadapt.tasks.base import Task
from sciadapt.types import IMAGE_SERIES, Backbone, Batch, ExtendsChannels, check_shape

#: the columns of a :func:`~sciadapt.metrics.dense.regression_sums` accumulator this task reads
_N, _SSE, _SAE = 0, 1, 2


def masked_mse(pred: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
    """The MSE of ``pred`` against ``y`` (both ``(B, C, H, W)``) over the pixels where ``mask`` is 1.

    Pixels outside the mask never enter the arithmetic (their target may be NaN); with none valid
    the loss is 0, not NaN.

    Raises:
        ShapeError: If the forecast and the target (or the mask) differ in shape.
    """
    if pred.shape != y.shape:
        raise ShapeError(
            f"image forecast: the backbone forecasts {tuple(pred.shape)} but the target y is {tuple(y.shape)} "
            "(B C H W): forecast one frame of the data's channels (backbone.forecast_frames=1, the model's "
            "channels = the data's)"
        )
    if mask is None:
        return torch.mean((pred - y) ** 2)
    if mask.shape != y.shape:
        raise ShapeError(f"image forecast mask: expected the target's shape {tuple(y.shape)}, got {tuple(mask.shape)}")
    keep = mask > 0
    err = torch.where(keep, pred - y, torch.zeros_like(pred))
    return (err**2).sum() / keep.sum().clamp_min(1)


def forecast_window_scores(sums: np.ndarray, names: list[str]) -> dict[str, WindowScores]:
    """The test scores as per-image accumulators, for the table and its intervals.

    Args:
        sums: ``(N, C, 5)`` :func:`~sciadapt.metrics.dense.regression_sums` of every test image
            (``per_sample=True``), in test order.
        names: The ``C`` channel names.

    Returns:
        ``rmse`` and ``mae`` (means over channels of each channel's split-wide RMSE and MAE) and
        ``rmse/<name>``, ``mae/<name>`` per channel; a channel without valid pixels is NaN and left out
        of the means.
    """
    s = np.asarray(sums, dtype=np.float64)
    n = s[..., _N]  # (N, C) valid pixels per image and channel
    with np.errstate(invalid="ignore", divide="ignore"):
        mse = np.where(n > 0, s[..., _SSE] / np.where(n > 0, n, 1.0), np.nan)  # (N, C)
        mae = np.where(n > 0, s[..., _SAE] / np.where(n > 0, n, 1.0), np.nan)
    out = {"rmse": column_scores(mse, n, root=True), "mae": column_scores(mae, n)}
    for c, name in enumerate(names):
        out[f"rmse/{name}"] = column_scores(mse[:, c], n[:, c], root=True)
        out[f"mae/{name}"] = column_scores(mae[:, c], n[:, c])
    return out


class ImageForecastTask(Task):
    """Forecast the next frame ``(B, C, H, W)`` of an image series with the backbone's own decoder.

    Args:
        backbone: An image-series backbone built with ``head: forecast`` (its last feature level
            has kind ``forecast``).
        head: The ``grid`` head (a pass-through with a shape check).
        channel_names: Names for the per-channel scores (follows the data); a backbone with named
            channels (:class:`~sciadapt.types.ExtendsChannels`) names them itself.
    """

    #: ``persistence``: the last input frame, held to the target time
    BASELINES: ClassVar[tuple[str, ...]] = ("persistence",)
    WINDOW_UNIT: ClassVar[str] = "initial times"

    def __init__(self, backbone: nn.Module, head: nn.Module, channel_names: list[str] | None = None) -> None:
        super().__init__(backbone, head)
        self.channel_names = [str(c) for c in channel_names] if channel_names is not None else None

    def forward(self, x: Tensor, **inputs: Tensor) -> Tensor:
        check_shape(x, IMAGE_SERIES, name="image_forecast input")
        forecast = self.backbone.forward_features(x, **inputs)[-1]  # (B, C, H, W): the backbone's decoder
        # A stage's new_channels grows the backbone's forecast after the head was built: the pass-through
        # head checks the forecast against the backbone's channels as they are now.
        self.head.in_features = int(self.backbone.feature_info[-1]["channels"])
        out: Tensor = self.head(forecast)
        return out

    def _loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        pred = self(batch["x"], **self.model_inputs(batch))
        return masked_mse(pred, batch["y"], batch.get("mask")), pred

    def validation_metrics(self, pred: Tensor, batch: Batch) -> dict[str, Tensor]:
        mask = batch.get("mask")
        keep = torch.ones_like(pred, dtype=torch.bool) if mask is None else mask > 0
        err = torch.where(keep, pred - batch["y"], torch.zeros_like(pred))
        return {"mae": err.abs().sum() / keep.sum().clamp_min(1)}

    def names(self, n_channels: int) -> list[str]:
        """The names of the forecast's ``n_channels`` channels: the backbone's, else the data's, else indices."""
        if isinstance(self.backbone, ExtendsChannels):
            names = self.backbone.channel_names
        else:
            names = self.channel_names or []
        return names if len(names) == n_channels else [str(i) for i in range(n_channels)]

    # -- evaluation -----------------------------------------------------------------------
    def collect_test_outputs(self, pred: Tensor, batch: Batch) -> dict[str, Tensor]:
        mask = batch.get("mask")
        return {"sums": regression_sums(pred.detach(), batch["y"], mask, per_sample=True).cpu()}  # (B, C, 5)

    def evaluate_outputs(self, outs: dict[str, Tensor]) -> dict[str, Any]:
        return self.scored(outs["sums"])

    def scored(self, sums: Tensor) -> dict[str, Any]:
        """The test scores of per-image sums ``(N, C, 5)``; keeps them per image in ``test_window_scores``."""
        names = self.names(int(sums.shape[1]))
        self.test_window_scores = forecast_window_scores(sums.numpy(), names)
        results: dict[str, Any] = {k: v.value() for k, v in self.test_window_scores.items()}
        results["n_pixels"] = float(sums[..., _N].sum())
        return results

    def baseline(self, name: str, dm: Any) -> dict[str, Any]:
        """``persistence``: the last input frame ``x[:, :, -1]`` as the forecast, scored like the model.

        Raises:
            ConfigError: For another name.
            DataError: If the test split is empty.
        """
        if name != "persistence":
            raise ConfigError(f"evaluation.baselines: {name!r} is not an image-forecast baseline (persistence)")
        images = []
        for batch in dm.test_dataloader():
            x, y = batch["x"], batch["y"]
            check_shape(x, IMAGE_SERIES, name="image_forecast input")
            images.append(regression_sums(x[:, :, -1], y, batch.get("mask"), per_sample=True))  # (B, C, 5)
        if not images:
            raise DataError("persistence baseline: the test split is empty")
        return self.scored(torch.cat(images))


@TASKS.register("image_forecast")
def build_image_forecast(
    backbone: nn.Module,
    head: nn.Module,
    channel_names: Annotated[list[str] | None, FromData] = None,
) -> ImageForecastTask:
    """Next-frame forecasting of image series ``B C T H W`` -> ``B C H W`` (masked MSE; RMSE per channel).

    Args:
        backbone: Injected by the runner; an image-series backbone with its forecast decoder
            (``surya``/``swin3d`` with ``head: forecast``).
        head: Injected by the runner; ``grid``.
        channel_names: Names for the per-channel scores (follows the data).

    Raises:
        ConfigError: If the backbone does not forecast images itself, forecasts more than one frame, or
            the head is not ``grid``.
    """
    problems = []
    bb: Backbone = backbone  # type: ignore[assignment]  # the registry's builders return Backbones
    info = bb.feature_info[-1]
    if bb.input_layout != IMAGE_SERIES:
        problems.append(
            f"task image_forecast needs an image-series backbone ({IMAGE_SERIES}: surya, swin3d), "
            f"got {type(backbone).__name__}"
        )
    elif info.get("kind") != "forecast":
        problems.append(
            "task image_forecast forecasts with the backbone's own decoder: set backbone.head=forecast "
            f"(its last feature level is {info.get('layout')}, not a forecast)"
        )
    elif isinstance(backbone, ExtendsChannels) and info["channels"] != len(backbone.channel_names):
        problems.append(
            f"task image_forecast scores one forecast frame, but the backbone forecasts {info['channels']} maps "
            f"for its {len(backbone.channel_names)} channels: set backbone.forecast_frames=1"
        )
    if not isinstance(head, GridHead):
        problems.append(
            f"task image_forecast passes the backbone's forecast through the grid head: set head.name=grid "
            f"(got {type(head).__name__})"
        )
    if problems:
        raise ConfigError(problems)
    return ImageForecastTask(backbone, head, channel_names)
