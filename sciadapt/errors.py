"""User-facing errors. Every message says what is wrong *and* what to change.

The CLI catches :class:`SciadaptError` and prints the message without a traceback
(set ``SCIADAPT_DEBUG=1`` to see one) and exits with status 2.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any


class SciadaptError(Exception):
    """Base class of errors caused by user input (config, data, checkpoints)."""

    exit_code = 2


class ConfigError(SciadaptError):
    """An invalid pipeline config. Holds every problem found, not just the first."""

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"invalid config{f' {source}' if source else ''}"
        if len(self.problems) == 1:
            msg = f"{head}: {self.problems[0]}"
        else:
            msg = f"{head}: {len(self.problems)} problems\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(msg)


class UnknownComponentError(SciadaptError):
    """A name that is not in a registry."""


class ShapeError(SciadaptError):
    """A tensor whose shape does not match the documented layout."""


class CheckpointError(SciadaptError):
    """A checkpoint that cannot be loaded into the requested model."""


class DataError(SciadaptError):
    """Input data that cannot be used as given (missing column, bad timestamps, NaNs...)."""


EXIT_PREEMPTED = 3  # the CLI's exit status after a preemption checkpoint


class Preempted(Exception):  # noqa: N818 (an event, not an error)
    """A run stopped on a preemption signal after writing its resume checkpoint
    (see :mod:`sciadapt.stages.preempt`)."""

    def __init__(self, signum: int, stage: str, epoch: int | None = None, step: int | None = None) -> None:
        self.signum = int(signum)
        self.stage = stage
        self.epoch = epoch
        self.step = step
        self.run_dir: Path | None = None  # set by the runner
        where = f"stage {stage!r}" + (f", epoch {epoch}, step {step}" if step is not None else " (before it started)")
        super().__init__(f"{signal.Signals(self.signum).name} received: checkpoint written at {where}")

    def record(self) -> dict[str, Any]:
        """What ``state.json`` keeps under ``preemptions``."""
        return {"signal": signal.Signals(self.signum).name, "stage": self.stage, "epoch": self.epoch, "step": self.step}
