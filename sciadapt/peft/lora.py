"""LoRA and DoRA on Linear, Conv1d/2d/3d and fused-qkv Linear slices.

Key layout and initialisation follow Hugging Face PEFT (``lora_A`` / ``lora_B`` /
``lora_magnitude_vector`` ModuleDicts keyed by adapter name; kaiming-uniform A, zero B), so
adapters on whole layers round-trip with ``peft``. Slices of a fused qkv projection
(``qkv[q,v]``) have their own A/B per slice (and, for DoRA, their own magnitude over the
slice's output rows) — a layout PEFT cannot express, so those adapters are sciadapt-only.

:class:`LoraLayer` is registered for Linear (with slices) and Conv1d/2d/3d. It also serves any
layer computing ``x @ weight.T + bias`` on the last axis with a 2-D ``weight`` (out, in):
``register_wrapper("lora", MyLinear)(LoraLayer)`` is all such a layer needs.

DoRA (Liu et al. 2024) rescales every output unit: ``y = m / ||W + sBA|| * (W x + s B A x) + b``.
PEFT materialises ``W + sBA`` each step to take that norm; here the squared row norms come
from ``||W||^2`` (cached), ``A W^T`` (r x out) and ``A A^T`` (r x r), so a DoRA step costs about
what a LoRA step does. As in the paper and PEFT, the norm is treated as a constant in the
backward pass. On qkv slices the same terms are formed per slice, from that slice's rows of W.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Annotated, Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from sciadapt.errors import ConfigError
from sciadapt.peft.core import (
    HF_PREFIX,
    MethodBase,
    PeftLayer,
    base_of,
    logical_modules,
    peft_layers,
    register_wrapper,
    registered_types,
)
from sciadapt.registry import PEFT_METHODS
from sciadapt.spec import Ge

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LoraInit = Literal["default", "gaussian", "pissa", "eva", "lora_fa"]
INITS: tuple[str, ...] = get_args(LoraInit)


class _Magnitude(nn.Module):
    """Holds DoRA's magnitude as ``.weight`` so the key is PEFT's ``lora_magnitude_vector.<name>.weight``."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(value)


def _flat(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1)  # (out, in * kernel)


def _norm_update(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, s: float) -> torch.Tensor:
    """``||W + sBA||^2 - ||W||^2`` per row of ``w`` (out, k), from ``A W^T`` and ``A A^T`` only."""
    aw = a @ w.T  # (r, out)
    cross = (b * aw.T).sum(1)  # (out,) = diag(B A W^T)
    quad = ((b @ (a @ a.T)) * b).sum(1)  # (out,) = diag(B A A^T B^T)
    return 2 * s * cross + s * s * quad


def _thirds(n: int) -> list[tuple[str, slice]]:
    """The q, k and v row ranges of a fused projection with ``n`` output rows."""
    d = n // 3
    return [(sl, slice(i * d, (i + 1) * d)) for i, sl in enumerate("qkv")]


