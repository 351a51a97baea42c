"""The PEFT core: targeting, the wrapper registry, attach, merge/unmerge, activation, trainability.

Every method is a wrapper around one base module (``PeftLayer``) that keeps the original module
as ``base_layer`` and each adapter's tensors under a ``ModuleDict``/``ParameterDict`` keyed by
the adapter name — the layout Hugging Face PEFT uses, so for LoRA and DoRA the state-dict keys
are PEFT's and an adapter directory is loadable by ``peft``. A second adapter of the same method
on a layer is added to the same wrapper; a different method wraps the wrapper.

A method is a :class:`PeftMethod`: ``name``, ``family`` (the wrapper family it shares, e.g.
LoRA and DoRA are both ``lora``), ``add(layer, adapter, module_name, slices)``, ``config()`` and
the hooks :class:`MethodBase` gives every built-in method a default for (``whole_modules``,
``check_targets``, ``hf_config``, ``init_from_data``). :data:`sciadapt.registry.PEFT_METHODS`
maps names to builders (or method classes) whose signatures are the config schema.

Saving and loading adapters (the Hugging Face PEFT file layout, fingerprints of the base) live
in :mod:`sciadapt.peft.io`; ``save_adapter``, ``load_adapter``, ``adapter_state_dict`` and
``fingerprint`` are re-exported here.

Which layers a method can adapt, and with which wrapper, is the wrapper registry: one entry per
(family, layer type). :func:`wrapper_for` finds the entry for a module by walking its type's
MRO, so subclasses of a registered type (``NonDynamicallyQuantizableLinear``) are covered. The
built-in methods register their wrappers in their own files. Supporting a new layer type is one
call; for a user's ``MyLinear`` that computes ``x @ weight.T + bias`` on the last axis (2-D
``weight`` of shape (out, in)), LoRA's and DoRA's wrapper already does the maths::

    from sciadapt.peft.core import register_wrapper
    from sciadapt.peft.lora import LoraLayer

    register_wrapper("lora", MyLinear)(LoraLayer)  # slices=True also allows `qkv[q,v]` targets

A layer with other maths gets its own :class:`PeftLayer` subclass (``method_name`` must equal
the family), registered the same way, also as a class decorator::

    @register_wrapper("lora", MyConv)
    class MyConvLora(LoraLayer): ...

A target of a type with no registered wrapper is an error that names the module, its type and
the types the method's family has wrappers for.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from sciadapt.errors import ConfigError
from sciadapt.registry import suggest

HF_PREFIX = "base_model.model."
SLICE_RE = re.compile(r"^(?P<path>[^\[\]]+)\[(?P<slices>[a-z,\s]+)\]$")
QKV = ("q", "k", "v")


class PeftMethod(Protocol):
    """What :func:`attach`, the stage runner and :mod:`sciadapt.peft.io` need of a method object."""

    name: str
    family: str  # the wrapper family (registry key); methods sharing one share a wrapper class
    # a pattern means only the outermost modules it matches (for methods wrapping whole blocks)
    whole_modules: bool

    def add(self, layer: PeftLayer, adapter: str, module_name: str, slices: tuple[str, ...] | None) -> None: ...

    def config(self) -> dict[str, Any]: ...

    def check_targets(self, model: nn.Module, found: list[Target], adapter: str) -> None: ...

    def hf_config(self, targets: list[str]) -> dict[str, Any] | None: ...

    def init_from_data(self, model: nn.Module, adapter: str, batches: Iterable[Mapping[str, Any]]) -> None: ...


class MethodBase:
    """Defaults of the optional :class:`PeftMethod` hooks; every built-in method inherits them."""

    whole_modules = False

    def check_targets(self, model: nn.Module, found: list[Target], adapter: str) -> None:
        """Refuse a target set before any module is wrapped (the default accepts every set).

        Args:
            model: the model being adapted.
            found: the targets :func:`find_targets` selected.
            adapter: the adapter name.
        """

    def hf_config(self, targets: list[str]) -> dict[str, Any] | None:
        """Hugging Face PEFT's ``adapter_config.json`` for this adapter, or None where PEFT lacks the method.

        Args:
            targets: the adapted module names.
        """
        return None

    def init_from_data(self, model: nn.Module, adapter: str, batches: Iterable[Mapping[str, Any]]) -> None:
        """Initialise adapter ``adapter`` from training data before the first step (default: nothing).

        Args:
            model: the adapted model (the task), called as ``model(x)``.
            adapter: the adapter name.
            batches: the training batches (dicts with an ``"x"`` tensor); a method takes as many
                as it needs.
        """


class PeftLayer(nn.Module):
    """A base module with named adapters of one method.

    Subclasses implement :meth:`adapted_forward` (the output with the unmerged active adapters
    applied) and, when the method is mergeable, :meth:`merge_adapter` / :meth:`unmerge_adapter`.
    """

    method_name = ""
    mergeable = True

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer: Any = base_layer  # duck-typed: weight/bias/in_features differ per layer type
        self.adapters: list[str] = []
        self.active: list[str] = []
        self.merged: list[str] = []
        self.disabled = False

    # -- adapters -------------------------------------------------------------------------
    def register_adapter(self, name: str) -> None:
        if name in self.adapters:
            raise ConfigError(f"adapter {name!r} already exists on this layer; choose another adapter_name")
        self.adapters.append(name)
        self.active.append(name)

    def unmerged_active(self) -> list[str]:
        if self.disabled:
            return []
        return [a for a in self.active if a not in self.merged]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.disabled and self.merged:
            raise RuntimeError(f"adapters {self.merged} are merged into this layer; unmerge() before disabling them")
        return self.adapted_forward(x, *args, **kwargs)

    def adapted_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    # -- merging --------------------------------------------------------------------------
    def merge(self, names: list[str] | None = None) -> None:
        if not self.mergeable:
            raise ConfigError(f"{self.method_name} adapters cannot be merged into the base weights")
        for name in names or list(self.active):
            if name in self.merged:
                continue
            with torch.no_grad():
                self.merge_adapter(name)
            self.merged.append(name)

    def unmerge(self, names: list[str] | None = None) -> None:
        for name in reversed(names or list(self.merged)):
            if name not in self.merged:
                continue
            with torch.no_grad():
                self.unmerge_adapter(name)
            self.merged.remove(name)

    def merge_adapter(self, name: str) -> None:
        raise NotImplementedError

    def unmerge_adapter(self, name: str) -> None:
        raise NotImplementedError

    def drop_adapter(self, name: str) -> None:
        """Forget an adapter's tensors (after a merge, or on delete)."""
        for mod in self.children():
            if isinstance(mod, (nn.ModuleDict, nn.ParameterDict)) and name in mod:
                del mod[name]
        for lst in (self.adapters, self.active, self.merged):
            if name in lst:
                lst.remove(name)

    def extra_repr(self) -> str:
        return f"method={self.method_name}, adapters={self.adapters}, active={self.active}, merged={self.merged}"


