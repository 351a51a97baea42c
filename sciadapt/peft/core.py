"""The PEFT core: targeting, the wrapper registry, merge/unmerge, named adapters, save/load, fingerprints.

Every method is a wrapper around one base module (``PeftLayer``) that keeps the original module
as ``base_layer`` and each adapter's tensors under a ``ModuleDict``/``ParameterDict`` keyed by
the adapter name — the layout Hugging Face PEFT uses, so for LoRA and DoRA the state-dict keys
are PEFT's and an adapter directory is loadable by ``peft``. A second adapter of the same method
on a layer is added to the same wrapper; a different method wraps the wrapper.

A method is an object with ``name``, ``family`` (the wrapper family it shares, e.g. LoRA and
DoRA are both ``lora``), ``add(layer, adapter, module_name, slices)`` and ``config()``;
:data:`sciadapt.registry.PEFT_METHODS` maps names to builders whose signatures are the config
schema.

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
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from sciadapt.errors import CheckpointError, ConfigError
from sciadapt.registry import PEFT_METHODS, suggest

HF_PREFIX = "base_model.model."
SLICE_RE = re.compile(r"^(?P<path>[^\[\]]+)\[(?P<slices>[a-z,\s]+)\]$")
QKV = ("q", "k", "v")


class PeftMethod(Protocol):
    name: str
    family: str  # the wrapper family (registry key); methods sharing one share a wrapper class

    def add(self, layer: PeftLayer, adapter: str, module_name: str, slices: tuple[str, ...] | None) -> None: ...

    def config(self) -> dict[str, Any]: ...


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
    return getattr(method, "family", method.name)


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
            return n
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
        if getattr(method, "whole_modules", False):
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
    if hasattr(method, "check_targets"):
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
    if not hasattr(model, "_sciadapt_adapters"):
        object.__setattr__(model, "_sciadapt_adapters", {})
    return model.__dict__["_sciadapt_adapters"]  # type: ignore[no-any-return]


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


# ---------------------------------------------------------------------------------------------
# fingerprints, save and load


def fingerprint(model: nn.Module, targets: list[str]) -> dict[str, Any]:
    """Names, shapes and a checksum of the targeted base weights an adapter was trained on."""
    tensors: dict[str, list[int]] = {}
    digest = hashlib.sha256()
    for name in sorted(targets):
        for pname, p in _base_params(logical_modules(model)[name]):
            key = f"{name}.{pname}"
            tensors[key] = list(p.shape)
            digest.update(key.encode())
            digest.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return {"tensors": tensors, "sha256": digest.hexdigest()}


def _base_params(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The base tensors under a (possibly wrapped) module, named without ``.base_layer``,
    excluding every adapter's own tensors — what an adapter's fingerprint covers."""
    adapter_owned: set[int] = set()
    for m in module.modules():
        if isinstance(m, PeftLayer):
            for pname, p in m.named_parameters():
                if not pname.startswith("base_layer."):
                    adapter_owned.add(id(p))
    out = []
    for pname, p in module.named_parameters():
        if id(p) not in adapter_owned:
            out.append((pname.replace("base_layer.", ""), p))
    return sorted(out, key=lambda kv: kv[0])


def _summaries(model: nn.Module, targets: list[str]) -> dict[str, list[float]]:
    """Per-tensor summaries (mean, std, max |w|, 16 strided values) for a tolerant comparison.

    A merge/unmerge round trip changes the last bits of the base weights; the exact checksum
    then differs although the base is the same, so values are compared with a tolerance.
    """
    out = {}
    for name in sorted(targets):
        for pname, p in _base_params(logical_modules(model)[name]):
            w = p.detach().to("cpu", torch.float64).flatten()
            idx = torch.linspace(0, w.numel() - 1, min(16, w.numel())).long()
            stats = [w.mean().item(), w.std().item() if w.numel() > 1 else 0.0, w.abs().max().item()]
            out[f"{name}.{pname}"] = stats + w[idx].tolist()
    return out


