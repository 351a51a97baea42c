"""LayerNorm tuning (Zhao et al. 2023): train only the affine parameters of normalisation layers.

Each adapter owns a copy of the norm's ``weight`` and ``bias`` (initialised from the base), and
the forward runs the base norm with the adapter's copies in place of its own — so BatchNorm
keeps updating the base's running statistics and any wrapper inside keeps applying. Keys are
Hugging Face PEFT's LN_TUNING layout (``ln_tuning_layers.<adapter>.weight``), so an adapter on
LayerNorm/GroupNorm is loadable by ``peft``.

Several adapters compose as deltas from the original parameters, ``p = p0 + sum_k (p_k - p0)``,
so one adapter is exactly "use my copy" and the order of ``active`` does not matter. (PEFT
refuses more than one active LN-tuning adapter.) Merging writes the resulting parameters into
the base; the originals are kept from the first merge and written back when the last adapter
is unmerged, so unmerge is exact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from sciadapt.errors import ConfigError
from sciadapt.peft.core import MethodBase, PeftLayer, register_wrapper
from sciadapt.peft.ssf import BATCHNORMS, innermost
from sciadapt.registry import PEFT_METHODS

NORMS: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, *BATCHNORMS)
AFFINE = ("weight", "bias")


class _Affine(nn.Module):
    """One adapter's copy of a norm's affine parameters (a module so keys end in ``.weight``/``.bias``)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias: nn.Parameter | None = None if bias is None else nn.Parameter(bias.detach().clone())


def _param(module: nn.Module, attr: str) -> torch.Tensor | None:
    value = getattr(module, attr, None)
    return value if isinstance(value, torch.Tensor) else None


@register_wrapper("layernorm", *NORMS)
class NormTuningLayer(PeftLayer):
    """A LayerNorm / GroupNorm / RMSNorm / BatchNorm whose affine parameters come from its adapters."""

    method_name = "layernorm"

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.ln_tuning_layers = nn.ModuleDict()
        # the base's affine parameters before the first merge; None while nothing is merged
        self._origin: dict[str, torch.Tensor] | None = None

    def add_norm(self, name: str, module_name: str) -> None:
        m = innermost(self.base_layer)
        weight = _param(m, "weight")
        if weight is None:
            raise ConfigError(
                f"{module_name}: this {type(m).__name__} has no affine parameters (elementwise_affine=False or "
                "affine=False), so layernorm tuning has nothing to train; target a norm with affine parameters"
            )
        self.register_adapter(name)
        self.ln_tuning_layers[name] = _Affine(weight, _param(m, "bias"))

    # -- forward --------------------------------------------------------------------------
    def _prefix(self) -> str:
        """Path from ``base_layer`` to the real norm, through any wrappers inside this one."""
        prefix, m = "", self.base_layer
        while isinstance(m, PeftLayer):
            prefix, m = prefix + "base_layer.", m.base_layer
        return prefix

    def _reference(self, attr: str, current: torch.Tensor) -> torch.Tensor:
        """What adapter deltas are measured from: the pre-merge originals, else the base itself."""
        # .to(): the originals are plain attributes and stay behind when the model is moved
        return self._origin[attr].to(current) if self._origin is not None else current.detach()

    def _combined(self, attr: str, names: list[str], base: torch.Tensor) -> torch.Tensor:
        """``base + sum_k (p_k - p0)`` for the adapters ``names``."""
        copies = [getattr(self.ln_tuning_layers[n], attr) for n in names]
        if len(copies) == 1 and self._origin is None:
            only: torch.Tensor = copies[0]
            return only  # exactly "use my copy": no rounding from adding and subtracting p0
        ref = self._reference(attr, base)
        out = base
        for p in copies:
            out = out + (p - ref)
        return out

    def adapted_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        names = self.unmerged_active()
        if not names:
            return self.base_layer(x, *args, **kwargs)
        m = innermost(self.base_layer)
        prefix = self._prefix()
        values: dict[str, torch.Tensor] = {}
        for attr in AFFINE:
            base = _param(m, attr)
            if base is not None:
                values[prefix + attr] = self._combined(attr, names, base)
        # the base module's own forward (running stats, eps, groups...) with the adapter's tensors
        return functional_call(self.base_layer, values, (x, *args), kwargs)

    # -- merging --------------------------------------------------------------------------
    def _write(self, merged: list[str]) -> None:
        """Base affine := originals combined with the adapters ``merged``."""
        assert self._origin is not None
        m = innermost(self.base_layer)
        for attr, p0 in self._origin.items():
            target = _param(m, attr)
            assert target is not None
            p0 = p0.to(target)
            if not merged:
                target.copy_(p0)
            elif len(merged) == 1:
                target.copy_(getattr(self.ln_tuning_layers[merged[0]], attr))
            else:
                target.copy_(p0 + sum(getattr(self.ln_tuning_layers[n], attr) - p0 for n in merged))

    def merge_adapter(self, name: str) -> None:
        if self._origin is None:
            m = innermost(self.base_layer)
            self._origin = {a: t.detach().clone() for a in AFFINE if (t := _param(m, a)) is not None}
        self._write([*self.merged, name])

    def unmerge_adapter(self, name: str) -> None:
        remaining = [n for n in self.merged if n != name]
        self._write(remaining)
        if not remaining:
            self._origin = None

    def drop_adapter(self, name: str) -> None:
        if name in self.merged and self._origin is not None:
            # merge_and_drop: the base keeps this adapter's change for good. Move the originals by
            # its delta, and every other adapter's copy with them, so their deltas stay the same.
            with torch.no_grad():
                for attr, p0 in self._origin.items():
                    copy = getattr(self.ln_tuning_layers[name], attr)
                    delta = copy - p0.to(copy)
                    for other in self.adapters:
                        if other != name:
                            getattr(self.ln_tuning_layers[other], attr).add_(delta)
                    p0.add_(delta.to(p0))
        super().drop_adapter(name)
        if not self.merged:
            self._origin = None


class NormTuning(MethodBase):
    """The LayerNorm-tuning method object (see :func:`build_layernorm`)."""

    family = "layernorm"  # wraps the norms NormTuningLayer is registered for
    name = "layernorm"

    def config(self) -> dict[str, Any]:
        return {}

    def add(self, layer: PeftLayer, adapter: str, module_name: str, slices: tuple[str, ...] | None) -> None:
        assert isinstance(layer, NormTuningLayer)
        if slices is not None:
            raise ConfigError(f"{module_name}: layernorm tuning adapts whole norm layers; drop the [...] slice")
        layer.add_norm(adapter, module_name)

    def hf_config(self, targets: list[str]) -> dict[str, Any] | None:
        """PEFT's adapter_config.json fields for an LN_TUNING adapter on ``targets``."""
        return {
            "peft_type": "LN_TUNING",
            "target_modules": sorted(targets),
            "modules_to_save": None,
            "task_type": None,
            "base_model_name_or_path": None,
            "inference_mode": True,
        }


@PEFT_METHODS.register("layernorm")
def build_layernorm() -> NormTuning:
    """LayerNorm tuning: train per-adapter copies of the affine weight and bias of norm layers.

    Targets LayerNorm, GroupNorm, RMSNorm and BatchNorm1d/2d/3d (with affine parameters); it
    has no options. BatchNorm running statistics are the base's and keep updating in train mode.
    """
    return NormTuning()


__all__ = ["NORMS", "NormTuning", "NormTuningLayer", "build_layernorm"]
