"""Name -> builder registries. A builder's signature *is* the config schema.

The built-in components are found by :mod:`sciadapt.index`, which reads the ``register`` lines and the
builders' signatures from the source files: listing the components or checking a config imports no
component module (nor torch). :meth:`Registry.get` imports the one module that registers a name, when
its builder is called; a builder registered from Python (a test's, a plugin package's) is used as is.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from sciadapt import index
from sciadapt.errors import ConfigError, UnknownComponentError
from sciadapt.index import BuilderInfo, NotStatic

T = TypeVar("T")


def suggest(name: str, choices: list[str] | tuple[str, ...] | Any, n: int = 3) -> str:
    """A " did you mean ...?" suffix, or "" when nothing is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " did you mean " + " or ".join(repr(c) for c in close) + "?"


class Registry(Generic[T]):
    """A named collection of builders: ``@REG.register("name")`` then ``REG.build("name", **cfg)``.

    Args:
        kind: What an entry is, in messages (``"backbone"``).
        key: The config key of its entries, in messages (``"backbone"``).
        variable: Its name in this module, under which :mod:`sciadapt.index` finds the register lines
            of the built-in components (None: only what is registered from Python).
    """

    def __init__(self, kind: str, key: str, variable: str | None = None) -> None:
        self.kind = kind
        self.key = key
        self.variable = variable
        self._items: dict[str, Callable[..., T]] = {}
        self._infos: dict[str, BuilderInfo] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._items and self._items[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = fn
            self._infos.pop(name, None)  # the object is read from now on
            return fn

        return deco

    def _indexed(self) -> dict[str, index.Entry]:
        found = index.index()
        for module in found.dynamic:  # register lines the index cannot read: they run on import
            importlib.import_module(module)
        return found.entries.get(self.variable, {}) if self.variable else {}

    def _unknown(self, name: str) -> UnknownComponentError:
        names = self.list()
        return UnknownComponentError(
            f"unknown {self.kind} {name!r}.{suggest(name, names)} Available: {', '.join(names)}"
        )

    def get(self, name: str) -> Callable[..., T]:
        """The builder of ``name``, importing the module that registers it."""
        if name not in self._items:
            entry = self._indexed().get(name)
            if entry is None:
                raise self._unknown(name)
            importlib.import_module(entry.module)
            if name not in self._items:
                raise RuntimeError(f"{entry.module} has a register line for {self.kind} {name!r} that did not run")
        return self._items[name]

    def describe(self, name: str) -> BuilderInfo:
        """The signature and docstrings of ``name``'s builder, read from its source when the index
        can (no import), else from the imported builder."""
        if name in self._items:
            return index.describe_object(self._items[name])
        if name not in self._infos:
            entry = self._indexed().get(name)
            if entry is None:
                raise self._unknown(name)
            try:
                self._infos[name] = index.describe(entry, lambda: index.describe_object(self.get(name)))
            except NotStatic:
                return index.describe_object(self.get(name))
        return self._infos[name]

    def list(self) -> list[str]:
        return sorted({*self._indexed(), *self._items})

    def signature(self, name: str) -> inspect.Signature:
        """The signature of ``name``'s builder (read as :meth:`describe` reads it)."""
        return self.describe(name).signature

    def build(self, name: str, **kwargs: Any) -> T:
        """Build ``name`` from Python, its arguments checked against the signature (``Literal``
        choices, ``Ge``-style bounds) as a config's would be."""
        from sciadapt.config import argument_problems, checks_own_arguments  # config imports this module

        fn = self.get(name)
        # a class that checks its own arguments lists them with its cross-field problems in one error
        problems = [] if checks_own_arguments(fn) else argument_problems(fn, kwargs, self.key)
        if problems:
            raise ConfigError(problems)
        return fn(**kwargs)

    def __contains__(self, name: str) -> bool:
        return name in self._items or name in self._indexed()


BACKBONES: Registry[Any] = Registry("backbone", "backbone", "BACKBONES")
HEADS: Registry[Any] = Registry("head", "head", "HEADS")
PEFT_METHODS: Registry[Any] = Registry("peft method", "peft", "PEFT_METHODS")
TASKS: Registry[Any] = Registry("task", "task", "TASKS")
DATAMODULES: Registry[Any] = Registry("datamodule", "data", "DATAMODULES")

KINDS: dict[str, Registry[Any]] = {
    "backbones": BACKBONES,
    "heads": HEADS,
    "peft": PEFT_METHODS,
    "tasks": TASKS,
    "datamodules": DATAMODULES,
}


def load_package(package: str, path: Iterable[str]) -> None:
    """Import every public module of a package, so that its ``register`` lines run with no name
    list to edit: for a package of components outside :data:`sciadapt.index.PACKAGES` (a plugin's
    ``__init__`` calls ``load_package(__name__, __path__)``); the built-in packages are indexed and
    import a module when one of its builders is called. ``_private`` helpers are left to the
    modules that use them."""
    for info in sorted(pkgutil.iter_modules(list(path)), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
