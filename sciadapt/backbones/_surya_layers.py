"""The layers of Surya's HelioSpectFormer, with the module names of the official checkpoint.

Written from the equations of the upstream code (``surya/models/{embedding,spectformer,transformer_ls}.py``,
NASA-IMPACT/Surya; the same code ships as ``terratorch_surya``); attribute names are upstream's so
``state_dict()`` keys equal the official ones. Only what the released Surya-1.0 geometry uses is
built: the linear (patch) time embedding, spectral-gating blocks, long-short attention blocks with a
dynamic projection (``dp_rank >= 1``) and windows (``window_size >= 1``), no relative position
bias, no global tokens, no ensemble (adaLN) and the linear decoder.

Tokens are ``(B, N, D)`` with ``N = n * n`` in row-major order over the ``n x n`` token grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath
from torch import Tensor, nn


def fourier_table(grid: int, embed_dim: int) -> Tensor:
    """The fixed ``(1, grid * grid, embed_dim)`` position signal of the linear embedding.

    For ``embed_dim / 4`` frequencies ``f`` spread evenly over ``[1, grid / 2]`` and coordinates
    ``x`` (column) and ``y`` (row) spread evenly over ``[0, 1]``, each token gets, frequency by
    frequency, ``[cos 2 pi f x, sin 2 pi f x, cos 2 pi f y, sin 2 pi f y]``.
    """
    axis = torch.linspace(0.0, 1.0, grid)
    col = axis.reshape(1, grid).expand(grid, grid)  # (n, n): x varies along a row
    row = axis.reshape(grid, 1).expand(grid, grid)  # (n, n): y varies along a column
    maps = []
    for f in torch.linspace(1.0, grid / 2.0, embed_dim // 4):
        wx, wy = 2.0 * math.pi * f * col, 2.0 * math.pi * f * row
        maps += [wx.cos(), wx.sin(), wy.cos(), wy.sin()]
    table = torch.stack(maps, dim=-1)  # (n, n, D)
    return table.reshape(1, grid * grid, -1)  # (1, N, D)


class PatchEmbed(nn.Module):
    """``(B, C, T, H, W)`` -> ``(B, N, D)``: every ``p x p`` patch of all ``C * T`` planes is one token."""

    def __init__(self, in_planes: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_planes, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        planes = x.flatten(1, 2)  # (B, C*T, H, W), channel-major: plane c*T + t
        out: Tensor = rearrange(self.proj(planes), "b d h w -> b (h w) d")  # (B, N, D)
        return out


class LinearEmbedding(nn.Module):
    """Patch embedding plus the fixed Fourier position signal (upstream ``LinearEmbedding``).

    ``pos_embed`` is a persistent buffer, as upstream, so official files carry it.
    """

    def __init__(
        self, img_size: int, patch_size: int, in_chans: int, num_frames: int, embed_dim: int, drop_rate: float
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(in_chans * num_frames, embed_dim, patch_size)
        self.pos_embed: Tensor
        self.register_buffer("pos_embed", fourier_table(img_size // patch_size, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        return out


class Mlp(nn.Module):
    """``fc2(drop(gelu(fc1(x))))`` then dropout."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
        return out


