"""Forecast heads shared by every series backbone.

Two input layouts are supported:

* ``"B L C D"`` horizon features (N-HiTS): a ``Linear(D, Q)`` per step and channel, initialised to the
  mean over ``D`` so an untrained head on N-HiTS features reproduces plain N-HiTS.
* ``"B C D"`` pooled per-channel embeddings (MOMENT, TTM): a ``Linear(D, L * Q)`` per channel.

Outputs are ``(B, L, C)`` for the point head and ``(B, L, C, Q)`` for the quantile head.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from sciadapt.errors import ConfigError, ShapeError
from sciadapt.registry import HEADS
from sciadapt.spec import FromData, Ge
from sciadapt.types import FORECAST, FORECAST_QUANTILES, check_shape

InLayout = Literal["B L C D", "B C D"]
PointLoss = Literal["mse", "mae", "huber"]
IN_LAYOUTS: tuple[InLayout, ...] = ("B L C D", "B C D")


def _make_projection(in_features: int, horizon: int, in_layout: str, n_outputs: int) -> nn.Linear:
    """The head's linear map; on ``B L C D`` it starts as the mean over ``D`` for every output."""
    if in_layout == "B L C D":
        proj = nn.Linear(in_features, n_outputs)
        with torch.no_grad():
            proj.weight.fill_(1.0 / in_features)
            proj.bias.zero_()
        return proj
    return nn.Linear(in_features, horizon * n_outputs)


def _check_features(features: Tensor, in_layout: str, in_features: int, horizon: int) -> None:
    if in_layout == "B L C D":
        check_shape(features, in_layout, name="head features", L=horizon, D=in_features)
    else:
        check_shape(features, in_layout, name="head features", D=in_features)


