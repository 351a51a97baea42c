"""Bottleneck adapters: Houlsby (sequential) and AdaptFormer (parallel, scaled).

Both add a small ``up(act(down(.)))`` branch to a module whose output's last axis is ``D``:

* ``houlsby`` (Houlsby et al. 2019) feeds the module's *output* through the branch:
  ``y = h + up(act(down(h)))`` with ``h = base(x)``.
* ``adaptformer`` (Chen et al. 2022) feeds the module's *input* through it, in parallel:
  ``y = base(x) + s * up(act(down(x)))``, so input and output widths must match (a ViT MLP).

``up`` starts at zero, so an adapted model equals its base until it trains. The branch is
non-linear, so neither can be folded into the base weights (``mergeable = False``).

Both methods share one wrapper class (family ``bottleneck``), as LoRA and DoRA do: a Houlsby
and an AdaptFormer adapter on one module live in one wrapper and apply in ``active`` order.
Because they can wrap any module (the wrapper is registered for ``nn.Module``), the helpers here also
guard against a glob that matches a module *and* its children (``*`` matches dots).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal, get_args

import torch
from torch import nn

from sciadapt.errors import ConfigError, ShapeError
from sciadapt.peft.core import MethodBase, PeftLayer, register_wrapper
from sciadapt.registry import PEFT_METHODS
from sciadapt.spec import Ge

Activation = Literal["gelu", "relu", "silu", "tanh"]
ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}
assert tuple(ACTIVATIONS) == get_args(Activation)  # the schema's choices are the modules built here
# attributes a block/MLP commonly declares its token width under (timm, HF, torch)
WIDTH_ATTRS = ("dim", "embed_dim", "hidden_size", "d_model")
BottleneckKind = Literal["houlsby", "adaptformer"]
KINDS: tuple[str, ...] = get_args(BottleneckKind)


# ---------------------------------------------------------------------------------------------
# helpers shared with vpt.py


def unwrap(module: nn.Module) -> nn.Module:
    """The base module under any PEFT wrappers."""
    while isinstance(module, PeftLayer):
        module = module.base_layer
    return module


def _base_modules(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` and its submodules in registration order, seeing only the base of PEFT wrappers.

    Adapter tensors (LoRA's ``lora_A`` Linears, ...) must not be mistaken for the model's layers.
    """
    yield module
    for child in module.children():
        yield from _base_modules(unwrap(child))


