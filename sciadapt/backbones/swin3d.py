"""Swin3D: a Solaris-style 3-D Swin Transformer that forecasts the next frame(s) of an image series.

Solaris (Abdul Majid, Sittoni and Tudisco, 2024) forecasts the Sun's atmosphere 12 hours ahead from
multi-wavelength SDO images with a 3-D Swin Transformer; its blocks are those of the Video Swin
Transformer (Liu et al., 2022). This module builds that model family from the papers:

* **3-D patch embedding**: tubelets of ``(pt, p, p)`` pixels of all channels become tokens (a Conv3d
  with stride = kernel, then LayerNorm); an input ``(B, C, T, H, W)`` gives a token grid
  ``(T/pt, H/p, W/p)``.
* **Stages**: stage 0 works at the patch grid; every later stage starts with **patch merging** (the
  features of each 2x2 group of neighbouring tokens concatenated, LayerNorm, a Linear from 4D to 2D:
  half the rows and columns, the same frames, twice the width).
* **Blocks**: pre-norm window attention and MLP, each with a residual. Blocks alternate between
  windows of ``(wt, wh, ww)`` tokens and windows **shifted** by half a window along every axis. The
  shift is computed as a cyclic shift (roll) of the grid plus a mask, so a token attends only to the
  tokens of its own shifted window: the same partition as windows shifted without wrap-around.
* **3-D relative position bias**: per head, a learnt table of ``(2wt-1)(2wh-1)(2ww-1)`` entries indexed
  by the (frame, row, column) offset of every token pair in a window, added to the attention logits.
  A window larger than the token grid along an axis shrinks to the grid there, with no shift along it
  (as in Video Swin); its pairs index the same table.
* **Forecast decoder** (``head="forecast"``): per position of the last stage, the tokens of all frames
  are concatenated and a Linear maps them to ``L x C x r x r`` pixels (``r`` the last stage's total
  reduction), unpatchified to the next ``L`` frames of **all** channels at full resolution. With
  ``residual`` it predicts the change from the last input frame (persistence plus a correction).

**Sizes that are not multiples** of the patch or the window are padded, never refused:

* ``T``, ``H``, ``W`` not multiples of the patch: the input is zero-padded at the end (after the last
  frame, below, right) before the patch embedding;
* a token grid not a multiple of the window: padded inside each block; padded tokens are never attended
  to (masked as keys) and are cropped after the attention;
* an odd number of rows or columns before patch merging: one zero row or column is added.

The forecast is cropped back to ``H x W``. ``feature_info`` describes inputs of ``num_frames x
img_size x img_size`` (grids rounded up); the forecast decoder reads exactly ``ceil(num_frames / pt)``
token frames, so forecasting needs inputs of ``num_frames`` frames (a ShapeError names the setting).

Channels have names (``bands``, following the data): :meth:`Swin3D.extend_input_channels` appends
channels unseen in pre-training to the patch embedding and the decoder, as Solaris fine-tunes on
1700 Å (see :mod:`sciadapt.backbones._channels`). Weights are read and written in sciadapt's own
``save_pretrained`` layout (plain state dicts and task checkpoints with the same keys load too).

References: Z. Liu et al., "Video Swin Transformer", CVPR 2022, https://arxiv.org/abs/2106.13230;
H. Abdul Majid, P. Sittoni, F. Tudisco, "Solaris: A Foundation Model of the Sun", 2024,
https://arxiv.org/abs/2411.16339
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import Tensor, nn

from sciadapt.backbones._bounds import bound_problems
from sciadapt.backbones._channels import channel_key, extend_channels, grow_conv_input, log_extension
from sciadapt.backbones._saved import save_state, saved_metadata
from sciadapt.errors import CheckpointError, ConfigError, ShapeError
from sciadapt.hub import describe_mismatch, read_state_dict, resolve_file
from sciadapt.registry import BACKBONES
from sciadapt.spec import FromData, PositiveInt
from sciadapt.types import IMAGE, IMAGE_SERIES, check_shape

logger = logging.getLogger(__name__)

TOKENS = "B N D"
GRID = "B T H W D"  # tokens inside the model: one (frame, row, column) cell per token
#: Added to the attention logits of a pair a token may not attend to. Finite, so a padded query whose
#: keys are all masked gets uniform weights (cropped later) instead of NaN; exp(-1e4) is 0 in float32.
MASKED = -1.0e4
#: Channel names when the data names none: SDO/AIA's EUV and UV wavelengths (1700 Å left out, as in
#: Solaris' pre-training, to be added with ``new_channels``).
DEFAULT_BANDS = ("aia94", "aia131", "aia171", "aia193", "aia211", "aia304", "aia335", "aia1600")
#: The ``sciadapt`` entry of a :meth:`Swin3D.save_pretrained` file's metadata.
SAVED_FAMILY = "swin3d"
_LIGHTNING_PREFIX = "backbone."

# builder parameters that follow the data (the config layer fills them from the datamodule)
Frames = Annotated[PositiveInt, FromData]
ChipSize = Annotated[PositiveInt, FromData]
Bands = Annotated[list[str] | None, FromData]
Head = Literal["forecast", "none"]

Size3 = tuple[int, int, int]


@dataclass(frozen=True)
class Variant:
    """The geometry of one size."""

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    patch_size: Size3 = (1, 4, 4)
    window_size: Size3 = (2, 8, 8)


VARIANTS: dict[str, Variant] = {
    # Video Swin-B widths (128 .. 1024, 4 stages, 2-2-18-2 blocks): about 100M parameters with the decoder
    # at 8 channels and 512 px, the scale of Solaris (109M); 1-frame tubelets keep every input time step
    "base": Variant(128, (2, 2, 18, 2), (4, 8, 16, 32), (1, 4, 4), (2, 8, 8)),
    # tests and smoke runs on a CPU
    "tiny": Variant(16, (2, 2), (2, 4), (1, 4, 4), (2, 4, 4)),
}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------------------------
# windows


def effective_window(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> tuple[Size3, Size3]:
    """The window and shift used on a token grid: along an axis where the grid is no larger than the
    window, the window is the grid and there is no shift (Video Swin's rule)."""
    w = tuple(min(int(g), int(k)) for g, k in zip(grid, window, strict=True))
    s = tuple(0 if g <= k else int(sh) for g, k, sh in zip(grid, window, shift, strict=True))
    return (w[0], w[1], w[2]), (s[0], s[1], s[2])


def window_partition(x: Tensor, window: Size3) -> Tensor:
    """``(B, T, H, W, D)`` (sizes multiples of ``window``) -> ``(B * nW, wt*wh*ww, D)``, windows in (t h w) order."""
    wt, wh, ww = window
    out: Tensor = rearrange(x, "b (nt wt) (nh wh) (nw ww) d -> (b nt nh nw) (wt wh ww) d", wt=wt, wh=wh, ww=ww)
    return out


def window_merge(windows: Tensor, window: Size3, grid: Size3, batch: int) -> Tensor:
    """The inverse of :func:`window_partition`: ``(B * nW, N, D)`` -> ``(B, T, H, W, D)``."""
    wt, wh, ww = window
    nt, nh, nw = grid[0] // wt, grid[1] // wh, grid[2] // ww
    out: Tensor = rearrange(
        windows,
        "(b nt nh nw) (wt wh ww) d -> b (nt wt) (nh wh) (nw ww) d",
        b=batch,
        nt=nt,
        nh=nh,
        nw=nw,
        wt=wt,
        wh=wh,
        ww=ww,
    )
    return out


def relative_position_index(window: Size3, table: Size3) -> Tensor:
    """``(N, N)`` row of the bias table for every token pair of a ``window`` (``N = wt*wh*ww``).

    The table holds ``(2Tt-1)(2Th-1)(2Tw-1)`` offsets for windows of ``table`` size; an offset
    ``(dt, dh, dw)`` is entry ``(dt + Tt-1) * (2Th-1)(2Tw-1) + (dh + Th-1) * (2Tw-1) + (dw + Tw-1)``,
    so a smaller window's pairs index the same entries as in a full window.
    """
    axes = [torch.arange(n) for n in window]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)  # (3, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (3, N, N): offset of query i to key j
    tt, th, tw = table
    return (rel[0] + tt - 1) * (2 * th - 1) * (2 * tw - 1) + (rel[1] + th - 1) * (2 * tw - 1) + (rel[2] + tw - 1)


