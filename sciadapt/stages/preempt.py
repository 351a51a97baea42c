"""Preemption-safe runs: on SIGUSR1 or SIGTERM, checkpoint at the current stage and step, then stop.

SLURM sends ``SIGUSR1`` ahead of the time limit when the job asks for it
(``#SBATCH --signal=USR1@120``, what ``sciadapt submit --cluster`` writes) and ``SIGTERM`` on
preemption or ``scancel``. The stage runner then

1. records the signal (:class:`SignalWatch`, installed for the whole run);
2. finishes the optimizer step in flight and, before the next batch, writes the stage's ``last.ckpt`` with the exact
   position: epoch, batches done on this rank, and the RNG states (:class:`PreemptionCheckpoint`);
   under DDP every rank stops at the same step (the flag is all-reduced each step);
3. marks ``state.json`` ``preempted`` and raises :class:`Preempted`, which the CLI turns into
   exit code :data:`EXIT_PREEMPTED` after ``scontrol requeue`` when it runs under SLURM.

``sciadapt fit --resume <run>`` (what a requeued job runs) continues at that step: the train
sampler skips the samples this rank had already seen in the epoch
(:meth:`sciadapt.datamodules.sampling.ShardedEpochSampler.resume_at`) and the RNG states are restored before
the next batch, so the finished run equals an uninterrupted one.
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
from pathlib import Path
from types import FrameType
from typing import Any, cast

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from sciadapt.errors import EXIT_PREEMPTED, CheckpointError, Preempted
from sciadapt.types import DataModule

__all__ = ["EXIT_PREEMPTED", "Preempted", "PreemptionCheckpoint", "SignalWatch", "requeue"]

log = logging.getLogger("sciadapt")

PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class SignalWatch:
    """Records the first preemption signal instead of dying on it; a context manager.

    Lightning installs its own SIGTERM handler while it fits; :meth:`reinstall` puts ours back
    (the runner's callback does so when training starts) so the stop happens at a step boundary
    the runner controls.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPT_SIGNALS) -> None:
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            log.warning(
                "%s received: the run stops after the current step and writes a resume checkpoint",
                signal.Signals(signum).name,
            )

    def reinstall(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for s in self.signals:
            signal.signal(s, self._handle)

    def __enter__(self) -> SignalWatch:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.getsignal(s) for s in self.signals}
            self.reinstall()
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}


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

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.watch.reinstall()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.watch.reinstall()  # Lightning replaced our SIGTERM handler when fit started

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
            trainer.save_checkpoint(str(self.path), weights_only=False)  # full state: optimizer, loops
        finally:
            self._position = None
        raise Preempted(signum, self.stage, trainer.current_epoch, trainer.global_step)


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
