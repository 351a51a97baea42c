"""A U-Net on the grid: a grid-native emulator backbone for the ``rollout`` task.

The last ``n_input`` states, the forcings of those times and of the target time, and the static
fields are stacked along channels; a U-Net (Ronneberger et al. 2015) with GroupNorm, ``depth``
stride-2 levels and skip connections maps them to the normalised tendency of every channel. It is
fully convolutional, so it runs on any grid: regular lat-lon, projected (Lambert conformal, polar
stereographic, ...) or curvilinear, of any size (the grid is padded to a multiple of ``2**depth``
and the output cropped back). The mesh backbone (``graphcast``) needs a regular lat-lon grid.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

import torch
from torch import Tensor, nn

from sciadapt.backbones._bounds import bound_problems
from sciadapt.backbones._grid_common import ConvBlock, GridBackbone, PadMode
from sciadapt.errors import ConfigError
from sciadapt.registry import BACKBONES
from sciadapt.spec import FromData, Ge, NonNegInt, PositiveInt

#: widths stop doubling here: deep levels of a large grid U-Net otherwise hold most of the parameters
MAX_WIDTH_MULT = 8


class Down(nn.Module):
    """One encoder level: a stride-2 convolution halves the grid, then a :class:`ConvBlock`."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.pool = nn.Conv2d(in_channels, in_channels, 2, stride=2)
        self.block = ConvBlock(in_channels, out_channels, groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(self.pool(x))  # type: ignore[no-any-return]


class Up(nn.Module):
    """One decoder level: a transposed convolution doubles the grid, the skip is concatenated, then a block."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.block = ConvBlock(out_channels + skip_channels, out_channels, groups)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))  # type: ignore[no-any-return]


class UNetGrid(GridBackbone):
    """A U-Net predicting normalised tendencies on any grid. Build it with :func:`build_unet_grid`.

    Args:
        n_channels: State channels ``C``.
        n_forcings: Forcing channels per time step ``F``.
        n_static: Static channels ``S``.
        n_input: Past states per step ``T``.
        base_channels: Width of the first level; each deeper level doubles it (at most 8x).
        depth: Stride-2 levels (the grid is padded to a multiple of ``2**depth``).
        groups: GroupNorm groups (fewer where a width is not divisible).
        pad_mode: How the grid is padded.
    """

    family = "unet_grid"

    def __init__(
        self,
        n_channels: int,
        n_forcings: int,
        n_static: int,
        n_input: int,
        base_channels: int,
        depth: int,
        groups: int,
        pad_mode: PadMode,
    ) -> None:
        config = {"base_channels": base_channels, "depth": depth, "groups": groups}
        super().__init__(n_channels, n_forcings, n_static, n_input, pad_mode, config)
        self.multiple = 2**depth
        widths = [base_channels * min(2**i, MAX_WIDTH_MULT) for i in range(depth + 1)]
        self.stem = ConvBlock(self.in_chans, widths[0], groups)
        self.down = nn.ModuleList(Down(widths[i], widths[i + 1], groups) for i in range(depth))
        self.up = nn.ModuleList(Up(widths[i + 1], widths[i], widths[i], groups) for i in reversed(range(depth)))
        self.out = nn.Conv2d(widths[0], n_channels, 1)
        # the 3x3 convolutions of every level below the stem: LoRA/DoRA take Conv2d
        self.default_peft_targets: list[str] = ["down.*.block.conv*", "up.*.block.conv*"]

    def decode(self, x: Tensor) -> Tensor:
        h = self.stem(x)  # (B, w0, H', W')
        skips = [h]
        for level in self.down:
            h = level(h)  # (B, w_i, H' / 2^i, W' / 2^i)
            skips.append(h)
        skips.pop()  # the bottleneck is h itself
        for level in self.up:
            h = level(h, skips.pop())
        return cast(Tensor, self.out(h))  # (B, C, H', W')


def _build(
    n_channels: int,
    n_forcings: int,
    n_static: int,
    n_input: int,
    base_channels: int,
    depth: int,
    groups: int,
    pad_mode: PadMode,
    weights: str | None,
) -> UNetGrid:
    values: dict[str, Any] = {
        "n_channels": n_channels,
        "n_forcings": n_forcings,
        "n_static": n_static,
        "n_input": n_input,
        "base_channels": base_channels,
        "depth": depth,
        "groups": groups,
    }
    problems = bound_problems(build_unet_grid, values, "backbone")
    if problems:
        raise ConfigError(problems)
    model = UNetGrid(n_channels, n_forcings, n_static, n_input, base_channels, depth, groups, pad_mode)
    if weights is not None:
        model.load_pretrained(weights)
    return model


@BACKBONES.register("unet_grid")
def build_unet_grid(
    n_channels: Annotated[PositiveInt, FromData] = 1,
    n_forcings: Annotated[NonNegInt, FromData] = 0,
    n_static: Annotated[NonNegInt, FromData] = 0,
    n_input: Annotated[PositiveInt, FromData] = 1,
    base_channels: PositiveInt = 64,
    depth: Annotated[int, Ge(1)] = 4,
    groups: PositiveInt = 8,
    pad_mode: Literal["replicate", "zeros", "circular"] = "replicate",
    weights: str | None = None,
) -> UNetGrid:
    """A U-Net on the grid predicting normalised tendencies; any grid (lat-lon, projected, curvilinear).

    ``n_channels``, ``n_forcings``, ``n_static`` and ``n_input`` follow the data; the inputs are
    stacked along channels (``n_input * n_channels + (n_input + 1) * n_forcings + n_static``).

    Args:
        n_channels: State channels; follows the data.
        n_forcings: Forcing channels per time step; follows the data.
        n_static: Static channels; follows the data.
        n_input: Past states per step; follows the data.
        base_channels: Width of the first level; each deeper level doubles it, up to 8x.
        depth: Stride-2 levels; the grid is padded to a multiple of ``2**depth`` and cropped back.
        groups: GroupNorm groups.
        pad_mode: ``replicate`` (regional grids), ``circular`` (global grids) or ``zeros``.
        weights: Optional checkpoint (``save_pretrained`` folder or file, Lightning checkpoint).

    Returns:
        The model; ``forward_features`` returns ``(B, C, H, W)`` tendencies.

    Raises:
        ConfigError: Listing every invalid setting.
        CheckpointError: If ``weights`` cannot be loaded.
    """
    return _build(n_channels, n_forcings, n_static, n_input, base_channels, depth, groups, pad_mode, weights)


@BACKBONES.register("unet_grid_tiny")
def build_unet_grid_tiny(
    n_channels: Annotated[PositiveInt, FromData] = 1,
    n_forcings: Annotated[NonNegInt, FromData] = 0,
    n_static: Annotated[NonNegInt, FromData] = 0,
    n_input: Annotated[PositiveInt, FromData] = 1,
    base_channels: PositiveInt = 8,
    depth: Annotated[int, Ge(1)] = 2,
    groups: PositiveInt = 4,
    pad_mode: Literal["replicate", "zeros", "circular"] = "replicate",
    weights: str | None = None,
) -> UNetGrid:
    """A tiny grid U-Net (width 8, 2 levels) for tests and smoke runs; the arguments of :func:`build_unet_grid`."""
    return _build(n_channels, n_forcings, n_static, n_input, base_channels, depth, groups, pad_mode, weights)