def _regions(n: int, window: int, shift: int) -> list[slice]:
    """The regions of one axis of a grid rolled by ``-shift`` whose tokens were neighbours before the roll."""
    if shift == 0:
        return [slice(0, n)]
    return [slice(0, n - window), slice(n - window, n - shift), slice(n - shift, n)]


@functools.lru_cache(maxsize=32)
def attention_mask(padded: Size3, size: Size3, window: Size3, shift: Size3, device: torch.device) -> Tensor | None:
    """The additive ``(nW, N, N)`` mask of the windows of a padded grid rolled by ``-shift``, or None.

    A query may attend to a key (0) when both come from the same region of the rolled grid (so the
    window is a window of the grid shifted without wrap-around) and the key is not padding (grid
    position beyond ``size``); every other pair gets :data:`MASKED`. None when nothing is masked (no
    shift, no padding).
    """
    if not any(shift) and tuple(padded) == tuple(size):
        return None
    region = torch.zeros(padded, device=device)  # (Tp, Hp, Wp) in rolled coordinates
    count = 0
    for st in _regions(padded[0], window[0], shift[0]):
        for sh in _regions(padded[1], window[1], shift[1]):
            for sw in _regions(padded[2], window[2], shift[2]):
                region[st, sh, sw] = count
                count += 1
    valid = torch.zeros(padded, device=device)
    valid[: size[0], : size[1], : size[2]] = 1.0
    valid = torch.roll(valid, shifts=tuple(-s for s in shift), dims=(0, 1, 2))  # into rolled coordinates
    regions = window_partition(region[None, ..., None], window).squeeze(-1)  # (nW, N)
    keys = window_partition(valid[None, ..., None], window).squeeze(-1) > 0  # (nW, N)
    allowed = (regions[:, :, None] == regions[:, None, :]) & keys[:, None, :]  # (nW, N, N)
    return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, MASKED)


