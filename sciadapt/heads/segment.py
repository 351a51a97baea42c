"""Dense heads: a neck that turns any backbone's feature list into image maps, three decoders, and
the segmentation head that puts a classifier and the loss on top.

The **neck** (:class:`DenseNeck`) works from the backbone's ``feature_info``:

* It selects levels by ``indices``.
* A ViT token level ``(B, 1 + T*h*w, D)`` (``layout "B N D"`` with ``grid [T, h, w]``) loses its
  cls token and becomes an image ``(B, T*D, h, w)``: time steps are stacked into channels, as
  TerraTorch's ``ReshapeTokensToImage`` does, so a decoder sees every frame at every pixel.
* Four selected levels at one resolution (a plain ViT) are made pyramidal with learned upsampling
  (TerraTorch's ``LearnedInterpolateToPyramidal``): x4 by two stride-2 transposed convolutions
  (channels /4), x2 by one (channels /2), identity, and a 2x2 max-pool (x0.5).
* CNN levels (``layout "B C H W"``) pass through unchanged.

The **decoders** map those maps to one ``(B, channels, h', w')`` feature map:

* :class:`UPerNetDecoder` -- a pyramid pooling module on the coarsest level plus an FPN over all
  levels, fused by a 3x3 convolution (UPerNet, Xiao et al. 2018, as in mmseg's ``UPerHead``).
* :class:`FCNDecoder` -- ``n_convs`` 3x3 conv-BN-ReLU layers at the feature resolution (mmseg's
  ``FCNHead`` without the input concatenation).
* :class:`ConvDecoder` -- ``n_blocks`` blocks of (x2 transposed convolution, 3x3 conv, BN, ReLU):
  the light "single conv decoder" put on frozen encoders.

FCN and the conv decoder take one level by default; several selected levels are resized to the
first one's resolution and concatenated (mmseg's ``resize_concat``).

A 1x1 convolution then gives the logits, bilinearly upsampled to ``img_size``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from sciadapt.errors import ConfigError, DataError, ShapeError
from sciadapt.registry import HEADS
from sciadapt.spec import FromData, Ge
from sciadapt.types import check_shape

TOKENS = "B N D"
MAPS = "B C H W"
LAYOUTS = (TOKENS, MAPS)
LABELS = "B H W"


# -- feature_info ------------------------------------------------------------------------------
def feature_info_problems(feature_info: Any, path: str = "head.feature_info") -> list[str]:
    """Everything wrong with a backbone's ``feature_info`` for a dense head (empty when usable)."""
    if feature_info is None:
        return [
            f"{path}: a dense head needs the backbone's feature_info (filled in by the pipeline); "
            "when building a head by hand pass feature_info=backbone.feature_info"
        ]
    if not isinstance(feature_info, list) or not feature_info:
        return [f"{path}: expected a non-empty list of per-level dicts, got {feature_info!r}"]
    problems = []
    for i, level in enumerate(feature_info):
        where = f"{path}[{i}]"
        if not isinstance(level, dict):
            problems.append(f"{where}: expected a dict with layout/channels/reduction, got {level!r}")
            continue
        layout, channels = level.get("layout"), level.get("channels")
        if layout not in LAYOUTS:
            problems.append(
                f"{where}.layout: a dense head takes {' or '.join(repr(x) for x in LAYOUTS)}, got {layout!r}; "
                "use a backbone that returns spatial features"
            )
        if not isinstance(channels, int) or channels < 1:
            problems.append(f"{where}.channels: expected an int >= 1, got {channels!r}")
        reduction = level.get("reduction")
        if not isinstance(reduction, int | float) or reduction <= 0:
            problems.append(f"{where}.reduction: expected a positive number, got {reduction!r}")
        if layout == TOKENS:
            grid = level.get("grid")
            if not (
                isinstance(grid, list | tuple) and len(grid) == 3 and all(isinstance(g, int) and g > 0 for g in grid)
            ):
                problems.append(f"{where}.grid: token features need their grid [T, h, w], got {grid!r}")
    return problems


