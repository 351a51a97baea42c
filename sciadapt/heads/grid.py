"""Heads for gridded states: the backbone's per-channel output on the grid, ``B C H W``."""

from __future__ import annotations

from typing import Annotated, Literal

from torch import Tensor, nn

from sciadapt.errors import ConfigError
from sciadapt.registry import HEADS
from sciadapt.spec import FromData
from sciadapt.types import check_shape


class GridHead(nn.Module):
    """Pass-through with a shape check: mesh/grid emulators predict every channel themselves.

    The rollout task owns the loss (area-weighted, per variable, over rollout steps), so this head
    has none of its own; it exists so every task keeps the backbone + head structure and a
    user can swap in a head with parameters (e.g. a per-channel output correction) later.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = in_features

    def forward(self, features: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> the same tensor.

        Raises:
            ShapeError: If ``features`` is not ``B C H W`` with ``C == in_features``.
        """
        check_shape(features, "B C H W", name="grid features", C=self.in_features)
        return features


@HEADS.register("grid")
def build_grid_head(
    in_features: Annotated[int, FromData] = 1, in_layout: Annotated[Literal["B C H W"], FromData] = "B C H W"
) -> GridHead:
    """Identity head for gridded backbones (GraphCast-style emulators).

    Args:
        in_features: Channels ``C`` (follows the backbone).
        in_layout: Must be ``"B C H W"`` (follows the backbone).

    Raises:
        ConfigError: If the backbone does not output a grid.
    """
    # a check of the backbone (in_layout is filled from it after the config is checked)
    if in_layout != "B C H W":
        raise ConfigError(
            f"head: grid needs a backbone that outputs B C H W, this one gives {in_layout}. "
            "Fix: use a forecasting head (point, quantile, native)"
        )
    return GridHead(in_features)
