"""U-Net decoder heads: skip connections over every feature level, for segmentation and regression.

A U-Net decoder (Ronneberger et al. 2015; the encoder-agnostic form of segmentation_models_pytorch's
``Unet``) walks the backbone's levels from the coarsest to the finest. At each step the running map
is resized to the next finer level, concatenated with that level (the skip connection) and passed
through two 3x3 conv-BN-ReLU layers. When the finest level is still coarser than the input (a ResNet's
first level has stride 2, a Swin's stride 4), x2 blocks without a skip bring it to full resolution.
Block widths start at ``channels`` and halve at every block, down to ``min_channels``.

Levels come from :class:`sciadapt.heads.segment.DenseNeck`, so any backbone works: a CNN or a Swin
contributes its pyramid as it is; a plain ViT's four selected blocks get the learned x4/x2/x1/x0.5
pyramid first (as UPerNet's do), which is what gives their U-Net something to skip over.

Two builders share the decoder: ``unet`` (class logits, cross-entropy; task ``segmentation``) and
``unet_regression`` (``n_outputs`` values per pixel, masked point loss; task ``pixel_regression``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciadapt.errors import ConfigError
from sciadapt.heads.regress import RegressionHead, RegressionLoss
from sciadapt.heads.segment import (
    Decoder,
    DenseNeck,
    SegmentationHead,
    _check_class_weights,
    _resolve_indices,
    check_head_settings,
    conv_bn_relu,
    default_indices,
)
from sciadapt.registry import HEADS
from sciadapt.spec import FromData, Ge


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(c_in, c_out, 3), conv_bn_relu(c_out, c_out, 3))


class UNetDecoder(Decoder):
    """Coarse-to-fine decoder with a skip connection at every level, then x2 blocks to full resolution.

    Args:
        in_channels: Channels of each level, finest first.
        reduction: Stride of the finest level relative to the input (2 for a ResNet's first level).
        channels: Width of the first (coarsest) block; each later block halves it.
        min_channels: Smallest block width.
    """

    def __init__(self, in_channels: list[int], reduction: float, channels: int, min_channels: int) -> None:
        super().__init__()
        n_extra = max(0, round(math.log2(reduction))) if reduction > 1 else 0
        n_blocks = len(in_channels) - 1 + n_extra
        widths = [max(min_channels, channels >> i) for i in range(n_blocks)]
        self.skip_blocks = nn.ModuleList()
        c_prev = in_channels[-1]
        for j, skip in enumerate(reversed(in_channels[:-1])):  # next finer level first
            self.skip_blocks.append(_double_conv(c_prev + skip, widths[j]))
            c_prev = widths[j]
        self.up_blocks = nn.ModuleList()
        for j in range(len(in_channels) - 1, n_blocks):
            self.up_blocks.append(_double_conv(c_prev, widths[j]))
            c_prev = widths[j]
        self.out_channels = c_prev

    def forward(self, maps: list[Tensor]) -> Tensor:
        x = maps[-1]  # (B, C_coarsest, h, w)
        for block, skip in zip(self.skip_blocks, reversed(maps[:-1]), strict=True):
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))  # (B, width, h_skip, w_skip)
        for block in self.up_blocks:
            x = block(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        return x


def _unet_parts(
    feature_info: list[dict[str, Any]] | None,
    indices: list[int] | None,
    channels: int,
    min_channels: int,
    dropout: float,
    problems: list[str],
) -> tuple[DenseNeck, UNetDecoder] | None:
    problems += check_head_settings(feature_info, dropout)
    if problems or feature_info is None:
        return None
    hierarchical = len({float(level["reduction"]) for level in feature_info}) > 1
    wanted = (
        list(indices)
        if indices is not None
        else default_indices(feature_info, len(feature_info) if hierarchical else 4)
    )
    chosen = _resolve_indices(wanted, len(feature_info), problems)
    if problems:
        return None
    same_scale = len({float(feature_info[i]["reduction"]) for i in chosen}) == 1
    neck = DenseNeck(feature_info, chosen, pyramid=same_scale and len(chosen) == 4)
    order = sorted(range(len(chosen)), key=lambda k: neck.reductions[k])
    if order != list(range(len(chosen))):
        problems.append(
            f"head.indices: {list(wanted)} must list the levels finest first (reductions "
            f"{[neck.reductions[k] for k in range(len(chosen))]}); a U-Net skips from coarse to fine"
        )
        return None
    return neck, UNetDecoder(neck.out_channels, neck.reductions[0], channels, min_channels)


@HEADS.register("unet")
def build_unet(
    feature_info: Annotated[list[dict[str, Any]] | None, FromData] = None,
    n_classes: Annotated[int, Ge(1), FromData] = 2,
    img_size: Annotated[int, Ge(1), FromData] = 224,
    ignore_index: Annotated[int, FromData] = -1,
    indices: list[int] | None = None,
    channels: Annotated[int, Ge(1)] = 256,
    min_channels: Annotated[int, Ge(1)] = 16,
    dropout: float = 0.0,
    class_weights: list[Annotated[float, Ge(0)]] | None = None,
) -> SegmentationHead:
    """U-Net segmentation head: skip connections over every level, decoded to full resolution.

    Args:
        feature_info: The backbone's per-level info; follows the backbone.
        n_classes: Number of classes; follows the data.
        img_size: Output size ``H = W``; follows the data.
        ignore_index: Label left out of loss and metrics; follows the data.
        indices: Levels to use, finest first; default every level of a hierarchical backbone (CNN,
            Swin), or four evenly spaced blocks of a plain ViT (given the learned pyramid).
        channels: Width of the coarsest decoder block (halved at every finer block).
        min_channels: Smallest block width.
        dropout: Dropout2d before the classifier.
        class_weights: Optional cross-entropy weight per class.

    Raises:
        ConfigError: Listing every invalid setting.
    """
    problems: list[str] = []
    _check_class_weights(class_weights, n_classes, problems)
    parts = _unet_parts(feature_info, indices, channels, min_channels, dropout, problems)
    if problems or parts is None:
        raise ConfigError(problems)
    return SegmentationHead(*parts, n_classes, img_size, ignore_index, class_weights, dropout)


@HEADS.register("unet_regression")
def build_unet_regression(
    feature_info: Annotated[list[dict[str, Any]] | None, FromData] = None,
    n_outputs: Annotated[int, Ge(1), FromData] = 1,
    img_size: Annotated[int, Ge(1), FromData] = 224,
    indices: list[int] | None = None,
    channels: Annotated[int, Ge(1)] = 256,
    min_channels: Annotated[int, Ge(1)] = 16,
    loss: RegressionLoss = "mse",
    dropout: float = 0.0,
) -> RegressionHead:
    """U-Net pixel-wise regression head (``n_outputs`` values per pixel; task ``pixel_regression``).

    Args:
        feature_info: The backbone's per-level info; follows the backbone.
        n_outputs: Values predicted per pixel.
        img_size: Output size ``H = W``; follows the data.
        indices: Levels to use, finest first (default as for :func:`build_unet`).
        channels: Width of the coarsest decoder block (halved at every finer block).
        min_channels: Smallest block width.
        loss: ``"mse"``, ``"mae"`` or ``"huber"`` (delta 1), over the observed pixels.
        dropout: Dropout2d before the projection.

    Raises:
        ConfigError: Listing every invalid setting.
    """
    problems: list[str] = []
    parts = _unet_parts(feature_info, indices, channels, min_channels, dropout, problems)
    if problems or parts is None:
        raise ConfigError(problems)
    return RegressionHead(*parts, n_outputs, img_size, loss, dropout)