def default_indices(feature_info: list[dict[str, Any]], n: int) -> list[int]:
    """``n`` levels for a decoder: the last ``n`` of a pyramid, or ``n`` evenly spaced ViT blocks.

    For a plain ViT of ``L`` blocks the pick is ``ceil(L * (i + 1) / n) - 1``: blocks 2, 5, 8, 11
    of 12 and 5, 11, 17, 23 of 24 (the UPerNet levels used with Prithvi); with fewer than ``n``
    levels some repeat.
    """
    count = len(feature_info)
    reductions = {lvl.get("reduction") for lvl in feature_info}
    if len(reductions) > 1:  # hierarchical (CNN, Swin): the finest-to-coarsest tail
        return list(range(max(0, count - n), count))
    return [max(0, math.ceil(count * (i + 1) / n) - 1) for i in range(n)]


def _resolve_indices(indices: list[int], count: int, problems: list[str]) -> list[int]:
    out = []
    for j, i in enumerate(indices):
        if not isinstance(i, int) or not -count <= i < count:
            problems.append(
                f"head.indices[{j}]: {i!r} is not a level of this backbone (it returns {count}: 0..{count - 1} or "
                f"negative from the end)"
            )
            continue
        out.append(i % count)
    if not indices:
        problems.append("head.indices: expected at least one level")
    return out


# -- neck ---------------------------------------------------------------------------------------
class TokensToImage(nn.Module):
    """``(B, [1 +] T*h*w, D)`` tokens -> ``(B, T*D, h, w)`` image (time stacked into channels)."""

    def __init__(self, grid: tuple[int, int, int], cls_token: bool, channels: int) -> None:
        super().__init__()
        self.grid = grid
        self.cls_token = cls_token
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        t, h, w = self.grid
        n = int(self.cls_token) + t * h * w
        check_shape(
            x, TOKENS, name=f"token features (grid {list(self.grid)}, cls {self.cls_token})", N=n, D=self.channels
        )
        if self.cls_token:
            x = x[:, 1:]  # (B, T*h*w, D)
        return rearrange(x, "b (t h w) d -> b (t d) h w", t=t, h=h, w=w)  # (B, T*D, h, w)


class LearnedPyramid(nn.Module):
    """Four same-resolution maps -> scales x4, x2, x1, x0.5 (TerraTorch's LearnedInterpolateToPyramidal)."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        c0, c1 = channels[0], channels[1]
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(c0, max(1, c0 // 2), 2, 2),
            nn.BatchNorm2d(max(1, c0 // 2)),
            nn.GELU(),
            nn.ConvTranspose2d(max(1, c0 // 2), max(1, c0 // 4), 2, 2),
        )
        self.up2 = nn.ConvTranspose2d(c1, max(1, c1 // 2), 2, 2)
        # ceil_mode: an odd or 1-token grid still gives a map (TerraTorch's floor would drop a row, or fail)
        self.down2 = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.out_channels = [max(1, c0 // 4), max(1, c1 // 2), channels[2], channels[3]]

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        return [self.up4(maps[0]), self.up2(maps[1]), maps[2], self.down2(maps[3])]


class DenseNeck(nn.Module):
    """Select levels, turn token levels into images, and make four plain-ViT levels pyramidal.

    Args:
        feature_info: The backbone's per-level info (validated by :func:`feature_info_problems`).
        indices: Levels to use (non-negative, resolved).
        pyramid: Build the learned x4/x2/x1/x0.5 pyramid (needs exactly four levels).
    """

    def __init__(self, feature_info: list[dict[str, Any]], indices: list[int], pyramid: bool) -> None:
        super().__init__()
        self.n_levels = len(feature_info)
        self.indices = list(indices)
        self.to_image = nn.ModuleList()
        channels, reductions = [], []
        for i in self.indices:
            lvl = feature_info[i]
            if lvl["layout"] == TOKENS:
                t, h, w = (int(g) for g in lvl["grid"])
                self.to_image.append(TokensToImage((t, h, w), bool(lvl.get("cls_token", False)), int(lvl["channels"])))
                channels.append(int(lvl["channels"]) * t)
            else:
                self.to_image.append(nn.Identity())
                channels.append(int(lvl["channels"]))
            reductions.append(float(lvl["reduction"]))
        self.in_channels = [int(feature_info[i]["channels"]) for i in self.indices]
        self.in_layouts = [str(feature_info[i]["layout"]) for i in self.indices]
        self.pyramid = LearnedPyramid(channels) if pyramid else None
        if self.pyramid is not None:
            self.out_channels = self.pyramid.out_channels
            self.reductions = [reductions[0] / 4, reductions[1] / 2, reductions[2], reductions[3] * 2]
        else:
            self.out_channels = channels
            self.reductions = reductions

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """Backbone features (one per ``feature_info`` level) -> selected ``(B, C, h, w)`` maps.

        Raises:
            ShapeError: On a wrong number of levels or a level of the wrong shape.
        """
        if not isinstance(features, list | tuple) or len(features) != self.n_levels:
            got = len(features) if isinstance(features, list | tuple) else f"a {type(features).__name__}"
            raise ShapeError(f"dense head: expected the backbone's list of {self.n_levels} feature levels, got {got}")
        maps = []
        for i, conv, layout, c in zip(self.indices, self.to_image, self.in_layouts, self.in_channels, strict=True):
            x = features[i]
            if layout == MAPS:
                check_shape(x, MAPS, name=f"feature level {i}", C=c)
            maps.append(conv(x))
        return self.pyramid(maps) if self.pyramid is not None else maps


def resize_concat(maps: list[Tensor]) -> Tensor:
    """Resize every map to the first one's size (bilinear) and concatenate along channels."""
    if len(maps) == 1:
        return maps[0]
    size = maps[0].shape[-2:]
    resized = [
        m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps
    ]
    return torch.cat(resized, dim=1)  # (B, sum C, h, w)