# ---------------------------------------------------------------------------------------------
# layers


class PatchEmbed3d(nn.Module):
    """Tubelets of ``(pt, p, p)`` pixels -> tokens ``(B, T', H', W', D)``; the input is zero-padded at the
    end of T, H and W to multiples of the patch."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: Size3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, T, H, W)`` -> ``(B, ceil(T/pt), ceil(H/p), ceil(W/p), D)``."""
        t, h, w = x.shape[2:]
        pt, ph, pw = ((-n) % p for n, p in zip((t, h, w), self.patch_size, strict=True))
        if pt or ph or pw:
            x = F.pad(x, (0, pw, 0, ph, 0, pt))  # (B, C, T+pt, H+ph, W+pw)
        tokens = rearrange(self.proj(x), "b d t h w -> b t h w d")  # (B, T', H', W', D)
        out: Tensor = self.norm(tokens)
        return out


class WindowAttention3d(nn.Module):
    """Multi-head self-attention inside 3-D windows with a learnt relative position bias.

    Args:
        dim: Token width.
        num_heads: Attention heads.
        window: The configured window ``(wt, wh, ww)``; the bias table is sized for it.
        qkv_bias: Bias in the fused query/key/value projection.
    """

    def __init__(self, dim: int, num_heads: int, window: Size3, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        entries = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(entries, num_heads))
        # a fixed function of the window: recomputed, never saved
        self.relative_position_index: Tensor
        self.register_buffer("relative_position_index", relative_position_index(window, window), persistent=False)

    def bias(self, window: Size3) -> Tensor:
        """``(heads, N, N)`` relative position bias of a (possibly shrunk) window."""
        if window == self.window:
            index = self.relative_position_index
        else:
            index = relative_position_index(window, self.window).to(self.relative_position_index.device)
        n = index.shape[0]
        table = self.relative_position_bias_table[index.reshape(-1)]  # (N*N, heads)
        return table.reshape(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: Tensor, window: Size3, mask: Tensor | None = None) -> Tensor:
        """``(B * nW, N, D)`` window tokens -> the same shape; ``mask`` ``(nW, N, N)`` is added to the logits."""
        bw, n, d = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(bw, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)  # (B*nW, h, N, d/h)
        logits_bias = self.bias(window).unsqueeze(0)  # (1, h, N, N)
        if mask is not None:
            nw = mask.shape[0]
            both = logits_bias + mask.unsqueeze(1)  # (nW, h, N, N)
            logits_bias = both.unsqueeze(0).expand(bw // nw, -1, -1, -1, -1).reshape(bw, heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=logits_bias.to(q.dtype))  # (B*nW, h, N, d/h)
        out = out.transpose(1, 2).reshape(bw, n, d)  # (B*nW, N, D)
        projected: Tensor = self.proj(out)
        return projected


class SwinBlock3d(nn.Module):
    """Pre-norm (shifted) window attention and MLP over a ``(B, T, H, W, D)`` token grid.

    Args:
        dim: Token width.
        num_heads: Attention heads.
        window: Window ``(wt, wh, ww)``.
        shifted: Shift the windows by half a window along every axis.
        mlp_ratio: Hidden width of the MLP over ``dim``.
        qkv_bias: Bias in the query/key/value projection.
        drop_path: Stochastic-depth rate.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: Size3,
        shifted: bool,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.window = window
        self.shift: Size3 = (window[0] // 2, window[1] // 2, window[2] // 2) if shifted else (0, 0, 0)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3d(dim, num_heads, window, qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, H, W, D)`` -> the same shape."""
        b, t, h, w, _ = x.shape
        size: Size3 = (t, h, w)
        window, shift = effective_window(size, self.window, self.shift)
        pads = [(-n) % k for n, k in zip(size, window, strict=True)]
        padded: Size3 = (t + pads[0], h + pads[1], w + pads[2])
        y = self.norm1(x)
        if any(pads):
            y = F.pad(y, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))  # (B, Tp, Hp, Wp, D)
        if any(shift):
            y = torch.roll(y, shifts=(-shift[0], -shift[1], -shift[2]), dims=(1, 2, 3))
        mask = attention_mask(padded, size, window, shift, y.device)
        windows = self.attn(window_partition(y, window), window, mask)  # (B*nW, N, D)
        y = window_merge(windows, window, padded, b)  # (B, Tp, Hp, Wp, D)
        if any(shift):
            y = torch.roll(y, shifts=shift, dims=(1, 2, 3))
        x = x + self.drop_path(y[:, :t, :h, :w])
        out: Tensor = x + self.drop_path(self.mlp(self.norm2(x)))
        return out