def _int_attr(module: nn.Module, names: tuple[str, ...]) -> int | None:
    for n in names:
        v = getattr(module, n, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def io_widths(module: nn.Module) -> tuple[int | None, int | None]:
    """The last-axis widths ``(D_in, D_out)`` of a module mapping ``(..., D_in) -> (..., D_out)``.

    Declared widths win (``in_features``/``out_features``, then ``dim``/``embed_dim``/...);
    otherwise the first and last Linear inside are used, which is right for MLPs and pre-norm
    transformer blocks (their layers are registered in the order they run). ``None`` where
    nothing tells. Callers check the real width at run time too, so a wrong guess is an error,
    never a silent mis-shape.

    Args:
        module: the module (PEFT wrappers are looked through).

    Returns:
        ``(D_in, D_out)``, each ``None`` when it cannot be determined.
    """
    m = unwrap(module)
    d_in = _int_attr(m, ("in_features", *WIDTH_ATTRS))
    d_out = _int_attr(m, ("out_features", *WIDTH_ATTRS))
    if d_in is None or d_out is None:
        linears = [s for s in _base_modules(m) if isinstance(s, nn.Linear)]
        if linears:
            d_in = linears[0].in_features if d_in is None else d_in
            d_out = linears[-1].out_features if d_out is None else d_out
    return d_in, d_out


def note_target(seen: dict[str, list[str]], adapter: str, module_name: str, method: str) -> bool:
    """Record that ``method`` adds ``adapter`` to ``module_name``; True for the first module of an attach.

    Methods that wrap whole modules must not also wrap that module's children with the same
    adapter: with a wrapper registered for ``nn.Module`` a pattern like ``blocks.*`` matches
    ``blocks.0`` *and* ``blocks.0.attn`` (``*`` matches dots), which is never what was meant.

    Args:
        seen: the method object's per-adapter record of module names.
        adapter: the adapter name.
        module_name: the logical module name being adapted.
        method: the method's name, for the message.

    Returns:
        Whether this is the first module of this adapter in the current ``attach`` call.

    Raises:
        ConfigError: when ``module_name`` is inside (or contains) a module already adapted.
    """
    names = seen.setdefault(adapter, [])
    if module_name in names:
        # attach() never passes a name twice, so the same method object is attaching again
        # (to another model or a fresh copy): start a new record
        names.clear()
    clash = next((n for n in names if module_name.startswith(n + ".") or n.startswith(module_name + ".")), None)
    if clash is not None:
        outer, inner = (clash, module_name) if module_name.startswith(clash + ".") else (module_name, clash)
        raise ConfigError(
            f"peft.targets: {method} adapter {adapter!r} would wrap both {outer} and its submodule {inner}. "
            f"{method} adapts whole modules and '*' in a pattern also matches dots, so list patterns that "
            rf"match only the modules you mean, e.g. 're:blocks\.\d+' or 'blocks.?' for the blocks"
        )
    names.append(module_name)
    return len(names) == 1


def factory_kwargs(module: nn.Module) -> dict[str, Any]:
    """Device and dtype of a module's first parameter, so new adapter tensors sit beside it."""
    p = next(module.parameters(), None)
    return {} if p is None else {"device": p.device, "dtype": p.dtype}


def first_tensor(out: Any, where: str) -> tuple[torch.Tensor, tuple[Any, ...] | None]:
    """Split a module output into the hidden states and the rest (HF/MHA modules return tuples)."""
    if isinstance(out, torch.Tensor):
        return out, None
    if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        return out[0], tuple(out[1:])
    raise ShapeError(
        f"{where}: the module returns {type(out).__name__}; expected a tensor or a tuple starting with one"
    )


# ---------------------------------------------------------------------------------------------
# the layer


@register_wrapper("bottleneck", nn.Module)
class BottleneckLayer(PeftLayer):
    """A module with Houlsby and/or AdaptFormer bottleneck adapters."""

    method_name = "bottleneck"
    mergeable = False

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.adapter_down = nn.ModuleDict()
        self.adapter_up = nn.ModuleDict()
        self.adapter_act = nn.ModuleDict()
        self.adapter_dropout = nn.ModuleDict()
        self.kind: dict[str, str] = {}
        self.scale: dict[str, float] = {}
        self.width = 0  # D, set by the first adapter
        self.where = ""  # the module's name, for run-time errors

    def add_bottleneck(self, name: str, method: Bottleneck, module_name: str) -> None:
        d_in, d_out = io_widths(self.base_layer)
        kind = type(unwrap(self.base_layer)).__name__
        if d_out is None:
            raise ConfigError(
                f"{module_name}: cannot tell the output width of this {kind} (no out_features, dim or embed_dim "
                f"attribute and no Linear inside); {method.name} needs a module producing (..., D) — target a "
                "Linear, MLP or block"
            )
        if method.name == "adaptformer":
            if d_in is None:
                raise ConfigError(
                    f"{module_name}: cannot tell the input width of this {kind}; adaptformer needs a module "
                    "mapping (..., D) -> (..., D), such as a block's MLP"
                )
            if d_in != d_out:
                raise ConfigError(
                    f"{module_name}: adaptformer adds a branch from the module's input to its output, so both "
                    f"need the same width, but this {kind} maps {d_in} -> {d_out}; target a width-preserving "
                    "module such as a block's MLP (e.g. blocks.*.mlp), or use houlsby"
                )
        self.register_adapter(name)
        self.width, self.where = d_out, module_name
        self.kind[name] = method.name
        self.scale[name] = method.scale
        fk = factory_kwargs(self.base_layer)
        down = nn.Linear(d_out, method.bottleneck, **fk)
        up = nn.Linear(method.bottleneck, d_out, **fk)
        with torch.no_grad():
            # down keeps torch's kaiming-uniform init (as AdaptFormer); zero biases and a zero up
            # make the branch exactly 0, so the adapted model starts as the base model
            nn.init.zeros_(down.bias)
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        self.adapter_down[name], self.adapter_up[name] = down, up
        self.adapter_act[name] = ACTIVATIONS[method.activation]()
        self.adapter_dropout[name] = nn.Dropout(method.dropout) if method.dropout > 0 else nn.Identity()

    def _branch(self, name: str, z: torch.Tensor) -> torch.Tensor:
        if z.shape[-1] != self.width:
            raise ShapeError(
                f"{self.where}: {self.kind[name]} adapter {name!r} expects a last axis of {self.width}, got {tuple(z.shape)}"
            )
        a = self.adapter_dropout[name](self.adapter_act[name](self.adapter_down[name](z)))  # (..., bottleneck)
        up: torch.Tensor = self.adapter_up[name](a)  # (..., D)
        return up

    def adapted_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = self.base_layer(x, *args, **kwargs)
        names = self.unmerged_active()
        if not names:
            return out
        h, rest = first_tensor(out, self.where)  # (..., D)
        for name in names:
            if self.kind[name] == "houlsby":
                # sequential: the branch reads what the module (and earlier adapters) produced
                h = h + self._branch(name, h)
            else:
                # parallel: the branch reads the module's own input
                h = h + self.scale[name] * self._branch(name, x)
        return h if rest is None else (h, *rest)


# ---------------------------------------------------------------------------------------------
# the method


class Bottleneck(MethodBase):
    """The Houlsby / AdaptFormer method object (see :func:`build_houlsby`, :func:`build_adaptformer`)."""

    family = "bottleneck"  # BottleneckLayer is registered for any nn.Module
    # only the outermost module a pattern matches is meant: the core keeps `blocks.0`, not its children
    whole_modules = True

    def __init__(
        self, name: BottleneckKind, bottleneck: int, activation: Activation, dropout: float, scale: float
    ) -> None:
        # spec.py has no strict upper bound (`Lt`) for the signature, so [0, 1) is checked here
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"peft.dropout must be in [0, 1), got {dropout}")
        self.name, self.bottleneck, self.activation, self.dropout, self.scale = (
            name,
            bottleneck,
            activation,
            dropout,
            scale,
        )
        self._seen: dict[str, list[str]] = {}

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"bottleneck": self.bottleneck, "activation": self.activation, "dropout": self.dropout}
        if self.name == "adaptformer":
            cfg["scale"] = self.scale
        return cfg

    def add(self, layer: PeftLayer, adapter: str, module_name: str, slices: tuple[str, ...] | None) -> None:
        assert isinstance(layer, BottleneckLayer)
        if slices is not None:
            raise ConfigError(f"{module_name}: {self.name} adapts whole modules; drop the [q,k,v] slice")
        note_target(self._seen, adapter, module_name, self.name)
        layer.add_bottleneck(adapter, self, module_name)