# ---------------------------------------------------------------------------------------------
# the wrapper registry: (family, layer type) -> wrapper

WrapperFactory = Callable[[nn.Module], PeftLayer]
W = TypeVar("W", bound=WrapperFactory)


@dataclass(frozen=True)
class WrapperEntry:
    factory: WrapperFactory  # base module -> its (empty) wrapper; usually the PeftLayer subclass
    slices: bool  # the wrapper can adapt q/k/v slices of a fused projection of this type


# family -> {layer type: entry}, in registration order (the order error messages list them)
WRAPPERS: dict[str, dict[type[nn.Module], WrapperEntry]] = {}


def register_wrapper(
    family: str, *layer_types: type[nn.Module], slices: bool = False, replace: bool = False
) -> Callable[[W], W]:
    """Register ``factory`` as the wrapper ``family``'s methods put around ``layer_types``.

    Use as ``register_wrapper("lora", MyLinear)(LoraLayer)`` or as a class decorator. The
    entry also covers subclasses of each type unless they have their own entry.

    Args:
        family: the method family (``method.family``: ``lora`` for LoRA and DoRA, ``ssf``...).
        *layer_types: module classes the wrapper handles.
        slices: whether it supports per-slice targets (``qkv[q,v]``) on these types.
        replace: allow overriding an existing entry with a different wrapper.

    Returns:
        A decorator that registers its argument and returns it unchanged.
    """
    if not layer_types:
        raise TypeError("register_wrapper needs at least one layer type")
    bad = [t for t in layer_types if not (isinstance(t, type) and issubclass(t, nn.Module))]
    if bad:
        raise TypeError(f"register_wrapper: layer types must be nn.Module subclasses, got {bad}")

    def decorate(factory: W) -> W:
        table = WRAPPERS.setdefault(family, {})
        for t in layer_types:
            old = table.get(t)
            if old is not None and old.factory is not factory and not replace:
                raise ValueError(
                    f"{family} already has a wrapper for {t.__name__} ({getattr(old.factory, '__name__', old.factory)}); "
                    "pass replace=True to override it"
                )
        for t in layer_types:
            table[t] = WrapperEntry(factory, slices)
        return factory

    return decorate


