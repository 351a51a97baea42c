"""Signal-safe runs: on SIGUSR1, SIGTERM or Ctrl-C (SIGINT), stop at the next safe point with what
``--resume`` needs on disk, in every phase of a run.

SLURM sends ``SIGUSR1`` ahead of the time limit when the job asks for it
(``#SBATCH --signal=USR1@120``, what ``sciadapt submit --cluster`` writes) and ``SIGTERM`` on
preemption or ``scancel``; a user presses Ctrl-C. The stage runner then

1. records the signal (:class:`SignalWatch`, installed by :func:`sciadapt.stages.runner.fit` for the
   whole run: preflight, every stage's training, validation and test, the comparison). While it is
   installed, Lightning installs no handlers of its own (:func:`_lightning_keeps_off`): a ``Trainer``
   would otherwise replace SIGTERM's for each ``fit``/``test`` and end the process with a code-less
   ``SystemExit`` (exit 0, the run unfinished), and turn a ``KeyboardInterrupt`` into ``exit(1)``;
2. stops at the next safe point of the phase it is in (:data:`PHASES`):

   - training: finishes the optimizer step in flight and, before the next batch, writes the stage's
     ``last.ckpt`` with the exact position: epoch, batches done on this rank, and the RNG states
     (:class:`PreemptionCheckpoint`); under DDP every rank stops at the same step (the flag is
     all-reduced each step). A signal during validation or while a checkpoint is written stops at the
     next step too (or, in the last epoch, once the stage's final weights are saved);
   - testing (a stage's test, the comparison): before the next test batch (:class:`SignalPoints`);
     under DDP each rank scores on its own, so the ranks agree once the test is done
     (:meth:`SignalWatch.check` all-reduces the flag);
   - between stages, after a stage's training, after its test, after the comparison:
     :meth:`SignalWatch.check`;
   - before anything was written (the pipeline and data checks): at once.

3. marks ``state.json`` ``preempted`` (``interrupted`` for SIGINT) with a record of the signal, the
   stage and the phase, and raises :class:`Preempted` (:class:`Interrupted`), which the CLI turns into
   exit code :data:`EXIT_PREEMPTED` after ``scontrol requeue`` when it runs under SLURM
   (:data:`EXIT_INTERRUPTED`, no requeue, for Ctrl-C). A second Ctrl-C stops at once.

``sciadapt fit --resume <run>`` (what a requeued job runs) continues where the run stopped: mid-stage, the
train sampler skips the samples this rank had already seen in the epoch
(:meth:`sciadapt.datamodules.sampling.ShardedEpochSampler.resume_at`) and the RNG states are restored before
the next batch; a stage whose training had finished (``state.json`` ``trained``) is only scored again
from its saved final weights; an interrupted comparison is redone. The finished run equals an uninterrupted
one.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, cast

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

from sciadapt.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED, CheckpointError, Interrupted, Preempted
from sciadapt.types import DataModule

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_PREEMPTED",
    "FAULT_ENV",
    "PHASES",
    "Interrupted",
    "Preempted",
    "PreemptionCheckpoint",
    "SignalPoints",
    "SignalWatch",
    "enter_phase",
    "fault_point",
    "requeue",
]

log = logging.getLogger("sciadapt")

PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
#: every signal a run stops on cleanly: the preemption signals and Ctrl-C
STOP_SIGNALS = (*PREEMPT_SIGNALS, signal.SIGINT)

#: the phases of a run, in order (``state.json`` records the one a signal came in and the one it stopped at)
PHASES = (
    "preflight",  # checking the pipeline and every stage's data; no run directory yet
    "setup",  # the run directory exists (or is resumed); before the first stage to run
    "train",  # a stage's optimizer steps
    "validation",  # a stage's validation (sanity check included)
    "checkpoint",  # writing the epoch-end resume checkpoint
    "trained",  # a stage's training is done: restoring the best weights, saving the final ones
    "test",  # a stage's test
    "between",  # a stage is complete, the next has not started
    "compare",  # the final comparison of every stage and baseline
)

#: how the log names each phase ("SIGTERM received during <words>")
_PHASE_WORDS = {
    "preflight": "the pipeline and data checks",
    "setup": "setup",
    "train": "training",
    "validation": "validation",
    "checkpoint": "checkpoint saving",
    "trained": "the end of training",
    "test": "testing",
    "between": "the pause between stages",
    "compare": "the final comparison",
}

#: Testing aid: ``SCIADAPT_FAULT=<phase>[@<stage>]:<SIGNAL>[,...]`` (e.g. ``test@probe:SIGTERM``)
#: makes :func:`fault_point` send this process that signal the first time the run reaches that
#: phase (of that stage); tests/integration/test_signals.py uses it to hit each phase exactly.
FAULT_ENV = "SCIADAPT_FAULT"

_active: list[SignalWatch] = []  # the installed watch (a stack: the innermost is in force)
_fired: set[str] = set()  # fault-injection entries already sent in this process


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _distributed() -> bool:
    return bool(torch.distributed.is_available() and torch.distributed.is_initialized())


@contextmanager
def _lightning_keeps_off() -> Iterator[None]:
    """Make every ``Trainer`` built meanwhile leave the process's signal handlers alone.

    ``Trainer._run`` (behind ``fit``, ``validate``, ``test`` and ``predict``) calls
    ``_SignalConnector.register_signal_handlers``, which puts Lightning's SIGTERM handler in front
    (setting ``trainer.received_sigterm``, on which its loops raise ``SIGTERMException``, a code-less
    ``SystemExit``) and, under SLURM auto-requeue, its own SIGUSR1 one; its ``teardown`` restores what
    it saved. Replacing the method for as long as a :class:`SignalWatch` is installed covers every
    trainer of the run (a stage's, the scoring ones, any a task builds) from the moment it starts,
    where reinstalling ours from callbacks would leave gaps (setup, checkpoint restore) and trainers
    without our callbacks. ``received_sigterm`` then stays false and the teardown has nothing to restore.
    """
    original = _SignalConnector.register_signal_handlers
    _SignalConnector.register_signal_handlers = _keep_handlers  # type: ignore[method-assign]
    try:
        yield
    finally:
        _SignalConnector.register_signal_handlers = original  # type: ignore[method-assign]


def _keep_handlers(self: _SignalConnector) -> None:
    """``_SignalConnector.register_signal_handlers`` while a :class:`SignalWatch` is installed."""
    self.received_sigterm = False
    self._original_handlers = {}


class SignalWatch:
    """Records the first stop signal (SIGUSR1, SIGTERM, SIGINT) instead of dying on it; a context manager.

    The run asks it at its safe points (:meth:`check`, the callbacks of this module) and stops there.
    With ``immediate`` set (nothing written yet, nothing to save) a signal stops the run at once, as
    does a second Ctrl-C. While installed, Lightning's own handlers stay off (:func:`_lightning_keeps_off`).
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS, immediate: bool = False) -> None:
        self.signals = signals
        self.immediate = immediate
        self.received: int | None = None
        self.received_in: str | None = None  # the phase the signal came in
        self.phase = "preflight"  # where the run is now (enter_phase)
        self.stage = ""
        self.closing = False  # past the last safe point (or stopping): a signal is only logged
        self._previous: dict[int, Any] = {}
        self._lightning: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.closing:
            log.warning("%s received while the run ends (%s): it finishes first", name, self.phase)
            return
        if self.received is None:
            self.received, self.received_in = signum, self.phase
            if self.immediate:
                raise self.stop()
            log.warning(
                "%s received during %s%s: the run stops at the next safe point and saves what it needs to resume%s",
                name,
                _PHASE_WORDS.get(self.phase, self.phase),
                f" (stage {self.stage!r})" if self.stage else "",
                "; press Ctrl-C again to stop at once" if signum == signal.SIGINT else "",
            )
        elif signum == signal.SIGINT or self.immediate:
            # a second Ctrl-C: the user will not wait for the safe point (``--resume`` continues from
            # the stage's last epoch-end checkpoint)
            self.received, self.received_in = signum, self.phase
            raise self.stop()

    def stop(
        self, phase: str | None = None, epoch: int | None = None, step: int | None = None, stage: str | None = None
    ) -> Preempted:
        """The exception that ends the run on the received signal, stopping in ``phase`` (default: now)."""
        signum = int(self.received or signal.SIGTERM)
        kind = Interrupted if signum == signal.SIGINT else Preempted
        where = self.stage if stage is None else stage
        return kind(signum, where, epoch, step, phase=phase or self.phase, received=self.received_in)

    def pending(self, sync: bool = True) -> int:
        """The signal received (0: none); with ``sync``, the largest over the DDP ranks, so that every
        rank stops at the same point (every rank must then ask at that point)."""
        signum = int(self.received or 0)
        if sync and _distributed() and torch.distributed.get_world_size() > 1:
            device = (
                torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else None
            )
            flag = torch.tensor(signum, device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            signum = int(flag.item())
            if signum and self.received != signum:  # every rank stops for the same signal
                self.received_in = self.received_in or f"{self.phase} (on another rank)"
                self.received = signum
        return signum

    def check(self, phase: str, stage: str | None = None, sync: bool = True) -> None:
        """A safe point: raise :class:`Preempted`/:class:`Interrupted` now if a signal came (on any rank)."""
        if stage is not None:
            self.stage = stage
        if self.pending(sync):
            raise self.stop(phase)

    def reinstall(self) -> None:
        if not _in_main_thread():
            return  # signal handlers can only be set from the main thread
        for s in self.signals:
            signal.signal(s, self._handle)

    def __enter__(self) -> SignalWatch:
        if _in_main_thread():
            self._previous = {s: signal.getsignal(s) for s in self.signals}
            self.reinstall()
        self._lightning = _lightning_keeps_off()
        self._lightning.__enter__()
        _active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if _active and _active[-1] is self:
            _active.pop()
        if self._lightning is not None:
            self._lightning.__exit__(None, None, None)
            self._lightning = None
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    @contextmanager
    def at_once(self) -> Iterator[SignalWatch]:
        """While nothing is written (the pipeline and data checks), a signal stops the run at once."""
        before, self.immediate = self.immediate, True
        try:
            if self.received is not None:
                raise self.stop()
            yield self
        finally:
            self.immediate = before


def active_watch() -> SignalWatch | None:
    """The installed :class:`SignalWatch`, if any."""
    return _active[-1] if _active else None


def enter_phase(phase: str, stage: str | None = None) -> None:
    """Tell the installed watch (if any) which phase, and stage, the run is in now."""
    watch = active_watch()
    if watch is not None:
        watch.phase = phase
        if stage is not None:
            watch.stage = stage


def fault_point(phase: str, stage: str | None = None) -> None:
    """Testing aid: send this process the signal that ``SCIADAPT_FAULT`` names for ``phase`` (of
    ``stage``), once per process; nothing when the variable is unset (every real run).

    ``SCIADAPT_FAULT=<phase>[@<stage>]:<SIGNAL>[,...]``, e.g. ``train@probe:SIGTERM`` or
    ``compare:SIGINT``; the phases are :data:`PHASES`. The run calls this at a point inside each phase
    (after a batch of training, validation or test, before a checkpoint is written, between stages ...),
    so a test can hit each phase exactly instead of racing a timer.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for entry in (e.strip() for e in spec.split(",")):
        where, _, sig = entry.partition(":")
        want_phase, _, want_stage = where.partition("@")
        if entry in _fired or want_phase != phase or (want_stage and want_stage != stage):
            continue
        _fired.add(entry)
        os.kill(os.getpid(), signal.Signals[sig.strip().upper() or "SIGTERM"])


class SignalPoints(Callback):
    """The safe points and phase marks of a trainer's loops: tells the watch whether the run is
    training, validating or testing, and stops a test before its next batch after a signal.

    Training stops in :class:`PreemptionCheckpoint` (it writes the resume checkpoint); validation runs
    to its end (the next training step, or the stage's end, stops the run).

    Args:
        watch: The run's signal watch.
        stage: The stage whose model is trained or tested.
        test_phase: ``"test"`` for a stage's test, ``"compare"`` for the final comparison.
    """

    def __init__(self, watch: SignalWatch, stage: str, test_phase: str = "test") -> None:
        self.watch = watch
        self.stage = stage
        self.test_phase = test_phase

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        enter_phase("train", self.stage)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        fault_point("train", self.stage)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        enter_phase("validation", self.stage)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            fault_point("validation", self.stage)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        enter_phase("train", self.stage)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        enter_phase("trained", self.stage)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        enter_phase(self.test_phase, self.stage)

    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        # One process: stop before this batch. Under DDP each rank scores the whole split on its own
        # one-device trainer, so no collective can run here: the ranks agree after the test instead.
        if not (_distributed() and torch.distributed.get_world_size() > 1):
            self.watch.check(self.test_phase, self.stage, sync=False)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        fault_point(self.test_phase, self.stage)


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class PreemptionCheckpoint(Callback):
    """Writes ``path`` (the stage's ``last.ckpt``) at the first optimizer-step boundary after a
    signal, then raises :class:`Preempted`; on resume, hands the position to the datamodule and
    restores the RNG states before the first batch.

    Args:
        watch: The run's signal watch.
        path: The checkpoint ``--resume`` continues from.
        stage: The stage name (for messages and ``state.json``).
        datamodule: The stage's datamodule, which gets the resume position (``train_resume``).
    """

    def __init__(self, watch: SignalWatch, path: Path, stage: str, datamodule: DataModule | None = None) -> None:
        self.watch = watch
        self.datamodule = datamodule
        self.path = path
        self.stage = stage
        self._position: dict[str, Any] | None = None  # set only while the preemption checkpoint is written
        self._pending: dict[str, Any] | None = None  # the position read back on resume

    # the position rides in the checkpoint as this callback's state
    def state_dict(self) -> dict[str, Any]:
        return dict(self._position) if self._position else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict) if state_dict else None
        if self._pending is None:
            return
        # now, before Lightning first asks for the train dataloader (configure_optimizers may, to
        # count the steps of a schedule)
        dm = self.datamodule
        if not isinstance(dm, DataModule):
            raise CheckpointError(
                f"{self.path} was written mid-epoch, but {type(dm).__name__} cannot skip the batches already "
                "trained on. Fix: build its train sampler with sciadapt.datamodules.sampling.apply_resume (see "
                "datamodules/timeseries.py), or delete that checkpoint to restart the stage from its beginning"
            )
        dm.train_resume = (self._pending["epoch"], self._pending["batches"])
        log.info(
            "resuming stage %r at epoch %d after %d batches (step %d)",
            self.stage,
            self._pending["epoch"],
            self._pending["batches"],
            self._pending["step"],
        )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.datamodule is not None:
            self.datamodule.train_resume = None  # never carried into a later stage

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning's own handlers stay off while the watch is installed (_lightning_keeps_off);
        # this only undoes any other code that set a handler meanwhile
        self.watch.reinstall()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is not None:
            set_rng_state(self._pending["rng"])
            self._pending = None
            return
        # Checked before a batch, not after one: by now the previous step's scheduler update is
        # done too (it comes after on_train_batch_end), so the checkpoint holds a whole step.
        signum = int(self.watch.received or 0)
        if trainer.world_size > 1:  # every rank stops at the same step, whichever got the signal
            signum = int(trainer.strategy.reduce(torch.tensor(signum, device=pl_module.device), reduce_op="max"))
        if not signum:
            return
        if self.watch.received != signum:  # another rank's signal: every rank stops for the same one
            self.watch.received_in = self.watch.received_in or "train (on another rank)"
            self.watch.received = signum
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed  # this epoch, this rank
        if done % trainer.accumulate_grad_batches:
            return  # mid-accumulation: the gradients so far are in no checkpoint; stop after the step
        self._position = {
            "epoch": trainer.current_epoch,
            "batches": int(done),
            "step": trainer.global_step,
            "signal": int(signum),
            "rng": rng_state(),
        }
        try:
            save_checkpoint(trainer, self.path)  # full state: optimizer, loops
        finally:
            self._position = None
        raise self.watch.stop("train", trainer.current_epoch, trainer.global_step, stage=self.stage)


def save_checkpoint(trainer: pl.Trainer, path: Path, weights_only: bool = False) -> None:
    """``trainer.save_checkpoint`` to a temporary name, renamed into place: a process killed while
    it writes leaves the previous checkpoint, never half of one (Lightning writes in place)."""
    tmp = path.with_name(f".{path.name}.tmp")
    trainer.save_checkpoint(str(tmp), weights_only=weights_only)  # every rank calls it; rank 0 writes
    if trainer.is_global_zero:
        os.replace(tmp, path)


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes for this job (array tasks: ``<array job>_<task>``), or None."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue() -> str:
    """Requeue this SLURM job (global rank 0 only); returns what happened, for the log."""
    job = slurm_job_id()
    if job is None:
        return "not a SLURM job: resume it with `sciadapt fit --resume <run>`"
    if int(os.environ.get("SLURM_PROCID", "0")) != 0:
        return f"rank {os.environ['SLURM_PROCID']}: rank 0 requeues job {job}"
    if not re.fullmatch(r"[0-9_]+", job):
        return f"not requeued: unexpected SLURM job id {job!r}"
    if shutil.which("scontrol") is None:
        return f"not requeued: scontrol not found; requeue job {job} yourself or resubmit"
    done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"requeue of job {job} failed ({done.stderr.strip() or done.returncode}): resubmit it"
    return f"job {job} requeued: it resumes on its own"
