"""The bounds of a builder's signature, checked on a direct Python call.

A config goes through :mod:`sciadapt.config`, which checks every ``Annotated[int, Ge(n)]`` bound of
a builder's signature before the builder runs. A builder called from Python (a notebook, a test,
``BACKBONES.build``) skips that layer, so the builders of this package read the same markers here
and report a broken bound together with their other problems, in one :class:`ConfigError`. The
signature stays the only place a bound is written.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from sciadapt.spec import Ge, Gt, Le


def _unwrap(tp: Any) -> tuple[Any, list[Ge | Gt | Le], bool]:
    """``(base type, bounds, nullable)`` of a hint such as ``Annotated[Annotated[int, Ge(1)] | None, FromData]``."""
    bounds: list[Ge | Gt | Le] = []
    nullable = False
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp, *meta = typing.get_args(tp)
            bounds += [m for m in meta if isinstance(m, Ge | Gt | Le)]
        elif origin in (typing.Union, types.UnionType):
            args = typing.get_args(tp)
            rest = [a for a in args if a is not type(None)]
            if len(rest) != 1:
                return tp, bounds, nullable
            nullable = nullable or len(rest) < len(args)
            tp = rest[0]
        else:
            return tp, bounds, nullable


def bound_problems(fn: Callable[..., Any], values: Mapping[str, Any], prefix: str) -> list[str]:
    """The values that break a ``Ge``/``Gt``/``Le`` bound of ``fn``'s signature, one message each.

    Args:
        fn: The builder (or ``__init__``) whose annotations hold the bounds.
        values: Parameter name -> the value it was called with.
        prefix: Start of each message's key path (``backbone``, ``prithvi_tiny``).

    Returns:
        Messages like ``"backbone.n_input: expected an int >= 1, got 0"``; empty when all hold.
    """
    hints = typing.get_type_hints(fn, include_extras=True)
    problems = []
    for key, value in values.items():
        base, bounds, nullable = _unwrap(hints[key])
        if not bounds or (value is None and nullable):
            continue
        if base is int:
            kind, ok = "an int", isinstance(value, int) and not isinstance(value, bool)
        else:
            kind, ok = "a number", isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not all(b.check(value) for b in bounds):
            wanted = " and ".join(b.describe() for b in bounds)
            problems.append(f"{prefix}.{key}: expected {kind} {wanted}, got {value!r}")
    return problems