def method_family(method: PeftMethod | str) -> str:
    if isinstance(method, str):
        return method
    return method.family


def registered_types(method: PeftMethod | str) -> tuple[type[nn.Module], ...]:
    """The layer types a method (or family) has wrappers for, in registration order."""
    return tuple(WRAPPERS.get(method_family(method), {}))


def _entry(family: str, module: nn.Module) -> WrapperEntry | None:
    """The most specific entry for the (innermost) base type of ``module``."""
    table = WRAPPERS.get(family, {})
    for t in type(base_of(module)).__mro__:
        if t in table:
            return table[t]
    return None


def wrapper_for(method: PeftMethod | str, module: nn.Module) -> WrapperFactory:
    """The registered wrapper for ``module`` (seen through any PEFT wrappers) in ``method``'s family.

    Raises:
        ConfigError: when the family has no wrapper for the module's type or any of its bases.
    """
    family = method_family(method)
    entry = _entry(family, module)
    if entry is None:
        kind = type(base_of(module)).__name__
        raise ConfigError(
            f"{family} has no wrapper for {kind}; wrappers are registered for "
            f"{_layer_type_names(registered_types(family)) or 'no layer type'}. Register one with "
            f"sciadapt.peft.core.register_wrapper({family!r}, {kind})(<PeftLayer subclass>)"
        )
    return entry.factory


# ---------------------------------------------------------------------------------------------
# targeting