class PatchMerging3d(nn.Module):
    """2x2 neighbouring tokens of each frame -> one token of twice the width (rows and columns halved)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, H, W, D)`` -> ``(B, T, ceil(H/2), ceil(W/2), 2D)``."""
        h, w = x.shape[2:4]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x0 = x[:, :, 0::2, 0::2]
        x1 = x[:, :, 1::2, 0::2]
        x2 = x[:, :, 0::2, 1::2]
        x3 = x[:, :, 1::2, 1::2]
        merged = torch.cat([x0, x1, x2, x3], dim=-1)  # (B, T, H/2, W/2, 4D)
        out: Tensor = self.reduction(self.norm(merged))
        return out


class Stage(nn.Module):
    """Patch merging (every stage but the first), then blocks alternating regular and shifted windows."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: Size3,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_paths: Sequence[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.downsample = PatchMerging3d(dim // 2) if downsample else None
        self.blocks = nn.ModuleList(
            SwinBlock3d(dim, num_heads, window, i % 2 == 1, mlp_ratio, qkv_bias, drop_paths[i]) for i in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        return x


class ForecastDecoder(nn.Module):
    """Last-stage tokens -> the next ``L`` frames of all ``C`` channels at full resolution, ``(B, L*C, H, W)``.

    Args:
        dim: Width of the last stage.
        frames: Token frames of the last stage (``ceil(num_frames / pt)``); the Linear reads them all.
        channels: Output channels ``C`` (the input channels).
        forecast_frames: Frames ``L`` forecast.
        reduction: Pixels per token along H and W at the last stage (``r``).
        residual: Add the last input frame (the decoder predicts the change).
    """

    def __init__(
        self, dim: int, frames: int, channels: int, forecast_frames: int, reduction: int, residual: bool
    ) -> None:
        super().__init__()
        self.frames = frames
        self.channels = channels
        self.forecast_frames = forecast_frames
        self.reduction = reduction
        self.residual = residual
        self.proj = nn.Linear(frames * dim, forecast_frames * channels * reduction * reduction)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        """``z`` ``(B, T', h, w, D)`` and the input ``x`` ``(B, C, T, H, W)`` -> ``(B, L*C, H, W)``, frames major."""
        if z.shape[1] != self.frames:
            raise ShapeError(
                f"swin3d forecast: the decoder reads {self.frames} token frames, got {z.shape[1]} (input of "
                f"{x.shape[2]} frames); give inputs of the builder's num_frames frames"
            )
        r = self.reduction
        y: Tensor = self.proj(rearrange(z, "b t h w d -> b h w (t d)"))  # (B, h, w, L*C*r*r)
        y = rearrange(
            y, "b h w (l c r1 r2) -> b (l c) (h r1) (w r2)", l=self.forecast_frames, c=self.channels, r1=r, r2=r
        )  # (B, L*C, h*r, w*r)
        y = y[:, :, : x.shape[3], : x.shape[4]]  # (B, L*C, H, W)
        if self.residual:
            y = y + x[:, :, -1].repeat(1, self.forecast_frames, 1, 1)  # persistence, frames major
        return y

    def extend_channels(self, channels: Sequence[str], new: Sequence[str], rule: str) -> None:
        """Append output channels: the rows of every new channel (all frames, all pixels) start from ``rule``."""
        w, bias = self.proj.weight, self.proj.bias
        lf, c, rr = self.forecast_frames, self.channels, self.reduction**2
        grown = extend_channels(w.view(lf, c, rr, w.shape[1]), channels, new, rule, dim=1)  # (L, C+n, r*r, K)
        grown_bias = extend_channels(bias.view(lf, c, rr), channels, new, rule, dim=1)  # (L, C+n, r*r)
        self.proj.weight = nn.Parameter(grown.reshape(-1, w.shape[1]), requires_grad=w.requires_grad)
        self.proj.bias = nn.Parameter(grown_bias.reshape(-1), requires_grad=bias.requires_grad)
        self.proj.out_features = self.proj.weight.shape[0]
        self.channels = c + len(new)


# ---------------------------------------------------------------------------------------------
# the model


class Swin3D(nn.Module):
    """A 3-D Swin Transformer over ``(B, C, T, H, W)`` image series with an optional forecast decoder.

    Build it with ``swin3d`` or ``swin3d_tiny`` (the config schema). See the module docstring for the
    architecture and the padding rules.

    Args:
        bands: Names of the input channels, in order (default :data:`DEFAULT_BANDS`).
        num_frames: Input frames ``T`` (``feature_info`` and the forecast decoder follow it).
        img_size: Input ``H = W`` that ``feature_info`` describes (other sizes work).
        patch_size: Tubelet ``(pt, p, p)``.
        embed_dim: Width of stage 0 (stage ``i``: ``embed_dim * 2**i``).
        depths: Blocks per stage.
        num_heads: Attention heads per stage.
        window_size: Window ``(wt, wh, ww)`` in tokens.
        mlp_ratio: Hidden width of the MLPs over the token width.
        qkv_bias: Bias in the attention's query/key/value projection.
        drop_path: Stochastic depth of the last block (rising linearly from 0 over the blocks).
        head: ``"forecast"``: add the forecast decoder (the last ``feature_info`` level, kind
            ``forecast``); ``"none"``: the encoder only.
        forecast_frames: Frames ``L`` the decoder forecasts.
        residual: The decoder predicts the change from the last input frame.
        name: The builder name (messages).

    Raises:
        ConfigError: Listing every invalid setting.
    """

    input_layout = IMAGE_SERIES
    #: the builder parameter (and datamodule fact) naming the input channels (:class:`~sciadapt.types.ExtendsChannels`)
    CHANNELS_FACT: ClassVar[str] = "bands"

    def __init__(
        self,
        bands: Sequence[str] | None = None,
        num_frames: PositiveInt = 2,
        img_size: PositiveInt = 224,
        patch_size: Size3 = (1, 4, 4),
        embed_dim: PositiveInt = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: Size3 = (2, 7, 7),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.1,
        head: Head = "none",
        forecast_frames: PositiveInt = 1,
        residual: bool = True,
        name: str = "swin3d",
    ) -> None:
        super().__init__()
        channels = [str(b) for b in (bands if bands is not None else DEFAULT_BANDS)]
        _validate(
            name,
            channels,
            num_frames,
            img_size,
            tuple(patch_size),
            embed_dim,
            tuple(depths),
            tuple(num_heads),
            tuple(window_size),
            drop_path,
            head,
            forecast_frames,
        )
        self.name = name
        self.bands = channels
        self.in_chans = len(channels)
        self.num_frames = int(num_frames)
        self.img_size = int(img_size)
        self.patch_size: Size3 = (int(patch_size[0]), int(patch_size[1]), int(patch_size[2]))
        self.window_size: Size3 = (int(window_size[0]), int(window_size[1]), int(window_size[2]))
        self.dims = [embed_dim * 2**i for i in range(len(depths))]
        self.config = {
            "num_frames": self.num_frames,
            "img_size": self.img_size,
            "patch_size": list(self.patch_size),
            "embed_dim": embed_dim,
            "depths": list(depths),
            "num_heads": list(num_heads),
            "window_size": list(self.window_size),
            "head": head,
            "forecast_frames": int(forecast_frames),
        }

        self.patch_embed = PatchEmbed3d(self.in_chans, embed_dim, self.patch_size)
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.stages = nn.ModuleList(
            Stage(
                self.dims[i],
                depths[i],
                num_heads[i],
                self.window_size,
                mlp_ratio,
                qkv_bias,
                rates[starts[i] : starts[i] + depths[i]],
                downsample=i > 0,
            )
            for i in range(len(depths))
        )
        self.norm = nn.LayerNorm(self.dims[-1])
        self.grids = self.token_grids(self.num_frames, self.img_size, self.img_size)
        self.decoder = (
            ForecastDecoder(
                self.dims[-1],
                self.grids[-1][0],
                self.in_chans,
                int(forecast_frames),
                self.patch_size[1] * 2 ** (len(depths) - 1),
                residual,
            )
            if head == "forecast"
            else None
        )
        self._init_weights()
        self.feature_info: list[dict[str, Any]] = self._feature_info()
        # the attention's input and output projections of every block (as Video Swin LoRA recipes)
        self.default_peft_targets: list[str] = ["stages.*.blocks.*.attn.qkv", "stages.*.blocks.*.attn.proj"]

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Swin's initialisation: truncated-normal (std 0.02) Linears and bias tables, zero biases, unit LayerNorms."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, WindowAttention3d):
                trunc_normal_(module.relative_position_bias_table, std=0.02)

    def token_grids(self, frames: int, height: int, width: int) -> list[Size3]:
        """The ``(T', h, w)`` token grid of every stage for an input of ``frames x height x width`` pixels."""
        pt, p, q = self.patch_size
        t, h, w = _ceil_div(frames, pt), _ceil_div(height, p), _ceil_div(width, q)
        grids: list[Size3] = [(t, h, w)]
        for _ in self.dims[1:]:
            h, w = _ceil_div(h, 2), _ceil_div(w, 2)
            grids.append((t, h, w))
        return grids

    def _feature_info(self) -> list[dict[str, Any]]:
        levels: list[dict[str, Any]] = [
            {
                "layout": TOKENS,
                "channels": dim,
                "reduction": self.patch_size[1] * 2**i,
                "grid": list(grid),
                "cls_token": False,
            }
            for i, (dim, grid) in enumerate(zip(self.dims, self.grids, strict=True))
        ]
        if self.decoder is not None:
            channels = self.decoder.forecast_frames * self.decoder.channels
            levels.append({"layout": IMAGE, "channels": channels, "reduction": 1, "kind": "forecast"})
        return levels

    # -- forward ------------------------------------------------------------------------------

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Encode an image series; return every stage's tokens and, with the decoder, the forecast.

        Args:
            x: ``(B, C, T, H, W)`` with ``C = len(bands)``; any ``T``, ``H``, ``W`` (padded as the
                module docstring says; the forecast needs ``T = num_frames``).

        Returns:
            One ``(B, T'*h*w, D_i)`` tensor per stage (tokens in ``(t h w)`` order, the last after the
            final LayerNorm), then, with ``head="forecast"``, the forecast ``(B, L*C, H, W)`` (channel
            ``l*C + c`` is channel ``c`` of forecast frame ``l``).

        Raises:
            ShapeError: If ``x`` is not ``B C T H W`` with ``C = len(bands)``.
        """
        check_shape(x, IMAGE_SERIES, name=f"{self.name} input", C=self.in_chans)
        z = self.patch_embed(x)  # (B, T', h, w, D)
        features = []
        for i, stage in enumerate(self.stages):
            z = stage(z)  # (B, T', h_i, w_i, D_i)
            if i == len(self.stages) - 1:
                z = self.norm(z)
            features.append(rearrange(z, "b t h w d -> b (t h w) d"))  # (B, N_i, D_i)
        if self.decoder is not None:
            features.append(self.decoder(z, x))
        return features

    def forward(self, x: Tensor) -> list[Tensor]:
        """Same as :meth:`forward_features`."""
        return self.forward_features(x)

    def example_inputs(self, batch: int = 2) -> dict[str, Tensor]:
        """Seeded ``x`` ``(B, C, num_frames, img_size, img_size)`` on this model's device and dtype."""
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, self.in_chans, self.num_frames, self.img_size, self.img_size, generator=g)
        like = self.patch_embed.proj.weight
        return {"x": x.to(like.device, like.dtype)}

    # -- new input channels (sciadapt.types.ExtendsChannels) ------------------------------------

    @property
    def channel_names(self) -> list[str]:
        """The input channels (``bands``), in order."""
        return list(self.bands)

    def extend_input_channels(self, new_channel_names: Sequence[str], rule: str) -> None:
        """Append input channels to the patch embedding and, with the decoder, its forecast outputs.

        The existing channels' kernel slices and decoder rows are kept bit for bit; the new ones start
        from ``rule`` (``zeros``, ``mean`` or ``copy:<name>``, see :mod:`sciadapt.backbones._channels`).
        With ``zeros`` and ``residual`` a new channel is first forecast as persistence. ``bands``,
        ``feature_info`` and what :meth:`save_pretrained` records follow, so a saved or checkpointed
        extended model reloads into a model built with the new bands.

        Raises:
            ConfigError: If the rule is unknown, ``copy:`` names no channel, or a channel is already there.
        """
        new = [str(n) for n in new_channel_names]
        old = list(self.bands)
        layers = ["patch_embed.proj"]
        grow_conv_input(self.patch_embed.proj, old, new, rule)
        if self.decoder is not None:
            self.decoder.extend_channels(old, new, rule)
            layers.append("decoder.proj")
        self.bands = old + new
        self.in_chans = len(self.bands)
        self.feature_info = self._feature_info()
        log_extension(self.name, old, new, rule, layers)

    # -- weights -------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``directory/model.safetensors`` (metadata: ``bands`` and the geometry) for :meth:`load_pretrained`."""
        return save_state(self.state_dict(), directory, SAVED_FAMILY, bands=self.bands, config=self.config)

    def load_pretrained(self, source: str) -> None:
        """Load weights with strict checking: a :meth:`save_pretrained` folder or file, a plain state dict
        with this model's keys, or a task checkpoint (its ``backbone.`` entries).

        Args:
            source: A file, a folder holding ``model.safetensors`` (or a torch file), or ``hf://org/repo``.

        Raises:
            CheckpointError: If the file cannot be read, records other channels (names or order) than
                ``bands``, or keys are missing, unexpected or mis-shaped; the message names the settings.
        """
        path = resolve_file(source)
        state = read_state_dict(path)
        if any(k.startswith(_LIGHTNING_PREFIX) for k in state):
            state = {k[len(_LIGHTNING_PREFIX) :]: v for k, v in state.items() if k.startswith(_LIGHTNING_PREFIX)}
            logger.info(f"{self.name}: {path.name} is a task checkpoint; its backbone.* entries are loaded")
        if self.decoder is None:
            dropped = sorted(k for k in state if k.startswith("decoder."))
            if dropped:
                state = {k: v for k, v in state.items() if not k.startswith("decoder.")}
                logger.info(
                    f"{self.name}: {path.name}: dropped the forecast decoder's {len(dropped)} entries (this model has "
                    'head="none"; build it with head="forecast" to keep them)'
                )
        recorded = (saved_metadata(path, SAVED_FAMILY) or {}).get("bands")
        file_bands = [str(b) for b in recorded] if isinstance(recorded, list) else []
        if file_bands and [channel_key(b) for b in file_bands] != [channel_key(b) for b in self.bands]:
            raise CheckpointError(
                f"cannot load {path} into {self._describe()}: the file's channels are {', '.join(file_bands)}, "
                f"this model's {', '.join(self.bands)}. Give the data the file's channels in its order "
                "(data.bands), and add channels the file lacks with stages[i].new_channels"
            )
        problems = describe_mismatch(self.state_dict(), state)
        if problems:
            raise CheckpointError(
                f"cannot load {path} into {self._describe()}:\n"
                + "\n".join(f"  - {p}" for p in problems)
                + "\n  (shapes follow bands, the variant (swin3d or swin3d_tiny), head, forecast_frames and "
                "num_frames (the decoder reads ceil(num_frames / pt) token frames))"
            )
        self.load_state_dict(state, strict=True)

    def _describe(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.config.items())
        return f"{self.name}(bands={len(self.bands)}, {settings})"


