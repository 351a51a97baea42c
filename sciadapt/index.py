"""The built-in components read from their source files: which module registers which name, and each
builder's signature and docstring, without importing the module (nor torch, Lightning, torchgeo, gluonts).

A builder's signature is the config schema (DESIGN.md), so ``sciadapt validate``, ``list`` and
``schema`` need signatures, not models; importing every component module to read them cost seconds.
The index parses the public modules of the component packages with :mod:`ast` and finds
``@REGISTRY.register("name")`` on a function or class, and ``REGISTRY.register("name")(Class)``
statements. A builder's annotations are evaluated in a namespace holding only what is cheap to import
(``typing``, ``collections.abc``, :mod:`sciadapt.spec`) and the aliases its module defines or imports
from another sciadapt module (``Pooling = Literal["max", "avg"]``); its defaults are literals or such
names. What cannot be read this way (another decorator, an inherited ``__init__``, an annotation
naming a torch type) raises :class:`NotStatic`, and the registry reads that builder by importing its
module, as before: the index makes reading a signature cheap, never different
(``tests/unit/test_fast_cli.py`` compares it with the imported builders).
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import importlib.util
import inspect
import re
import sys
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the packages whose public modules register the built-in components (see load_package)
PACKAGES = ("sciadapt.backbones", "sciadapt.datamodules", "sciadapt.heads", "sciadapt.peft", "sciadapt.tasks")
# modules imported for real when a builder's module names them: cheap, and what annotations are made of
CHEAP_MODULES = frozenset({"typing", "typing_extensions", "collections.abc", "sciadapt.spec"})
# builder parameters the runner passes objects into (a task's backbone and head); never config keys,
# so their annotations (``nn.Module``) are not needed to check a config
INJECTED = frozenset({"backbone", "head"})
# decorators that keep the signature of the ``__init__`` they wrap (functools.wraps)
SIGNATURE_KEEPING = frozenset({"check_arguments"})


class NotStatic(Exception):
    """What the index cannot read from the source: the builder is read by importing its module."""


@dataclass(frozen=True)
class Unresolved:
    """The annotation of an injected parameter that names something not cheap to import."""

    text: str

    def __repr__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Entry:
    """One ``register`` line: ``registry`` is the registry's variable name in sciadapt.registry."""

    registry: str
    name: str
    module: str  # the module whose import runs the register line
    target: str  # the name, in that module, of the function or class registered


@dataclass(frozen=True, eq=False)
class BuilderInfo:
    """What the config layer reads of a registered builder: its signature (``self`` left out, annotations
    evaluated with their ``Annotated`` extras), its own docstrings, and attributes of what it builds."""

    signature: inspect.Signature
    doc: str = ""  # the builder's own docstring (a class: the class's), cleaned
    init_doc: str = ""  # a class's own ``__init__`` docstring
    is_class: bool = False
    attribute: Callable[[str], Any] = field(default=lambda attr: _no_attribute(attr))

    @property
    def hints(self) -> dict[str, Any]:
        """Parameter name -> annotation, for the annotated parameters."""
        return {n: p.annotation for n, p in self.signature.parameters.items() if p.annotation is not p.empty}

    def built_attribute(self, attr: str) -> Any:
        """An attribute of the class the builder builds (a class: itself; a function: the class of its
        return annotation), e.g. a task's ``BASELINES``."""
        return self.attribute(attr)


def _no_attribute(attr: str) -> Any:
    raise AttributeError(attr)


def describe_object(fn: Callable[..., Any]) -> BuilderInfo:
    """The info of a builder object (imported): what :func:`describe` reads from its source."""
    init = vars(fn).get("__init__") if isinstance(fn, type) else None
    hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn, include_extras=True)  # type: ignore[misc]
    sig = inspect.signature(fn)
    params = [p.replace(annotation=hints.get(n, p.empty)) for n, p in sig.parameters.items()]

    def attribute(attr: str) -> Any:
        built = fn if isinstance(fn, type) else typing.get_type_hints(fn)["return"]
        return getattr(built, attr)

    return BuilderInfo(
        signature=sig.replace(parameters=params, return_annotation=inspect.Signature.empty),
        doc=inspect.cleandoc(fn.__doc__ or ""),
        init_doc=inspect.cleandoc(getattr(init, "__doc__", None) or ""),
        is_class=isinstance(fn, type),
        attribute=attribute,
    )


