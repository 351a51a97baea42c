"""BitFit (Ben Zaken et al. 2022) and DiffFit (Xie et al. 2023).

BitFit trains only the biases. Editing the base bias in place would tie the "adapter" to the
base weights and allow one adapter at a time, so each adapter is an additive bias delta on the
layer output (init 0): ``y = f(x) + delta``. The trained result is exactly "base bias + delta",
merged by adding the delta to the bias (creating one where the layer has none).

DiffFit trains the biases plus one scalar ``gamma`` per adapted layer (init 1) multiplying the
layer's output: ``y = gamma * (f(x) + delta)``. Pointed at the last projection of a residual
branch (attention out-projection, MLP fc2), ``gamma`` scales that branch's contribution to the
residual stream as in the paper. It merges as ``W' = gamma * W``, ``b' = gamma * (b + delta)``.

Both reuse SSF's :class:`~sciadapt.peft.ssf.ChannelAffineLayer` for broadcasting, composition
in ``active`` order and exact merge/unmerge.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sciadapt.peft.core import MethodBase, PeftLayer, register_wrapper
from sciadapt.peft.ssf import CONVS, ChannelAffineLayer, new_vector
from sciadapt.registry import PEFT_METHODS

BIAS_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, *CONVS, nn.LayerNorm)


@register_wrapper("bitfit", *BIAS_LAYERS)
class BitFitLayer(ChannelAffineLayer):
    """A Linear / ConvNd / LayerNorm with BitFit adapters (``bitfit_bias``)."""

    method_name = "bitfit"

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.bitfit_bias = nn.ParameterDict()

    def add_bitfit(self, name: str) -> None:
        self.register_adapter(name)
        self.bitfit_bias[name] = new_vector(self.inner, self.channels, 0.0)

    def out_terms(self, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return None, self.bitfit_bias[name]


@register_wrapper("difffit", *BIAS_LAYERS)
class DiffFitLayer(ChannelAffineLayer):
    """A Linear / ConvNd / LayerNorm with DiffFit adapters (``difffit_scale``, ``difffit_bias``)."""

    method_name = "difffit"

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.difffit_scale = nn.ParameterDict()  # one element per adapter: the layer's gamma
        self.difffit_bias = nn.ParameterDict()

    def add_difffit(self, name: str, scale_init: float) -> None:
        self.register_adapter(name)
        self.difffit_scale[name] = new_vector(self.inner, (1,), scale_init)
        self.difffit_bias[name] = new_vector(self.inner, self.channels, 0.0)

    def out_terms(self, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        gamma = self.difffit_scale[name]
        # gamma * (y + delta) == gamma * y + gamma * delta: the delta sits inside the scaling
        return gamma, gamma * self.difffit_bias[name]


class BitFit(MethodBase):
    """The BitFit method object (see :func:`build_bitfit`)."""

    family = "bitfit"  # wraps the layers BitFitLayer is registered for
    name = "bitfit"

    def config(self) -> dict[str, Any]:
        return {}

    def add(self, layer: PeftLayer, adapter: str, module_name: str, slices: tuple[str, ...] | None) -> None:
        assert isinstance(layer, BitFitLayer)
        layer.check_slices(module_name, slices)
        layer.add_bitfit(adapter)


class DiffFit(MethodBase):
    """The DiffFit method object (see :func:`build_difffit`)."""

    family = "difffit"  # wraps the layers DiffFitLayer is registered for
    name = "difffit"

    def __init__(self, scale_init: float) -> None:
        self.scale_init = scale_init

    def config(self) -> dict[str, Any]:
        return {"scale_init": self.scale_init}

    def add(self, layer: PeftLayer, adapter: str, module_name: str, slices: tuple[str, ...] | None) -> None:
        assert isinstance(layer, DiffFitLayer)
        layer.check_slices(module_name, slices)
        layer.add_difffit(adapter, self.scale_init)


@PEFT_METHODS.register("bitfit")
def build_bitfit() -> BitFit:
    """BitFit: train a bias delta per output channel, ``y = f(x) + delta`` (mergeable into the bias).

    Target the layers whose biases should train (Linear, ConvNd, LayerNorm); it has no options.
    """
    return BitFit()


@PEFT_METHODS.register("difffit")
def build_difffit(scale_init: float = 1.0) -> DiffFit:
    """DiffFit: a bias delta plus one learned scale per layer, ``y = gamma * (f(x) + delta)``.

    Args:
        scale_init: initial ``gamma``. 1.0 keeps the adapted model equal to the base at step 0;
            target the last projection of each residual branch so ``gamma`` scales its contribution.
    """
    return DiffFit(scale_init)


__all__ = ["BIAS_LAYERS", "BitFit", "BitFitLayer", "DiffFit", "DiffFitLayer", "build_bitfit", "build_difffit"]