def _validate(
    name: str,
    bands: list[str],
    num_frames: int,
    img_size: int,
    patch_size: tuple[int, ...],
    embed_dim: int,
    depths: tuple[int, ...],
    num_heads: tuple[int, ...],
    window_size: tuple[int, ...],
    drop_path: float,
    head: str,
    forecast_frames: int,
) -> None:
    problems = bound_problems(
        Swin3D.__init__,
        {"num_frames": num_frames, "img_size": img_size, "embed_dim": embed_dim, "forecast_frames": forecast_frames},
        name,
    )
    for key, size in (("patch_size", patch_size), ("window_size", window_size)):
        if len(size) != 3 or not all(isinstance(s, int) and s >= 1 for s in size):
            problems.append(f"{name}.{key}: expected three positive ints (t, h, w), got {size}")
    if not depths or len(depths) != len(num_heads) or not all(isinstance(d, int) and d >= 1 for d in depths):
        problems.append(f"{name}: depths {depths} and num_heads {num_heads} need one positive entry per stage")
    elif isinstance(embed_dim, int):
        for i, heads in enumerate(num_heads):
            if heads < 1 or (embed_dim * 2**i) % heads:
                problems.append(f"{name}: stage {i} width {embed_dim * 2**i} is not divisible by num_heads {heads}")
    if not isinstance(drop_path, int | float) or not 0.0 <= drop_path < 1.0:
        problems.append(f"{name}.drop_path: expected 0 <= drop_path < 1, got {drop_path!r}")
    if head not in ("forecast", "none"):
        problems.append(f"{name}.head: expected forecast or none, got {head!r}")
    if not bands:
        problems.append(f"{name}.bands: expected at least one channel name")
    keys = [channel_key(b) for b in bands]
    repeated = sorted({b for b, k in zip(bands, keys, strict=True) if keys.count(k) > 1})
    if repeated:
        problems.append(f"{name}.bands: channel names repeat (case-insensitive): {', '.join(repeated)}")
    if problems:
        raise ConfigError(problems)


