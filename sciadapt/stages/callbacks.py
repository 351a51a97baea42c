"""Lightning callbacks of a stage: the per-epoch metrics file, the resume checkpoint and the EMA of weights.

Logging and file writing live here, never inside a task's steps. The preemption callback lives
beside the signal handling in :mod:`sciadapt.stages.preempt`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from sciadapt.errors import CheckpointError
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


#: the file of a stage's EMA weights beside its final.ckpt (``stages[i].ema``)
EMA_CKPT = "ema.ckpt"


class WeightEma(Callback):
    """An exponential moving average of the trainable parameters of a stage (``stages[i].ema``).

    Starts from the weights the stage starts with (the parameters that train when the fit starts) and
    after every ``every_n_steps``-th optimiser step sets ``ema = decay * ema + (1 - decay) * w`` (with
    gradient accumulation an optimiser step is every few batches). Only trainable tensors are kept:
    frozen ones equal the raw model's, and buffers (normalisation statistics) are taken from it when
    the average is used. The average is part of every resume checkpoint (``state_dict``), so a
    preempted or killed stage continues the same average.
    """

    def __init__(self, decay: float, every_n_steps: int = 1) -> None:
        self.decay = float(decay)
        self.every_n_steps = int(every_n_steps)
        self.shadow: dict[str, torch.Tensor] = {}
        self.updates = 0  # averaging steps so far
        self._last_step = -1  # the trainer's global step at the last look

    # -- Lightning hooks ------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after every restore (callbacks, loops, optimiser: some strategies restore after on_fit_start)
        params = {n: p for n, p in pl_module.named_parameters() if p.requires_grad}
        if self.shadow:  # restored from the stage's resume checkpoint
            if set(self.shadow) != set(params):
                missing = sorted(set(params) - set(self.shadow))[:4]
                extra = sorted(set(self.shadow) - set(params))[:4]
                raise CheckpointError(
                    f"the EMA in the stage's resume checkpoint does not match the parameters that train "
                    f"(missing {missing}, unexpected {extra}): delete the stage's last.ckpt to run it again"
                )
            self.shadow = {n: t.to(params[n].device, params[n].dtype) for n, t in self.shadow.items()}
        else:
            self.shadow = {n: p.detach().clone() for n, p in params.items()}
        self._last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._last_step:  # accumulating gradients: no optimiser step this batch
            return
        self._last_step = step
        if step % self.every_n_steps == 0:
            self.update(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": dict(self.shadow), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.shadow = dict(state_dict["shadow"])
        self.updates = int(state_dict["updates"])

    # -- the average ----------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """One averaging step: ``ema = decay * ema + (1 - decay) * w`` for every kept tensor."""
        if not self.shadow:
            return
        params = dict(module.named_parameters())
        shadows = list(self.shadow.values())
        current = [params[n].detach() for n in self.shadow]
        torch._foreach_mul_(shadows, self.decay)
        torch._foreach_add_(shadows, current, alpha=1.0 - self.decay)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self, module: nn.Module) -> Iterator[nn.Module]:
        """Within: ``module``'s trainable tensors hold the average; the raw values come back after."""
        params = dict(module.named_parameters())
        raw = {n: params[n].detach().clone() for n in self.shadow}
        with torch.no_grad():
            for n, t in self.shadow.items():
                params[n].copy_(t)
        try:
            yield module
        finally:
            with torch.no_grad():
                for n, t in raw.items():
                    params[n].copy_(t)

    def copy_to(self, module: nn.Module) -> None:
        """Put the average into ``module`` (a copy of the trained one) for good."""
        params = dict(module.named_parameters())
        with torch.no_grad():
            for n, t in self.shadow.items():
                params[n].copy_(t)