def _same(a: list[float], b: list[float], tol: float = 1e-4) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol * (1 + abs(y)) for x, y in zip(a, b, strict=True))


def _hf_key(model_key: str, adapter: str) -> str:
    """``fc1.lora_A.default.weight`` -> ``base_model.model.fc1.lora_A.weight`` (PEFT's on-disk key)."""
    parts = model_key.split(".")
    idx = len(parts) - 1 - parts[::-1].index(adapter)
    del parts[idx]
    key = ".".join(parts)
    if key.endswith("lora_magnitude_vector.weight"):
        key = key[: -len(".weight")]  # PEFT stores the DoRA magnitude without ".weight"
    return HF_PREFIX + key


def adapter_state_dict(model: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """One adapter's tensors under PEFT's on-disk keys, plus BatchNorm statistics if they train."""
    params = dict(model.named_parameters())
    sd = {_hf_key(n, adapter): params[n].detach().cpu().contiguous() for n in adapter_param_names(model, adapter)}
    # BatchNorm layers that train, or that an adapter of this name wraps, keep running statistics
    # the adapter depends on
    wrapped_bn = {
        f"{n}.base_layer"
        for n, m in peft_layers(model).items()
        if adapter in m.adapters and isinstance(m.base_layer, nn.modules.batchnorm._BatchNorm)
    }
    for mname, mod in model.named_modules():
        if not isinstance(mod, nn.modules.batchnorm._BatchNorm):
            continue
        if mname in wrapped_bn:
            for bname, buf in mod.named_buffers(recurse=False):
                if buf is not None:
                    sd[f"{HF_PREFIX}{mname}.{bname}"] = buf.detach().cpu().contiguous()
            continue
        if mod.weight is not None and mod.weight.requires_grad:
            for bname, buf in mod.named_buffers(recurse=False):
                if buf is not None:
                    sd[f"{HF_PREFIX}{mname}.{bname}"] = buf.detach().cpu().contiguous()
            for pname, p in mod.named_parameters(recurse=False):
                sd[f"{HF_PREFIX}{mname}.{pname}"] = p.detach().cpu().contiguous()
    return sd


def save_adapter(model: nn.Module, directory: str | Path, adapter: str = "default") -> Path:
    """``adapter_config.json`` + ``adapter_model.safetensors``, written atomically."""
    from safetensors.torch import save

    from sciadapt.runs import atomic_write_bytes, atomic_write_text

    info = _methods(model).get(adapter)
    if info is None:
        raise ConfigError(f"no adapter named {adapter!r} to save.{suggest(adapter, list(_methods(model)))}")
    if any(adapter in layer.merged for layer in peft_layers(model).values()):
        # the fingerprint would describe the merged weights, not the base the adapter belongs on
        raise ConfigError(f"adapter {adapter!r} is merged; unmerge(model, {adapter!r}) before saving it")
    method = PEFT_METHODS.build(info["method"], **info["config"])
    slices = info.get("slices")
    # PEFT has no per-slice targets: a sliced adapter is sciadapt-only (peft_type null below)
    hf = method.hf_config(info["targets"]) if hasattr(method, "hf_config") and not slices else None
    ours = {
        "method": info["method"],
        "config": info["config"],
        "targets": info["targets"],
        "fingerprint": fingerprint(model, info["targets"]),
        "summaries": _summaries(model, info["targets"]),
    }
    if slices:
        ours["slices"] = slices
    # PEFT's own adapter_config.json where PEFT has the method (so `peft` loads it without
    # warnings); sciadapt's description rides in the safetensors header, which PEFT ignores.
    cfg = hf if hf is not None else {"peft_type": None, "sciadapt_method": info["method"], **info["config"]}
    if slices:
        cfg["sciadapt_slices"] = slices
    d = Path(directory)
    blob = save(adapter_state_dict(model, adapter), metadata={"sciadapt": json.dumps(ours)})
    atomic_write_bytes(d / "adapter_model.safetensors", blob)
    atomic_write_text(d / "adapter_config.json", json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return d


def _read_meta(path: Path) -> dict[str, Any] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise CheckpointError(f"cannot read {path}: {e}. Is the file complete?") from None
    return json.loads(meta["sciadapt"]) if "sciadapt" in meta else None


def load_adapter(
    model: nn.Module, directory: str | Path, adapter: str = "default", check_base: bool = True
) -> list[str]:
    """Attach and fill an adapter saved by sciadapt or by Hugging Face PEFT (LoRA / DoRA)."""
    from safetensors.torch import load_file

    d = Path(directory)
    cfg_path, weights_path = d / "adapter_config.json", d / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights_path.is_file():
        raise CheckpointError(
            f"{d} is not an adapter directory (needs adapter_config.json + adapter_model.safetensors)"
        )
    cfg = json.loads(cfg_path.read_text())
    ours = _read_meta(weights_path)
    patterns: list[str]
    if ours:
        method = PEFT_METHODS.build(ours["method"], **ours["config"])
        targets = ours["targets"]
        slices = ours.get("slices", {})
        patterns = [f"{t}[{','.join(slices[t])}]" if t in slices else t for t in targets]
    else:
        from sciadapt.peft.lora import from_hf_config

        method, targets = from_hf_config(cfg, model)
        patterns = targets
    if check_base and ours and "fingerprint" in ours:
        _check_fingerprint(model, targets, ours, d)
    attach(model, method, adapter, targets=patterns, where=f"adapter {d}")
    state = load_file(str(weights_path))
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    own = {_hf_key(n, adapter): n for n in adapter_param_names(model, adapter)}
    missing = [k for k in own if k not in state]
    extra = [
        k
        for k in state
        if k not in own and k.removeprefix(HF_PREFIX) not in params and k.removeprefix(HF_PREFIX) not in buffers
    ]
    if missing or extra:
        raise CheckpointError(
            f"adapter {d} does not fit this model: missing {missing[:4]}{' ...' if len(missing) > 4 else ''}, "
            f"unexpected {extra[:4]}{' ...' if len(extra) > 4 else ''}. Was it trained on another backbone?"
        )
    with torch.no_grad():
        for key, tensor in state.items():
            name = own.get(key) or key.removeprefix(HF_PREFIX)
            target: torch.Tensor | None = params.get(name)
            if target is None:
                target = buffers[name]
            if tuple(target.shape) != tuple(tensor.shape):
                raise CheckpointError(
                    f"adapter {d}: {key} has shape {tuple(tensor.shape)} but the model expects {tuple(target.shape)}"
                )
            target.copy_(tensor)
    return targets


def _check_fingerprint(model: nn.Module, targets: list[str], ours: dict[str, Any], d: Path) -> None:
    try:
        now = fingerprint(model, targets)
    except KeyError as e:
        raise CheckpointError(f"adapter {d} targets modules this model does not have: {e}") from None
    want = ours["fingerprint"]
    if now["sha256"] == want["sha256"]:
        return
    shapes = [
        f"{k}: saved {tuple(v)} vs model {tuple(now['tensors'].get(k, []))}"
        for k, v in want["tensors"].items()
        if now["tensors"].get(k) != v
    ]
    summ = _summaries(model, targets)
    values = [k for k, v in ours.get("summaries", {}).items() if k in summ and not _same(summ[k], v)]
    if not shapes and not values:
        return  # the same base up to rounding (e.g. after a merge/unmerge round trip)
    detail = "; ".join(shapes[:4]) if shapes else f"different values in {', '.join(values[:6])}"
    raise CheckpointError(
        f"adapter {d} was trained on a different base model ({detail}). Load the base weights it was "
        "trained on first, or pass check_base=False if you really mean to transfer it"
    )
