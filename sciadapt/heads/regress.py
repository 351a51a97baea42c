"""Pixel-wise regression head (biomass, canopy height, ...): the dense decoders of
:mod:`sciadapt.heads.segment` with ``n_outputs`` linear outputs and a masked point loss.

Targets are ``(B, n_outputs, H, W)``; with one output a ``(B, H, W)`` target is read as
``(B, 1, H, W)``. The mask (1: observed) is ``(B, H, W)`` (shared by all outputs) or the target's
shape; unobserved pixels leave the loss, and their target values (NaN nodata included) are never
touched by the arithmetic.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from sciadapt.errors import ConfigError, ShapeError
from sciadapt.heads.segment import Decoder, DenseHead, DenseNeck, build_decoder, check_head_settings
from sciadapt.registry import HEADS
from sciadapt.spec import FromData, Ge
from sciadapt.types import check_shape

RegressionLoss = Literal["mse", "mae", "huber"]


def as_maps(pred: Tensor, y: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``y`` and ``mask`` in ``pred``'s ``(B, C, H, W)`` layout (mask ``(B, 1 or C, H, W)``).

    Raises:
        ShapeError: If they cannot be read that way.
    """
    b, c, h, w = pred.shape
    if c == 1 and tuple(y.shape) == (b, h, w):
        y = y.unsqueeze(1)  # (B, 1, H, W)
    if tuple(y.shape) != (b, c, h, w):
        one = " (or B H W with one output)" if c == 1 else ""
        raise ShapeError(f"regression target: expected B C H W = {(b, c, h, w)}{one}, got {tuple(y.shape)}")
    if mask is None:
        return y, None
    if tuple(mask.shape) == (b, h, w):
        mask = mask.unsqueeze(1)  # (B, 1, H, W)
    if tuple(mask.shape) not in ((b, 1, h, w), (b, c, h, w)):
        raise ShapeError(
            f"regression mask: expected B H W = {(b, h, w)} or the target's shape, got {tuple(mask.shape)}"
        )
    return y, mask


class RegressionHead(DenseHead):
    """``(B, n_outputs, H, W)`` predictions trained with a masked MSE, MAE or Huber loss.

    Args:
        neck: Feature selection and reshaping.
        decoder: A decoder of :mod:`sciadapt.heads.segment`.
        n_outputs: Values predicted per pixel.
        img_size: Output ``H = W``.
        loss: ``"mse"``, ``"mae"`` or ``"huber"`` (delta 1, in target units).
        dropout: Dropout2d before the projection.
    """

    def __init__(
        self, neck: DenseNeck, decoder: Decoder, n_outputs: int, img_size: int, loss: RegressionLoss, dropout: float
    ) -> None:
        super().__init__(neck, decoder, n_outputs, img_size, dropout)
        self.n_outputs = n_outputs
        self.loss_name = loss

    def loss(self, pred: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """Point loss averaged over the observed pixels (0, not NaN, when none is observed).

        Args:
            pred: ``(B, C, H, W)`` prediction.
            y: ``(B, C, H, W)`` target (``(B, H, W)`` when ``C == 1``).
            mask: Optional ``(B, H, W)`` or ``(B, C, H, W)``, 1 where ``y`` is observed.

        Returns:
            A scalar tensor.
        """
        check_shape(pred, "B C H W", name="regression prediction", C=self.n_outputs)
        y, mask = as_maps(pred, y, mask)
        p, t = pred.float(), y.to(pred.device).float()
        keep = torch.ones_like(t, dtype=torch.bool) if mask is None else mask.to(p.device).bool().expand_as(t)
        t = torch.where(keep, t, p.detach())  # unobserved targets (maybe NaN) give zero error
        if self.loss_name == "mse":
            err = (p - t).square()
        elif self.loss_name == "mae":
            err = (p - t).abs()
        else:
            err = F.huber_loss(p, t, reduction="none", delta=1.0)
        return (err * keep).sum() / keep.sum().clamp_min(1)

    def point(self, pred: Tensor) -> Tensor:
        """The prediction itself, ``(B, C, H, W)``."""
        return pred


@HEADS.register("pixel_regression")
def build_pixel_regression(
    feature_info: Annotated[list[dict[str, Any]] | None, FromData] = None,
    n_outputs: Annotated[int, Ge(1), FromData] = 1,
    img_size: Annotated[int, Ge(1), FromData] = 224,
    decoder: Literal["conv", "fcn", "upernet"] = "conv",
    indices: list[int] | None = None,
    channels: Annotated[int, Ge(1)] = 64,
    n_blocks: Annotated[int, Ge(0)] | None = None,
    n_convs: Annotated[int, Ge(0)] = 2,
    loss: RegressionLoss = "mse",
    dropout: float = 0.0,
) -> RegressionHead:
    """Pixel-wise regression head on any dense decoder.

    Args:
        feature_info: The backbone's per-level info; follows the backbone.
        n_outputs: Values predicted per pixel.
        img_size: Output size ``H = W``; follows the data.
        decoder: ``"conv"`` (x2 upsampling blocks), ``"fcn"`` (conv stack) or ``"upernet"``.
        indices: Levels to decode; defaults as for the segmentation head of the same decoder.
        channels: Decoder width.
        n_blocks: ``conv`` only: number of x2 blocks (default ``log2`` of the level's reduction).
        n_convs: ``fcn`` only: number of 3x3 conv layers.
        loss: ``"mse"``, ``"mae"`` or ``"huber"`` (delta 1).
        dropout: Dropout2d before the projection.

    Raises:
        ConfigError: Listing every invalid setting.
    """
    problems = check_head_settings(feature_info, dropout)
    built = None
    if not problems and feature_info is not None:
        built = build_decoder(decoder, feature_info, indices, channels, n_convs, n_blocks, None, problems)
    if problems or built is None:
        raise ConfigError(problems)
    neck, dec = built
    return RegressionHead(neck, dec, n_outputs, img_size, loss, dropout)
