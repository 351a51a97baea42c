"""Messages of the verbs that reopen a run or read pretrained weights (``test``, ``predict``).

The datamodules and backbones say what to change in config terms (``data.context_length``,
``data.split``). A verb that cannot set those keys must name what it does accept instead: its own
flag (``--context-length``), or retraining with the key. :func:`verb_keys` rewrites an error
raised inside it accordingly; the error keeps its class (and so its exit status).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from sciadapt.errors import SciadaptError

#: ``predict --run`` / ``test --run``: the run's data settings are fixed; only the file may change.
RUN_FLAGS: Mapping[str, str] = {"data.path": "--data"}

#: ``predict --backbone B --weights W``: the zero-shot flags and the data keys they set.
ZERO_SHOT_FLAGS: Mapping[str, str] = {
    "data.path": "--data",
    "data.context_length": "--context-length",
    "data.horizon": "--horizon",
    "data.target_columns": "--target-columns",
    "data.timestamp_column": "--timestamp-column",
}

_KEY = re.compile(r"\bdata\.([A-Za-z_][A-Za-z0-9_]*)\b")


def rephrase(message: str, verb: str, flags: Mapping[str, str], retrain: bool) -> str:
    """``message`` with each data key that ``verb`` sets by a flag named by that flag, and a note
    on the keys it cannot set.

    Args:
        message: An error message written in config terms.
        verb: The command, as the user typed it (``sciadapt test --run``).
        flags: Data key -> the verb's flag for it.
        retrain: Whether the other keys are a run's training settings (``--run``): the note then says
            to retrain with them; otherwise (zero-shot) that the verb reads the file with defaults.
    """
    out = message
    for key, flag in flags.items():
        out = re.sub(rf"\b{re.escape(key)}\b", flag, out)
    fixed = list(dict.fromkeys(f"data.{m}" for m in _KEY.findall(out)))
    if not fixed:
        return out
    keys = ", ".join(fixed)
    given = ", ".join(sorted(set(flags.values())))
    if retrain:
        note = (
            f"`{verb}` keeps the run's {keys} (it takes only {given}): give a file those settings fit, or "
            f"train again with `sciadapt fit <pipeline> {fixed[0]}=...`"
        )
    else:
        note = (
            f"`{verb}` cannot set {keys} (it takes only {given}): give a file that needs no change to them, or "
            f"fine-tune a run with `sciadapt fit <pipeline> {fixed[0]}=...` and predict with --run"
        )
    return f"{out.rstrip()}\n  ({note})"


@contextmanager
def verb_keys(verb: str, flags: Mapping[str, str], retrain: bool = True) -> Iterator[None]:
    """Rewrite a :class:`SciadaptError` raised inside into ``verb``'s terms (see :func:`rephrase`)."""
    try:
        yield
    except SciadaptError as err:
        message = rephrase(str(err), verb, flags, retrain)
        if message == str(err):
            raise
        new = copy.copy(err)
        new.args = (message,)
        raise new from None
