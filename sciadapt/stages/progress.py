"""Training progress for logs that are not a terminal.

Lightning's TQDM bar redraws in place with carriage returns; written to a file (a SLURM job's
output, ``nohup``, a CI log) every redraw becomes a line of its own, thousands per stage. When the
output is not a terminal the stage trainer runs :class:`EpochLines` instead: one line per epoch.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


def is_terminal(stream: Any = None) -> bool:
    """True when ``stream`` (default: stdout, where Lightning draws its bar) is a terminal."""
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no stream (pythonw), a closed one, or a stand-in without isatty
        return False


def _clock(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _value(metrics: dict[str, Any], *keys: str) -> str:
    for key in keys:
        if key in metrics:
            v = float(metrics[key])
            return f"{v:.4g}" if math.isfinite(v) else str(v)
    return "-"


class EpochLines(Callback):
    """One line per training epoch (global rank 0 only): stage, epoch ``i/n`` (``step i/n`` with
    ``max_steps``), train loss, ``val/loss``, elapsed time and the estimated time left.

    Args:
        stage: The stage name the lines start with.
        stream: Where the lines go (default: stdout at the time of writing).
    """

    def __init__(self, stage: str, stream: TextIO | None = None) -> None:
        self.stage = stage
        self.stream = stream
        self._t0 = 0.0
        self._epoch0 = 0
        self._step0 = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a resumed stage starts at a later epoch: the rate counts only what this process did
        self._t0 = time.perf_counter()
        self._epoch0 = trainer.current_epoch
        self._step0 = trainer.global_step

    def line(self, trainer: pl.Trainer) -> str:
        """The line of the epoch that just ended."""
        elapsed = time.perf_counter() - self._t0
        epoch, step = trainer.current_epoch + 1, trainer.global_step
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        max_steps = trainer.max_steps if trainer.max_steps > 0 else None
        etas: list[float] = []
        if max_steps is not None:
            where = f"step {step}/{max_steps} (epoch {epoch})"
            if step > self._step0:
                etas.append(elapsed / (step - self._step0) * max(0, max_steps - step))
        else:
            where = f"epoch {epoch}" + (f"/{max_epochs}" if max_epochs else "") + f" (step {step})"
        if max_epochs is not None and epoch > self._epoch0:
            etas.append(elapsed / (epoch - self._epoch0) * max(0, max_epochs - epoch))
        m = trainer.callback_metrics
        eta = _clock(min(etas)) if etas else "?"
        return (
            f"[{self.stage}] {where}  train/loss {_value(m, 'train/loss_epoch', 'train/loss')}  "
            f"val/loss {_value(m, 'val/loss')}  elapsed {_clock(elapsed)}  eta {eta}"
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # validation of the epoch has run by now (Lightning runs it before this hook)
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        print(self.line(trainer), file=self.stream or sys.stdout, flush=True)
