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


class OutputError(SciadaptError):
    """An output location that cannot be written (a read-only place, a file where a folder is needed)."""


EXIT_PREEMPTED = 3  # the CLI's exit status after a preemption checkpoint


class Preempted(Exception):  # noqa: N818 (an event, not an error)
    """A run stopped on a preemption signal after writing its resume checkpoint
    (see :mod:`sciadapt.stages.preempt`)."""

    exit_code = EXIT_PREEMPTED

    def __init__(
        self,
        signum: int,
        stage: str,
        epoch: int | None = None,
        step: int | None = None,
        phase: str | None = None,
        received: str | None = None,
    ) -> None:
        self.signum = int(signum)
        self.stage = stage
        self.epoch = epoch
        self.step = step
        self.phase = phase  # where the run stopped (see sciadapt.stages.preempt.PHASES); None: a training step
        self.received = received  # the phase the signal arrived in
        self.run_dir: Path | None = None  # set by the runner
        super().__init__(f"{signal.Signals(self.signum).name} received: {self._where()}")

    def _where(self) -> str:
        stage, epoch, step = self.stage, self.epoch, self.step
        if self.phase in (None, "train") and step is not None:
            return f"checkpoint written at stage {stage!r}, epoch {epoch}, step {step}"
        return {
            "preflight": "stopped while checking the pipeline and its data, before anything was written",
            "setup": f"stopped before stage {stage!r} started",
            "between": f"stopped before stage {stage!r} started",
            "trained": f"stage {stage!r} finished training and its final weights are saved; the resume scores them",
            "test": f"stopped while testing stage {stage!r}; its final weights are saved, the resume scores them again",
            "compare": "stopped during the final comparison; every stage is complete, the resume redoes the comparison",
        }.get(self.phase or "", f"stopped at stage {stage!r} (before it started)")

    def record(self) -> dict[str, Any]:
        """What ``state.json`` keeps under ``preemptions`` (``interruptions`` for :class:`Interrupted`)."""
        return {
            "signal": signal.Signals(self.signum).name,
            "stage": self.stage,
            "epoch": self.epoch,
            "step": self.step,
            "phase": self.phase or "train",
            "received": self.received,
        }


EXIT_INTERRUPTED = 130  # the CLI's exit status after Ctrl-C (128 + SIGINT, as a shell reports it)


class Interrupted(Preempted):
    """A run stopped on Ctrl-C (SIGINT) at the same safe points as a preemption, with its resume state
    written; the CLI exits :data:`EXIT_INTERRUPTED` and requeues nothing. A subclass of
    :class:`Preempted` so that every clean-stop path handles it; catch it first to tell them apart."""

    exit_code = EXIT_INTERRUPTED
