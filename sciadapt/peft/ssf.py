"""SSF (Lian et al. 2022, "Scaling & Shifting Your Features") and the per-channel machinery it shares.

SSF learns, per output channel of a layer, a scale ``gamma`` (init 1) and a shift ``beta``
(init 0): ``y = gamma * f(x) + beta``. Because the map is affine per channel it folds into the
layer: ``W' = gamma * W`` (rows), ``b' = gamma * b + beta``.

:class:`ChannelAffineLayer` is the part every "scale and/or shift the channels" method needs
(SSF here, BitFit and DiffFit in ``bitfit.py``, (IA)^3 in ``ia3.py``): broadcasting a
per-channel vector onto the output (channel axis last for Linear/LayerNorm, the axis after the
batch for convolutions and BatchNorm), composing several adapters in ``active`` order, and
merging into / unmerging out of the innermost base module's weight and bias.

Merging keeps two invariants that make unmerge exact in any order:

* Weight factors are pure scalings, which commute, so unmerging divides the weight by the
  adapter's factor whatever its position among the merged adapters.
* Shifts do not commute with scalings, so the bias is never inverted arithmetically: the bias
  before the first merge is remembered (a vector, cheap) and the bias is rebuilt from it by
  replaying the adapters that stay merged, in merge order. A bias created by the merge (the
  base had none) is removed again once nothing is merged.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import nn

from sciadapt.errors import ConfigError
from sciadapt.peft.core import MethodBase, PeftLayer, register_wrapper
from sciadapt.registry import PEFT_METHODS
from sciadapt.spec import Ge

CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCHNORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# every layer ChannelAffineLayer knows the channel layout of; each method narrows this down
CHANNEL_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, *CONVS, nn.LayerNorm, *BATCHNORMS, nn.GroupNorm)

# a merged adapter's (scale, shift), kept after its tensors were dropped by merge_and_drop
Baked = tuple[torch.Tensor | None, torch.Tensor | None]


def innermost(module: nn.Module) -> nn.Module:
    """The real layer under any number of PEFT wrappers (the one holding weight and bias)."""
    while isinstance(module, PeftLayer):
        module = module.base_layer
    return module


def channel_shape(module: nn.Module) -> tuple[int, ...]:
    """Shape of a per-output-channel vector for ``module`` (a LayerNorm's is its normalized_shape)."""
    if isinstance(module, nn.Linear):
        return (module.out_features,)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return (module.out_channels,)
    if isinstance(module, nn.LayerNorm):
        return tuple(module.normalized_shape)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return (module.num_features,)
    if isinstance(module, nn.GroupNorm):
        return (module.num_channels,)
    raise ConfigError(f"no per-channel layout known for {type(module).__name__}")


def _tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    value = getattr(module, name, None)
    return value if isinstance(value, torch.Tensor) else None


def _like(v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A per-channel (or one-element) vector in the shape, dtype and device of a bias-like ``target``.

    The device move matters for the remembered pre-merge bias, a plain attribute that stays where
    it was when the model is moved with ``.to()``.
    """
    v = v.reshape(()) if v.numel() == 1 else v.reshape(target.shape)
    return v.to(device=target.device, dtype=target.dtype)


def reference_tensor(module: nn.Module) -> torch.Tensor | None:
    """Any tensor of ``module``, to create adapter tensors on its device and in its dtype."""
    for p in module.parameters(recurse=False):
        return p
    for b in module.buffers(recurse=False):
        if b.is_floating_point():
            return b
    return None


def new_vector(module: nn.Module, shape: tuple[int, ...], fill: float, std: float = 0.0) -> nn.Parameter:
    ref = reference_tensor(module)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.get_default_dtype()
    device = ref.device if ref is not None else None
    value = torch.full(shape, fill, dtype=dtype, device=device)
    if std > 0:
        value = value + std * torch.randn_like(value)
    return nn.Parameter(value)


class ChannelAffineLayer(PeftLayer):
    """Adapters that scale and/or shift the output channels (and optionally scale the input).

    Subclasses hold their tensors and say, per adapter, what it does through
    :meth:`out_terms` (``y -> scale * y + shift``) and :meth:`in_scale` (``x -> scale * x``
    before the layer, per input feature; only for Linear/ConvNd).
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        # merge bookkeeping (see the module docstring): merged adapters in merge order, where a
        # dropped-but-merged adapter is replaced by its baked (scale, shift)
        self._merge_order: list[str | Baked] = []
        self._bias_origin: torch.Tensor | None = None
        self._created: list[str] = []  # parameters the first merge had to create ("weight", "bias")

    # -- what a subclass provides ---------------------------------------------------------
    def out_terms(self, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(scale, shift)`` of adapter ``name`` on the output; either may be None."""
        raise NotImplementedError

    def in_scale(self, name: str) -> torch.Tensor | None:
        """Per-input-feature scale applied before the layer, or None."""
        return None

    # -- layout ---------------------------------------------------------------------------
    @property
    def inner(self) -> nn.Module:
        return innermost(self.base_layer)

    @property
    def channels(self) -> tuple[int, ...]:
        return channel_shape(self.inner)

    def _spatial_dims(self, out: torch.Tensor) -> int:
        """How many axes follow the channel axis in ``out`` (so unbatched conv input works too)."""
        m = self.inner
        if isinstance(m, CONVS):
            w = _tensor(m, "weight")
            assert w is not None
            return w.dim() - 2
        return out.dim() - 2  # BatchNorm / GroupNorm inputs are always (B, C, *)

    def on_output(self, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Broadcast a per-channel (or one-element) vector onto the layer output ``out``."""
        if v.numel() == 1:
            return v.reshape(())
        if isinstance(self.inner, (nn.Linear, nn.LayerNorm)):
            return v.reshape(self.channels)  # channels are the trailing axes
        return v.reshape(-1, *([1] * self._spatial_dims(out)))  # (C, 1, ...) right-aligns with (B, C, ...)

    def on_input(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Broadcast a per-input-feature vector onto the layer input ``x`` (Linear / ConvNd)."""
        m = self.inner
        if isinstance(m, nn.Linear):
            return v.reshape(m.in_features)
        w = _tensor(m, "weight")
        assert w is not None
        return v.reshape(-1, *([1] * (w.dim() - 2)))

    def _row_factor(self, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """A per-output-channel vector laid out against the weight it scales."""
        if v.numel() == 1:
            return v.reshape(())
        if isinstance(self.inner, (nn.Linear, *CONVS)):
            return v.reshape(-1, *([1] * (w.dim() - 1)))  # rows of (out, in, *k)
        return v.reshape(w.shape)  # a norm's affine weight is itself per channel

    def _col_factor(self, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """A per-input-feature vector laid out against the weight columns it scales."""
        m = self.inner
        if isinstance(m, nn.Linear):
            return v.reshape(1, -1)
        assert isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        groups, per_in, per_out = m.groups, w.shape[1], w.shape[0] // m.groups
        # weight row o sees input channels g*per_in ... (g+1)*per_in-1 of its group g = o // per_out
        v = v.reshape(groups, 1, per_in).expand(groups, per_out, per_in).reshape(w.shape[0], per_in)
        return v.reshape(*v.shape, *([1] * (w.dim() - 2)))

    def _weight_factor(self, name: str, w: torch.Tensor) -> torch.Tensor | None:
        scale, ins = self.out_terms(name)[0], self.in_scale(name)
        factor = None if scale is None else self._row_factor(scale, w)
        if ins is not None:
            col = self._col_factor(ins, w)
            factor = col if factor is None else factor * col
        return factor

    # -- forward --------------------------------------------------------------------------
    def adapted_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        names = self.unmerged_active()
        for name in names:
            ins = self.in_scale(name)
            if ins is not None:
                x = x * self.on_input(ins, x)
        out = self.base_layer(x, *args, **kwargs)
        for name in names:  # in active order: affine maps do not commute
            scale, shift = self.out_terms(name)
            if scale is not None and shift is not None:
                out = torch.addcmul(self.on_output(shift, out), out, self.on_output(scale, out))
            elif scale is not None:
                out = out * self.on_output(scale, out)
            elif shift is not None:
                out = out + self.on_output(shift, out)
        y: torch.Tensor = out
        return y

    # -- merging --------------------------------------------------------------------------
    def _require_inner_merged(self, name: str) -> None:
        """Folding into the base weight moves this adapter *under* any wrapper inside it; only exact
        when those inner adapters are merged already (merge innermost first)."""
        m = self.base_layer
        while isinstance(m, PeftLayer):
            if m.unmerged_active():
                raise ConfigError(
                    f"cannot merge {self.method_name} adapter {name!r}: the {m.method_name} adapters "
                    f"{m.unmerged_active()} inside it are not merged; merge those first (innermost wrapper first)"
                )
            m = m.base_layer

    def _ensure(self, attr: str, fill: float) -> nn.Parameter:
        """The base's ``weight``/``bias`` Parameter, created (``fill``) when the layer has none."""
        m = self.inner
        p = getattr(m, attr, None)
        if isinstance(p, nn.Parameter):
            return p
        ref = _tensor(m, "weight")
        p = new_vector(m, self.channels, fill)
        p.requires_grad_(bool(ref is not None and ref.requires_grad))
        setattr(m, attr, p)
        self._created.append(attr)
        return p

    def merge_adapter(self, name: str) -> None:
        self._require_inner_merged(name)
        m = self.inner
        if not self._merge_order:  # first merge: remember the untouched bias for exact unmerge
            b0 = _tensor(m, "bias")
            self._bias_origin = None if b0 is None else b0.detach().clone()
            self._created = []
        scale, shift = self.out_terms(name)
        if scale is not None or self.in_scale(name) is not None:
            w = self._ensure("weight", 1.0)
            factor = self._weight_factor(name, w)
            assert factor is not None
            w.mul_(factor.to(w.dtype))
        b = _tensor(m, "bias")
        if shift is not None or (b is not None and scale is not None):
            bias = self._ensure("bias", 0.0)
            if scale is not None:
                bias.mul_(_like(scale, bias))
            if shift is not None:
                bias.add_(_like(shift, bias))
        self._merge_order.append(name)

    def unmerge_adapter(self, name: str) -> None:
        m = self.inner
        w = _tensor(m, "weight")
        if w is not None:
            factor = self._weight_factor(name, w)
            if factor is not None:
                if bool((factor == 0).any()):
                    raise ConfigError(
                        f"cannot unmerge {self.method_name} adapter {name!r}: its scale has exact zeros, so the "
                        "base weights of those channels were lost when it was merged; reload the base weights"
                    )
                w.div_(factor.to(w.dtype))
        self._merge_order.remove(name)
        self._rebuild_bias()
        self._settle()

    def _terms(self, entry: str | Baked) -> Baked:
        return self.out_terms(entry) if isinstance(entry, str) else entry

    def _rebuild_bias(self) -> None:
        """Bias = the pre-merge bias with the still-merged adapters replayed in merge order."""
        m = self.inner
        b = None if self._bias_origin is None else self._bias_origin.clone()
        for entry in self._merge_order:
            scale, shift = self._terms(entry)
            if b is None and shift is None:
                continue  # scaling a zero bias leaves no bias
            if b is None:
                b = torch.zeros(self.channels, dtype=shift.dtype, device=shift.device)  # type: ignore[union-attr]
            if scale is not None:
                b = b * _like(scale, b)
            if shift is not None:
                b = b + _like(shift, b)
        current = _tensor(m, "bias")
        if b is None:
            if current is not None and "bias" in self._created:
                m.register_parameter("bias", None)  # back to the bias-free layer the adapter found
                self._created.remove("bias")
        elif current is not None:
            current.copy_(b)

    def _settle(self) -> None:
        """Once only baked adapters (or none) are merged, the base weights are the new truth."""
        if any(isinstance(e, str) for e in self._merge_order):
            return
        if not self._merge_order:  # fully unmerged: drop what the merge invented
            m = self.inner
            for attr in self._created:
                m.register_parameter(attr, None)
        self._merge_order, self._created, self._bias_origin = [], [], None

    def drop_adapter(self, name: str) -> None:
        if name in self._merge_order:  # merge_and_drop: its effect stays in the weights for good
            scale, shift = self.out_terms(name)
            baked: Baked = (
                None if scale is None else scale.detach().clone(),
                None if shift is None else shift.detach().clone(),
            )
            self._merge_order[self._merge_order.index(name)] = baked
        super().drop_adapter(name)
        self._settle()

    def check_slices(self, module_name: str, slices: tuple[str, ...] | None) -> None:
        if slices is not None:
            raise ConfigError(
                f"{module_name}: {self.method_name} adapts whole layers; drop the [{','.join(slices)}] slice"
            )


@register_wrapper("ssf", nn.Linear, *CONVS, nn.LayerNorm, *BATCHNORMS)
class SSFLayer(ChannelAffineLayer):
    """A Linear / ConvNd / LayerNorm / BatchNorm with SSF adapters (``ssf_scale``, ``ssf_shift``)."""

    method_name = "ssf"

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.ssf_scale = nn.ParameterDict()
        self.ssf_shift = nn.ParameterDict()

    def add_ssf(self, name: str, init_std: float) -> None:
        self.register_adapter(name)
        m = self.inner
        self.ssf_scale[name] = new_vector(m, self.channels, 1.0, init_std)
        self.ssf_shift[name] = new_vector(m, self.channels, 0.0, init_std)

    def out_terms(self, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.ssf_scale[name], self.ssf_shift[name]


class SSF(MethodBase):
    """The SSF method object (see :func:`build_ssf`)."""

    family = "ssf"  # wraps the layers SSFLayer is registered for
    name = "ssf"

    def __init__(self, init_std: float) -> None:
        self.init_std = init_std

    def config(self) -> dict[str, Any]:
        return {"init_std": self.init_std}

    def add(self, layer: PeftLayer, adapter: str, module_name: str, slices: tuple[str, ...] | None) -> None:
        assert isinstance(layer, SSFLayer)
        layer.check_slices(module_name, slices)
        layer.add_ssf(adapter, self.init_std)


@PEFT_METHODS.register("ssf")
def build_ssf(init_std: Annotated[float, Ge(0)] = 0.0) -> SSF:
    """SSF: ``y = gamma * f(x) + beta`` per output channel, mergeable into ``f``'s weight and bias.

    Args:
        init_std: std of the noise added to the identity init (``gamma = 1``, ``beta = 0``). The
            paper uses 0.02; the default 0 keeps the adapted model equal to the base at step 0.
    """
    return SSF(init_std)


__all__ = [
    "BATCHNORMS",
    "CHANNEL_LAYERS",
    "CONVS",
    "SSF",
    "ChannelAffineLayer",
    "SSFLayer",
    "build_ssf",
    "channel_shape",
    "innermost",
    "new_vector",
]