class SpectralGating(nn.Module):
    """A learnt complex filter applied in 2-D Fourier space: ``irfft2(rfft2(x) * W)``, orthonormal.

    The transform runs in float32 whatever the input dtype (as upstream, for mixed precision).
    ``complex_weight`` is ``(n, n // 2 + 1, D, 2)`` (real, imaginary) for an ``n x n`` token grid.
    """

    def __init__(self, dim: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.complex_weight = nn.Parameter(torch.randn(grid, grid // 2 + 1, dim, 2) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        image = x.reshape(b, self.grid, self.grid, d).float()  # (B, n, n, D)
        spectrum = torch.fft.rfft2(image, dim=(1, 2), norm="ortho")  # (B, n, n/2+1, D)
        spectrum = spectrum * torch.view_as_complex(self.complex_weight.float())
        filtered: Tensor = torch.fft.irfft2(spectrum, s=(self.grid, self.grid), dim=(1, 2), norm="ortho")
        return filtered.to(x.dtype).reshape(b, n, d)  # (B, N, D)


class BlockSpectralGating(nn.Module):
    """``x + mlp(norm2(filter(norm1(x))))``: one residual around filter and MLP together (as upstream)."""

    def __init__(self, dim: int, grid: int, mlp_ratio: float, drop: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.filter = SpectralGating(dim, grid)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + self.drop_path(self.mlp(self.norm2(self.filter(self.norm1(x)))))
        return out


class AttentionLS(nn.Module):
    """Long-short attention (Zhu et al., "Long-Short Transformer", 2021) over an ``n x n`` token grid.

    Every query attends, in one softmax, to

    * ``dp_rank`` *long-range* keys per head: the sequence compressed by a dynamic projection,
      ``P = softmax_N(to_dynamic_projection(x))`` (``(B, h, r, N)``), ``K_lr = LN_dp(P K)``,
      ``V_lr = LN_dp(P V)`` (the LayerNorm over all heads' channels);
    * the keys of its *window*: queries are grouped in ``w x w`` windows, and a window sees the
      ``(w + 2s) x (w + 2s)`` tokens around it (``s = max(w // 2, 1)``); positions beyond the grid
      are masked out.

    Keys and values of both branches pass ``dual_ln_full`` first; queries are scaled by
    ``head_dim ** -0.5``. ``qkv`` has no bias (upstream default).
    """

    def __init__(self, dim: int, num_heads: int, grid: int, window_size: int, dp_rank: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.grid = grid
        self.window = window_size
        self.side = max(window_size // 2, 1)
        self.dp_rank = dp_rank
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)
        self.to_dynamic_projection = nn.Linear(dim, dp_rank * num_heads)
        self.dual_ln_dp = nn.LayerNorm(dim)
        self.dual_ln_full = nn.LayerNorm(dim)

    def _key_valid(self, device: torch.device) -> Tensor:
        """``(g, g, 1, k*k)``: True where a window's key lies on the grid, False on the zero padding around it."""
        ones = torch.ones(1, 1, self.grid, self.grid, 1, device=device)
        s = self.side
        valid = self._tiles(F.pad(ones, (0, 0, s, s, s, s)))  # (1, 1, g, g, k*k, 1)
        return valid[0, 0, :, :, None, :, 0] > 0

    def _tiles(self, padded: Tensor) -> Tensor:
        """``(B, h, n + 2s, n + 2s, e)`` -> ``(B, h, g, g, k*k, e)``: each window's neighbourhood, ``k = w + 2s``."""
        k = self.window + 2 * self.side
        tiles = padded.unfold(2, k, self.window).unfold(3, k, self.window)  # (B, h, g, g, e, k, k)
        return rearrange(tiles, "b h gy gx e ky kx -> b h gy gx (ky kx) e")

    def _neighbourhood(self, t: Tensor) -> Tensor:
        """``(B, h, N, e)`` keys or values -> ``(B, h, g, g, k*k, e)`` zero-padded window neighbourhoods."""
        image = rearrange(t, "b h (y x) e -> b h y x e", y=self.grid)  # (B, h, n, n, e)
        s = self.side
        return self._tiles(F.pad(image, (0, 0, s, s, s, s)))

    def _group(self, t: Tensor) -> Tensor:
        """``(B, h, N, c)`` -> ``(B, h, g, g, w*w, c)``: tokens gathered by window."""
        w = self.window
        return rearrange(t, "b h (gy wy gx wx) c -> b h gy gx (wy wx) c", wy=w, wx=w, gy=self.grid // w)

    def _ungroup(self, t: Tensor) -> Tensor:
        """Inverse of :meth:`_group`."""
        w = self.window
        return rearrange(t, "b h gy gx (wy wx) c -> b h (gy wy gx wx) c", wy=w, wx=w)

    def _compress(self, p: Tensor, t: Tensor) -> Tensor:
        """``P (B, h, r, N)`` applied to keys or values ``(B, h, N, e)`` -> ``(B, h, r, e)`` after ``dual_ln_dp``."""
        lr = rearrange(p.matmul(t), "b h r e -> b r (h e)")  # (B, r, D)
        normed: Tensor = self.dual_ln_dp(lr)
        return rearrange(normed, "b r (h e) -> b h r e", h=self.num_heads)

    def forward(self, x: Tensor) -> Tensor:
        h = self.num_heads
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # (B, N, D) each
        q = q * self.scale
        k, v = self.dual_ln_full(k), self.dual_ln_full(v)
        q, k, v = (rearrange(t, "b n (h e) -> b h n e", h=h) for t in (q, k, v))  # (B, h, N, e)

        p = rearrange(self.to_dynamic_projection(x), "b n (h r) -> b h r n", h=h).softmax(dim=-1)  # (B, h, r, N)
        k_lr, v_lr = self._compress(p, k), self._compress(p, v)  # (B, h, r, e)
        dots_lr = self._group(q.matmul(k_lr.transpose(-1, -2)))  # (B, h, g, g, w*w, r)

        q_win = self._group(q)  # (B, h, g, g, w*w, e)
        dots_win = q_win.matmul(self._neighbourhood(k).transpose(-1, -2))  # (B, h, g, g, w*w, k*k)
        dots_win = dots_win.masked_fill(~self._key_valid(x.device), float("-inf"))

        attn = self.attn_drop(torch.cat([dots_lr, dots_win], dim=-1).softmax(dim=-1))
        attn_lr, attn_win = attn.split([self.dp_rank, attn.shape[-1] - self.dp_rank], dim=-1)
        out = self._ungroup(attn_win.matmul(self._neighbourhood(v)))  # (B, h, N, e)
        out = out + self._ungroup(attn_lr).matmul(v_lr)
        out = rearrange(out, "b h n e -> b n (h e)")  # (B, N, D)
        result: Tensor = self.proj_drop(self.proj(out))
        return result


class BlockAttention(nn.Module):
    """Pre-norm long-short attention block.

    Upstream's block carries an optional adaLN modulation; without it (every released model) its
    shift is the constant 1 and its scale and gate are 1, so attention and MLP see
    ``norm(x) + 1``. That is what the weights were trained with, so it is kept.
    """

    SHIFT = 1.0

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: int,
        mlp_ratio: float,
        window_size: int,
        dp_rank: int,
        drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.attn = AttentionLS(dim, num_heads, grid, window_size, dp_rank)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x) + self.SHIFT))
        out: Tensor = x + self.drop_path(self.mlp(self.norm2(x) + self.SHIFT))
        return out


class SpectFormer(nn.Module):
    """``n_spectral_blocks`` spectral-gating blocks, then ``depth - n_spectral_blocks`` attention blocks.

    Stochastic depth grows linearly from 0 to ``drop_path`` over the ``depth`` blocks (upstream's
    non-uniform rule). Linear weights ~ truncated N(0, 0.02), biases 0, LayerNorms (1, 0).
    """

    def __init__(
        self,
        grid: int,
        embed_dim: int,
        depth: int,
        n_spectral_blocks: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        dp_rank: int,
        drop_rate: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        rates = [drop_path * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks_spectral_gating = nn.ModuleList(
            [BlockSpectralGating(embed_dim, grid, mlp_ratio, drop_rate, rates[i]) for i in range(n_spectral_blocks)]
        )
        self.blocks_attention = nn.ModuleList(
            [
                BlockAttention(embed_dim, num_heads, grid, mlp_ratio, window_size, dp_rank, drop_rate, rates[i])
                for i in range(n_spectral_blocks, depth)
            ]
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def blocks(self) -> list[nn.Module]:
        """Every block in execution order."""
        return [*self.blocks_spectral_gating, *self.blocks_attention]


class LinearDecoder(nn.Module):
    """``(B, N, D)`` tokens -> ``(B, C, H, W)``: a 1x1 convolution to ``p * p * C`` then a pixel shuffle."""

    def __init__(self, patch_size: int, out_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.unembed = nn.Sequential(
            nn.Conv2d(embed_dim, patch_size * patch_size * out_chans, kernel_size=1),
            nn.PixelShuffle(patch_size),
        )

    def forward(self, x: Tensor, grid: int) -> Tensor:
        image = rearrange(x, "b (h w) d -> b d h w", h=grid)  # (B, D, n, n)
        out: Tensor = self.unembed(image)  # (B, C, n*p, n*p)
        return out
