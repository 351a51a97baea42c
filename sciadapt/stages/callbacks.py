"""Lightning callbacks of a stage: the per-epoch metrics file and the resume checkpoint.

Logging and file writing live here, never inside a task's steps. The preemption callback lives
beside the signal handling in :mod:`sciadapt.stages.preempt`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from sciadapt.runs import read_csv_rows, write_csv_rows
from sciadapt.stages.preempt import enter_phase, fault_point, save_checkpoint


class MetricsCSV(Callback):
    """One row per epoch in ``metrics.csv`` (every stage in one file, a ``stage`` column)."""

    def __init__(self, path: Path, stage: str) -> None:
        self.path = path
        self.stage = stage

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        rows = [
            r
            for r in read_csv_rows(self.path)
            if not (r["stage"] == self.stage and int(r["epoch"]) >= trainer.current_epoch)
        ]
        row: dict[str, Any] = {
            "stage": self.stage,
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
        }
        for k, v in sorted(trainer.callback_metrics.items()):
            if k.endswith("_step"):
                continue
            row[k.replace("_epoch", "")] = float(v)
        rows.append(row)
        write_csv_rows(self.path, rows)


class EpochEndCheckpoint(Callback):
    """``last.ckpt`` at every epoch end: what ``--resume`` continues from.

    Epoch ends (after validation) are the resume points because Lightning cannot replay the
    rest of a half-finished epoch exactly; with the seeded sampler an epoch boundary can.
    """

    def __init__(self, path: Path, stage: str | None = None) -> None:
        self.path = path
        self.stage = stage

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # a signal while it is written stops the run at the next step (or once the stage's weights are saved)
        enter_phase("checkpoint", self.stage)
        fault_point("checkpoint", self.stage)
        save_checkpoint(trainer, self.path)  # full state: optimizer, loops
        enter_phase("train", self.stage)