@PEFT_METHODS.register("houlsby")
def build_houlsby(
    bottleneck: Annotated[int, Ge(1)] = 64, activation: Activation = "gelu", dropout: float = 0.0
) -> Bottleneck:
    """Houlsby adapter (sequential): ``y = h + up(act(down(h)))`` with ``h = module(x)``.

    Target modules whose output's last axis is the token width ``D`` (a Linear, an MLP, a
    block). ``up`` starts at zero, so the model starts as the base. Not mergeable.

    Args:
        bottleneck: width of the down-projection.
        activation: ``gelu``, ``relu``, ``silu`` or ``tanh``.
        dropout: dropout on the bottleneck activations.
    """
    return Bottleneck("houlsby", bottleneck, activation, dropout, scale=1.0)


@PEFT_METHODS.register("adaptformer")
def build_adaptformer(
    bottleneck: Annotated[int, Ge(1)] = 64, scale: float = 0.1, activation: Activation = "relu", dropout: float = 0.0
) -> Bottleneck:
    """AdaptFormer (parallel, scaled): ``y = module(x) + scale * up(act(down(x)))``.

    Target width-preserving modules mapping ``(..., D) -> (..., D)``, as the paper does a ViT
    block's MLP (``blocks.*.mlp``). ``up`` starts at zero. Not mergeable.

    Args:
        bottleneck: width of the down-projection.
        scale: the fixed scale ``s`` of the branch.
        activation: ``relu`` (the paper's), ``gelu``, ``silu`` or ``tanh``.
        dropout: dropout on the bottleneck activations.
    """
    return Bottleneck("adaptformer", bottleneck, activation, dropout, scale=scale)


__all__ = [
    "ACTIVATIONS",
    "Activation",
    "Bottleneck",
    "BottleneckKind",
    "BottleneckLayer",
    "build_adaptformer",
    "build_houlsby",
    "factory_kwargs",
    "first_tensor",
    "io_widths",
    "note_target",
    "unwrap",
]