def logical_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Module names as the user knows them: ``.base_layer`` segments of wrappers removed.

    A wrapped module keeps its name (``fc1``, not ``fc1.base_layer``), and modules inside a
    wrapped block stay addressable by their original path; for nested wrappers the outermost
    one stands for the name.
    """
    out: dict[str, nn.Module] = {}
    for n, m in model.named_modules():
        if not n:
            continue
        logical = n.replace(".base_layer", "")
        out.setdefault(logical, m)
    return out


def real_name(model: nn.Module, logical: str) -> str:
    for n, _ in model.named_modules():
        if n.replace(".base_layer", "") == logical:
            return str(n)
    raise KeyError(logical)


@dataclass
class Target:
    name: str  # module path relative to the model given to attach()
    module: nn.Module
    slices: tuple[str, ...] | None = None  # fused-qkv slices, e.g. ("q", "v")


def base_of(module: nn.Module) -> nn.Module:
    """The real layer under any number of PEFT wrappers."""
    while isinstance(module, PeftLayer):
        module = module.base_layer
    return module


def _layer_type_names(types: tuple[type[nn.Module], ...]) -> str:
    return ", ".join(t.__name__ for t in types)


def find_targets(
    model: nn.Module,
    method: PeftMethod,
    targets: list[str] | None,
    layer_types: list[str] | None = None,
    where: str = "peft.targets",
    predicate: Callable[[str, nn.Module], bool] | None = None,
) -> list[Target]:
    """Module names matching ``targets`` (globs, ``re:<regex>``, ``path[q,v]`` slices).

    With ``targets=None`` the backbone's ``default_peft_targets`` are used (under ``backbone.``
    when the model is a task). Heads are never adapted unless a pattern names them. Every
    pattern must match at least one module the method supports.
    """
    head_prefix = "head"
    defaults = targets is None
    if targets is None and predicate is not None:
        targets = ["*"]
    elif targets is None:
        bb = getattr(model, "backbone", None)
        if bb is not None and getattr(bb, "default_peft_targets", None):
            targets = [f"backbone.{p}" for p in bb.default_peft_targets]
        elif getattr(model, "default_peft_targets", None):
            targets = list(model.default_peft_targets)  # type: ignore[arg-type]
        else:
            raise ConfigError(f"{where}: this model declares no default_peft_targets; list the modules to adapt")
    family = method_family(method)
    registered = registered_types(family)
    if not registered:
        raise ConfigError(
            f"{where}: {method.name} has no registered wrappers (family {family!r}); register one per layer type "
            f"with sciadapt.peft.core.register_wrapper({family!r}, <layer type>)(<PeftLayer subclass>)"
        )
    allowed = registered
    if layer_types:
        by_name = {t.__name__.lower(): t for t in registered}
        unknown = [t for t in layer_types if t.lower() not in by_name]
        if unknown:
            raise ConfigError(
                f"{where.rsplit('.', 1)[0]}.layer_types: {method.name} cannot adapt {unknown}; "
                f"it supports {_layer_type_names(registered)}"
            )
        allowed = tuple(by_name[t.lower()] for t in layer_types)
    modules = logical_modules(model)
    if predicate is not None:
        # Python API: a predicate over (name, base module) narrows the patterns (all modules
        # when no pattern is given; the head still only when named)
        modules = {n: m for n, m in modules.items() if predicate(n, base_of(m))}
        if not modules:
            raise ConfigError(f"{where}: the target predicate selects no module")
    found: dict[str, Target] = {}
    problems = []
    for pat in targets:
        slices: tuple[str, ...] | None = None
        sm = SLICE_RE.match(pat)
        if sm:
            pat = sm.group("path")
            slices = tuple(s.strip() for s in sm.group("slices").split(","))
            bad = [s for s in slices if s not in QKV]
            if bad:
                problems.append(f"{where}: slice(s) {bad} in {pat}[...] are not q, k or v")
                continue
        if pat.startswith("re:"):
            rx = re.compile(pat[3:])
            names = [n for n in modules if rx.fullmatch(n)]
        else:
            names = [n for n in modules if fnmatch.fnmatchcase(n, pat)]
        if defaults or not pat.startswith(head_prefix):
            names = [n for n in names if not (n == head_prefix or n.startswith(head_prefix + "."))]
        if not names:
            near = suggest(pat, list(modules), n=3)
            problems.append(
                f"{where}: pattern {pat!r} matches no module.{near} "
                f"Module names look like {', '.join(list(modules)[:4])}"
            )
            continue
        if method.whole_modules:
            # `blocks.*` means the blocks, not every module inside them (fnmatch's * crosses dots)
            names = [n for n in names if not any(n.startswith(m + ".") for m in names)]
        usable = [n for n in names if isinstance(base_of(modules[n]), allowed)]
        if not usable:
            kinds = sorted({type(base_of(modules[n])).__name__ for n in names})
            shown = ", ".join(f"{n} ({type(base_of(modules[n])).__name__})" for n in names[:4])
            limit = (
                f"layer_types limits {method.name} to {_layer_type_names(allowed)}"
                if layer_types
                else f"{method.name} has wrappers registered only for {_layer_type_names(allowed)}"
            )
            problems.append(
                f"{where}: pattern {pat!r} matches {len(names)} module(s), {shown}{' ...' if len(names) > 4 else ''}, "
                f"but {limit}: point it at those layers (e.g. {pat}.*), pick a method that supports {kinds[0]}, "
                f"or register a wrapper with sciadapt.peft.core.register_wrapper({family!r}, {kinds[0]})"
            )
            continue
        for n in usable:
            if slices is not None:
                problem = _slice_problem(family, method.name, n, modules[n], slices)
                if problem:
                    problems.append(f"{where}: {problem}")
                    continue
            found[n] = Target(n, modules[n], slices)
    if problems:
        raise ConfigError(problems)
    order = {n: i for i, n in enumerate(modules)}
    return sorted(found.values(), key=lambda t: order[t.name])


def _slice_problem(family: str, method: str, name: str, module: nn.Module, slices: tuple[str, ...]) -> str | None:
    """Why ``name[slices]`` cannot be adapted, or None: the wrapper must support slices on this
    type, and the weight's rows must split into three equal q, k, v parts."""
    base = base_of(module)
    entry = _entry(family, module)
    if entry is None or not entry.slices:
        sliceable = [t.__name__ for t, e in WRAPPERS.get(family, {}).items() if e.slices]
        where = f" (it supports slices of {', '.join(sliceable)})" if sliceable else ""
        return (
            f"{name}: {method} adapts whole layers of type {type(base).__name__}{where}; "
            f"drop the [{','.join(slices)}] slice"
        )
    w = getattr(base, "weight", None)
    rows = w.shape[0] if isinstance(w, torch.Tensor) and w.dim() == 2 else None
    if rows is None or rows % 3:
        return (
            f"{name} is not a fused qkv projection: per-slice targets need a 2-D weight whose rows "
            f"(out_features={rows}) split into equal q, k and v parts (a fused qkv Linear)"
        )
    return None


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def attach(
    model: nn.Module,
    method: PeftMethod,
    adapter: str = "default",
    targets: list[str] | None = None,
    layer_types: list[str] | None = None,
    where: str = "peft",
    predicate: Callable[[str, nn.Module], bool] | None = None,
) -> list[str]:
    """Add adapter ``adapter`` of ``method`` to every targeted module; returns the module names.

    Everything is checked before the model is touched, so a bad target leaves it unchanged.
    """
    found = find_targets(model, method, targets, layer_types, where=f"{where}.targets", predicate=predicate)
    method.check_targets(model, found, adapter)
    family = method_family(method)
    for t in found:
        if isinstance(t.module, PeftLayer) and adapter in t.module.adapters:
            raise ConfigError(f"{where}.adapter_name: {t.name} already has an adapter {adapter!r}")
    names: list[str] = []
    wrapped: list[tuple[str, nn.Module]] = []  # (real name, original module) to roll back
    extended: list[PeftLayer] = []
    try:
        for t in found:
            layer = t.module
            if not (isinstance(layer, PeftLayer) and layer.method_name == family):
                real = real_name(model, t.name)
                layer = wrapper_for(family, layer)(layer)
                if not (isinstance(layer, PeftLayer) and layer.method_name == family):
                    # a second adapter of the family must find this wrapper and extend it
                    raise TypeError(
                        f"the wrapper registered for {family} on {type(t.module).__name__} built a "
                        f"{type(layer).__name__}; it must be a PeftLayer with method_name = {family!r}"
                    )
                _set_module(model, real, layer)
                wrapped.append((real, t.module))
            else:
                extended.append(layer)
            method.add(layer, adapter, t.name, t.slices)
            names.append(t.name)
    except Exception:
        # all or nothing: a layer the method rejects leaves the model as it was
        for layer in extended:
            if adapter in layer.adapters:
                layer.drop_adapter(adapter)
        for real, original in reversed(wrapped):
            _set_module(model, real, original)
        raise
    info: dict[str, Any] = {"method": method.name, "config": method.config(), "targets": names}
    sliced = {t.name: list(t.slices) for t in found if t.slices is not None}
    if sliced:
        info["slices"] = sliced  # module name -> ["q", "v"]: what save/load needs to rebuild it
    _methods(model)[adapter] = info
    return names