def builder_info(fn: Callable[..., Any] | BuilderInfo) -> BuilderInfo:
    """A builder's info, from the info itself or from the (imported) builder."""
    return fn if isinstance(fn, BuilderInfo) else describe_object(fn)


# ---------------------------------------------------------------------------------------------
# source files


@dataclass
class _Index:
    entries: dict[str, dict[str, Entry]]  # registry variable -> name -> entry
    dynamic: list[str]  # modules whose register lines the index cannot read: imported to list them


_sources: dict[str, _Source | None] = {}
_index: _Index | None = None


def index() -> _Index:
    """Every ``register`` line of the component packages (parsed once per process)."""
    global _index
    if _index is None:
        entries: dict[str, dict[str, Entry]] = {}
        dynamic: list[str] = []
        for module, path in _component_modules():
            text = path.read_text(encoding="utf-8")
            if "register(" not in text:
                continue  # no register line: nothing to parse
            try:
                source = _source(module, path, text)
            except SyntaxError:
                dynamic.append(module)  # its import raises the error, where it is listed
                continue
            found, complete = source.registrations()
            for entry in found:
                entries.setdefault(entry.registry, {}).setdefault(entry.name, entry)
            if not complete:
                dynamic.append(module)
        _index = _Index(entries, dynamic)
    return _index


def _component_modules() -> Iterator[tuple[str, Path]]:
    """(module name, file) of the public modules of the component packages: what importing each
    package's public modules (and their subpackages) runs."""
    for package in PACKAGES:
        for root in _package_dirs(package):
            for path in sorted(root.rglob("*.py")):
                parts = path.relative_to(root).with_suffix("").parts
                if any(p.startswith("_") for p in parts if p != "__init__"):
                    continue  # a _private helper is imported by the modules that use it
                names = parts[:-1] if parts[-1] == "__init__" else parts
                yield ".".join((package, *names)), path


@functools.cache
def _package_dirs(package: str) -> list[Path]:
    spec = importlib.util.find_spec(package)  # imports the parent package, never this one
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def _locate(module: str) -> Path | None:
    """The source file of a sciadapt module, found without importing it (or its package)."""
    roots = {"sciadapt": [Path(p) for p in sys.modules["sciadapt"].__path__]}
    for package in PACKAGES:
        if module == package or module.startswith(package + "."):
            roots[package] = _package_dirs(package)
    prefix = max((r for r in roots if module == r or module.startswith(r + ".")), key=len, default=None)
    if prefix is None:
        return None
    rest = module[len(prefix) :].lstrip(".").split(".") if module != prefix else []
    for root in roots[prefix]:
        base = root.joinpath(*rest)
        for candidate in (base / "__init__.py", base.with_suffix(".py") if rest else None):
            if candidate is not None and candidate.is_file():
                return candidate
    return None


def _source(module: str, path: Path | None = None, text: str | None = None) -> _Source:
    if module not in _sources:
        path = path or _locate(module)
        _sources[module] = None if path is None else _Source(module, path, text or path.read_text(encoding="utf-8"))
    found = _sources[module]
    if found is None:
        raise NotStatic(f"{module} is not a sciadapt module with a source file")
    return found


class _Namespace(Mapping[str, Any]):
    """The names an expression of a module sees (``eval``'s locals); builtins come after these."""

    def __init__(self, source: _Source) -> None:
        self.source = source

    def __getitem__(self, name: str) -> Any:
        if name not in self.source.bindings:
            raise KeyError(name)
        return self.source.value(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.source.bindings)

    def __len__(self) -> int:
        return len(self.source.bindings)


