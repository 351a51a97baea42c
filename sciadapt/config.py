"""Pipeline configs: load YAML -> compose ``defaults`` from configs/ -> dotlist overrides -> validate.

A pipeline YAML has registered components (``data``, ``backbone``, ``head``, ``task``), whose
schema is their builder's signature, and plain sections (``trainer``, ``stages``,
``evaluation``) whose schema is a frozen dataclass in :mod:`sciadapt.spec`. Validation walks
both, collects *every* problem with its full key path, and raises one :class:`ConfigError`;
what it returns is a typed :class:`~sciadapt.spec.PipelineSpec` with every default filled in.
Stage rules (what each stage trains and starts from) belong to :mod:`sciadapt.stages.plan`.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import functools
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sciadapt.errors import ConfigError, UnknownComponentError
from sciadapt.index import INJECTED, BuilderInfo, builder_info
from sciadapt.registry import BACKBONES, DATAMODULES, HEADS, PEFT_METHODS, TASKS, Registry, suggest
from sciadapt.spec import (
    COMPONENT_SECTIONS,
    DEFAULT_COMPONENT,
    PEFT_COMMON,
    Bound,
    EvaluationSpec,
    PeftCommonSpec,
    PipelineSpec,
    StageSpec,
    TrainerSpec,
    _FromData,
)

if TYPE_CHECKING:
    from sciadapt.types import Backbone

PACKAGE_DIR = Path(__file__).resolve().parent

COMPONENTS: dict[str, Registry[Any]] = {
    "data": DATAMODULES,
    "backbone": BACKBONES,
    "head": HEADS,
    "task": TASKS,
}
# top-level keys of a pipeline YAML (the fields of PipelineSpec)
TOP_LEVEL = tuple(f.name for f in dataclasses.fields(PipelineSpec))


def resource_dir(kind: str) -> Path:
    """The bundled ``pipelines`` or ``configs`` folder, from an installed wheel or a checkout."""
    installed = PACKAGE_DIR / f"_{kind}"
    if installed.is_dir():
        return installed
    return PACKAGE_DIR.parent / kind


def bundled_pipelines() -> list[str]:
    return sorted(p.stem for p in resource_dir("pipelines").glob("*.yaml"))


def resolve_pipeline(ref: str) -> Path:
    """A pipeline reference is a YAML path or the name of a bundled pipeline."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"pipeline file {ref!r} does not exist")
        return p
    bundled = resource_dir("pipelines") / f"{ref}.yaml"
    if bundled.is_file():
        return bundled
    names = bundled_pipelines()
    raise UnknownComponentError(
        f"unknown pipeline {ref!r}: not a file and not a bundled pipeline.{suggest(ref, names)} "
        f"Bundled: {', '.join(names)} (or give a path to a .yaml file)"
    )