# -- decoders ----------------------------------------------------------------------------------
def conv_bn_relu(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class Decoder(nn.Module):
    """A decoder: selected ``(B, C_i, h_i, w_i)`` maps -> one ``(B, out_channels, h', w')`` map."""

    out_channels: int


class UPerNetDecoder(Decoder):
    """PPM on the coarsest level + FPN top-down path; output at the finest level's resolution.

    Args:
        in_channels: Channels of each level, finest first.
        channels: Width of every decoder layer.
        pool_scales: Output sizes of the PPM's adaptive average pools.
    """

    def __init__(self, in_channels: list[int], channels: int, pool_scales: list[int]) -> None:
        super().__init__()
        self.out_channels = channels
        # GroupNorm in the pooled branches: a 1x1 pool of a batch of one has a single value per
        # channel, where BatchNorm cannot train
        self.ppm = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(s),
                nn.Conv2d(in_channels[-1], channels, 1, bias=False),
                nn.GroupNorm(1, channels),
                nn.ReLU(),
            )
            for s in pool_scales
        )
        self.ppm_fuse = conv_bn_relu(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in in_channels[:-1])
        self.smooth = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = conv_bn_relu(len(in_channels) * channels, channels, 3)

    def forward(self, maps: list[Tensor]) -> Tensor:
        top = maps[-1]
        size = top.shape[-2:]
        pooled = [F.interpolate(branch(top), size=size, mode="bilinear", align_corners=False) for branch in self.ppm]
        laterals = [conv(m) for conv, m in zip(self.lateral, maps[:-1], strict=True)]
        laterals.append(self.ppm_fuse(torch.cat([top, *pooled], dim=1)))  # (B, channels, h_top, w_top)
        for i in range(len(laterals) - 1, 0, -1):  # top-down: each level gets the coarser one added
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(x) for conv, x in zip(self.smooth, laterals[:-1], strict=True)]
        outs.append(laterals[-1])
        fused: Tensor = self.fuse(resize_concat(outs))  # (B, channels, h_0, w_0)
        return fused


class FCNDecoder(Decoder):
    """``n_convs`` 3x3 conv-BN-ReLU layers on the (concatenated) selected levels."""

    def __init__(self, in_channels: list[int], channels: int, n_convs: int) -> None:
        super().__init__()
        c_in = sum(in_channels)
        self.convs = nn.Sequential(*(conv_bn_relu(c_in if i == 0 else channels, channels, 3) for i in range(n_convs)))
        self.out_channels = channels if n_convs else c_in

    def forward(self, maps: list[Tensor]) -> Tensor:
        out: Tensor = self.convs(resize_concat(maps))  # (B, channels, h, w)
        return out


class ConvDecoder(Decoder):
    """``n_blocks`` x2 upsampling blocks (transposed conv, 3x3 conv, BN, ReLU)."""

    def __init__(self, in_channels: list[int], channels: int, n_blocks: int) -> None:
        super().__init__()
        c_in = sum(in_channels)
        blocks = []
        for i in range(n_blocks):
            blocks.append(
                nn.Sequential(
                    nn.ConvTranspose2d(c_in if i == 0 else channels, channels, 2, 2),
                    conv_bn_relu(channels, channels, 3),
                )
            )
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = channels if n_blocks else c_in

    def forward(self, maps: list[Tensor]) -> Tensor:
        out: Tensor = self.blocks(resize_concat(maps))  # (B, channels, h * 2**n_blocks, w * 2**n_blocks)
        return out