class _StaticModule:
    """A sciadapt module named by an import: its attributes are read from its source."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return _source(self._name).value(attr)


class _Source:
    """One parsed module: its top-level names and what they are bound to."""

    def __init__(self, module: str, path: Path, text: str) -> None:
        self.module = module
        self.path = path
        self.text = text
        self.tree = ast.parse(text, str(path))
        self.package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        self.bindings: dict[str, tuple[str, Any]] = {}
        self._values: dict[str, Any] = {}
        self._busy: set[str] = set()
        for stmt in self.tree.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                self.bindings[stmt.name] = ("def", stmt)
            elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                self.bindings[stmt.targets[0].id] = ("expr", stmt.value)
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                self.bindings[stmt.target.id] = ("expr", stmt.value)
            elif isinstance(stmt, ast.ImportFrom):
                origin = self._absolute(stmt.module, stmt.level)
                for alias in stmt.names:
                    self.bindings[alias.asname or alias.name] = ("from", (origin, alias.name))
            elif isinstance(stmt, ast.Import):
                for alias in stmt.names:
                    if alias.asname:
                        self.bindings[alias.asname] = ("import", alias.name)
                    else:
                        top = alias.name.split(".")[0]
                        self.bindings[top] = ("import", top)

    def _absolute(self, module: str | None, level: int) -> str:
        if level == 0:
            return module or ""
        base = self.package.split(".")
        base = base[: len(base) - (level - 1)]
        return ".".join([*base, *([module] if module else [])])

    # -- values -----------------------------------------------------------------------------

    def value(self, name: str) -> Any:
        """The value of a top-level name, when it is an alias or a constant (not a def of this module)."""
        if name in self._values:
            return self._values[name]
        if name in self._busy:
            raise NotStatic(f"{self.module}.{name} refers to itself")
        if name not in self.bindings:
            raise NotStatic(f"{self.module} has no top-level name {name!r}")
        self._busy.add(name)
        try:
            kind, what = self.bindings[name]
            if kind == "expr":
                found = self.evaluate(what)
            elif kind == "from":
                found = _imported(*what)
            elif kind == "import":
                found = importlib.import_module(what) if what in CHEAP_MODULES else _static_module(what)
            else:
                raise NotStatic(f"{self.module}.{name} is a function or class: reading it needs the module")
        finally:
            self._busy.discard(name)
        self._values[name] = found
        return found

    def evaluate(self, node: ast.expr) -> Any:
        """A constant or type expression of this module, evaluated without importing it."""
        try:
            return ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            pass
        code = compile(ast.Expression(body=node), str(self.path), "eval")
        try:
            # our own source, evaluated as its import would evaluate it
            return eval(code, {"__builtins__": builtins}, _Namespace(self))
        except NotStatic:
            raise
        except Exception as e:
            raise NotStatic(f"{self.module}: cannot evaluate {ast.unparse(node)!r} ({type(e).__name__}: {e})") from None

    def annotation(self, node: ast.expr) -> Any:
        """An annotation as ``typing.get_type_hints`` gives it."""
        value = self.evaluate(node)
        if isinstance(value, str):  # a quoted annotation
            value = self.evaluate(ast.parse(value, mode="eval").body)
        if value is None:
            return type(None)
        if isinstance(value, _StaticModule):
            raise NotStatic(f"{self.module}: the annotation {ast.unparse(node)!r} names a module")
        return value

    def class_def(self, name: str) -> tuple[_Source, ast.ClassDef]:
        """The class statement a top-level name is bound to (here or, through imports, elsewhere)."""
        kind, what = self.bindings.get(name, ("", None))
        if kind == "def" and isinstance(what, ast.ClassDef):
            return self, what
        if kind == "from" and what[0] not in CHEAP_MODULES:
            return _source(what[0]).class_def(what[1])
        raise NotStatic(f"{self.module}.{name} is not a class defined in a sciadapt module")

    def definition(self, name: str) -> tuple[_Source, ast.FunctionDef | ast.ClassDef]:
        kind, what = self.bindings.get(name, ("", None))
        if kind == "def" and isinstance(what, ast.FunctionDef | ast.ClassDef):
            return self, what
        if kind == "from" and what[0] not in CHEAP_MODULES:
            return _source(what[0]).definition(what[1])
        raise NotStatic(f"{self.module}.{name} is not a function or class defined in a sciadapt module")

    # -- registrations --------------------------------------------------------------------------

    def _registry(self, node: ast.expr) -> str | None:
        """The sciadapt.registry variable an expression names (``BACKBONES``, ``registry.BACKBONES``)."""
        if isinstance(node, ast.Name):
            kind, what = self.bindings.get(node.id, ("", None))
            return what[1] if kind == "from" and what[0] == "sciadapt.registry" else None
        if isinstance(node, ast.Attribute):
            dotted = ast.unparse(node.value)
            head, _, rest = dotted.partition(".")
            kind, what = self.bindings.get(head, ("", None))
            if kind == "import" and ".".join(p for p in (what, rest) if p) == "sciadapt.registry":
                return node.attr
        return None

    def _register_call(self, node: ast.AST) -> tuple[str, str | None] | None:
        """(registry, name) of a ``REGISTRY.register(...)`` call; name None when it is not a literal."""
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register"):
            return None
        registry = self._registry(node.func.value)
        if registry is None:
            return None
        arg = node.args[0] if len(node.args) == 1 and not node.keywords else None
        name = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
        return registry, name

    def registrations(self) -> tuple[list[Entry], bool]:
        """The register lines of the module, and whether every one of them was read."""
        found: list[Entry] = []
        for stmt in self.tree.body:
            if isinstance(stmt, ast.FunctionDef | ast.ClassDef):
                for deco in stmt.decorator_list:
                    call = self._register_call(deco)
                    if call is not None and call[1] is not None:
                        found.append(Entry(call[0], call[1], self.module, stmt.name))
            elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                call = self._register_call(stmt.value.func)
                args = stmt.value.args
                if call is not None and call[1] is not None and len(args) == 1 and isinstance(args[0], ast.Name):
                    found.append(Entry(call[0], call[1], self.module, args[0].id))
        # a register line anywhere else (in a function, with a computed name) is not read: counted by
        # its text (a line that starts with it), since walking every node of the tree costs more
        names = [re.escape(n) for n, (k, w) in self.bindings.items() if k == "from" and w[0] == "sciadapt.registry"]
        registry = "|".join([*names, r"[\w.]*registry\.\w+"])
        pattern = rf"^\s*@?\s*(?:{registry})\.register\("
        return found, len(re.findall(pattern, self.text, flags=re.MULTILINE)) <= len(found)


def _static_module(name: str) -> _StaticModule:
    if _locate(name) is None:
        raise NotStatic(f"{name} is not cheap to import")
    return _StaticModule(name)


def _imported(module: str, name: str) -> Any:
    """``from module import name``, read without importing a module that is not cheap."""
    if module in CHEAP_MODULES:
        try:
            return getattr(importlib.import_module(module), name)
        except AttributeError:
            raise NotStatic(f"{module} has no {name!r}") from None
    source = _source(module)
    if name in source.bindings:
        return source.value(name)
    return _static_module(f"{module}.{name}")  # a submodule


# ---------------------------------------------------------------------------------------------
# builders


def _decorator_name(node: ast.expr) -> str:
    target = node.func if isinstance(node, ast.Call) else node
    return target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")


def describe(entry: Entry, load: Callable[[], BuilderInfo]) -> BuilderInfo:
    """The info of an indexed builder, read from its source; raises :class:`NotStatic` when it cannot
    be (then ``load`` is what the caller uses). ``load`` (import the module, read the object) also
    answers :meth:`BuilderInfo.built_attribute` where the source does not say."""
    source, node = _source(entry.module).definition(entry.target)
    if any(source._register_call(d) is None for d in node.decorator_list):
        raise NotStatic(f"{entry.module}.{entry.target}: a decorator may change the signature")
    fn: ast.FunctionDef | ast.AsyncFunctionDef
    if isinstance(node, ast.ClassDef):
        init = [s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"]
        if not init or node.keywords:
            raise NotStatic(f"{entry.module}.{entry.target}: its __init__ is inherited or made by a metaclass")
        fn = init[-1]
        if any(_decorator_name(d) not in SIGNATURE_KEEPING for d in fn.decorator_list):
            raise NotStatic(f"{entry.module}.{entry.target}.__init__: a decorator may change the signature")
    else:
        fn = node
    params = _parameters(source, fn, skip_self=isinstance(node, ast.ClassDef))

    def attribute(attr: str) -> Any:
        try:
            return _built_attribute(source, node, attr)
        except NotStatic:
            return load().built_attribute(attr)

    return BuilderInfo(
        signature=inspect.Signature(params),
        doc=ast.get_docstring(node) or "",
        init_doc=(ast.get_docstring(fn) or "") if isinstance(node, ast.ClassDef) else "",
        is_class=isinstance(node, ast.ClassDef),
        attribute=attribute,
    )


def _parameters(
    source: _Source, fn: ast.FunctionDef | ast.AsyncFunctionDef, skip_self: bool
) -> list[inspect.Parameter]:
    a = fn.args
    P = inspect.Parameter
    positional = [*a.posonlyargs, *a.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    spec: list[tuple[ast.arg, Any, ast.expr | None]] = [
        (arg, P.POSITIONAL_ONLY if i < len(a.posonlyargs) else P.POSITIONAL_OR_KEYWORD, defaults[i])
        for i, arg in enumerate(positional)
    ]
    if a.vararg:
        spec.append((a.vararg, P.VAR_POSITIONAL, None))
    spec += [(arg, P.KEYWORD_ONLY, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)]
    if a.kwarg:
        spec.append((a.kwarg, P.VAR_KEYWORD, None))
    if skip_self:
        spec = spec[1:]
    out = []
    for arg, kind, default in spec:
        annotation: Any = P.empty
        if arg.annotation is not None:
            try:
                annotation = source.annotation(arg.annotation)
            except NotStatic:
                if arg.arg not in INJECTED:
                    raise
                annotation = Unresolved(ast.unparse(arg.annotation))
        value = P.empty if default is None else source.evaluate(default)
        out.append(P(arg.arg, kind, default=value, annotation=annotation))
    return out


def _built_attribute(source: _Source, node: ast.FunctionDef | ast.ClassDef, attr: str) -> Any:
    if isinstance(node, ast.ClassDef):
        return _class_attribute(source, node, attr)
    returns = node.returns
    if isinstance(returns, ast.Constant) and isinstance(returns.value, str):
        returns = ast.parse(returns.value, mode="eval").body
    if not isinstance(returns, ast.Name):
        raise NotStatic(f"{source.module}.{node.name}: its return annotation names no class")
    return _class_attribute(*source.class_def(returns.id), attr)


_MISSING = object()


def _class_attribute(source: _Source, node: ast.ClassDef, attr: str) -> Any:
    """A class attribute assigned in the class body, or in a base class's (one base at a time, as
    the method resolution order goes for single inheritance)."""
    value = _own_attribute(source, node, attr)
    if value is not _MISSING:
        return value
    if len(node.bases) != 1 or not isinstance(node.bases[0], ast.Name):
        raise NotStatic(f"{source.module}.{node.name}: {attr} comes from its bases")
    return _class_attribute(*source.class_def(node.bases[0].id), attr)


def _own_attribute(source: _Source, node: ast.ClassDef, attr: str) -> Any:
    found: Any = _MISSING
    for stmt in node.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == attr for t in stmt.targets):
            found = source.evaluate(stmt.value)
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == attr:
            if stmt.value is not None:
                found = source.evaluate(stmt.value)
    return found