def _dates_as_text(value: Any) -> Any:
    """YAML reads an unquoted ``2017-10-01`` as a date object; every config value is plain data, so
    dates and timestamps become the ISO text the user wrote (datamodules parse them)."""
    if isinstance(value, dict):
        return {k: _dates_as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dates_as_text(v) for v in value]
    if isinstance(value, datetime.date):  # datetime.datetime too
        return value.isoformat()
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = _dates_as_text(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def group_blocks(group: str) -> list[str]:
    """The building blocks of a configs/ group (``backbone``, ``data``, ... or ``cluster``)."""
    group_dir = resource_dir("configs") / group
    return sorted(p.stem for p in group_dir.glob("*.yaml")) if group_dir.is_dir() else []


def config_groups() -> list[str]:
    """The building-block groups under configs/ (backbone, data, trainer, ...); ``cluster`` holds
    submission profiles (``sciadapt submit --cluster``), not pipeline blocks."""
    return sorted(p.name for p in resource_dir("configs").iterdir() if p.is_dir() and p.name != "cluster")


def _compose(path: Path, seen: tuple[Path, ...] = (), choices: dict[str, str] | None = None) -> dict[str, Any]:
    """Merge the ``defaults:`` building blocks under the file's own keys (the file wins).

    ``choices`` (from ``group=name`` overrides such as ``backbone=ttm_tiny``) replace the block a
    pipeline's ``defaults`` picks for that group, or add one; the pipeline's own keys still apply.
    """
    raw = _read_yaml(path)
    defaults = raw.pop("defaults", []) or []
    if not isinstance(defaults, list):
        raise ConfigError(f"{path}: `defaults` must be a list like [{{backbone: nhits}}, {{data: ett}}]")
    if choices:
        picked = {next(iter(e)) for e in defaults if isinstance(e, dict) and len(e) == 1}
        defaults = [
            {g: choices[g]} if isinstance(e, dict) and len(e) == 1 and (g := next(iter(e))) in choices else e
            for e in defaults
        ] + [{g: c} for g, c in choices.items() if g not in picked]
    merged: Any = OmegaConf.create({})
    problems = []
    for entry in defaults:
        if not (isinstance(entry, dict) and len(entry) == 1):
            problems.append(f"defaults: entries look like `- backbone: nhits`, got {entry!r}")
            continue
        ((group, choice),) = entry.items()
        group_dir = resource_dir("configs") / str(group)
        candidates = [path.parent / str(choice), group_dir / f"{choice}.yaml"]
        block = next((c for c in candidates if c.is_file() and c.suffix in (".yaml", ".yml")), None)
        if block is None:
            available = group_blocks(str(group))
            if not group_dir.is_dir():
                groups = sorted(p.name for p in resource_dir("configs").iterdir() if p.is_dir())
                problems.append(f"defaults: unknown group {group!r}.{suggest(str(group), groups)} Groups: {groups}")
            else:
                problems.append(
                    f"defaults.{group}: no building block {choice!r}.{suggest(str(choice), available)} "
                    f"Available in configs/{group}/: {', '.join(available)}"
                )
            continue
        if block in seen:
            problems.append(f"defaults: {block} includes itself")
            continue
        body = _compose(block, (*seen, block))
        merged = OmegaConf.merge(merged, {group: body})
    if problems:
        raise ConfigError(problems, source=str(path))
    return OmegaConf.to_container(OmegaConf.merge(merged, raw), resolve=False)  # type: ignore[return-value]


def _parse_value(text: str) -> Any:
    try:
        return _dates_as_text(yaml.safe_load(text))
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides. ``stages.<name|index|*>.key=value`` addresses stages."""
    cfg = copy.deepcopy(cfg)
    problems = []
    for ov in overrides:
        if "=" not in ov:
            problems.append(f"override {ov!r} is not key=value (e.g. data.path=ETTh1.csv)")
            continue
        key, text = ov.split("=", 1)
        value = _parse_value(text)
        parts = key.strip().split(".")
        if parts[0] == "stages" and len(parts) >= 3:
            stages = cfg.get("stages") or []
            names = [s.get("name") for s in stages if isinstance(s, dict)]
            sel = parts[1]
            if sel == "*":
                idx = list(range(len(stages)))
            elif sel.isdigit() and int(sel) < len(stages):
                idx = [int(sel)]
            elif sel in names:
                idx = [names.index(sel)]
            else:
                problems.append(
                    f"override {key}: no stage {sel!r}.{suggest(sel, [n for n in names if n])} "
                    f"Stages: {', '.join(str(n) for n in names)} (or an index, or * for all)"
                )
                continue
            for i in idx:
                _set_path(stages[i], parts[2:], value)
            continue
        _set_path(cfg, parts, value)
    if problems:
        raise ConfigError(problems)
    return cfg


def _set_path(node: dict[str, Any], parts: list[str], value: Any) -> None:
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def compose_pipeline(ref: str) -> dict[str, Any]:
    """A pipeline's mapping with its ``defaults:`` merged in: not overridden, resolved or validated."""
    return _compose(resolve_pipeline(ref))


def load_config(ref: str, overrides: list[str] | None = None) -> PipelineSpec:
    """Load, compose, override, resolve interpolations and validate a pipeline.

    Returns the typed spec with every default filled in (``to_yaml`` gives ``config.yaml``).
    """
    path = resolve_pipeline(ref)
    # `backbone=ttm_tiny` (a group and a block name, no dot) swaps a building block, as in Hydra
    groups = config_groups()
    choices, rest = {}, []
    for ov in overrides or []:
        key, _, value = ov.partition("=")
        if "." not in key and key.strip() in groups and value and not value.lstrip().startswith("{"):
            choices[key.strip()] = value.strip()
        else:
            rest.append(ov)
    cfg = _compose(path, choices=choices)
    cfg.setdefault("name", path.stem)
    cfg = apply_overrides(cfg, rest)
    try:
        cfg = OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve an interpolation: {e}", source=str(path)) from None
    return validate(cfg, source=str(path))


# ---------------------------------------------------------------------------------------------
# validation


_REQUIRED = object()


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _check_type(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """Return the value (coerced int->float where a float is expected; a dataclass instance for a
    dataclass type) or record a problem.

    Understands ``Literal`` choices, ``Annotated[T, Ge(n)]``-style bounds (the ``FromData`` marker
    is a building concern and passes), unions, lists, mappings and nested dataclasses.
    """
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(tp)
        sub: list[str] = []
        out = _check_type(value, base, path, sub)
        if sub:
            problems.extend(sub)
            return out
        for m in meta:
            if isinstance(m, Bound) and isinstance(out, int | float) and not m.check(out):
                problems.append(f"{path}: must be {m.describe()}, got {value!r}")
        return out
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        attempts: list[list[str]] = []
        for arg in args:
            sub = []
            out = _check_type(value, arg, path, sub)
            if not sub:
                return out
            attempts.append(sub)
        non_null = [a for a in args if a is not type(None)]
        if value is not None and len(non_null) == 1 and _refines(non_null[0], value):
            # `x: T | None` given a value of T's type that breaks T's bound or choices: say which
            problems.extend(attempts[list(args).index(non_null[0])])
        else:
            problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
            names = [str(c) for c in choices]
            problems.append(f"{path}: {value!r} is not one of {', '.join(names)}.{suggest(str(value), names)}")
        return value
    if tp is type(None):
        if value is not None:
            problems.append(f"{path}: expected null, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}")
            return value
        n_before = len(problems)
        fields = _check_fields(_dataclass_schema(tp), value, path, problems)
        if len(problems) > n_before:
            return fields
        return tp(**fields)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
            return value
        item_types = [a for a in typing.get_args(tp) if a is not Ellipsis] or [Any]
        return [_check_type(v, item_types[0], f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads `1e-3` (no dot) as a string; everyone writes learning rates that way
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{path}: expected float, got {value!r}")
            return value
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected int, got {value!r}")
        return value
    if tp is bool or tp is str:
        if not isinstance(value, tp):
            problems.append(f"{path}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def _refines(tp: Any, value: Any) -> bool:
    """Whether ``tp`` is a choice or a bounded type whose base type ``value`` already has (so its
    own message, "not one of" or "must be >= n", says more than "expected T or null")."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return True
    if origin is typing.Annotated:
        return not _problems_of(value, typing.get_args(tp)[0])
    return dataclasses.is_dataclass(tp) and isinstance(value, dict)


def _problems_of(value: Any, tp: Any) -> list[str]:
    sub: list[str] = []
    _check_type(value, tp, "", sub)
    return sub


def _dataclass_schema(cls: type) -> dict[str, tuple[Any, Any]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = _REQUIRED
        out[f.name] = (hints[f.name], default)
    return out


def builder_schema(fn: Callable[..., Any] | BuilderInfo) -> dict[str, tuple[Any, Any]]:
    """Parameter name -> (type, default) of a registered builder (a function or a class, or its
    :class:`~sciadapt.index.BuilderInfo` from ``Registry.describe``): its signature is the schema."""
    out = {}
    for name, p in builder_info(fn).signature.parameters.items():
        # a task builder's backbone and head are objects the runner passes (no default); a backbone's own
        # `head` setting (surya, swin3d: head=forecast keeps their decoder) is a config key
        injected = name in INJECTED and p.default is inspect.Parameter.empty
        if injected or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        default = _REQUIRED if p.default is inspect.Parameter.empty else p.default
        out[name] = (Any if p.annotation is p.empty else p.annotation, default)
    return out


def from_data_params(fn: Callable[..., Any] | BuilderInfo) -> set[str]:
    """The parameters of a builder marked ``Annotated[..., FromData]``: filled from the data (or the
    backbone) at build time, optional in a config."""
    out: set[str] = set()
    for name, tp in builder_info(fn).hints.items():
        if typing.get_origin(tp) is typing.Annotated and any(isinstance(m, _FromData) for m in typing.get_args(tp)[1:]):
            out.add(name)
    return out


def _check_fields(
    schema: dict[str, tuple[Any, Any]],
    values: dict[str, Any],
    path: str,
    problems: list[str],
    optional: set[str] | frozenset[str] = frozenset(),
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value == "???":
            problems.append(f"{path}.{key}: required, give it on the command line: {path}.{key}=...")
            out[key] = value
            continue
        if key not in schema:
            problems.append(
                f"{path}.{key}: unknown key.{suggest(key, schema)}{_belongs(key, path, value)} Valid keys: "
                f"{', '.join(schema)}"
            )
            continue
        out[key] = _check_type(value, schema[key][0], f"{path}.{key}", problems)
    for key, (_tp, default) in schema.items():
        if key in out:
            continue
        if key in optional:
            continue  # filled from the data at build time
        if default is _REQUIRED:
            problems.append(f"{path}.{key}: required ({_type_name(_tp)}), add it to the config")
            continue
        out[key] = copy.deepcopy(default)
    return out


@functools.cache
def _homes() -> dict[str, list[str]]:
    """Where each config key lives: ``{key: ["stages.{stage}.optim.lr", ...]}``, from the spec's
    dataclasses and every registered builder (so a new key is placed without a list to edit)."""
    from sciadapt.spec import EarlyStoppingSpec, OptimSpec, RolloutSpec, ScheduleSpec

    homes: dict[str, list[str]] = {}

    def add(prefix: str, keys: Any) -> None:
        for k in keys:
            homes.setdefault(k, [])
            if f"{prefix}{k}" not in homes[k]:
                homes[k].append(f"{prefix}{k}")

    stage = "stages.{stage}."
    add(stage, [f.name for f in dataclasses.fields(StageSpec)])
    for sub, cls in (("optim", OptimSpec), ("schedule", ScheduleSpec), ("early_stopping", EarlyStoppingSpec)):
        add(f"{stage}{sub}.", [f.name for f in dataclasses.fields(cls)])
    add(f"{stage}rollout.", [f.name for f in dataclasses.fields(RolloutSpec)])
    add("trainer.", [f.name for f in dataclasses.fields(TrainerSpec)])
    add("evaluation.", [f.name for f in dataclasses.fields(EvaluationSpec)])
    add(f"{stage}peft.", PEFT_COMMON)
    for name in PEFT_METHODS.list():
        add(f"{stage}peft.", builder_schema(PEFT_METHODS.describe(name)))
    for section, registry in COMPONENTS.items():
        for name in registry.list():
            add(f"{section}.", [k for k in builder_schema(registry.describe(name)) if k not in INJECTED])
    add("", TOP_LEVEL)
    return homes


def _belongs(key: str, path: str, value: Any) -> str:
    """Where a key written in the wrong section belongs, as the override that puts ``value`` there
    (`` `lr` is a stage key: set stages.*.optim.lr=0.01 (every stage) or ...``), or ""."""
    stage = None
    if path.startswith("stages["):
        stage = path.split("(", 1)[1].split(")", 1)[0] if "(" in path else path[7 : path.index("]")]
    here = path.split(" ", 1)[0].replace("[", ".").replace("]", "")
    places = [h.format(stage=stage or "*") for h in _homes().get(key, [])]
    places = [p for p in places if p.rsplit(".", 1)[0] != here and p != key][:3]
    if not places:
        return ""
    sets = " or ".join(" ".join(f"{p}{leaf}={_override_text(v)}" for leaf, v in _leaves(value)) for p in places)
    if stage is None and all(p.startswith("stages.*.") for p in places):
        if len(places) == 1:
            one = " ".join(f"stages.<name>.{places[0][9:]}{leaf}={_override_text(v)}" for leaf, v in _leaves(value))
            return f" `{key}` is a stage key: set {sets} (every stage) or {one} (one stage)."
        return f" `{key}` is a stage key: set {sets} (every stage; a stage's name or index in place of * for one)."
    parents = list(dict.fromkeys(p.rsplit(".", 1)[0] for p in places))
    return f" `{key}` belongs in {' or '.join(parents)}: set {sets}."


def _leaves(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(".sub.key", value) of each leaf of a mapping written in the wrong place; ("", value) of a value."""
    if not isinstance(value, dict) or not value:
        return [(prefix, value)]
    return [leaf for k, v in value.items() for leaf in _leaves(v, f"{prefix}.{k}")][:3]


def _override_text(value: Any) -> str:
    """``value`` as the right-hand side of a ``key=value`` override (which reads it as YAML)."""
    if isinstance(value, str) and _parse_value(value) == value:
        return value
    try:
        return json.dumps(value)  # JSON is YAML: lists, mappings, true, null and quoted strings read back
    except (TypeError, ValueError):
        return str(value)


def _component_builder(section: str, value: Any, path: str, problems: list[str]) -> tuple[Any, BuilderInfo] | None:
    """(name, builder info) of a component mapping, or None after recording the problem."""
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a mapping with a `name`, got {value!r}")
        return None
    name = value.get("name", DEFAULT_COMPONENT.get(section))
    if name is None:
        kinds = ", ".join(COMPONENTS[section].list())
        problems.append(f"{path}.name: required; one of {kinds}")
        return None
    try:
        return name, COMPONENTS[section].describe(str(name))
    except UnknownComponentError as e:
        problems.append(f"{path}.name: {e}")
        return None


def _check_component(section: str, value: Any, path: str, problems: list[str]) -> dict[str, Any] | None:
    if value is None and section in DEFAULT_COMPONENT:
        value = {}
    found = _component_builder(section, value, path, problems)
    if found is None:
        return None
    name, fn = found
    params = {k: v for k, v in value.items() if k != "name"}
    checked = _check_fields(builder_schema(fn), params, path, problems, optional=from_data_params(fn))
    return {"name": name, **checked}


def _check_data_overrides(
    base: dict[str, Any] | None, overrides: dict[str, Any], path: str, problems: list[str]
) -> None:
    """A stage's (or the evaluation's) ``data:`` keys, checked merged over the pipeline's data."""
    if not isinstance(base, dict) or not isinstance(base.get("name"), str) or base["name"] not in DATAMODULES:
        return
    fn = DATAMODULES.describe(base["name"])
    # a value the pipeline's data leaves to the user (`path: ???`) is reported there, once
    open_keys = {k for k, v in base.items() if v == "???" and k not in overrides}
    merged = {**{k: v for k, v in base.items() if k != "name" and k not in open_keys}, **overrides}
    merged.pop("name", None)
    _check_fields(builder_schema(fn), merged, path, problems, optional=from_data_params(fn) | open_keys)


def _check_stage(
    i: int, st: Any, model: dict[str, Any], pipeline_data: Any, problems: list[str]
) -> tuple[StageSpec | None, dict[str, Any]]:
    """One stage: its fields, its ``peft:`` block, its model and data overrides.

    ``model`` is the backbone/head the previous stage used; a stage's ``backbone:``/``head:``
    without a ``name`` is merged over it. Returns the stage and the model it uses.
    """
    if not isinstance(st, dict):
        problems.append(f"stages[{i}]: expected a mapping, got {st!r}")
        return None, model
    path = f"stages[{i}]" + (f" ({st['name']})" if st.get("name") else "")
    n_before = len(problems)
    fields = _check_fields(_dataclass_schema(StageSpec), st, path, problems)
    model = dict(model)
    for section in ("backbone", "head"):
        override = fields.get(section)
        if isinstance(override, dict):
            inherited = model[section] if "name" not in override else {}
            fields[section] = _check_component(
                section, {**(inherited or {}), **override}, f"{path}.{section}", problems
            )
            if fields[section] is not None:
                model[section] = fields[section]
    if isinstance(fields.get("peft"), dict):
        fields["peft"] = _check_peft(fields["peft"], f"{path}.peft", problems)
    if isinstance(fields.get("data"), dict):
        _check_data_overrides(pipeline_data, fields["data"], f"{path}.data", problems)
    if len(problems) > n_before:
        return None, model
    return StageSpec(**fields), model


def validate(cfg: Mapping[str, Any], source: str | None = None) -> PipelineSpec:
    """Validate a composed pipeline (a plain mapping, e.g. a saved ``config.yaml``); raise one
    ConfigError listing every problem, or return the typed spec."""
    problems: list[str] = []
    out: dict[str, Any] = {}
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"expected a mapping at the top level, got {type(cfg).__name__}", source=source)
    for key in cfg:
        if key not in TOP_LEVEL:
            problems.append(
                f"{key}: unknown top-level key.{suggest(key, TOP_LEVEL)}{_belongs(key, '', cfg[key])} Valid: "
                f"{', '.join(TOP_LEVEL)}"
            )
    out["name"] = _check_type(cfg.get("name", "pipeline"), str, "name", problems)
    out["description"] = _check_type(cfg.get("description") or "", str, "description", problems)
    out["seed"] = _check_type(cfg.get("seed", 0), int, "seed", problems)
    out["run_dir"] = _check_type(cfg.get("run_dir", "runs"), str, "run_dir", problems)
    for section in COMPONENT_SECTIONS:
        if section not in cfg and section not in DEFAULT_COMPONENT:
            problems.append(f"{section}: required section missing (add `{section}: {{name: ...}}` or a defaults entry)")
            continue
        out[section] = _check_component(section, cfg.get(section), section, problems)
    out["trainer"] = _check_type(cfg.get("trainer") or {}, TrainerSpec, "trainer", problems)
    if isinstance(out["trainer"], TrainerSpec):
        problems.extend(trainer_problems(out["trainer"]))
    out["evaluation"] = _check_type(cfg.get("evaluation") or {}, EvaluationSpec, "evaluation", problems)

    stages = cfg.get("stages")
    if not isinstance(stages, list | tuple) or not stages:
        problems.append("stages: required, a non-empty list of stages (each with a name and max_epochs or max_steps)")
        stages = []
    checked: list[StageSpec] = []
    model = {"backbone": out.get("backbone"), "head": out.get("head")}
    for i, st in enumerate(stages):
        spec, model = _check_stage(i, st, model, out.get("data"), problems)
        if spec is not None:
            checked.append(spec)
    ev = cfg.get("evaluation") or {}
    if isinstance(ev, dict) and isinstance(ev.get("data"), dict):
        _check_data_overrides(out.get("data"), ev["data"], "evaluation.data", problems)
    if isinstance(out["evaluation"], EvaluationSpec) and isinstance(out.get("task"), dict):
        allowed = TASKS.describe(out["task"]["name"]).built_attribute("BASELINES")
        for j, b in enumerate(out["evaluation"].baselines):
            if b not in allowed:
                problems.append(
                    f"evaluation.baselines[{j}]: {b!r} is not a baseline of task {out['task']['name']!r}"
                    f" (one of {', '.join(allowed) or 'none'}).{suggest(b, allowed)}"
                )
    if problems:
        raise ConfigError(problems, source=source)
    return PipelineSpec(**{**out, "stages": tuple(checked)})


# names every Lightning this project supports accepts (tests/unit/test_fast_cli.py checks them
# against the installed one); any other name is checked against Lightning's registries
LIGHTNING_NAMES = {
    "accelerator": frozenset({"auto", "cpu", "gpu", "cuda", "mps"}),
    "strategy": frozenset({"auto", "ddp", "ddp_spawn", "fsdp"}),
    "precision": frozenset(
        {"32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "32", "16", "bf16"}
    ),
}


def _lightning_choices() -> dict[str, list[str]]:
    """The accelerator, strategy and precision names Lightning accepts (its own registries)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    try:
        from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

        precisions = [*typing.get_args(_PRECISION_INPUT_STR), *typing.get_args(_PRECISION_INPUT_STR_ALIAS)]
    except ImportError:  # pragma: no cover - a Lightning that moved the names: let Lightning check
        precisions = []
    return {
        "accelerator": ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())],
        "strategy": ["auto", *StrategyRegistry.available_strategies()],
        "precision": precisions,
    }


def _devices_ok(devices: Any) -> bool:
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices == -1 or devices >= 1
    if isinstance(devices, list):
        return bool(devices) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)
    if isinstance(devices, str):
        text = devices.strip()
        return text == "auto" or re.fullmatch(r"-1|[1-9]\d*|\d+(\s*,\s*\d+)*\s*,?", text) is not None
    return False


def _accelerators_here() -> dict[str, tuple[bool, str]]:
    """Each accelerator name -> (available on this machine, how that was found out)."""
    import torch
    from lightning.pytorch.accelerators import AcceleratorRegistry

    here: dict[str, tuple[bool, str]] = {}
    for name in sorted(AcceleratorRegistry.available_accelerators()):
        try:
            ok = bool(AcceleratorRegistry[name]["accelerator"].is_available())
        except Exception:  # an accelerator whose library is missing or broken
            ok = False
        here[name] = (ok, f"Lightning's {name} accelerator reports none")
    here["cpu"] = (True, "")
    cuda = torch.cuda.is_available()
    here["cuda"] = (cuda, "torch.cuda.is_available() is False")
    mps = here.get("mps", (False, ""))[0]
    here["gpu"] = (cuda or mps, "no CUDA or MPS device (torch.cuda.is_available() is False)")
    if "tpu" in here and not here["tpu"][0]:
        here["tpu"] = (False, "no TPU, or torch_xla is not installed")
    return here


def trainer_problems(trainer: TrainerSpec, here: bool = False) -> list[str]:
    """Trainer names Lightning does not know (always), and, with ``here``, settings this machine
    cannot run: an accelerator that is not present, or a combination Lightning refuses.

    ``sciadapt validate`` checks names only, so a pipeline meant for a GPU cluster validates on a
    login node; ``fit`` checks ``here`` before a run folder exists.
    """
    problems: list[str] = []
    names = {key: getattr(trainer, key) for key in ("accelerator", "strategy", "precision")}
    # Lightning's own registries are the authority, but reading them imports torch (seconds): the
    # names every supported Lightning accepts pass without them
    known = all(value in LIGHTNING_NAMES[key] for key, value in names.items())
    choices = {} if known else _lightning_choices()
    for key, value in names.items():
        valid = choices.get(key)
        if valid and value not in valid:
            shown = [v for v in valid if "find_unused_parameters" not in v]
            more = " (and the ddp*_find_unused_parameters_true/false variants)" if len(shown) < len(valid) else ""
            problems.append(
                f"trainer.{key}: {value!r} is not a Lightning {key}.{suggest(str(value), valid)} "
                f"Valid: {', '.join(shown)}{more}"
            )
    if not _devices_ok(trainer.devices):
        problems.append(
            f"trainer.devices: {trainer.devices!r} is not a device selection: give a count (1, 2, ...; -1 for "
            "every device), a list of device indices ([0, 1]) or auto"
        )
    if problems or not here:
        return problems
    found = _accelerators_here()
    acc = trainer.accelerator
    if acc in found and not found[acc][0]:
        available = [n for n in ("cuda", "mps", "tpu", "cpu") if found.get(n, (False, ""))[0]]
        return [
            f"trainer.accelerator: {acc!r} is not available on this machine ({found[acc][1]}); available here: "
            f"{', '.join(available)}. Fix: set trainer.accelerator=auto (or {available[0]}), or run where there "
            f"is one (e.g. sciadapt submit --cluster <profile>)"
        ]
    try:
        import logging
        import warnings

        from lightning.fabric.plugins.environments import SLURMEnvironment
        from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

        # what pl.Trainer does with these settings first (no side effect without `deterministic`);
        # its notes ("Using bfloat16 ...") are for the trainer itself to print
        quiet = logging.getLogger("lightning.pytorch")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                _AcceleratorConnector(
                    devices=trainer.devices,
                    num_nodes=trainer.num_nodes,
                    accelerator=trainer.accelerator,
                    strategy=trainer.strategy,
                    precision=trainer.precision,  # type: ignore[arg-type]  # checked against Lightning's names
                    plugins=[SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None,
                )
            finally:
                quiet.setLevel(level)
    except ImportError:  # pragma: no cover - a Lightning that moved its connector: pl.Trainer checks later
        pass
    except Exception as err:
        detail = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
        problems.append(
            f"trainer: Lightning cannot run accelerator={acc}, devices={trainer.devices}, strategy={trainer.strategy}, "
            f"precision={trainer.precision}, num_nodes={trainer.num_nodes} on this machine: {detail}. Fix: change "
            "the trainer.* setting it names"
        )
    return problems


def _check_peft(block: dict[str, Any], path: str, problems: list[str]) -> dict[str, Any]:
    """A stage's ``peft:`` block: the common keys plus the method builder's parameters."""
    block = dict(block)
    method = block.get("method")
    if method is None:
        problems.append(f"{path}.method: required; one of {', '.join(PEFT_METHODS.list())}")
        return block
    try:
        fn = PEFT_METHODS.describe(str(method))
    except UnknownComponentError as e:
        problems.append(f"{path}.method: {e}")
        return block
    common = {k: block.pop(k) for k in list(block) if k in PEFT_COMMON}
    schema = builder_schema(fn)
    for key in block:
        if key not in schema:
            valid = [*PEFT_COMMON, *schema]
            problems.append(
                f"{path}.{key}: unknown key for {method}.{suggest(key, valid)} Valid keys: {', '.join(valid)}"
            )
    checked = _check_fields(schema, {k: v for k, v in block.items() if k in schema}, path, problems)
    common_schema = _dataclass_schema(PeftCommonSpec)
    common = _check_fields(common_schema, common, path, problems)
    return {**common, **checked}


def to_yaml(cfg: PipelineSpec | Mapping[str, Any]) -> str:
    """The YAML text of a spec (what ``config.yaml`` holds)."""
    plain = cfg.to_dict() if isinstance(cfg, PipelineSpec) else dict(cfg)
    return OmegaConf.to_yaml(OmegaConf.create(plain))


def as_plain(obj: Any) -> Any:
    if isinstance(obj, DictConfig | ListConfig):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


# ---------------------------------------------------------------------------------------------
# building


def call_builder(section: str, cfg: Mapping[str, Any], facts: Mapping[str, Any], **objects: Any) -> Any:
    """Call a registered builder with the config's keys plus, for its ``FromData`` parameters, the
    values the data (or the backbone) gives.

    A key the user set explicitly must agree with the value from the data: a silent override
    would build a model whose shapes do not fit the data.
    """
    params = dict(cfg)
    name = params.pop("name")
    fn = COMPONENTS[section].get(name)
    sig = inspect.signature(fn).parameters
    follows = from_data_params(fn)
    problems = []
    for key, value in facts.items():
        if key not in follows:
            continue
        if key in params and params[key] is not None and params[key] != value:
            problems.append(
                f"{section}.{key}={params[key]!r} but the data gives {value!r}: remove {section}.{key} "
                f"(it follows the data) or change the data settings to match"
            )
        params[key] = value
    if problems:
        raise ConfigError(problems)
    for key, obj in objects.items():
        if key in sig:
            params[key] = obj
    return fn(**params)


def build_datamodule(data: Mapping[str, Any]) -> Any:
    """A datamodule from a validated ``data:`` section (see :mod:`sciadapt.stages.plan` for the
    section each stage trains on)."""
    return call_builder("data", data, {})


def build_task(model: Mapping[str, Any], facts: Mapping[str, Any]) -> Any:
    """Backbone + head + task for data with the given facts (``datamodule.facts()``).

    ``model`` holds the ``backbone``, ``head`` and ``task`` sections.
    """
    backbone = call_builder("backbone", model["backbone"], facts)
    head = call_builder("head", model["head"], head_facts(backbone, facts))
    return call_builder("task", model["task"], facts, backbone=backbone, head=head)


def head_facts(backbone: Backbone, facts: Mapping[str, Any]) -> dict[str, Any]:
    """What a head's ``FromData`` parameters follow: the data's facts plus the backbone's features
    (``in_features``/``in_layout`` of its last level, every level's ``feature_info``)."""
    info = backbone.feature_info[-1]
    return {
        **facts,
        "in_features": info["channels"],
        "in_layout": info["layout"],
        "feature_info": [dict(level) for level in backbone.feature_info],
    }


# the __init__ wrappers made by check_arguments: their classes report argument problems themselves
_SELF_CHECKING: set[Callable[..., None]] = set()


def checks_own_arguments(fn: Callable[..., Any]) -> bool:
    """True for a registered class whose ``__init__`` is decorated with :func:`check_arguments`: it
    reports the signature's problems together with its own cross-field checks."""
    return isinstance(fn, type) and vars(fn).get("__init__") in _SELF_CHECKING


def check_arguments(path: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorate a registered class's ``__init__`` so that a direct call (from Python, not through a
    config) checks its arguments against the signature as the config layer does.

    The problems found are kept in ``self._argument_problems`` for the constructor's own checks to
    report together with theirs (one :class:`ConfigError` listing everything).
    """

    def deco(init: Callable[..., None]) -> Callable[..., None]:
        sig = inspect.signature(init)

        @functools.wraps(init)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
            given = sig.bind(self, *args, **kwargs).arguments
            hints = typing.get_type_hints(init, include_extras=True)
            problems: list[str] = []
            for key, value in given.items():
                if key != "self" and key in hints:
                    _check_type(value, hints[key], f"{path}.{key}", problems)
            self._argument_problems = problems
            init(self, *args, **kwargs)

        _SELF_CHECKING.add(wrapper)
        return wrapper

    return deco


def argument_problems(fn: Callable[..., Any], values: Mapping[str, Any], path: str) -> list[str]:
    """The problems of ``values`` (a builder's keyword arguments, given from Python) against the
    builder's signature; an unknown name is left to Python's own TypeError."""
    hints = builder_info(fn).hints
    problems: list[str] = []
    for key, value in values.items():
        if key in hints and key not in INJECTED:
            _check_type(value, hints[key], f"{path}.{key}", problems)
    return problems
