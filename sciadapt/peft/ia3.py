"""(IA)^3 (Liu et al. 2022): a learned vector (init 1) rescaling a layer's activations.

On most layers the vector scales the output channels: ``y = l * (W x + b)``, merged as
``W' = l * W`` (rows) and ``b' = l * b``. On the feed-forward layers named in ``feedforward``
it scales the *input* features instead, ``y = W (l * x) + b`` (the paper rescales the hidden
activation entering the second MLP projection), merged into the weight columns with the bias
left alone. Key names and vector shapes follow Hugging Face PEFT (``ia3_l``; ``(out, 1)`` /
``(1, in)`` on Linear, ``(1, C, 1, ...)`` on convolutions), so adapters on Linear, Conv2d and
Conv3d are loadable by ``peft``.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import torch
from torch import nn

from sciadapt.errors import ConfigError
from sciadapt.peft.core import MethodBase, PeftLayer, Target, register_wrapper
from sciadapt.peft.ssf import CONVS, ChannelAffineLayer, new_vector
from sciadapt.registry import PEFT_METHODS


@register_wrapper("ia3", nn.Linear, *CONVS)
class IA3Layer(ChannelAffineLayer):
    """A Linear or ConvNd with (IA)^3 vectors (``ia3_l``), each on the output or on the input."""

    method_name = "ia3"

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.ia3_l = nn.ParameterDict()
        self.feedforward: dict[str, bool] = {}  # adapter -> scales the input (not the output)

    def add_ia3(self, name: str, feedforward: bool) -> None:
        m = self.inner
        if isinstance(m, nn.Linear):
            shape: tuple[int, ...] = (1, m.in_features) if feedforward else (m.out_features, 1)
        else:
            assert isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
            n = m.in_channels if feedforward else m.out_channels
            shape = (1, n, *([1] * len(m.kernel_size)))
        self.register_adapter(name)
        self.feedforward[name] = feedforward
        self.ia3_l[name] = new_vector(m, shape, 1.0)

    def out_terms(self, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return (None, None) if self.feedforward[name] else (self.ia3_l[name], None)

    def in_scale(self, name: str) -> torch.Tensor | None:
        return self.ia3_l[name] if self.feedforward[name] else None

    def drop_adapter(self, name: str) -> None:
        super().drop_adapter(name)
        self.feedforward.pop(name, None)


def _matches(name: str, patterns: list[str]) -> bool:
    """Core's pattern language: globs, or ``re:<regex>`` matched against the whole name."""
    for pat in patterns:
        if pat.startswith("re:"):
            if re.fullmatch(pat[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, pat):
            return True
    return False


class IA3(MethodBase):
    """The (IA)^3 method object (see :func:`build_ia3`)."""

    family = "ia3"  # wraps the layers IA3Layer is registered for
    name = "ia3"

    def __init__(self, feedforward: list[str] | None) -> None:
        if isinstance(feedforward, str):  # a lone string would be iterated per character
            raise ConfigError(f"peft.feedforward must be a list of module patterns, got the string {feedforward!r}")
        self.feedforward = list(feedforward) if feedforward else None
        for pat in self.feedforward or []:
            if pat.startswith("re:"):
                try:
                    re.compile(pat[3:])
                except re.error as e:
                    raise ConfigError(f"peft.feedforward: {pat!r} is not a valid regex ({e})") from None

    def is_feedforward(self, module_name: str) -> bool:
        return bool(self.feedforward) and _matches(module_name, self.feedforward or [])

    def check_targets(self, model: nn.Module, found: list[Target], adapter: str) -> None:
        """Every ``feedforward`` pattern must name a targeted layer (core calls this before wrapping)."""
        names = [t.name for t in found]
        unused = [p for p in self.feedforward or [] if not any(_matches(n, [p]) for n in names)]
        if unused:
            raise ConfigError(
                f"peft.feedforward: {unused} match none of the targeted layers ({', '.join(names[:4])}"
                f"{' ...' if len(names) > 4 else ''}); feedforward layers must also be targets"
            )

    def config(self) -> dict[str, Any]:
        return {"feedforward": self.feedforward}

    def add(self, layer: PeftLayer, adapter: str, module_name: str, slices: tuple[str, ...] | None) -> None:
        assert isinstance(layer, IA3Layer)
        layer.check_slices(module_name, slices)
        layer.add_ia3(adapter, self.is_feedforward(module_name))

    def hf_config(self, targets: list[str]) -> dict[str, Any] | None:
        """PEFT's adapter_config.json fields for an IA3 adapter on ``targets``."""
        return {
            "peft_type": "IA3",
            "target_modules": sorted(targets),
            "feedforward_modules": sorted(t for t in targets if self.is_feedforward(t)),
            "fan_in_fan_out": False,
            "init_ia3_weights": True,
            "modules_to_save": None,
            "task_type": None,
            "base_model_name_or_path": None,
            "inference_mode": True,
        }


@PEFT_METHODS.register("ia3")
def build_ia3(feedforward: list[str] | None = None) -> IA3:
    """(IA)^3: ``y = l * f(x)`` per output channel, or ``y = f(l * x)`` per input feature on feed-forward layers.

    Args:
        feedforward: module-name patterns (globs or ``re:<regex>``, as for targets) of the
            targeted layers whose *input* is scaled, e.g. ``["*.mlp.fc2"]``; None scales every
            targeted layer's output.
    """
    return IA3(feedforward)


__all__ = ["IA3", "IA3Layer", "build_ia3"]
