"""Pipeline configs: load YAML -> compose ``defaults`` from configs/ -> dotlist overrides -> validate.

A pipeline YAML has registered components (``data``, ``backbone``, ``head``, ``task``), whose
schema is their builder's signature, and plain sections (``trainer``, ``stages``,
``evaluation``) whose schema is a dataclass in :mod:`sciadapt.stages.spec`. Validation walks
both, collects *every* problem with its full key path, and raises one :class:`ConfigError`.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sciadapt.errors import ConfigError, UnknownComponentError
from sciadapt.registry import BACKBONES, DATAMODULES, HEADS, PEFT_METHODS, TASKS, Registry, suggest
from sciadapt.stages.spec import PEFT_COMMON, TOP_LEVEL, EvaluationSpec, StageSpec, TrainerSpec

PACKAGE_DIR = Path(__file__).resolve().parent

COMPONENTS: dict[str, Registry[Any]] = {
    "data": DATAMODULES,
    "backbone": BACKBONES,
    "head": HEADS,
    "task": TASKS,
}
DEFAULT_COMPONENT = {"head": "point", "task": "forecasting"}
# builder parameters the runner passes objects into; never config keys
INJECTED = {"backbone", "head"}
# builder parameters filled from the data (or the backbone) when the config leaves them out
INFERRED = {
    # series data
    "context_length",
    "horizon",
    "n_exog",
    "n_targets",
    "seasonality",
    # backbone -> head
    "in_features",
    "in_layout",
    # gridded data
    "lat",
    "lon",
    "n_channels",
    "n_forcings",
    "n_static",
    "n_input",
    "variables",
    "tendency_scale",
    "area_weights",
    "time_step_hours",
    # raster data
    "bands",
    "n_bands",
    "in_chans",
    "num_frames",
    "img_size",
    "n_classes",
    "ignore_index",
    "class_names",
    "n_outputs",
    "output_names",
    # backbone -> dense heads
    "feature_info",
}
BASELINES = ("seasonal_naive", "naive", "persistence", "climatology", "majority", "mean", "ndwi")
INIT_FROM_WORDS = ("previous", "scratch", "pretrained")


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


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


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
            available = sorted(p.stem for p in group_dir.glob("*.yaml")) if group_dir.is_dir() else []
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
        return yaml.safe_load(text)
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


def load_config(ref: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Load, compose, override, resolve interpolations and validate a pipeline.

    Returns a plain dict with every default filled in (the form saved as ``config.yaml``).
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


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _check_type(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """Return the value (coerced int->float where a float is expected) or record a problem."""
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            sub: list[str] = []
            out = _check_type(value, arg, path, sub)
            if not sub:
                return out
        problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            problems.append(f"{path}: expected null, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping of {getattr(tp, '__name__', tp)} fields, got {value!r}")
            return value
        return _check_fields(_dataclass_schema(tp), value, path, problems)
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
            return value
        (arg,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, arg, f"{path}[{i}]", problems) for i, v in enumerate(value)]
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
        if isinstance(value, bool) or not isinstance(value, (int, float)):
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


_REQUIRED = object()


def _dataclass_schema(cls: Any) -> dict[str, tuple[Any, Any]]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if dataclasses.is_dataclass(default):
                default = dataclasses.asdict(default)  # type: ignore[arg-type]
        else:
            default = _REQUIRED
        out[f.name] = (hints[f.name], default)
    return out


def builder_schema(fn: Any) -> dict[str, tuple[Any, Any]]:
    """Parameter name -> (type, default) of a registered builder; its signature is the schema."""
    hints = typing.get_type_hints(fn)
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in INJECTED or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        default = _REQUIRED if p.default is inspect.Parameter.empty else p.default
        out[name] = (hints.get(name, Any), default)
    return out


def _check_fields(
    schema: dict[str, tuple[Any, Any]],
    values: dict[str, Any],
    path: str,
    problems: list[str],
    optional: set[str] = frozenset(),  # type: ignore[assignment]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value == "???":
            problems.append(f"{path}.{key}: required, give it on the command line: {path}.{key}=...")
            out[key] = value
            continue
        if key not in schema:
            problems.append(f"{path}.{key}: unknown key.{suggest(key, schema)} Valid keys: {', '.join(schema)}")
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


def _check_component(section: str, value: Any, path: str, problems: list[str]) -> dict[str, Any] | None:
    if value is None and section in DEFAULT_COMPONENT:
        value = {}
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a mapping with a `name`, got {value!r}")
        return None
    value = dict(value)
    name = value.pop("name", DEFAULT_COMPONENT.get(section))
    if name is None:
        kinds = ", ".join(COMPONENTS[section].list())
        problems.append(f"{path}.name: required; one of {kinds}")
        return None
    try:
        fn = COMPONENTS[section].get(str(name))
    except UnknownComponentError as e:
        problems.append(f"{path}.name: {e}")
        return None
    checked = _check_fields(builder_schema(fn), value, path, problems, optional=INFERRED)
    return {"name": name, **checked}


def validate(cfg: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """Validate a composed pipeline; raise one ConfigError listing every problem."""
    problems: list[str] = []
    out: dict[str, Any] = {}
    for key in cfg:
        if key not in TOP_LEVEL:
            problems.append(f"{key}: unknown top-level key.{suggest(key, TOP_LEVEL)} Valid: {', '.join(TOP_LEVEL)}")
    out["name"] = _check_type(cfg.get("name", "pipeline"), str, "name", problems)
    out["description"] = cfg.get("description", "")
    out["seed"] = _check_type(cfg.get("seed", 0), int, "seed", problems)
    out["run_dir"] = _check_type(cfg.get("run_dir", "runs"), str, "run_dir", problems)
    for section in COMPONENTS:
        if section not in cfg and section not in DEFAULT_COMPONENT:
            problems.append(f"{section}: required section missing (add `{section}: {{name: ...}}` or a defaults entry)")
            continue
        out[section] = _check_component(section, cfg.get(section), section, problems)
    out["trainer"] = _check_type(cfg.get("trainer") or {}, TrainerSpec, "trainer", problems)
    out["evaluation"] = _check_type(cfg.get("evaluation") or {}, EvaluationSpec, "evaluation", problems)

    stages = cfg.get("stages")
    if not isinstance(stages, list) or not stages:
        problems.append("stages: required, a non-empty list of stages (each with a name and max_epochs or max_steps)")
        stages = []
    out["stages"] = []
    names: list[str] = []
    for i, st in enumerate(stages):
        path = f"stages[{i}]"
        if not isinstance(st, dict):
            problems.append(f"{path}: expected a mapping, got {st!r}")
            continue
        path = f"stages[{i}]" + (f" ({st['name']})" if st.get("name") else "")
        spec = _check_type(st, StageSpec, path, problems)
        out["stages"].append(spec)
        name = spec.get("name")
        if not name:
            problems.append(f"{path}.name: required, a unique stage name")
        elif name in names:
            problems.append(f"{path}.name: duplicate stage name {name!r}")
        names.append(name)
        if spec.get("max_epochs") is None and spec.get("max_steps") is None:
            problems.append(f"{path}: set max_epochs or max_steps")
        _check_choice(spec.get("optim", {}).get("name"), ("adamw", "adam", "sgd"), f"{path}.optim.name", problems)
        _check_choice(
            spec.get("schedule", {}).get("name"),
            ("constant", "cosine", "onecycle", "cyclic"),
            f"{path}.schedule.name",
            problems,
        )
        ro = spec.get("rollout")
        if isinstance(ro, dict):
            for key in ("steps", "grow_every", "grow_by", "max_steps", "truncate_every"):
                if isinstance(ro.get(key), int) and ro[key] < 1:
                    problems.append(f"{path}.rollout.{key}: must be >= 1, got {ro[key]}")
            if (
                isinstance(ro.get("max_steps"), int)
                and isinstance(ro.get("steps"), int)
                and ro["max_steps"] < ro["steps"]
            ):
                problems.append(f"{path}.rollout.max_steps: {ro['max_steps']} is below steps {ro['steps']}")
        es = spec.get("early_stopping")
        if isinstance(es, dict):
            _check_choice(es.get("mode"), ("min", "max"), f"{path}.early_stopping.mode", problems)
        init = spec.get("init_from")
        if isinstance(init, str) and init.startswith("stage:") and init[6:] not in names[:-1]:
            problems.append(
                f"{path}.init_from: {init!r} names no earlier stage.{suggest(init[6:], names[:-1])} "
                f"Earlier stages: {', '.join(names[:-1]) or 'none'}"
            )
        if i == 0 and init == "previous":
            problems.append(f"{path}.init_from: the first stage has no previous stage (use scratch or pretrained)")
        for section in ("backbone", "head"):
            override = spec.get(section)
            if isinstance(override, dict):
                inherited = model_section(out, section, i - 1) if "name" not in override else {}
                spec[section] = _check_component(
                    section, {**(inherited or {}), **override}, f"{path}.{section}", problems
                )
        if i > 0 and any(spec.get(sec) for sec in ("backbone", "head")):
            changed = [
                sec for sec in ("backbone", "head") if model_section(out, sec, i) != model_section(out, sec, i - 1)
            ]
            init = spec.get("init_from") or "previous"
            if changed and (init == "previous" or init.startswith("stage:")):
                problems.append(
                    f"{path}.init_from: this stage changes the {' and '.join(changed)}, so it cannot start from "
                    f"{init!r} weights of another architecture; set init_from: scratch (or pretrained, or a checkpoint)"
                )
        if isinstance(spec.get("peft"), dict):
            spec["peft"] = _check_peft(spec["peft"], f"{path}.peft", problems)
        if isinstance(spec.get("data"), dict) and isinstance(out.get("data"), dict):
            merged = {**{k: v for k, v in out["data"].items()}, **spec["data"]}
            merged.pop("name", None)
            fn = DATAMODULES.get(out["data"]["name"]) if out["data"]["name"] in DATAMODULES else None
            if fn is not None:
                _check_fields(builder_schema(fn), merged, f"{path}.data", problems, optional=INFERRED)

    ev = out["evaluation"]
    if isinstance(ev, dict) and isinstance(ev.get("data"), dict) and isinstance(out.get("data"), dict):
        fn = DATAMODULES.get(out["data"]["name"]) if out["data"]["name"] in DATAMODULES else None
        if fn is not None:
            merged = {**{k: v for k, v in out["data"].items() if k != "name"}, **ev["data"]}
            _check_fields(builder_schema(fn), merged, "evaluation.data", problems, optional=INFERRED)
    if isinstance(ev, dict):
        for j, name in enumerate(ev.get("stages") or []):
            if name not in names:
                problems.append(f"evaluation.stages[{j}]: no stage {name!r}.{suggest(name, names)}")
        for j, b in enumerate(ev.get("baselines") or []):
            _check_choice(b, BASELINES, f"evaluation.baselines[{j}]", problems)
    if problems:
        raise ConfigError(problems, source=source)
    return out


def _check_peft(block: dict[str, Any], path: str, problems: list[str]) -> dict[str, Any]:
    """A stage's ``peft:`` block: common keys plus the method builder's parameters."""
    block = dict(block)
    method = block.get("method")
    if method is None:
        problems.append(f"{path}.method: required; one of {', '.join(PEFT_METHODS.list())}")
        return block
    try:
        fn = PEFT_METHODS.get(str(method))
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
    for key in ("targets", "layer_types"):
        if key in common and common[key] is not None:
            common[key] = _check_type(common[key], list[str], f"{path}.{key}", problems)
    if "merge_after" in common:
        _check_type(common["merge_after"], bool, f"{path}.merge_after", problems)
    return {
        "method": method,
        "adapter_name": None,
        "targets": None,
        "layer_types": None,
        "merge_after": False,
        **common,
        **checked,
    }


def _check_choice(value: Any, choices: tuple[str, ...], path: str, problems: list[str]) -> None:
    if value is not None and value not in choices:
        problems.append(f"{path}: {value!r} is not one of {', '.join(choices)}.{suggest(str(value), choices)}")


def model_section(cfg: dict[str, Any], section: str, stage_index: int) -> Any:
    """The ``backbone`` or ``head`` config stage ``stage_index`` trains: the latest stage override
    at or before it, else the pipeline's (``stage_index`` -1: the pipeline's)."""
    for k in range(min(stage_index, len(cfg.get("stages") or []) - 1), -1, -1):
        override = cfg["stages"][k].get(section)
        if override:
            return override
    return cfg.get(section)


def model_config(cfg: dict[str, Any], stage_index: int) -> dict[str, Any]:
    """``cfg`` with the backbone and head of stage ``stage_index`` (see :func:`model_section`)."""
    return {
        **cfg,
        "backbone": model_section(cfg, "backbone", stage_index),
        "head": model_section(cfg, "head", stage_index),
    }


def stage_data_config(cfg: dict[str, Any], stage_index: int) -> dict[str, Any]:
    """The data section a stage trains on: the pipeline's, with the stage's overrides.

    A rollout stage's samples carry as many future states as its longest rollout (``n_lead``).
    """
    data = dict(cfg["data"])
    if stage_index >= 0:
        stage = cfg["stages"][stage_index]
        data.update(stage.get("data") or {})
        rollout = stage.get("rollout")
        if rollout and "n_lead" in inspect.signature(COMPONENTS["data"].get(data["name"])).parameters:
            need = int(rollout.get("max_steps") or rollout.get("steps") or 1)
            data["n_lead"] = max(int(data.get("n_lead") or 1), need)
    return data


def to_yaml(cfg: dict[str, Any]) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(cfg))


def as_plain(obj: Any) -> Any:
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


# ---------------------------------------------------------------------------------------------
# building


def _call_builder(section: str, cfg: dict[str, Any], inferred: dict[str, Any], **objects: Any) -> Any:
    """Call a registered builder with the config's keys plus values inferred from the data.

    A key the user set explicitly must agree with the inferred value: a silent override would
    build a model whose shapes do not fit the data.
    """
    params = dict(cfg)
    name = params.pop("name")
    fn = COMPONENTS[section].get(name)
    sig = inspect.signature(fn).parameters
    problems = []
    for key, value in inferred.items():
        if key not in sig:
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


def build_datamodule(cfg: dict[str, Any], stage_index: int = -1) -> Any:
    """The datamodule of one stage (``-1``: the pipeline's own ``data:``, used for predict)."""
    data = stage_data_config(cfg, stage_index if stage_index >= 0 else len(cfg["stages"]) - 1)
    return _call_builder("data", data, {})


def data_facts(dm: Any) -> dict[str, Any]:
    """What the model must agree with: window geometry and channel counts of a set-up datamodule.

    A datamodule may define ``facts()`` itself (gridded data: grid, channels, statistics).
    """
    if hasattr(dm, "facts"):
        return dict(dm.facts())
    return {
        "context_length": dm.context_length,
        "horizon": dm.horizon,
        "n_exog": dm.n_exog,
        "n_targets": dm.n_targets,
        "seasonality": dm.seasonality,
    }


def build_task(cfg: dict[str, Any], facts: dict[str, Any]) -> Any:
    """Backbone + head + task for data with the given facts (see :func:`data_facts`)."""
    backbone = _call_builder("backbone", cfg["backbone"], facts)
    info = backbone.feature_info[-1]
    head_facts = {
        **facts,
        "in_features": info["channels"],
        "in_layout": info["layout"],
        "feature_info": [dict(level) for level in backbone.feature_info],
    }
    head = _call_builder("head", cfg["head"], head_facts)
    return _call_builder("task", cfg["task"], facts, backbone=backbone, head=head)