def _methods(model: nn.Module) -> dict[str, Any]:
    """The model's adapter records, kept in its ``__dict__`` (not a submodule, buffer or parameter)."""
    records: dict[str, Any] = model.__dict__.setdefault("_sciadapt_adapters", {})
    return records


def peft_layers(model: nn.Module) -> dict[str, PeftLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, PeftLayer)}


def adapters(model: nn.Module) -> dict[str, Any]:
    """Adapter name -> {method, config, targets} of every adapter attached to ``model``."""
    return dict(_methods(model))


def _layers_of(model: nn.Module, adapter: str | None) -> list[PeftLayer]:
    layers = [m for m in peft_layers(model).values() if adapter is None or adapter in m.adapters]
    if adapter is not None and not layers:
        raise ConfigError(f"no adapter named {adapter!r}.{suggest(adapter, list(_methods(model)))}")
    return layers


def merge(model: nn.Module, adapter: str | None = None) -> None:
    """Fold active adapters (or one) into the base weights; outputs are unchanged.

    Innermost wrappers merge first: folding an outer method into weights that an inner,
    unmerged method still transforms would change the output.
    """
    for layer in reversed(_layers_of(model, adapter)):
        layer.merge([adapter] if adapter else None)


def unmerge(model: nn.Module, adapter: str | None = None) -> None:
    for layer in _layers_of(model, adapter):
        layer.unmerge([adapter] if adapter else None)


