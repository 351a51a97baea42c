"""The Lightning ``Trainer`` of a stage and the callbacks it runs with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.environments import SLURMEnvironment

from sciadapt.spec import StageSpec, TrainerSpec
from sciadapt.stages.callbacks import EpochEndCheckpoint, MetricsCSV
from sciadapt.stages.preempt import PreemptionCheckpoint, SignalPoints, SignalWatch
from sciadapt.stages.progress import EpochLines, is_terminal
from sciadapt.types import DataModule


def stage_callbacks(
    stage: StageSpec, stage_dir: Path, run_dir: Path, watch: SignalWatch, resume_from: Path, dm: DataModule
) -> tuple[ModelCheckpoint, list[Callback]]:
    """The best-checkpoint callback (kept only with ``restore_best``) and every callback of the stage."""
    ckpt_cb = ModelCheckpoint(
        dirpath=str(stage_dir),
        filename="best",
        monitor="val/loss",
        save_top_k=1 if stage.restore_best else 0,
        enable_version_counter=False,
    )
    callbacks: list[Callback] = [
        ckpt_cb,
        MetricsCSV(run_dir / "metrics.csv", stage.name),
        EpochEndCheckpoint(resume_from, stage.name),
        PreemptionCheckpoint(watch, resume_from, stage.name, dm),
        SignalPoints(watch, stage.name),
    ]
    es = stage.early_stopping
    if es is not None:
        callbacks.append(EarlyStopping(monitor=es.monitor, patience=es.patience, mode=es.mode, min_delta=es.min_delta))
    return ckpt_cb, callbacks


def build_trainer(
    t: TrainerSpec, st: StageSpec, callbacks: list[Callback], root: Path, logger: Logger | None = None
) -> pl.Trainer:
    """The trainer of one stage: the pipeline's ``trainer:`` settings, the stage's length and clipping;
    ``logger``: the run's tracker (:meth:`sciadapt.stages.tracking.Tracker.stage_logger`), if any."""
    bar = t.enable_progress_bar and is_terminal()
    if bar:
        # Lightning's default rich bar redraws every step: 10-20x slower than the model
        # itself for small CPU models. TQDM at a few redraws per second costs nothing.
        callbacks = [*callbacks, TQDMProgressBar(refresh_rate=t.progress_refresh_steps)]
    elif t.enable_progress_bar:
        # in a file (a SLURM log) every redraw of a bar is a line: one line per epoch instead
        callbacks = [*callbacks, EpochLines(st.name)]
    plugins: list[Any] = []
    if SLURMEnvironment.detect():
        # the runner's own preemption handling checkpoints and requeues (sciadapt.stages.preempt)
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return pl.Trainer(
        plugins=plugins or None,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        precision=t.precision,  # type: ignore[arg-type]  # Lightning checks the name itself
        num_nodes=t.num_nodes,
        max_epochs=-1 if st.max_epochs is None else st.max_epochs,
        max_steps=st.max_steps or -1,
        limit_train_batches=st.limit_train_batches or 1.0,
        limit_val_batches=st.limit_val_batches or 1.0,
        gradient_clip_val=st.gradient_clip_val,
        accumulate_grad_batches=t.accumulate_grad_batches,
        val_check_interval=t.val_check_interval,
        num_sanity_val_steps=t.num_sanity_val_steps,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=bar,
        deterministic=t.deterministic,
        callbacks=callbacks,
        logger=logger if logger is not None else False,
        enable_model_summary=False,
        default_root_dir=str(root),
    )
