"""The shape vocabulary, once.

B batch, T time steps, C channels/variables, H W grid, N mesh nodes or tokens,
D embedding, L horizon, Q quantiles.
"""

from __future__ import annotations

from typing import Any, TypedDict

import torch

from sciadapt.errors import ShapeError

SERIES = "B T C"
IMAGE = "B C H W"
IMAGE_SERIES = "B C T H W"
GRIDDED = "B T C H W"
MESH = "B N C"
FORECAST = "B L C"
FORECAST_QUANTILES = "B L C Q"
HORIZON_FEATURES = "B L C D"


class Batch(TypedDict, total=False):
    """One batch. ``x`` is the model input, ``y`` the target, ``mask`` marks observed
    target values (1 observed, 0 missing), ``meta`` carries anything else.

    Optional model inputs (see :data:`MODEL_INPUTS`) ride beside ``x``; a backbone receives the
    ones its ``forward_features`` names as keyword arguments.
    """

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    meta: dict[str, Any]
    x_mask: torch.Tensor
    future_exog: torch.Tensor


#: Optional batch entries a backbone may take: ``x_mask`` (same shape as ``x``; 1 observed,
#: 0 missing or left-padded), ``future_exog`` (B L C_exog: known-future covariates),
#: ``temporal_coords`` (B T 2: year, day of year) and ``location_coords`` (B 2: lat, lon) for
#: image-series backbones with temporal/location encodings (Prithvi-EO v2 TL).
MODEL_INPUTS = ("x_mask", "future_exog", "temporal_coords", "location_coords")


def check_shape(t: torch.Tensor, layout: str, name: str = "input", **sizes: int) -> None:
    """Raise :class:`ShapeError` unless ``t`` has one axis per layout letter and the named sizes.

    >>> check_shape(torch.zeros(4, 512, 7), "B T C", C=7)
    """
    axes = layout.split()
    if t.dim() != len(axes):
        raise ShapeError(f"{name}: expected {layout}, got {tuple(t.shape)}")
    for ax, want in sizes.items():
        got = t.shape[axes.index(ax)]
        if got != want:
            raise ShapeError(f"{name}: expected {layout} with {ax}={want}, got {tuple(t.shape)}")
