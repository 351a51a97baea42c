"""What the grid-native rollout backbones (``unet_grid``, ``swin_grid``) share.

Both map the last ``n_input`` normalised states ``(B, T, C, H, W)``, the forcings of those times and
of the target time, and the static fields to the normalised tendency ``(B, C, H, W)`` on the same
grid, as :class:`sciadapt.backbones.graphcast.GraphCast` does, but with image operators: they work
on any grid (lat-lon, projected, curvilinear) of any size. The inputs are stacked along channels
(``T * C + (T + 1) * F + S``), padded to a multiple of the network's total stride, and the output
is cropped back to ``H x W``. The padding is split evenly between the two sides of each axis.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from sciadapt.backbones._saved import save_state, saved_metadata
from sciadapt.errors import CheckpointError, ShapeError
from sciadapt.hub import describe_mismatch, read_state_dict, resolve_file
from sciadapt.types import GRIDDED, IMAGE, check_shape

logger = logging.getLogger(__name__)

PadMode = Literal["replicate", "zeros", "circular"]
#: The grid of :meth:`GridBackbone.example_inputs`: odd on both axes, so padding is always exercised.
EXAMPLE_GRID = (33, 49)
_LIGHTNING_PREFIX = "backbone."


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` that divides ``channels``."""
    g = max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)
    return nn.GroupNorm(g, channels)


class ConvBlock(nn.Module):
    """``(Conv3x3 -> GroupNorm -> SiLU) x 2``, the U-Net's unit."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm1 = group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(x)))  # type: ignore[no-any-return]


def pad_amounts(h: int, w: int, multiple: int) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` padding bringing ``h x w`` to multiples of ``multiple``, split evenly."""
    ph, pw = (-h) % multiple, (-w) % multiple
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def pad_grid(x: Tensor, multiple: int, mode: PadMode) -> tuple[Tensor, tuple[int, int, int, int]]:
    """Pad ``x (B, C, H, W)`` to multiples of ``multiple``; return it and the padding for :func:`crop_grid`.

    ``circular`` wraps both axes (global grids in longitude), ``replicate`` repeats the edge values
    (regional grids: no artificial jump at the border), ``zeros`` pads with the normalised mean.
    """
    pads = pad_amounts(x.shape[-2], x.shape[-1], multiple)
    if not any(pads):
        return x, pads
    if mode == "zeros":
        return F.pad(x, pads), pads
    if mode == "replicate":
        return F.pad(x, pads, mode="replicate"), pads
    # circular padding needs pad <= size: wrap as often as needed
    left, right, top, bottom = pads
    h, w = x.shape[-2:]
    rows = torch.arange(-top, h + bottom, device=x.device) % h
    cols = torch.arange(-left, w + right, device=x.device) % w
    return x.index_select(-2, rows).index_select(-1, cols), pads


def crop_grid(x: Tensor, pads: tuple[int, int, int, int]) -> Tensor:
    """Undo :func:`pad_grid` on ``x (B, C, H', W')``."""
    left, right, top, bottom = pads
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