@register_wrapper("lora", *CONVS)
@register_wrapper("lora", nn.Linear, slices=True)
class LoraLayer(PeftLayer):
    """A Linear, ConvNd or Linear-like layer with LoRA/DoRA adapters."""

    method_name = "lora"

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        # typed Any: entries are Linear/ConvNd or per-slice ModuleDicts
        self.lora_A: Any = nn.ModuleDict()
        self.lora_B: Any = nn.ModuleDict()
        self.lora_dropout: Any = nn.ModuleDict()
        self.lora_magnitude_vector: Any = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.slices: dict[str, tuple[str, ...] | None] = {}
        self._dora_scale: dict[str, torch.Tensor] = {}  # m / ||W + sBA|| at merge time, (out,)
        self._w_norm_sq: tuple[int, int, torch.Tensor] | None = None

    # -- construction -------------------------------------------------------------------
    def _pair(self, r: int) -> tuple[nn.Module, nn.Module]:
        base = self.base_layer
        if not isinstance(base, CONVS):  # Linear, or a registered layer with Linear's maths
            out_features, in_features = base.weight.shape
            return nn.Linear(in_features, r, bias=False), nn.Linear(r, out_features, bias=False)
        conv = type(base)
        a = conv(
            base.in_channels,
            r,
            base.kernel_size,  # type: ignore[arg-type]
            stride=base.stride,  # type: ignore[arg-type]
            padding=base.padding,  # type: ignore[arg-type]
            dilation=base.dilation,  # type: ignore[arg-type]
            bias=False,
        )
        return a, conv(r, base.out_channels, 1, bias=False)

    def add_lora(self, name: str, method: LoRA, slices: tuple[str, ...] | None) -> None:
        base = self.base_layer
        if isinstance(base, CONVS) and base.groups != 1:
            raise ConfigError(
                f"{method.name} on grouped/depthwise convolutions (groups={base.groups}) is not supported"
            )
        if isinstance(base, PeftLayer):
            raise ConfigError(
                f"{method.name} cannot wrap the {base.method_name} adapters already on this layer; "
                f"attach {method.name} first, then {base.method_name}"
            )
        w = getattr(base, "weight", None)
        if not isinstance(w, torch.Tensor) or (not isinstance(base, CONVS) and w.dim() != 2):
            raise ConfigError(
                f"{method.name} needs a layer with a 2-D weight (out, in) used as x @ weight.T, or a ConvNd; "
                f"this {type(base).__name__} has {'no weight' if w is None else f'a weight of shape {tuple(w.shape)}'}"
            )
        max_rank = min(_flat(w).shape) if slices is None else min(w.shape[0] // 3, w.shape[1])
        if method.r > max_rank:
            raise ConfigError(
                f"peft.r={method.r} exceeds the rank this layer allows ({max_rank}, weight {tuple(w.shape)}); lower peft.r"
            )
        self.register_adapter(name)
        self.scaling[name] = method.alpha / (math.sqrt(method.r) if method.rslora else method.r)
        self.slices[name] = slices
        self.lora_dropout[name] = nn.Dropout(method.dropout) if method.dropout > 0 else nn.Identity()
        if slices is None:
            a, b = self._pair(method.r)
            self.lora_A[name], self.lora_B[name] = a, b
        else:
            d = w.shape[0] // 3
            a_parts, b_parts = nn.ModuleDict(), nn.ModuleDict()
            for s in slices:
                a_parts[s] = nn.Linear(w.shape[1], method.r, bias=False)
                b_parts[s] = nn.Linear(method.r, d, bias=False)
            self.lora_A[name], self.lora_B[name] = a_parts, b_parts
        for mod in (self.lora_A[name], self.lora_B[name]):
            mod.to(device=w.device, dtype=w.dtype)
        self._init(name, method.init)
        if method.use_dora:
            with torch.no_grad():
                norm = self._row_norm(name)  # equals ||W|| at init (B = 0), (out,)
            if slices is None:
                self.lora_magnitude_vector[name] = _Magnitude(self._channel_shape(norm.clone()))
            else:
                # one magnitude per slice, over that slice's output rows: lora_magnitude_vector.<name>.q.weight
                self.lora_magnitude_vector[name] = nn.ModuleDict(
                    {sl: _Magnitude(norm[rows].clone()) for sl, rows in _thirds(w.shape[0]) if sl in slices}
                )
        if method.init == "lora_fa":
            for p in self.lora_A[name].parameters():
                p.requires_grad_(False)
                # read by core.mark_trainable, which otherwise trains every adapter tensor
                p._sciadapt_frozen = True  # type: ignore[attr-defined]

    def _init(self, name: str, init: str) -> None:
        if init == "pissa":
            self._init_pissa(name)
            return
        with torch.no_grad():
            for a in _leaves(self.lora_A[name]):
                if init == "gaussian":
                    nn.init.normal_(a.weight, std=1 / a.weight.shape[0])
                else:
                    nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            for b in _leaves(self.lora_B[name]):
                nn.init.zeros_(b.weight)

    def _init_pissa(self, name: str) -> None:
        """PiSSA (Meng et al. 2024): the adapter starts as the top-r principal part of W and the
        base keeps the residual, ``W_res = W - s B A`` (outputs unchanged at init).

        As in Hugging Face PEFT without weight conversion, the saved adapter then belongs to the
        residual base: the run's checkpoint holds it, and the fingerprint refuses the original.
        """
        if self.slices[name] is not None:
            raise ConfigError("init=pissa on fused-qkv slices is not supported")
        with torch.no_grad():
            w = self.base_layer.weight
            a, b = self.lora_A[name].weight, self.lora_B[name].weight
            r, s = a.shape[0], self.scaling[name]
            u, sv, vh = torch.linalg.svd(_flat(w).double(), full_matrices=False)
            root = sv[:r].sqrt() / math.sqrt(s)
            a.copy_((root[:, None] * vh[:r]).reshape(a.shape).to(a.dtype))  # (r, k)
            b.copy_((u[:, :r] * root[None, :]).reshape(b.shape).to(b.dtype))  # (out, r)
            w.sub_(self.delta_weight(name).to(w.dtype))

    def _channel_shape(self, v: torch.Tensor) -> torch.Tensor:
        """PEFT stores a conv magnitude as (1, out, 1, ...) and a Linear one as (out,)."""
        if isinstance(self.base_layer, CONVS):
            return v.reshape(1, -1, *([1] * (self.base_layer.weight.dim() - 2)))
        return v

    # -- maths ---------------------------------------------------------------------------
    def delta_weight(self, name: str) -> torch.Tensor:
        """``s * B A`` in the shape of the base weight."""
        w = self.base_layer.weight
        s = self.scaling[name]
        if self.slices[name] is None:
            a, b = self.lora_A[name].weight, self.lora_B[name].weight
            return (s * (_flat(b) @ _flat(a))).reshape(w.shape)
        delta = torch.zeros_like(w)
        for sl, rows in _thirds(w.shape[0]):
            if sl in self.slices[name]:  # type: ignore[operator]
                delta[rows] = s * (self.lora_B[name][sl].weight @ self.lora_A[name][sl].weight)
        return delta

    def _base_norm_sq(self) -> torch.Tensor:
        w = self.base_layer.weight
        key = (w.data_ptr(), w._version)
        if self._w_norm_sq is None or self._w_norm_sq[:2] != key:
            self._w_norm_sq = (*key, _flat(w.detach()).pow(2).sum(1))
        return self._w_norm_sq[2]

    def _row_norm(self, name: str) -> torch.Tensor:
        """``||W + sBA||`` per output unit, (out,), without forming ``W + sBA`` (no graph).

        With qkv slices each adapted slice adds its own terms to its rows; the other rows keep ``||W||``.
        """
        with torch.no_grad():
            w = _flat(self.base_layer.weight.detach())  # (out, k)
            s = self.scaling[name]
            sq = self._base_norm_sq()  # (out,)
            sliced = self.slices[name]
            if sliced is None:
                a = _flat(self.lora_A[name].weight.detach())  # (r, k)
                b = _flat(self.lora_B[name].weight.detach())  # (out, r)
                return (sq + _norm_update(w, a, b, s)).clamp_min(0).sqrt()
            parts = []
            for sl, rows in _thirds(w.shape[0]):
                part = sq[rows]  # (out / 3,)
                if sl in sliced:
                    a = self.lora_A[name][sl].weight.detach()  # (r, in)
                    b = self.lora_B[name][sl].weight.detach()  # (out / 3, r)
                    part = part + _norm_update(w[rows], a, b, s)
                parts.append(part)
            return torch.cat(parts).clamp_min(0).sqrt()

    def _dora_gain(self, name: str) -> torch.Tensor:
        """``g = m / ||W + sBA||`` per output unit, (out,); 1 on rows of slices without an adapter."""
        norm = self._row_norm(name)
        mag = self.lora_magnitude_vector[name]
        if self.slices[name] is None:
            gain: torch.Tensor = mag.weight.reshape(-1) / norm
            return gain
        parts = []
        for sl, rows in _thirds(norm.shape[0]):
            parts.append(mag[sl].weight / norm[rows] if sl in mag else torch.ones_like(norm[rows]))
        return torch.cat(parts)

    def _lora_out(self, name: str, x: torch.Tensor) -> torch.Tensor:
        xd = self.lora_dropout[name](x)
        if self.slices[name] is None:
            whole: torch.Tensor = self.lora_B[name](self.lora_A[name](xd)) * self.scaling[name]
            return whole
        parts = []
        d = self.base_layer.weight.shape[0] // 3
        for sl in "qkv":
            if sl in self.slices[name]:  # type: ignore[operator]
                parts.append(self.lora_B[name][sl](self.lora_A[name][sl](xd)) * self.scaling[name])
            else:
                parts.append(x.new_zeros(*x.shape[:-1], d))
        return torch.cat(parts, dim=-1)

    def _channel(self, v: torch.Tensor, ndim: int) -> torch.Tensor:
        """Broadcast a per-output-unit vector over an output of ``ndim`` dims."""
        if isinstance(self.base_layer, CONVS):
            return v.reshape(1, -1, *([1] * (ndim - 2)))
        return v

    def _plain_base(self) -> bool:
        """A plain Linear/Conv base whose forward we may recompute without its bias."""
        base = self.base_layer
        return type(base) in (nn.Linear, *CONVS) and not base._forward_hooks and not base._forward_pre_hooks

    def adapted_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        active = self.unmerged_active()
        if len(active) == 1 and active[0] in self.lora_magnitude_vector and self._plain_base() and not args:
            # the common DoRA case in one pass less each way: W x without its bias (instead of
            # adding the bias and subtracting it again), then g * z + b fused
            name, base = active[0], self.base_layer
            g = self._dora_gain(name)  # (out,)
            if isinstance(base, nn.Linear):
                z = F.linear(x, base.weight)
            else:
                z = base._conv_forward(x, base.weight, None)
            z = z.add_(self._lora_out(name, x))
            axis = 1 if isinstance(base, CONVS) else -1
            y: torch.Tensor = _ScaleShift.apply(z, g, base.bias, axis)  # g * (W x + s B A x) + b
            return y
        return self._general_forward(x, *args, **kwargs)

    def _general_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        for name in self.unmerged_active():
            if name in self.lora_magnitude_vector:
                g = self._dora_gain(name)  # (out,)
                bias = getattr(self.base_layer, "bias", None)
                if isinstance(self.base_layer, PeftLayer):
                    out = out.clone()
                z = out if bias is None else out.sub_(self._channel(bias, out.dim()))
                z = z.add_(self._lora_out(name, x))
                axis = 1 if isinstance(self.base_layer, CONVS) else -1
                out = _ScaleShift.apply(z, g, bias, axis)  # g * (W x + s B A x) + b
            else:
                out = out + self._lora_out(name, x)
        y: torch.Tensor = out
        return y

    def merge_adapter(self, name: str) -> None:
        self._w_norm_sq = None  # `.data` writes below keep the version counter: drop the cache
        w = self.base_layer.weight
        if name in self.lora_magnitude_vector:
            g = self._dora_gain(name)
            self._dora_scale[name] = g
            w.data = ((w + self.delta_weight(name)) * g.reshape(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
        else:
            w.data += self.delta_weight(name).to(w.dtype)

    def unmerge_adapter(self, name: str) -> None:
        self._w_norm_sq = None
        w = self.base_layer.weight
        if name in self.lora_magnitude_vector:
            g = self._dora_scale.pop(name)
            w.data = (w / g.reshape(-1, *([1] * (w.dim() - 1))) - self.delta_weight(name)).to(w.dtype)
        else:
            w.data -= self.delta_weight(name).to(w.dtype)


class _ScaleShift(torch.autograd.Function):
    """``y = g * z + b`` per channel, saving ``y`` instead of ``z`` for the backward pass.

    The gradient of ``g`` needs ``z``; keeping it would hold one more activation-sized tensor
    per DoRA layer (+60 % peak memory over LoRA on a ViT-B). ``z = (y - b) / g`` is recovered
    from the output, which the next layer keeps alive anyway. ``g`` is ``m / ||W + sBA||`` with
    ``m`` initialised to the norm, so it stays far from zero.
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, g: torch.Tensor, b: torch.Tensor | None, axis: int) -> torch.Tensor:
        shape = [1] * z.dim()
        shape[axis] = -1
        # z is a temporary of the caller: reuse its memory, in one fused pass
        if b is None:
            y = z.mul_(g.reshape(shape))
        else:
            y = torch.addcmul(b.reshape(shape), z, g.reshape(shape), out=z)
        ctx.mark_dirty(z)
        ctx.axis, ctx.shape, ctx.has_bias = axis, shape, b is not None
        ctx.save_for_backward(y, g, b if b is not None else g.new_zeros(()))
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
        y, g, b = ctx.saved_tensors
        shape, axis = ctx.shape, ctx.axis % dy.dim()
        dims = [d for d in range(dy.dim()) if d != axis]
        dz = dy * g.reshape(shape) if ctx.needs_input_grad[0] else None
        dg = db = None
        need_db = ctx.has_bias and ctx.needs_input_grad[2]
        sum_dy = dy.sum(dims) if ctx.has_bias and (need_db or ctx.needs_input_grad[1]) else None
        if ctx.needs_input_grad[1]:
            # sum(dy * z) with z = (y - b) / g, without materialising z: (sum(dy * y) - b sum(dy)) / g
            dyy = (dy * y).sum(dims)
            dg = (dyy - b * sum_dy) / g if ctx.has_bias else dyy / g
        if need_db:
            db = sum_dy
        return dz, dg, db, None


def _leaves(mod: nn.Module) -> list[Any]:
    return [m for m in mod.modules() if isinstance(m, (nn.Linear, *CONVS))]


class LoRA(MethodBase):
    """The LoRA/DoRA method object (see :func:`build_lora`)."""

    family = "lora"  # LoRA and DoRA share LoraLayer, registered above for their layer types

    def __init__(
        self,
        r: int,
        alpha: float,
        dropout: float,
        rslora: bool,
        init: LoraInit,
        use_dora: bool,
        name: str,
        eva_batches: int = 4,
    ) -> None:
        self.r, self.alpha, self.dropout, self.rslora = r, alpha, dropout, rslora
        self.init, self.use_dora, self.name = init, use_dora, name
        self.eva_batches = eva_batches

    def config(self) -> dict[str, Any]:
        return {
            "r": self.r,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "rslora": self.rslora,
            "init": self.init,
            "eva_batches": self.eva_batches,
        }

    def add(self, layer: PeftLayer, adapter: str, module_name: str, slices: tuple[str, ...] | None) -> None:
        assert isinstance(layer, LoraLayer)
        try:
            layer.add_lora(adapter, self, slices)
        except ConfigError as e:
            raise ConfigError([f"{module_name}: {problem}" for problem in e.problems]) from None

    def init_from_data(self, model: nn.Module, adapter: str, batches: Iterable[Mapping[str, Any]]) -> None:
        """With ``init="eva"``: :func:`eva_init` on the inputs ``x`` of the first ``eva_batches``
        training batches, the model called as ``model(x)``; other inits need no data.

        Args:
            model: the adapted model (the task).
            adapter: the adapter name.
            batches: the training batches (dicts with an ``"x"`` tensor); only ``eva_batches`` are drawn.
        """
        if self.init != "eva":
            return
        eva_init(model, adapter, (b["x"] for b in islice(batches, self.eva_batches)), model)

    def hf_config(self, targets: list[str]) -> dict[str, Any] | None:
        """PEFT's adapter_config.json fields (the subset PEFT needs to rebuild the adapter)."""
        return {
            "peft_type": "LORA",
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "use_rslora": self.rslora,
            "use_dora": self.use_dora,
            "target_modules": sorted(targets),
            "bias": "none",
            "fan_in_fan_out": False,
            "init_lora_weights": True,
            "modules_to_save": None,
            "task_type": None,
            "base_model_name_or_path": None,
            "inference_mode": True,
        }


@PEFT_METHODS.register("lora")
def build_lora(
    r: Annotated[int, Ge(1)] = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    rslora: bool = False,
    init: LoraInit = "default",
    eva_batches: Annotated[int, Ge(1)] = 4,
) -> LoRA:
    """LoRA: ``y = W x + (alpha / r) B A x`` (``alpha / sqrt(r)`` with ``rslora``).

    Args:
        r: rank.
        alpha: scaling numerator.
        dropout: dropout on the adapter's input.
        rslora: rank-stabilised scaling ``alpha / sqrt(r)``.
        init: ``default`` (kaiming A, zero B, as PEFT), ``gaussian``, ``pissa`` (principal singular
            part of W moved into the adapter, the residual stays in the base), ``eva`` (A from the top
            right singular vectors of each layer's inputs on ``eva_batches`` training batches) or
            ``lora_fa`` (A frozen, only B trains).
        eva_batches: training batches whose activations initialise A when ``init=eva``.
    """
    return LoRA(r, alpha, dropout, rslora, init, use_dora=False, name="lora", eva_batches=eva_batches)


@PEFT_METHODS.register("dora")
def build_dora(
    r: Annotated[int, Ge(1)] = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    rslora: bool = False,
    init: LoraInit = "default",
    eva_batches: Annotated[int, Ge(1)] = 4,
) -> LoRA:
    """DoRA: LoRA's direction update with a learned magnitude per output unit.

    On fused-qkv slices (``qkv[q,v]``) each slice has its own A, B and magnitude over its rows.

    Args:
        r: rank.
        alpha: scaling numerator.
        dropout: dropout on the adapter's input (the base term is not dropped, unlike PEFT).
        rslora: rank-stabilised scaling.
        init: as for LoRA.
        eva_batches: as for LoRA.
    """
    return LoRA(r, alpha, dropout, rslora, init, use_dora=True, name="dora", eva_batches=eva_batches)


def eva_init(
    model: nn.Module,
    adapter: str,
    inputs: Iterable[torch.Tensor],
    forward: Callable[[torch.Tensor], Any],
    max_rows: int = 16384,
) -> int:
    """EVA (Paischer et al. 2024): set each LoRA ``A`` to the top-``r`` right singular vectors of
    the (centred) inputs the layer sees on a few batches; ``B`` stays zero, so outputs are unchanged.

    Ranks stay uniform (EVA's explained-variance rank redistribution is not applied).
    Returns the number of layers initialised.
    """
    layers = {n: m for n, m in peft_layers(model).items() if isinstance(m, LoraLayer) and adapter in m.adapters}
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in layers}

    def hook(name: str, layer: LoraLayer) -> Any:
        def grab(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            base = layer.base_layer
            if isinstance(base, nn.Conv2d):
                pad: Any = base.padding
                cols = F.unfold(x, base.kernel_size, base.dilation, pad, base.stride)  # (B, in*k*k, P)
                flat = cols.transpose(1, 2).reshape(-1, cols.shape[1])
            elif isinstance(base, CONVS):
                raise ConfigError(f"{name}: init=eva supports Linear and Conv2d layers, not {type(base).__name__}")
            else:  # Linear, or a registered layer with Linear's maths
                flat = x.reshape(-1, x.shape[-1])  # (N, in)
            if sum(len(r) for r in rows[name]) < max_rows:
                rows[name].append(flat[:max_rows])

        return grab

    handles = [m.register_forward_pre_hook(hook(n, m)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            for x in inputs:
                forward(x)
    finally:
        for h in handles:
            h.remove()
    done = 0
    with torch.no_grad():
        for name, layer in layers.items():
            if not rows[name] or layer.slices[adapter] is not None:
                continue
            acts = torch.cat(rows[name]).double()
            acts = acts - acts.mean(0, keepdim=True)
            _, _, vh = torch.linalg.svd(acts, full_matrices=False)  # (min(N, in), in)
            a = layer.lora_A[adapter].weight
            r = a.shape[0]
            if vh.shape[0] < r:
                raise ConfigError(
                    f"{name}: init=eva saw {vh.shape[0]} activation rows, fewer than r={r}; raise eva_batches"
                )
            a.copy_(vh[:r].reshape(a.shape).to(a.dtype))
            done += 1
    return done


def from_hf_config(cfg: dict[str, Any], model: nn.Module) -> tuple[LoRA, list[str]]:
    """A method and the target module names from a PEFT ``adapter_config.json``."""
    if cfg.get("peft_type") != "LORA":
        raise ConfigError(
            f"cannot load a Hugging Face PEFT adapter of type {cfg.get('peft_type')!r}; only LORA (incl. DoRA)"
        )
    for key in ("fan_in_fan_out", "layers_to_transform"):
        if cfg.get(key):
            raise ConfigError(f"PEFT adapter option {key}={cfg[key]!r} is not supported")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ConfigError("PEFT adapters with rank_pattern/alpha_pattern are not supported")
    r = int(cfg["r"])
    if r < 1:  # a file, not a config: its values were never checked against build_lora's signature
        raise ConfigError(f"peft.r must be >= 1, got {r}")
    method = LoRA(
        r,
        float(cfg["lora_alpha"]),
        float(cfg.get("lora_dropout") or 0.0),
        bool(cfg.get("use_rslora")),
        "default",
        use_dora=bool(cfg.get("use_dora")),
        name="dora" if cfg.get("use_dora") else "lora",
    )
    tm = cfg.get("target_modules")
    names = list(logical_modules(model))
    if isinstance(tm, str):
        targets = [n for n in names if re.fullmatch(tm, n)]
    else:
        # PEFT matches a target name against the full module name or its dotted suffix
        targets = [n for n in names if any(n == t or n.endswith("." + t) for t in tm or [])]
    modules = logical_modules(model)
    targets = [n for n in targets if isinstance(base_of(modules[n]), registered_types("lora"))]
    return method, targets


__all__ = [
    "HF_PREFIX",
    "INITS",
    "LoRA",
    "LoraInit",
    "LoraLayer",
    "build_dora",
    "build_lora",
    "eva_init",
    "from_hf_config",
]
