"""What each stage trains: a pure plan of a validated pipeline, testable without Lightning.

:func:`plan` is the one owner of the stage rules: which data a stage reads, which model it
trains, what its weights start from (``init_from``), which adapters are live after it, and the
rules that tie stages together (unique names, an earlier stage to start from, no weights of
another architecture, rollout bounds). The runner executes the plans; ``predict``, ``test`` and
``resume`` rebuild a stage's model from its plan.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sciadapt import index
from sciadapt.backbones._channels import channel_key, extension_problems, rule_problems
from sciadapt.errors import ConfigError
from sciadapt.registry import BACKBONES, DATAMODULES, suggest
from sciadapt.spec import PEFT_COMMON, PipelineSpec, StageSpec

INIT_WORDS = ("previous", "scratch", "pretrained")


@dataclass(frozen=True)
class StagePlan:
    """One stage of a pipeline, resolved.

    Attributes:
        index: Position in the pipeline.
        spec: The stage's validated section.
        data: The data section it trains on: the pipeline's, with the stage's overrides (a rollout
            stage's samples carry as many future states as its longest rollout).
        model: The ``backbone``, ``head`` and ``task`` sections of the model it trains.
        init: What its weights start from: previous, scratch, pretrained, ``stage:<name>`` or a
            checkpoint path (the default filled in).
        init_stage: The stage whose final weights it starts from (previous or ``stage:<name>``).
        adapter: The name of the adapter it attaches (PEFT stages).
        live_adapters: Stages whose unmerged adapters are part of the model after this stage
            (the module structure of its final checkpoint).
    """

    index: int
    spec: StageSpec
    data: dict[str, Any]
    model: dict[str, Any]
    init: str
    init_stage: int | None
    adapter: str | None
    live_adapters: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def where(self) -> str:
        """The key path of the stage in messages: ``stages[1] (probe)``."""
        return f"stages[{self.index}] ({self.spec.name})"

    @property
    def init_file(self) -> str | None:
        """The checkpoint file the stage starts from (``init_from: <path>``), else None."""
        return None if self.init in INIT_WORDS or self.init.startswith("stage:") else self.init

    @property
    def evaluation_only(self) -> bool:
        """``max_epochs: 0`` or a ``merge:`` stage: the weights are scored as loaded (or merged), nothing trains."""
        return self.spec.max_epochs == 0 or self.spec.merge is not None

    def peft_method_args(self) -> dict[str, Any]:
        """The builder arguments of the stage's PEFT method (its ``peft:`` block less the common keys)."""
        assert self.spec.peft is not None
        return {k: v for k, v in self.spec.peft.items() if k not in PEFT_COMMON and k != "method"}


def trainable_patterns(stage: StageSpec, head_has_params: bool) -> list[str]:
    """The parameter globs a stage trains: its ``trainable`` list, else everything; a PEFT stage
    trains its adapter and the head (a parameter-free head, as in a backbone that forecasts
    itself like TTM and MOMENT, leaves only the adapter)."""
    if stage.trainable is not None:
        return list(stage.trainable)
    if stage.peft:
        return ["head"] if head_has_params else []
    return ["*"]


def model_section(spec: PipelineSpec, section: str, stage_index: int) -> dict[str, Any]:
    """The ``backbone`` or ``head`` stage ``stage_index`` trains: the latest stage override at or
    before it, else the pipeline's (``stage_index`` -1: the pipeline's)."""
    for k in range(min(stage_index, len(spec.stages) - 1), -1, -1):
        override = getattr(spec.stages[k], section)
        if override:
            return dict(override)
    return dict(getattr(spec, section))


def model_of(spec: PipelineSpec, stage_index: int) -> dict[str, Any]:
    """The ``backbone``, ``head`` and ``task`` sections stage ``stage_index`` trains."""
    return {
        "backbone": model_section(spec, "backbone", stage_index),
        "head": model_section(spec, "head", stage_index),
        "task": dict(spec.task),
    }


def stage_data(spec: PipelineSpec, stage_index: int) -> dict[str, Any]:
    """The data section stage ``stage_index`` trains on (-1: the pipeline's own ``data:``)."""
    data = dict(spec.data)
    if stage_index < 0:
        return data
    stage = spec.stages[stage_index]
    data.update(stage.data or {})
    if stage.rollout is not None and "n_lead" in DATAMODULES.signature(data["name"]).parameters:
        data["n_lead"] = max(int(data.get("n_lead") or 1), stage.rollout.longest)
    return data


def evaluation_data(spec: PipelineSpec) -> dict[str, Any]:
    """The data of the final comparison: the last stage's, with ``evaluation.data`` overrides."""
    return {**stage_data(spec, len(spec.stages) - 1), **(spec.evaluation.data or {})}


def shifted_data(spec: PipelineSpec, base: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The data of the shifted test split (``evaluation.shifted`` over ``base``, by default the
    comparison's data), or None when the pipeline has none."""
    if spec.evaluation.shifted is None:
        return None
    return {**(evaluation_data(spec) if base is None else base), **spec.evaluation.shifted}


def effective_init(spec: PipelineSpec, i: int) -> str:
    """``init_from`` of stage ``i`` with its default: previous after the first stage; the first
    stage starts from pretrained weights when its backbone names them, else from scratch. A
    ``merge:`` stage has the structure of the first stage it merges (``stage:<name>``)."""
    merge = spec.stages[i].merge
    if merge is not None and merge.stages:
        return f"stage:{merge.stages[0]}"
    init = spec.stages[i].init_from
    if init is None:
        init = (
            "previous" if i > 0 else ("pretrained" if model_section(spec, "backbone", 0).get("weights") else "scratch")
        )
    return init


def _live_adapters(spec: PipelineSpec, j: int) -> list[int]:
    names = [s.name for s in spec.stages]
    live: list[int] = []
    for k in range(j + 1):
        init = effective_init(spec, k)
        if init.startswith("stage:"):
            live = _live_adapters(spec, names.index(init[6:]))
        elif init not in ("previous", "pretrained"):
            live = []  # scratch or a plain checkpoint: the base structure
        pf = spec.stages[k].peft
        if pf and not pf["merge_after"]:
            live.append(k)
    return live


def _problems(spec: PipelineSpec) -> list[str]:
    problems: list[str] = []
    names: list[str] = []
    for i, st in enumerate(spec.stages):
        path = f"stages[{i}]" + (f" ({st.name})" if st.name else "")
        if not st.name:
            problems.append(f"{path}.name: required, a unique stage name")
        elif st.name in names:
            problems.append(f"{path}.name: duplicate stage name {st.name!r}")
        names.append(st.name)
        if st.merge is not None:
            problems += _merge_problems(spec, i, path, names[:-1])
        elif st.max_epochs is None and st.max_steps is None:
            problems.append(f"{path}: set max_epochs or max_steps")
        ro = st.rollout
        if ro is not None and ro.max_steps is not None and ro.max_steps < ro.steps:
            problems.append(f"{path}.rollout.max_steps: {ro.max_steps} is below steps {ro.steps}")
        if st.ema is not None:
            if st.ema.decay >= 1:
                problems.append(
                    f"{path}.ema.decay: {st.ema.decay:g} would keep the starting weights for good; "
                    "use a value below 1 (e.g. 0.999)"
                )
            if st.max_epochs == 0:
                problems.append(f"{path}.ema: the stage trains nothing (max_epochs: 0), so there is no average")
        init = st.init_from
        if init is not None and init.startswith("stage:") and init[6:] not in names[:-1]:
            problems.append(
                f"{path}.init_from: {init!r} names no earlier stage.{suggest(init[6:], names[:-1])} "
                f"Earlier stages: {', '.join(names[:-1]) or 'none'}"
            )
        if i == 0 and init == "previous":
            problems.append(f"{path}.init_from: the first stage has no previous stage (use scratch or pretrained)")
        if init == "pretrained" and not model_section(spec, "backbone", i).get("weights"):
            problems.append(
                f"{path}.init_from: pretrained, but the stage's backbone.weights is not set: set backbone.weights "
                "(a folder, a file or hf://org/repo@revision), or start from scratch (init_from: scratch)"
            )
        if i > 0 and (st.backbone or st.head):
            changed = [
                sec for sec in ("backbone", "head") if model_section(spec, sec, i) != model_section(spec, sec, i - 1)
            ]
            start = init or "previous"
            if changed and (start == "previous" or start.startswith("stage:")):
                problems.append(
                    f"{path}.init_from: this stage changes the {' and '.join(changed)}, so it cannot start from "
                    f"{start!r} weights of another architecture; set init_from: scratch (or pretrained, or a checkpoint)"
                )
        if st.new_channels is not None:
            problems += _new_channel_problems(spec, i, path)
    for j, name in enumerate(spec.evaluation.stages or []):
        if name not in names:
            problems.append(f"evaluation.stages[{j}]: no stage {name!r}.{suggest(name, names)}")
    return problems + _evaluation_channel_problems(spec) + _shifted_problems(spec)


# -- merge stages (stages[i].merge) -----------------------------------------------------------------
#: what each merge method needs: (fewest stages, most stages or None, an anchor)
MERGE_NEEDS: dict[str, tuple[int, int | None, bool]] = {
    "soup": (2, None, False),
    "greedy_soup": (2, None, False),
    "model_stock": (2, None, True),
    "wise_ft": (1, 1, True),
}
#: stage keys that train or reshape a model, which a merge stage (it trains nothing) must leave out
_NOT_IN_MERGE = ("peft", "ema", "new_channels", "backbone", "head", "init_from", "rollout", "early_stopping")


def _merge_problems(spec: PipelineSpec, i: int, path: str, earlier: list[str]) -> list[str]:
    """A ``merge:`` stage: it trains nothing; it names earlier stages of its own architecture, whose
    final weights are full weights (no unmerged adapter), as many as its method needs."""
    st = spec.stages[i]
    mg = st.merge
    assert mg is not None
    where = f"{path}.merge"
    problems: list[str] = []
    # max_epochs/max_steps are not refused: `stages.*.max_epochs=1` sets them on every stage, and a merge
    # stage has nothing to run for long
    for key in _NOT_IN_MERGE:
        if getattr(st, key):
            problems.append(
                f"{path}.{key}: a merge stage trains nothing and keeps the model of the stages it merges; "
                f"drop {key} (or train in a stage after it)"
            )
    least, most, needs_anchor = MERGE_NEEDS[mg.method]
    if len(mg.stages) < least or (most is not None and len(mg.stages) > most):
        want = f"exactly {least}" if most == least else f"at least {least}"
        what = " (a soup of one model is that model)" if "soup" in mg.method else ""
        problems.append(f"{where}.stages: {mg.method} merges {want} stage(s), got {len(mg.stages)}{what}")
    named = [(f"{where}.stages[{j}]", n) for j, n in enumerate(mg.stages)]
    if mg.anchor is not None:
        if not needs_anchor:
            problems.append(f"{where}.anchor: {mg.method} takes no anchor (wise_ft and model_stock do); drop it")
        named.append((f"{where}.anchor", mg.anchor))
    elif needs_anchor:
        problems.append(
            f"{where}.anchor: {mg.method} needs the stage of the pretrained/zero-shot weights (e.g. a `max_epochs: 0` "
            f"stage of the pretrained backbone); earlier stages: {', '.join(earlier) or 'none'}"
        )
    if mg.method != "wise_ft" and mg.alpha is not None:
        problems.append(f"{where}.alpha: only wise_ft interpolates with alpha; drop it for {mg.method}")
    dup = sorted({n for n in mg.stages if mg.stages.count(n) > 1})
    if dup:
        problems.append(f"{where}.stages: {', '.join(dup)} named twice (give each stage once)")
    if mg.anchor is not None and mg.anchor in mg.stages:
        problems.append(f"{where}.anchor: {mg.anchor!r} is also one of merge.stages; the anchor is another stage")
    mine = model_of(spec, i)
    for key, name in named:
        if name not in earlier:
            problems.append(
                f"{key}: {name!r} names no earlier stage.{suggest(name, earlier)} "
                f"Earlier stages: {', '.join(earlier) or 'none'}"
            )
            continue
        k = earlier.index(name)
        theirs = model_of(spec, k)
        changed = [sec for sec in ("backbone", "head") if theirs[sec] != mine[sec]]
        if changed:
            problems.append(
                f"{key}: stage {name!r} trains another {' and '.join(changed)} than this stage's model; merge only "
                "stages of one architecture"
            )
            continue
        try:
            live = _live_adapters(spec, k)
        except ValueError:  # a broken init_from of that stage, reported on its own
            continue
        if live:
            adapters = ", ".join(spec.stages[a].name for a in live)
            problems.append(
                f"{key}: stage {name!r} keeps the adapter(s) of {adapters} unmerged, and averaging LoRA factors "
                "A and B is not averaging their updates B A; set peft.merge_after: true on those stages"
            )
    return problems


def _shifted_problems(spec: PipelineSpec) -> list[str]:
    """``evaluation.shifted``: data keys (over the comparison's data) its datamodule takes."""
    shifted = spec.evaluation.shifted
    if shifted is None:
        return []
    if not shifted:
        return ["evaluation.shifted: empty; give the data keys of the shifted split (e.g. {path: other_site.csv})"]
    # config.py's check of data overrides, merged over the pipeline's data (as evaluation.data is checked)
    from sciadapt.config import _check_data_overrides

    problems: list[str] = []
    _check_data_overrides(spec.data, {**(spec.evaluation.data or {}), **shifted}, "evaluation.shifted", problems)
    return problems


# -- new input channels (stages[i].new_channels) ---------------------------------------------------
def channels_fact(backbone: str) -> str | None:
    """The builder parameter naming ``backbone``'s input channels when its class can add channels
    (``CHANNELS_FACT`` of :class:`~sciadapt.types.ExtendsChannels`), else None; read from the source
    where the index can (no import)."""
    try:
        value = BACKBONES.describe(backbone).built_attribute("CHANNELS_FACT")
    except (AttributeError, KeyError, TypeError, NameError, index.NotStatic):
        return None
    return value if isinstance(value, str) else None


def channel_backbones() -> list[str]:
    """The registered backbones whose class declares ``CHANNELS_FACT`` in its source (for messages; no import)."""

    def refuse() -> index.BuilderInfo:
        raise index.NotStatic("not read without importing")

    found = []
    for name, entry in index.index().entries.get(BACKBONES.variable or "", {}).items():
        try:
            value = index.describe(entry, refuse).built_attribute("CHANNELS_FACT")
        except (AttributeError, index.NotStatic):
            continue
        if isinstance(value, str):
            found.append(name)
    return sorted(found)


def _new_channel_problems(spec: PipelineSpec, i: int, path: str) -> list[str]:
    nc = spec.stages[i].new_channels
    assert nc is not None
    where = f"{path}.new_channels"
    problems = rule_problems(nc.names, nc.init, where)
    backbone = str(model_section(spec, "backbone", i).get("name", ""))
    if channels_fact(backbone) is None:
        problems.append(
            f"{where}: backbone {backbone} cannot add input channels (its channels have no names it can grow); "
            f"backbones that can: {', '.join(channel_backbones()) or 'none'}"
        )
    if effective_init(spec, i) == "scratch":
        problems.append(
            f"{where}: the stage starts from scratch, so there are no trained weights to extend: start it from "
            "pretrained weights (backbone.weights), a previous stage or a checkpoint, or drop new_channels "
            "(a model built from scratch takes every channel of its data)"
        )
    return problems


def _evaluation_channel_problems(spec: PipelineSpec) -> list[str]:
    """Stages scored in the comparison (on the last stage's data) must have every channel it has."""
    names = [s.name for s in spec.stages]
    adds = [i for i, st in enumerate(spec.stages) if st.new_channels is not None]
    if not adds:
        return []
    last = adds[-1]
    listed = spec.evaluation.stages if spec.evaluation.stages is not None else names
    early = [n for n in listed if n in names and names.index(n) < last]
    if not early:
        return []
    added = spec.stages[last].new_channels
    assert added is not None
    return [
        f"evaluation.stages: {', '.join(early)} ran before stage {names[last]!r} adds the input channels "
        f"{', '.join(added.names)}, so their models cannot be scored on the last stage's data; list the stages "
        f"from {names[last]!r} on (evaluation.stages: [{', '.join(names[last:])}])"
    ]


def new_channel_problems(plan: StagePlan, data_facts: dict[str, Any]) -> list[str]:
    """A ``new_channels`` stage against its data (checked in the runner's preflight, once the data is read).

    The data names its channels under the backbone's ``CHANNELS_FACT``, has the new ones, and lists them
    last in the declared order; ``copy:<name>`` names one of the other (the model's) channels.
    """
    nc = plan.spec.new_channels
    key = channels_fact(str(plan.model["backbone"].get("name", "")))
    if nc is None or key is None:  # an unsupported backbone was reported by plan()
        return []
    where = f"{plan.where}.new_channels"
    channels = data_facts.get(key)
    if not isinstance(channels, list | tuple):
        return [
            f"{where}: the stage's data does not name its channels (it has no {key!r} fact), so the new channels "
            f"cannot be found in it; use a datamodule that names its channels ({key})"
        ]
    channels = [str(c) for c in channels]
    keys = [channel_key(c) for c in channels]
    missing = [n for n in nc.names if channel_key(n) not in keys]
    if missing:
        return [
            f"{where}.names: the stage's data has no channel {', '.join(missing)}; its channels: "
            f"{', '.join(channels)} (choose them with data.{key})"
        ]
    new = [channel_key(n) for n in nc.names]
    old = [c for c in channels if channel_key(c) not in new]
    if keys[len(old) :] != new:
        return [
            f"{where}: the data must list the new channels last, in the order of new_channels.names: expected "
            f"data.{key}: [{', '.join([*old, *nc.names])}], got [{', '.join(channels)}]"
        ]
    return extension_problems(old, nc.names, nc.init, where)


def init_file_problems(spec: PipelineSpec, stages: list[int] | None = None) -> list[str]:
    """``init_from`` values of ``stages`` (default: all) that name no existing checkpoint file.

    ``init_from`` is ``previous | scratch | pretrained | stage:<name>`` or the path of a file; a value
    that is none of these (``previus``, a path with a typo) is named with the closest keyword or
    stage. Checked when a pipeline is validated or starts, not when a finished run is reopened (its
    start file may be gone by then).
    """
    problems = []
    for i in range(len(spec.stages)) if stages is None else stages:
        st = spec.stages[i]
        init = st.init_from
        if init is None or init in INIT_WORDS or init.startswith("stage:"):
            continue
        path = Path(init).expanduser()
        if path.is_file():
            continue
        where = f"stages[{i}]" + (f" ({st.name})" if st.name else "") + ".init_from"
        earlier = [f"stage:{s.name}" for s in spec.stages[:i] if s.name]
        if path.is_dir():
            problems.append(f"{where}: {init!r} is a folder; give the checkpoint file in it (e.g. {path}/final.ckpt)")
            continue
        hint = suggest(init, [*INIT_WORDS, *earlier])
        grammar = "previous, scratch, pretrained, stage:<name of an earlier stage> or the path of a checkpoint file"
        problems.append(
            f"{where}: {init!r} is not a checkpoint file (no such file{'' if path.is_absolute() else f' in {Path.cwd()}'})"
            f" nor a keyword.{hint} init_from is {grammar}"
            + (f" (earlier stages: {', '.join(earlier)})" if earlier else "")
        )
    return problems


def plan(spec: PipelineSpec, source: str | None = None) -> list[StagePlan]:
    """The plan of every stage; one ConfigError lists every broken stage rule."""
    problems = _problems(spec)
    if problems:
        raise ConfigError(problems, source=source)
    names = [s.name for s in spec.stages]
    plans = []
    for i, st in enumerate(spec.stages):
        init = effective_init(spec, i)
        init_stage = i - 1 if init == "previous" else (names.index(init[6:]) if init.startswith("stage:") else None)
        adapter = (st.peft["adapter_name"] or st.name) if st.peft else None
        plans.append(
            StagePlan(
                index=i,
                spec=st,
                data=stage_data(spec, i),
                model=model_of(spec, i),
                init=init,
                init_stage=init_stage,
                adapter=adapter,
                live_adapters=tuple(_live_adapters(spec, i)),
            )
        )
    return plans


def with_stage_data(spec: PipelineSpec, stage_index: int, **data: Any) -> PipelineSpec:
    """``spec`` with ``data`` keys set in the ``data:`` overrides of stage ``stage_index``."""
    stages = list(spec.stages)
    st = stages[stage_index]
    stages[stage_index] = dataclasses.replace(st, data={**(st.data or {}), **data})
    return dataclasses.replace(spec, stages=tuple(stages))
