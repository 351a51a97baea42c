"""The JSON Schema of a pipeline YAML, from the same signatures and dataclasses the config checks.

``sciadapt schema --out pipeline.schema.json`` gives editors (the YAML language server of VS Code,
PyCharm, Neovim) completion, hover text and checking of pipeline files, as anemoi and LightningCLI
configs have. Nothing here is written by hand per component: the components' schemas are their
registered builders' signatures, the plain sections the frozen dataclasses of :mod:`sciadapt.spec`.
The schema is a help for editing; :func:`sciadapt.config.load_config` stays the authority (it also
checks what a schema cannot say, such as ``FromData`` values against the data). The signatures are
read as ``validate`` reads them (:mod:`sciadapt.index`): building the schema imports no model code.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

from sciadapt.config import COMPONENTS, builder_schema, compose_pipeline
from sciadapt.index import BuilderInfo, builder_info
from sciadapt.registry import PEFT_METHODS
from sciadapt.spec import (
    DEFAULT_COMPONENT,
    Ge,
    Gt,
    Le,
    PeftCommonSpec,
    PipelineSpec,
    StageSpec,
    _FromData,
)

_REQUIRED = inspect.Parameter.empty
_JSON_SCALARS = (bool, int, float, str, type(None))


def type_schema(tp: Any) -> dict[str, Any]:
    """The JSON Schema of one annotation (``Literal``, bounds, ``| None``, lists, dataclasses)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(tp)
        out = type_schema(base)
        for m in extras:
            if isinstance(m, Ge):
                out["minimum"] = m.bound
            elif isinstance(m, Gt):
                out["exclusiveMinimum"] = m.bound
            elif isinstance(m, Le):
                out["maximum"] = m.bound
        return out
    if origin in (typing.Union, types.UnionType):
        options = [type_schema(a) for a in typing.get_args(tp)]
        return options[0] if len(options) == 1 else {"anyOf": options}
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return {"type": "array", **({"items": type_schema(args[0])} if args else {})}
    if origin is dict or tp is dict:
        return {"type": "object"}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return dataclass_schema(tp)
    simple = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
    if tp in simple:
        return {"type": simple[tp]}
    return {}  # Any


def _default(value: Any) -> dict[str, Any]:
    if value is _REQUIRED or value is dataclasses.MISSING:
        return {}
    if isinstance(value, _JSON_SCALARS) or (isinstance(value, list | dict) and len(str(value)) < 200):
        return {"default": value}
    return {}


def _arg_docs(info: BuilderInfo) -> dict[str, str]:
    """Parameter descriptions from a Google-style ``Args:`` section (the builder's, or its class's
    ``__init__``'s and the class's)."""
    doc = info.init_doc + "\n" + info.doc if info.is_class else info.doc
    out: dict[str, str] = {}
    in_args, current = False, None
    for line in doc.splitlines():
        if re.match(r"^\s*(Args|Arguments|Parameters):\s*$", line):
            in_args = True
            continue
        if in_args and re.match(r"^\S", line):  # the next section
            in_args = False
        if not in_args:
            continue
        m = re.match(r"^\s{4}(\w+)(?: \(.*?\))?:\s*(.*)$", line)
        if m:
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current and line.strip():
            out[current] += " " + line.strip()
    return out


def dataclass_schema(cls: type) -> dict[str, Any]:
    """An object schema of a spec dataclass (every field optional: each has a default)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    props: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else _REQUIRED
        if f.default_factory is not dataclasses.MISSING:
            made = f.default_factory()
            default = made if isinstance(made, list | dict) else _REQUIRED
        props[f.name] = {**type_schema(hints[f.name]), **_default(default)}
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if cls.__doc__:
        out["description"] = inspect.cleandoc(cls.__doc__).split("\n\n")[0]
    return out


def builder_object(
    section: str, name: str, fn: Callable[..., Any] | BuilderInfo, need_name: bool = True
) -> dict[str, Any]:
    """The mapping a registered builder accepts: ``name`` plus its parameters."""
    info = builder_info(fn)
    docs = _arg_docs(info)
    hints = info.hints
    props: dict[str, Any] = {"name": {"const": name}}
    required = ["name"] if need_name else []
    for param, (tp, default) in builder_schema(info).items():  # injected objects are not in it
        entry = {**type_schema(tp), **_default(default)}
        from_data = any(isinstance(m, _FromData) for m in typing.get_args(hints.get(param, tp))[1:])
        text = docs.get(param, "")
        if from_data:
            text = (text + " " if text else "") + "(Follows the data when left out.)"
        elif default is _REQUIRED:
            required.append(param)
        if text:
            entry["description"] = text
        props[param] = entry
    doc = info.doc.split("\n\n")[0]
    return {
        "type": "object",
        "title": f"{section}: {name}",
        **({"description": doc} if doc else {}),
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


def component_schema(section: str, names: list[str] | None = None) -> dict[str, Any]:
    """Any registered component of a section (``data``, ``backbone``, ``head``, ``task``), or one of
    ``names``."""
    registry = COMPONENTS[section]
    # `name` may come from a `defaults:` block (or DEFAULT_COMPONENT), so a file need not write it
    options = [builder_object(section, n, registry.describe(n), need_name=False) for n in names or registry.list()]
    return {"anyOf": options}


def peft_schema() -> dict[str, Any]:
    """A stage's ``peft:`` block: the common keys plus the chosen method's parameters."""
    common = dataclass_schema(PeftCommonSpec)["properties"]
    options = []
    for name in PEFT_METHODS.list():
        obj = builder_object("peft", name, PEFT_METHODS.describe(name), need_name=False)
        props = {**common, **{k: v for k, v in obj["properties"].items() if k != "name"}, "method": {"const": name}}
        options.append({**obj, "properties": props, "required": ["method"]})
    return {"anyOf": [*options, {"type": "null"}]}


def pipeline_components(pipeline: str) -> dict[str, str]:
    """Section -> component name of a pipeline (after its ``defaults:``), for the sections it names
    a registered component in."""
    cfg = compose_pipeline(pipeline)
    out = {}
    for section, registry in COMPONENTS.items():
        block = cfg.get(section) or {}
        name = block.get("name", DEFAULT_COMPONENT.get(section)) if isinstance(block, dict) else None
        if isinstance(name, str) and name in registry:
            out[section] = name
    return out


def pipeline_schema(pipeline: str | None = None) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a pipeline YAML file; given a pipeline (a path or a bundled
    name), its component sections accept the components that pipeline uses (so an editor offers
    their keys), not every registered one."""
    top = dataclass_schema(PipelineSpec)
    props = top["properties"]
    chosen = pipeline_components(pipeline) if pipeline is not None else {}
    for section in COMPONENTS:
        props[section] = component_schema(section, [chosen[section]] if section in chosen else None)
    stage = dataclass_schema(StageSpec)
    stage["properties"]["peft"] = peft_schema()
    # a stage's data / backbone / head are partial: merged over the pipeline's (see the README)
    for key in ("data", "backbone", "head"):
        stage["properties"][key] = {"anyOf": [{"type": "object"}, {"type": "null"}]}
    stage["required"] = ["name"]
    props["stages"] = {"type": "array", "minItems": 1, "items": stage}
    props["defaults"] = {
        "type": "array",
        "description": "Building blocks from configs/ composed before this file: `- backbone: nhits`.",
        "items": {"type": "object"},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://sciadapt.dev/schema/pipeline.json",
        "title": "sciadapt pipeline",
        **top,
        "properties": props,
        "required": ["stages"],
    }