# -- heads -------------------------------------------------------------------------------------
class DenseHead(nn.Module):
    """Neck + decoder + dropout + 1x1 projection, upsampled to ``img_size``.

    Subclasses define ``loss`` and ``point``; ``forward`` gives ``(B, n_out, img_size, img_size)``.
    """

    def __init__(self, neck: DenseNeck, decoder: Decoder, n_out: int, img_size: int, dropout: float) -> None:
        super().__init__()
        self.neck = neck
        self.decoder = decoder
        self.dropout = nn.Dropout2d(dropout)
        self.proj = nn.Conv2d(decoder.out_channels, n_out, 1)
        self.n_out = n_out
        self.img_size = img_size

    def forward(self, features: list[Tensor]) -> Tensor:
        """Backbone features -> ``(B, n_out, img_size, img_size)``.

        Raises:
            ShapeError: If the features do not match the backbone's ``feature_info``.
        """
        x: Tensor = self.decoder(self.neck(features))  # (B, channels, h', w')
        x = self.proj(self.dropout(x))  # (B, n_out, h', w')
        size = (self.img_size, self.img_size)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


class SegmentationHead(DenseHead):
    """Per-pixel class logits ``(B, K, H, W)`` trained with cross-entropy.

    Args:
        neck: Feature selection and reshaping.
        decoder: One of the decoders above.
        n_classes: ``K``.
        img_size: Output ``H = W``.
        ignore_index: Label of pixels that count for nothing (nodata).
        class_weights: Optional ``K`` cross-entropy weights.
        dropout: Dropout2d before the classifier.
    """

    class_weights: Tensor | None

    def __init__(
        self,
        neck: DenseNeck,
        decoder: Decoder,
        n_classes: int,
        img_size: int,
        ignore_index: int,
        class_weights: list[float] | None,
        dropout: float,
    ) -> None:
        super().__init__(neck, decoder, n_classes, img_size, dropout)
        self.n_classes = n_classes
        self.ignore_index = ignore_index
        # not in the state dict: the same weights load whatever the loss weighting was
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)

    def loss(self, pred: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """Cross-entropy averaged over the valid pixels (class-weighted mean when weights are set).

        Pixels labelled ``ignore_index`` or with ``mask == 0`` leave numerator and denominator; a
        batch without a single valid pixel has loss 0 (with zero gradient), not NaN.

        Args:
            pred: ``(B, K, H, W)`` logits.
            y: ``(B, H, W)`` integer labels.
            mask: Optional ``(B, H, W)``, 1 where the label is valid.

        Returns:
            A scalar tensor.
        """
        check_shape(pred, "B K H W", name="segmentation logits", K=self.n_classes)
        b, _, h, w = pred.shape
        if tuple(y.shape) != (b, h, w):
            raise ShapeError(f"segmentation labels: expected {LABELS} = {(b, h, w)}, got {tuple(y.shape)}")
        y = y.long()
        if mask is not None:
            if tuple(mask.shape) != (b, h, w):
                raise ShapeError(f"segmentation mask: expected {LABELS} = {(b, h, w)}, got {tuple(mask.shape)}")
            y = torch.where(mask.bool(), y, self.ignore_index)
        valid = y != self.ignore_index
        labels = y[valid]
        lo, hi = (int(labels.min()), int(labels.max())) if labels.numel() else (0, 0)
        if lo < 0 or hi >= self.n_classes:
            bad = lo if lo < 0 else hi
            raise DataError(
                f"segmentation label {bad} outside the {self.n_classes} classes [0, {self.n_classes - 1}]: set "
                f"n_classes to cover every class, or ignore_index (now {self.ignore_index}) to the nodata value"
            )
        weight = None if self.class_weights is None else self.class_weights.to(pred.device)
        per_pixel = F.cross_entropy(pred.float(), y, weight=weight, ignore_index=self.ignore_index, reduction="none")
        if weight is None:
            denom = valid.sum().to(per_pixel.dtype)
        else:
            denom = (weight[torch.where(valid, y, 0)] * valid).sum()
        # with no valid pixel the numerator is exactly 0, so the clamp only avoids 0 / 0
        return per_pixel.sum() / denom.clamp_min(1e-12)

    def point(self, pred: Tensor) -> Tensor:
        """Predicted labels ``(B, H, W)``."""
        return pred.argmax(dim=1)


# -- builders ----------------------------------------------------------------------------------
def check_head_settings(feature_info: list[dict[str, Any]] | None, dropout: float) -> list[str]:
    """What the signature's markers cannot say: a usable ``feature_info`` and ``dropout < 1``.

    The bounds of ``n_classes``/``n_outputs``, ``img_size`` and ``channels`` are ``Ge`` markers on the
    builders, checked by the config layer.
    """
    problems = feature_info_problems(feature_info)
    # TODO(spec): Annotated[float, Ge(0), Lt(1)] once spec.py has an Lt marker
    if not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        problems.append(f"head.dropout: expected a number in [0, 1), got {dropout!r}")
    return problems


def _check_class_weights(class_weights: list[float] | None, n_classes: int, problems: list[str]) -> None:
    # one weight per class: a relation to n_classes (the data), which no marker states
    if class_weights is not None and len(class_weights) != n_classes:
        problems.append(
            f"head.class_weights: expected {n_classes} non-negative numbers, one per class, got {class_weights!r}"
        )


def _neck(
    feature_info: list[dict[str, Any]], indices: list[int] | None, n_default: int, problems: list[str], pyramid: bool
) -> DenseNeck | None:
    chosen = _resolve_indices(
        default_indices(feature_info, n_default) if indices is None else list(indices), len(feature_info), problems
    )
    if problems:
        return None
    same_scale = len({float(feature_info[i]["reduction"]) for i in chosen}) == 1
    return DenseNeck(feature_info, chosen, pyramid=pyramid and same_scale and len(chosen) == 4)


def build_decoder(
    kind: str,
    feature_info: list[dict[str, Any]],
    indices: list[int] | None,
    channels: int,
    n_convs: int,
    n_blocks: int | None,
    pool_scales: list[int] | None,
    problems: list[str],
) -> tuple[DenseNeck, Decoder] | None:
    """Neck + decoder of ``kind`` (``upernet``, ``fcn`` or ``conv``); ``None`` when ``problems`` grew."""
    scales = [1, 2, 3, 6] if pool_scales is None else list(pool_scales)
    # each scale's bound is a marker; an empty list is what the element type cannot rule out
    if kind == "upernet" and not scales:
        problems.append(f"head.pool_scales: expected positive ints, got {pool_scales!r}")
    if problems:
        return None
    neck = _neck(feature_info, indices, 4 if kind == "upernet" else 1, problems, pyramid=kind == "upernet")
    if neck is None:
        return None
    if kind == "upernet":
        return neck, UPerNetDecoder(neck.out_channels, channels, scales)
    if kind == "fcn":
        return neck, FCNDecoder(neck.out_channels, channels, n_convs)
    # by default, as many x2 blocks as bring the first selected level to (about) full resolution
    blocks = max(0, round(math.log2(neck.reductions[0]))) if n_blocks is None else n_blocks
    return neck, ConvDecoder(neck.out_channels, channels, blocks)


def _segmentation(
    kind: str,
    feature_info: list[dict[str, Any]] | None,
    n_classes: int,
    img_size: int,
    ignore_index: int,
    indices: list[int] | None,
    channels: int,
    dropout: float,
    class_weights: list[float] | None,
    n_convs: int = 0,
    n_blocks: int | None = None,
    pool_scales: list[int] | None = None,
) -> SegmentationHead:
    problems = check_head_settings(feature_info, dropout)
    _check_class_weights(class_weights, n_classes, problems)
    built = None
    if not problems and feature_info is not None:
        built = build_decoder(kind, feature_info, indices, channels, n_convs, n_blocks, pool_scales, problems)
    if problems or built is None:
        raise ConfigError(problems)
    neck, decoder = built
    return SegmentationHead(neck, decoder, n_classes, img_size, ignore_index, class_weights, dropout)


@HEADS.register("upernet")
def build_upernet(
    feature_info: Annotated[list[dict[str, Any]] | None, FromData] = None,
    n_classes: Annotated[int, Ge(1), FromData] = 2,
    img_size: Annotated[int, Ge(1), FromData] = 224,
    ignore_index: Annotated[int, FromData] = -1,
    indices: list[int] | None = None,
    channels: Annotated[int, Ge(1)] = 256,
    pool_scales: list[Annotated[int, Ge(1)]] | None = None,
    dropout: float = 0.1,
    class_weights: list[Annotated[float, Ge(0)]] | None = None,
) -> SegmentationHead:
    """UPerNet segmentation head (PPM + FPN), with the learned pyramid for plain ViTs.

    Args:
        feature_info: The backbone's per-level info; follows the backbone.
        n_classes: Number of classes; follows the data.
        img_size: Output size ``H = W``; follows the data.
        ignore_index: Label left out of loss and metrics; follows the data.
        indices: Levels to decode; default four evenly spaced ViT blocks, or the last four levels of
            a hierarchical backbone. Four levels at one resolution get the learned x4/x2/x1/x0.5 pyramid.
        channels: Decoder width.
        pool_scales: PPM pool sizes; default ``[1, 2, 3, 6]``.
        dropout: Dropout2d before the classifier.
        class_weights: Optional cross-entropy weight per class.

    Raises:
        ConfigError: Listing every invalid setting.
    """
    return _segmentation(
        "upernet", feature_info, n_classes, img_size, ignore_index, indices, channels, dropout, class_weights,
        pool_scales=pool_scales,
    )  # fmt: skip


@HEADS.register("fcn")
def build_fcn(
    feature_info: Annotated[list[dict[str, Any]] | None, FromData] = None,
    n_classes: Annotated[int, Ge(1), FromData] = 2,
    img_size: Annotated[int, Ge(1), FromData] = 224,
    ignore_index: Annotated[int, FromData] = -1,
    indices: list[int] | None = None,
    channels: Annotated[int, Ge(1)] = 256,
    n_convs: Annotated[int, Ge(0)] = 2,
    dropout: float = 0.1,
    class_weights: list[Annotated[float, Ge(0)]] | None = None,
) -> SegmentationHead:
    """FCN segmentation head: a 3x3 conv stack at feature resolution, then bilinear upsampling.

    Args:
        feature_info: The backbone's per-level info; follows the backbone.
        n_classes: Number of classes; follows the data.
        img_size: Output size ``H = W``; follows the data.
        ignore_index: Label left out of loss and metrics; follows the data.
        indices: Levels to decode (resized to the first and concatenated); default the last.
        channels: Width of the conv layers.
        n_convs: Number of 3x3 conv-BN-ReLU layers (0: a linear probe on the features).
        dropout: Dropout2d before the classifier.
        class_weights: Optional cross-entropy weight per class.

    Raises:
        ConfigError: Listing every invalid setting.
    """
    return _segmentation(
        "fcn", feature_info, n_classes, img_size, ignore_index, indices, channels, dropout, class_weights,
        n_convs=n_convs,
    )  # fmt: skip


@HEADS.register("conv_decoder")
def build_conv_decoder(
    feature_info: Annotated[list[dict[str, Any]] | None, FromData] = None,
    n_classes: Annotated[int, Ge(1), FromData] = 2,
    img_size: Annotated[int, Ge(1), FromData] = 224,
    ignore_index: Annotated[int, FromData] = -1,
    indices: list[int] | None = None,
    channels: Annotated[int, Ge(1)] = 64,
    n_blocks: Annotated[int, Ge(0)] | None = None,
    dropout: float = 0.0,
    class_weights: list[Annotated[float, Ge(0)]] | None = None,
) -> SegmentationHead:
    """Light conv decoder: x2 upsampling blocks on one level (the frozen-encoder comparison's decoder).

    Args:
        feature_info: The backbone's per-level info; follows the backbone.
        n_classes: Number of classes; follows the data.
        img_size: Output size ``H = W``; follows the data.
        ignore_index: Label left out of loss and metrics; follows the data.
        indices: Levels to decode (resized to the first and concatenated); default the last.
        channels: Width of every block.
        n_blocks: Number of x2 blocks; default ``log2`` of the level's reduction (4 for 16-pixel
            patches); bilinear interpolation covers any remaining factor.
        dropout: Dropout2d before the classifier.
        class_weights: Optional cross-entropy weight per class.

    Raises:
        ConfigError: Listing every invalid setting.
    """
    return _segmentation(
        "conv", feature_info, n_classes, img_size, ignore_index, indices, channels, dropout, class_weights,
        n_blocks=n_blocks,
    )  # fmt: skip