class GridBackbone(nn.Module):
    """Input checks, channel stacking, padding, examples and checkpoints of a grid-native backbone.

    A subclass sets :attr:`family`, :attr:`multiple` (total stride), builds its layers and implements
    :meth:`decode`, ``(B, in_chans, H', W') -> (B, n_channels, H', W')`` on the padded grid.

    Args:
        n_channels: State channels ``C``.
        n_forcings: Forcing channels per time step ``F``.
        n_static: Static channels ``S``.
        n_input: Past states per step ``T``.
        pad_mode: How the grid is padded to a multiple of the total stride.
        config: The architecture settings, recorded in saved files and checked when loading.
    """

    input_layout = GRIDDED
    family = "grid"
    multiple = 1

    def __init__(
        self, n_channels: int, n_forcings: int, n_static: int, n_input: int, pad_mode: PadMode, config: dict[str, Any]
    ) -> None:
        super().__init__()
        self.n_channels = n_channels
        self.n_forcings = n_forcings
        self.n_static = n_static
        self.n_input = n_input
        self.pad_mode: PadMode = pad_mode
        self.config: dict[str, Any] = {
            "n_channels": n_channels,
            "n_forcings": n_forcings,
            "n_static": n_static,
            "n_input": n_input,
            **config,
        }
        # what the grid head takes: one tendency per state channel, at full resolution
        self.feature_info: list[dict[str, Any]] = [{"layout": IMAGE, "channels": n_channels, "reduction": 1}]

    @property
    def in_chans(self) -> int:
        """Channels of the stacked input: ``T * C + (T + 1) * F + S``."""
        return self.n_input * self.n_channels + (self.n_input + 1) * self.n_forcings + self.n_static

    # -- forward ------------------------------------------------------------------------------
    def forward_features(self, x: Tensor, forcings: Tensor | None = None, static: Tensor | None = None) -> Tensor:
        """Predict the normalised tendency of every channel.

        Args:
            x: Normalised states ``(B, T, C, H, W)``, ``T = n_input`` (oldest first), any ``H W``.
            forcings: The forcings of the ``n_input`` input times and of the target time, either
                ``(B, T + 1, F, H, W)`` or flattened time-major ``(B, (T + 1) * F, H, W)`` (what the
                rollout task passes). Required when ``n_forcings > 0``.
            static: ``(B, S, H, W)`` or ``(1, S, H, W)``. Required when ``n_static > 0``.

        Returns:
            ``(B, C, H, W)`` normalised tendencies.

        Raises:
            ShapeError: If an input does not match its layout or the model's sizes.
        """
        stacked = self.stack_inputs(x, forcings, static)  # (B, in_chans, H, W)
        padded, pads = pad_grid(stacked, self.multiple, self.pad_mode)  # (B, in_chans, H', W')
        return crop_grid(self.decode(padded), pads)  # (B, C, H, W)

    def forward(self, x: Tensor, forcings: Tensor | None = None, static: Tensor | None = None) -> Tensor:
        """Same as :meth:`forward_features`."""
        return self.forward_features(x, forcings=forcings, static=static)

    def decode(self, x: Tensor) -> Tensor:
        """``(B, in_chans, H', W')`` on the padded grid -> ``(B, n_channels, H', W')``."""
        raise NotImplementedError

    def stack_inputs(self, x: Tensor, forcings: Tensor | None, static: Tensor | None) -> Tensor:
        """Check the inputs and stack them along channels: ``(B, T * C + (T + 1) * F + S, H, W)``."""
        name = self.family
        check_shape(x, GRIDDED, name=f"{name} input x")
        batch, t, c, h, w = x.shape
        if t != self.n_input or c != self.n_channels:
            raise ShapeError(
                f"{name} input x: expected B T C H W with T = n_input = {self.n_input} and "
                f"C = n_channels = {self.n_channels}, got {tuple(x.shape)}"
            )
        parts = [rearrange(x, "b t c h w -> b (t c) h w")]
        n_f = (self.n_input + 1) * self.n_forcings
        if forcings is None:
            if self.n_forcings:
                raise ShapeError(
                    f"{name}: built with n_forcings={self.n_forcings}, so forward needs forcings "
                    f"(B, n_input + 1 = {self.n_input + 1}, {self.n_forcings}, H, W); got none"
                )
        else:
            if forcings.dim() == 5:
                forcings = rearrange(forcings, "b t f h w -> b (t f) h w")
            check_shape(forcings, IMAGE, name=f"{name} forcings")
            if forcings.shape[0] != batch or forcings.shape[1] != n_f or tuple(forcings.shape[2:]) != (h, w):
                raise ShapeError(
                    f"{name} forcings: expected B (T+1)*F H W with B = {batch}, (n_input + 1) * n_forcings = "
                    f"{n_f} and H W = {h} {w} (the grid of x), got {tuple(forcings.shape)}"
                )
            if n_f:
                parts.append(forcings)
        if static is None:
            if self.n_static:
                raise ShapeError(
                    f"{name}: built with n_static={self.n_static}, so forward needs static "
                    f"(B or 1, {self.n_static}, H, W); got none"
                )
        else:
            check_shape(static, IMAGE, name=f"{name} static")
            if (
                static.shape[0] not in (1, batch)
                or static.shape[1] != self.n_static
                or tuple(static.shape[2:]) != (h, w)
            ):
                raise ShapeError(
                    f"{name} static: expected B S H W with B = 1 or {batch}, S = n_static = {self.n_static} "
                    f"and H W = {h} {w} (the grid of x), got {tuple(static.shape)}"
                )
            if self.n_static:
                parts.append(static.expand(batch, -1, -1, -1))
        return torch.cat([p.to(x.dtype) for p in parts], dim=1)  # (B, in_chans, H, W)

    def example_inputs(self, batch: int = 2) -> dict[str, Tensor]:
        """Seeded random inputs on a 33 x 49 grid (odd sizes, so the padding is exercised), on the
        model's device: ``x`` ``(B, n_input, C, H, W)`` plus the forcings and static fields it takes."""
        gen = torch.Generator().manual_seed(0)
        h, w = EXAMPLE_GRID
        out = {"x": torch.randn(batch, self.n_input, self.n_channels, h, w, generator=gen)}
        if self.n_forcings:
            out["forcings"] = torch.randn(batch, (self.n_input + 1) * self.n_forcings, h, w, generator=gen)
        if self.n_static:
            out["static"] = torch.randn(1, self.n_static, h, w, generator=gen)
        like = next(self.parameters())
        return {k: v.to(like.device, like.dtype) for k, v in out.items()}

    # -- checkpoints --------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` with the architecture settings in its metadata; returns the folder."""
        return save_state(self.state_dict(), directory, self.family, config=self.config)

    def load_pretrained(self, source: str) -> None:
        """Strictly load a :meth:`save_pretrained` file, a plain state dict or a Lightning checkpoint
        (its ``backbone.`` entries, the prefix removed) from a file, folder or ``hf://``.

        Raises:
            CheckpointError: If the file cannot be read, was saved with other settings, or its keys
                or shapes differ; the message names the settings to change.
        """
        path = resolve_file(source)
        state = read_state_dict(path)
        if any(k.startswith(_LIGHTNING_PREFIX) for k in state):
            state = {k[len(_LIGHTNING_PREFIX) :]: v for k, v in state.items() if k.startswith(_LIGHTNING_PREFIX)}
        problems: list[str] = []
        saved = saved_metadata(path, self.family)
        theirs = saved.get("config") if saved else None
        if isinstance(theirs, dict):
            problems += [
                f"the file was saved with {key}={theirs.get(key)!r}, this model has {key}={value!r}"
                for key, value in self.config.items()
                if key in theirs and theirs[key] != value
            ]
        problems += describe_mismatch(self.state_dict(), state)
        if problems:
            settings = ", ".join(f"{k}={v}" for k, v in self.config.items())
            raise CheckpointError(
                f"cannot load {path} into {self.family}({settings}):\n"
                + "\n".join(f"  - {p}" for p in problems)
                + "\n  (build the backbone with the file's settings; n_* follow the data)"
            )
        self.load_state_dict(state, strict=True)
        logger.info(f"{self.family}: loaded {path}")