def merge_and_drop(model: nn.Module, adapter: str) -> None:
    """Merge one adapter for good: its tensors are removed and unwrapped layers restored."""
    for name, layer in reversed(list(peft_layers(model).items())):
        if adapter not in layer.adapters:
            continue
        layer.merge([adapter])
        layer.drop_adapter(adapter)
        if not layer.adapters:
            _set_module(model, name, layer.base_layer)
    _methods(model).pop(adapter, None)


def remove_adapter(model: nn.Module, adapter: str) -> None:
    """Take an unmerged adapter off the model: its tensors are dropped and layers left without
    adapters are unwrapped, so the model is again the base it was loaded onto (the inverse of
    :func:`attach` / ``load_adapter``; base tensors an adapter file overwrote, such as BatchNorm
    statistics, are the caller's to restore).

    Raises:
        ConfigError: No adapter of that name, or it is merged into the base weights.
    """
    layers = _layers_of(model, adapter)
    if any(adapter in layer.merged for layer in layers):
        raise ConfigError(f"adapter {adapter!r} is merged; unmerge(model, {adapter!r}) before removing it")
    for name, layer in reversed(list(peft_layers(model).items())):
        if adapter not in layer.adapters:
            continue
        layer.drop_adapter(adapter)
        if not layer.adapters:
            _set_module(model, name, layer.base_layer)
    _methods(model).pop(adapter, None)


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every adapter into the base weights and remove all wrappers (Hugging Face PEFT's
    ``merge_and_unload``): the model is again the plain base architecture, at its speed."""
    for name in list(_methods(model)):
        merge_and_drop(model, name)
    return model


def set_active(model: nn.Module, names: list[str]) -> None:
    """Switch which adapters apply (merged adapters must be unmerged first)."""
    known = set(_methods(model))
    for n in names:
        if n not in known:
            raise ConfigError(f"no adapter named {n!r}.{suggest(n, known)}")
    for layer in peft_layers(model).values():
        if set(layer.merged) - set(names):
            raise ConfigError(f"adapters {layer.merged} are merged; unmerge them before switching")
        layer.active = [a for a in layer.adapters if a in names]


def enable(model: nn.Module, on: bool = True) -> None:
    for layer in peft_layers(model).values():
        layer.disabled = not on


def adapter_param_names(model: nn.Module, adapter: str) -> list[str]:
    """Names (in ``model.named_parameters()``) of the tensors owned by one adapter."""
    out = []
    for lname, layer in peft_layers(model).items():
        for pname, _ in layer.named_parameters(recurse=True):
            if pname.startswith("base_layer."):
                continue  # the base module's own tensors, or an inner wrapper's adapters
            parts = pname.split(".")
            # every method keys its per-adapter tensors as <attribute>.<adapter>[...]
            if len(parts) > 1 and parts[1] == adapter:
                out.append(f"{lname}.{pname}")
    return out


def mark_trainable(model: nn.Module, adapter: str, also: list[str] | None = None) -> tuple[int, int]:
    """Train only one adapter's tensors (plus parameters matching ``also``); (trainable, total)."""
    own = set(adapter_param_names(model, adapter))
    n_train = n_total = 0
    for name, p in model.named_parameters():
        on = name in own or any(fnmatch.fnmatchcase(name, a) or name.startswith(a + ".") for a in also or [])
        # a method may pin some of its own tensors (LoRA-FA's A): they stay frozen
        on = on and not getattr(p, "_sciadapt_frozen", False)
        p.requires_grad_(on)
        n_total += p.numel()
        n_train += p.numel() if on else 0
    return n_train, n_total


def trainable_report(model: nn.Module) -> dict[str, Any]:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": train, "total": total, "percent": 100.0 * train / max(total, 1)}


# io imports this module, so the re-export sits below everything io needs from here; the
# package __init__ imports core before io, so this import always finds core complete
from sciadapt.peft.io import adapter_state_dict, fingerprint, load_adapter, save_adapter  # noqa: E402, F401
