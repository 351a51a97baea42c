"""What a stage trains and what its weights may start from, applied to a built task.

:mod:`sciadapt.stages.plan` decides the patterns (pure); this module applies them to a model's
parameters, checks that a checkpoint a stage starts from was trained on the same data layout, and
adds a stage's ``new_channels`` to the model it starts from.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sciadapt.backbones._channels import channel_key
from sciadapt.errors import CheckpointError, ConfigError
from sciadapt.stages.plan import StagePlan, channels_fact
from sciadapt.types import ExtendsChannels

#: data facts a checkpoint must share with the data a stage trains on (series channels and window)
SIGNATURE_KEYS = ("n_targets", "n_exog", "context_length", "horizon")


def _matches(name: str, pattern: str) -> bool:
    # `backbone` means the whole module, as `backbone.*` does
    return fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + ".")


def apply_trainable(
    model: torch.nn.Module, trainable: list[str], frozen: list[str], where: str, adapter_follows: bool = False
) -> tuple[int, int]:
    """Set ``requires_grad`` from glob patterns over parameter names; frozen wins.

    Returns (trainable count, total count). A pattern that matches no parameter is an error:
    it is almost always a typo, and silently training everything (or nothing) wastes a run.
    """
    names = [n for n, _ in model.named_parameters()]
    problems = []
    for key, pats in (("trainable", trainable), ("frozen", frozen)):
        for pat in pats:
            if not any(_matches(n, pat) for n in names):
                tops = sorted({n.split(".")[0] for n in names})
                problems.append(
                    f"{where}.{key}: pattern {pat!r} matches no parameter. Parameter names start with "
                    f"{', '.join(t + '.' for t in tops)} (e.g. {names[0]!r})"
                )
    if problems:
        raise ConfigError(problems)
    n_train = n_total = 0
    for n, p in model.named_parameters():
        on = any(_matches(n, t) for t in trainable) and not any(_matches(n, f) for f in frozen)
        p.requires_grad_(on)
        n_total += p.numel()
        n_train += p.numel() if on else 0
    if n_train == 0 and not adapter_follows:
        raise ConfigError(f"{where}: no parameter is trainable (check `trainable` and `frozen`)")
    return n_train, n_total


def check_signature(path: Path, ours: dict[str, Any]) -> None:
    """A checkpoint trained on other channels (or another window) fails here, naming both channel lists.

    ``ours`` is the data signature of the task about to load it (facts plus column names); files
    that are not sciadapt checkpoints, or carry no signature, pass.
    """
    if path.suffix not in (".ckpt", ".pt"):
        return
    try:
        meta = torch.load(path, map_location="cpu", weights_only=True).get("sciadapt", {})
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
    theirs = meta.get("data_signature")
    if not theirs or not ours:
        return
    for key in SIGNATURE_KEYS:
        if theirs.get(key) != ours.get(key):
            raise CheckpointError(
                f"checkpoint {path} was trained with {key}={theirs.get(key)} "
                f"(targets {theirs.get('target_columns')}, exog {theirs.get('exog_columns')}) but this data has "
                f"{key}={ours.get(key)} (targets {ours.get('target_columns')}, exog {ours.get('exog_columns')}): "
                f"select the same columns with data.target_columns / data.exog_columns, or train from scratch"
            )


# -- new input channels (stages[i].new_channels) ---------------------------------------------------
def grown_channels_key(plans: list[StagePlan], j: int) -> str | None:
    """The fact naming stage ``j``'s input channels when the pipeline adds channels in some stage (its
    channel list then changes from stage to stage), else None."""
    if j < 0 or not any(p.spec.new_channels is not None for p in plans):
        return None
    return channels_fact(str(plans[j].model["backbone"].get("name", "")))


def model_facts(
    facts: dict[str, Any],
    plans: list[StagePlan],
    stage_facts: Mapping[int, dict[str, Any]],
    j: int,
    start: bool = False,
) -> dict[str, Any]:
    """The facts stage ``j``'s model is built from: ``facts`` with the channels of the model after stage
    ``j`` (its data's channels) or, with ``start``, before the channels stage ``j`` adds.

    ``stage_facts`` holds each stage's data facts. Without a ``new_channels`` stage in the pipeline,
    ``facts`` is returned as it is.
    """
    key = grown_channels_key(plans, j)
    if key is None or key not in stage_facts.get(j, {}):
        return facts
    channels = [str(c) for c in stage_facts[j][key]]
    added = plans[j].spec.new_channels
    if start and added is not None:
        drop = {channel_key(n) for n in added.names}
        channels = [c for c in channels if channel_key(c) not in drop]
    return {**facts, key: channels}


def add_new_channels(backbone: Any, plan: StagePlan, data_facts: Mapping[str, Any]) -> None:
    """Append a stage's ``new_channels`` to the loaded backbone (a stage without them: nothing).

    The model's channels plus the new ones must be the stage's data channels, in order (the data's
    spelling is kept). The backbone keeps its weights bit for bit and logs the one line of the extension.

    Raises:
        ConfigError: If the backbone cannot add channels or its channels and the data's disagree.
    """
    added = plan.spec.new_channels
    if added is None:
        return
    where = f"{plan.where}.new_channels"
    if not isinstance(backbone, ExtendsChannels):
        raise ConfigError(f"{where}: backbone {type(backbone).__name__} cannot add input channels")
    want = [str(c) for c in data_facts[type(backbone).CHANNELS_FACT]]
    have = backbone.channel_names
    expected = [*have, *added.names]
    if [channel_key(c) for c in want] != [channel_key(c) for c in expected]:
        raise ConfigError(
            f"{where}: the model this stage starts from has the channels {', '.join(have)}; with "
            f"{', '.join(added.names)} appended that is [{', '.join(expected)}], but the stage's data has "
            f"[{', '.join(want)}]: list the model's channels, then the new ones, in the stage's data"
        )
    backbone.extend_input_channels(want[len(have) :], added.init)