# ---------------------------------------------------------------------------------------------
# builders


def _build(
    variant: str,
    name: str,
    weights: str | None,
    bands: list[str] | None,
    num_frames: int,
    img_size: int,
    forecast_frames: int,
    head: Head,
    residual: bool,
    drop_path: float,
) -> Swin3D:
    v = VARIANTS[variant]
    if bands is None:
        logger.info(f"{name}: bands not given; the data's channels are taken to be {', '.join(DEFAULT_BANDS)}")
    model = Swin3D(
        bands=bands,
        num_frames=num_frames,
        img_size=img_size,
        patch_size=v.patch_size,
        embed_dim=v.embed_dim,
        depths=v.depths,
        num_heads=v.num_heads,
        window_size=v.window_size,
        drop_path=drop_path,
        head=head,
        forecast_frames=forecast_frames,
        residual=residual,
        name=name,
    )
    if weights is not None:
        model.load_pretrained(weights)
    return model


@BACKBONES.register("swin3d")
def build_swin3d(
    weights: str | None = None,
    bands: Bands = None,
    num_frames: Frames = 2,
    img_size: ChipSize = 512,
    forecast_frames: PositiveInt = 1,
    head: Head = "none",
    residual: bool = True,
    drop_path: float = 0.1,
) -> Swin3D:
    """A Solaris-style 3-D Swin Transformer: Video Swin-B widths (128..1024, blocks 2-2-18-2), (1, 4, 4) patches, (2, 8, 8) windows.

    Args:
        weights: A :meth:`Swin3D.save_pretrained` folder or file, a state dict with the same keys, a task
            checkpoint, or ``hf://org/repo``; None: random initialisation.
        bands: The data's channel names, one per input channel (default: SDO/AIA 94, 131, 171, 193, 211,
            304, 335 and 1600 Å).
        num_frames: Input frames ``T`` (the decoder reads all of them).
        img_size: Image size ``H = W`` of the data (512 in Solaris); others are padded to a multiple of 4.
        forecast_frames: Frames forecast at once.
        head: ``none``: the encoder's stage features (what dense heads read); ``forecast``: add the
            Solaris-style decoder, the next frame(s) of every channel at full resolution, as the last
            feature level (a ``save_pretrained`` file with a decoder loads into ``none`` with the
            decoder dropped and logged).
        residual: The decoder predicts the change from the last input frame.
        drop_path: Stochastic depth of the last block (linear from 0).

    Returns:
        The model; ``forward_features(x)`` returns each stage's tokens and, with the decoder, the
        forecast ``(B, forecast_frames * C, H, W)``.

    Raises:
        ConfigError: Listing every invalid setting.
        CheckpointError: If ``weights`` cannot be loaded.
    """
    return _build("base", "swin3d", weights, bands, num_frames, img_size, forecast_frames, head, residual, drop_path)


@BACKBONES.register("swin3d_tiny")
def build_swin3d_tiny(
    weights: str | None = None,
    bands: Bands = None,
    num_frames: Frames = 2,
    img_size: ChipSize = 32,
    forecast_frames: PositiveInt = 1,
    head: Head = "none",
    residual: bool = True,
    drop_path: float = 0.0,
) -> Swin3D:
    """A tiny Swin3D for tests and CPU smoke runs: 2 stages of widths 16 and 32, (1, 4, 4) patches, (2, 4, 4) windows.

    Takes the arguments of :func:`build_swin3d`.
    """
    return _build(
        "tiny", "swin3d_tiny", weights, bands, num_frames, img_size, forecast_frames, head, residual, drop_path
    )