def _check_target(pred_shape: tuple[int, ...], y: Tensor, mask: Tensor | None) -> None:
    """``y`` and ``mask`` must be ``B L C`` of the prediction's leading shape."""
    if tuple(y.shape) != pred_shape:
        raise ShapeError(f"target y: expected {FORECAST} = {pred_shape}, got {tuple(y.shape)}")
    if mask is not None and tuple(mask.shape) != pred_shape:
        raise ShapeError(f"mask: expected {FORECAST} = {pred_shape}, got {tuple(mask.shape)}")


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values`` over the entries where ``mask == 1`` (0 when nothing is observed)."""
    if mask is None:
        return values.mean()
    weight = mask.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def _layout_problems(in_layout: str) -> list[str]:
    # ``in_layout`` is filled from the backbone after the config is checked, so a backbone of
    # another kind (a grid emulator, a dense encoder) is caught here
    if in_layout not in IN_LAYOUTS:
        return [f"head.in_layout: expected one of {' | '.join(IN_LAYOUTS)}, got {in_layout!r}"]
    return []


class PointHead(nn.Module):
    """One forecast value per step and channel.

    Args:
        in_features: Feature size ``D`` of the backbone output.
        horizon: Forecast length ``L``.
        in_layout: ``"B L C D"`` or ``"B C D"``.
        loss: ``"mse"``, ``"mae"`` or ``"huber"`` (delta 1).
    """

    # declared on every forecast head: the forecasting task scores quantiles when it is not None
    quantiles: list[float] | None = None

    def __init__(self, in_features: int, horizon: int, in_layout: InLayout, loss: PointLoss) -> None:
        super().__init__()
        self.in_features = in_features
        self.horizon = horizon
        self.in_layout = in_layout
        self.loss_name = loss
        self.proj = _make_projection(in_features, horizon, in_layout, 1)

    def forward(self, features: Tensor) -> Tensor:
        """Map backbone features to a ``(B, L, C)`` forecast.

        Raises:
            ShapeError: If ``features`` does not match ``in_layout``, ``in_features`` and ``horizon``.
        """
        _check_features(features, self.in_layout, self.in_features, self.horizon)
        out: Tensor = self.proj(features)
        if self.in_layout == "B L C D":
            return out.squeeze(-1)  # (B, L, C)
        return rearrange(out, "b c l -> b l c")  # (B, L, C)

    def loss(self, pred: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """Point loss averaged over the observed (``mask == 1``) entries.

        Args:
            pred: ``(B, L, C)`` forecast.
            y: ``(B, L, C)`` target.
            mask: ``(B, L, C)``, 1 where ``y`` is observed; ``None`` means all observed.

        Returns:
            A scalar tensor.
        """
        check_shape(pred, FORECAST, name="prediction")
        _check_target(tuple(pred.shape), y, mask)
        if self.loss_name == "mse":
            err = (pred - y).square()
        elif self.loss_name == "mae":
            err = (pred - y).abs()
        else:
            err = F.huber_loss(pred, y, reduction="none", delta=1.0)
        return _masked_mean(err, mask)

    def point(self, pred: Tensor) -> Tensor:
        """The point forecast ``(B, L, C)``; for this head the prediction itself."""
        return pred


class QuantileHead(nn.Module):
    """Forecast quantiles per step and channel, trained with the pinball loss.

    Args:
        in_features: Feature size ``D`` of the backbone output.
        horizon: Forecast length ``L``.
        in_layout: ``"B L C D"`` or ``"B C D"``.
        quantiles: Quantile levels, strictly increasing in ``(0, 1)``.
    """

    levels: Tensor

    def __init__(self, in_features: int, horizon: int, in_layout: InLayout, quantiles: list[float]) -> None:
        super().__init__()
        self.in_features = in_features
        self.horizon = horizon
        self.in_layout = in_layout
        self.quantiles: list[float] | None = [float(q) for q in quantiles]
        self.register_buffer("levels", torch.tensor(self.quantiles), persistent=False)
        self.median_index = min(range(len(quantiles)), key=lambda i: abs(quantiles[i] - 0.5))
        self.proj = _make_projection(in_features, horizon, in_layout, len(quantiles))

    def forward(self, features: Tensor) -> Tensor:
        """Map backbone features to a ``(B, L, C, Q)`` quantile forecast.

        Raises:
            ShapeError: If ``features`` does not match ``in_layout``, ``in_features`` and ``horizon``.
        """
        _check_features(features, self.in_layout, self.in_features, self.horizon)
        out: Tensor = self.proj(features)
        if self.in_layout == "B L C D":
            return out  # (B, L, C, Q)
        return rearrange(out, "b c (l q) -> b l c q", l=self.horizon)  # (B, L, C, Q)

    def loss(self, pred: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """Pinball loss averaged over quantiles and the observed (``mask == 1``) entries.

        Args:
            pred: ``(B, L, C, Q)`` quantile forecast.
            y: ``(B, L, C)`` target.
            mask: ``(B, L, C)``, 1 where ``y`` is observed; ``None`` means all observed.

        Returns:
            A scalar tensor.
        """
        check_shape(pred, FORECAST_QUANTILES, name="prediction", Q=self.levels.numel())
        _check_target(tuple(pred.shape[:-1]), y, mask)
        levels = self.levels.to(pred.dtype)
        err = y.unsqueeze(-1) - pred  # (B, L, C, Q)
        pinball = torch.maximum(levels * err, (levels - 1.0) * err).mean(dim=-1)  # (B, L, C)
        return _masked_mean(pinball, mask)

    def point(self, pred: Tensor) -> Tensor:
        """The forecast at the quantile nearest 0.5, ``(B, L, C)``."""
        check_shape(pred, FORECAST_QUANTILES, name="prediction", Q=self.levels.numel())
        return pred[..., self.median_index]


@HEADS.register("point")
def build_point_head(
    in_features: Annotated[int, Ge(1), FromData] = 8,
    horizon: Annotated[int, Ge(1), FromData] = 24,
    in_layout: Annotated[InLayout, FromData] = "B L C D",
    loss: PointLoss = "mse",
) -> PointHead:
    """Build a point forecast head.

    Args:
        in_features: Feature size ``D`` of the backbone output.
        horizon: Forecast length ``L``.
        in_layout: ``"B L C D"`` (horizon features) or ``"B C D"`` (pooled channel embeddings).
        loss: ``"mse"``, ``"mae"`` or ``"huber"``.

    Raises:
        ConfigError: If the backbone's features are not in a forecast layout.
    """
    problems = _layout_problems(in_layout)
    if problems:
        raise ConfigError(problems)
    return PointHead(in_features, horizon, in_layout, loss)


@HEADS.register("quantile")
def build_quantile_head(
    in_features: Annotated[int, Ge(1), FromData] = 8,
    horizon: Annotated[int, Ge(1), FromData] = 24,
    in_layout: Annotated[InLayout, FromData] = "B L C D",
    quantiles: list[float] | None = None,
) -> QuantileHead:
    """Build a quantile forecast head.

    Args:
        in_features: Feature size ``D`` of the backbone output.
        horizon: Forecast length ``L``.
        in_layout: ``"B L C D"`` (horizon features) or ``"B C D"`` (pooled channel embeddings).
        quantiles: Strictly increasing levels in ``(0, 1)``; default ``[0.1, 0.5, 0.9]``.

    Raises:
        ConfigError: Listing every invalid setting (the levels and the backbone's layout).
    """
    levels = [0.1, 0.5, 0.9] if quantiles is None else list(quantiles)
    problems = _layout_problems(in_layout)
    if not levels:
        problems.append("head.quantiles: expected at least one quantile level")
    elif not all(isinstance(q, int | float) and 0.0 < q < 1.0 for q in levels):
        problems.append(f"head.quantiles: every level must be a number in (0, 1), got {levels}")
    elif any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
        problems.append(
            f"head.quantiles: levels must be unique and sorted ascending, got {levels} "
            f"(did you mean {sorted(set(levels))}?)"
        )
    if problems:
        raise ConfigError(problems)
    return QuantileHead(in_features, horizon, in_layout, levels)


class NativeHead(PointHead):
    """No parameters: the backbone already forecasts (TTM, MOMENT carry their official heads).

    Takes the backbone's ``(B, L, C, 1)`` forecast and returns ``(B, L, C)``; the loss is that of
    :class:`PointHead`. Keeping the official forecast head inside the backbone is what lets
    official checkpoints load with ``strict=True`` and zero-shot forecasts run without training.
    """

    def __init__(self, horizon: int, loss: PointLoss) -> None:
        nn.Module.__init__(self)
        self.in_features = 1
        self.horizon = horizon
        self.in_layout = "B L C D"
        self.loss_name = loss

    def forward(self, features: Tensor) -> Tensor:
        """``(B, L, C, 1)`` -> ``(B, L, C)``.

        Raises:
            ShapeError: If ``features`` is not ``B L C 1`` with ``L == horizon``.
        """
        check_shape(features, "B L C D", name="backbone forecast", L=self.horizon, D=1)
        return features.squeeze(-1)  # (B, L, C)


@HEADS.register("native")
def build_native_head(
    in_features: Annotated[int, Ge(1), FromData] = 1,
    horizon: Annotated[int, Ge(1), FromData] = 24,
    in_layout: Annotated[InLayout, FromData] = "B L C D",
    loss: PointLoss = "mse",
) -> NativeHead:
    """The head for backbones that forecast themselves (``ttm``, ``moment``): a pass-through.

    Args:
        in_features: Must be 1 (the backbone's forecast has one value per step and channel).
        horizon: Forecast length ``L``.
        in_layout: Must be ``"B L C D"``.
        loss: ``"mse"``, ``"mae"`` or ``"huber"``.

    Raises:
        ConfigError: If the backbone does not output a forecast.
    """
    problems = _layout_problems(in_layout)
    if in_layout != "B L C D" or in_features != 1:
        problems.append(
            f"head: native needs a backbone that outputs its own forecast (B L C 1); this backbone gives "
            f"{in_layout} with D={in_features}. Fix: use head.name=point (or quantile)"
        )
    if problems:
        raise ConfigError(problems)
    return NativeHead(horizon, loss)
