"""What a stage trains and what its weights may start from, applied to a built task.

:mod:`sciadapt.stages.plan` decides the patterns (pure); this module applies them to a model's
parameters and checks that a checkpoint a stage starts from was trained on the same data layout.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import torch

from sciadapt.errors import CheckpointError, ConfigError

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
