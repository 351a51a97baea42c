"""Name -> builder registries. A builder's signature *is* the config schema."""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from sciadapt.errors import ConfigError, UnknownComponentError

T = TypeVar("T")


def suggest(name: str, choices: list[str] | tuple[str, ...] | Any, n: int = 3) -> str:
    """A " did you mean ...?" suffix, or "" when nothing is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " did you mean " + " or ".join(repr(c) for c in close) + "?"


class Registry(Generic[T]):
    """A named collection of builders: ``@REG.register("name")`` then ``REG.build("name", **cfg)``."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key  # the config key of its entries, in messages
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._items and self._items[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        _load_builtin()
        if name not in self._items:
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}.{suggest(name, self._items)} Available: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def list(self) -> list[str]:
        _load_builtin()
        return sorted(self._items)

    def signature(self, name: str) -> inspect.Signature:
        return inspect.signature(self.get(name))

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
        _load_builtin()
        return name in self._items


BACKBONES: Registry[Any] = Registry("backbone", "backbone")
HEADS: Registry[Any] = Registry("head", "head")
PEFT_METHODS: Registry[Any] = Registry("peft method", "peft")
TASKS: Registry[Any] = Registry("task", "task")
DATAMODULES: Registry[Any] = Registry("datamodule", "data")

KINDS: dict[str, Registry[Any]] = {
    "backbones": BACKBONES,
    "heads": HEADS,
    "peft": PEFT_METHODS,
    "tasks": TASKS,
    "datamodules": DATAMODULES,
}

_loaded = False


def _load_builtin() -> None:
    """Import the built-in component modules once so their ``register`` lines run."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import sciadapt.backbones  # noqa: F401
    import sciadapt.datamodules  # noqa: F401
    import sciadapt.heads  # noqa: F401
    import sciadapt.peft  # noqa: F401
    import sciadapt.tasks  # noqa: F401


def load_package(package: str, path: Iterable[str]) -> None:
    """Import every public module of a component package (its ``__init__`` calls this), so that a
    new file's ``register`` lines run with no name list to edit; ``_private`` helpers are left to
    the modules that use them."""
    for info in sorted(pkgutil.iter_modules(list(path)), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
