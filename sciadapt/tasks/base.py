"""THE step loop. Every domain's task subclasses :class:`Task`; none writes its own loop.

A task owns a backbone and a head. The stage runner sets ``task.stage`` (the stage's validated
:class:`~sciadapt.spec.StageSpec`) before each ``Trainer.fit``; the optimiser and schedule come
from it, so one task object trains through every stage of a pipeline. A task declares its own
baselines (``BASELINES`` and :meth:`Task.baseline`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import nn

from sciadapt.errors import ConfigError
from sciadapt.metrics.bootstrap import WindowScores
from sciadapt.spec import ScheduleSpec, StageSpec
from sciadapt.types import MODEL_INPUTS, Backbone, Batch


class Task(pl.LightningModule):
    """Backbone + head + loss. Subclasses add evaluation (``evaluate_outputs``) and baselines."""

    #: the baselines ``evaluation.baselines`` may name for this task (see :meth:`baseline`)
    BASELINES: ClassVar[tuple[str, ...]] = ()
    #: what the comparison's bootstrap resamples (the units of ``test_window_scores``), for its footnote
    WINDOW_UNIT: ClassVar[str] = "test windows"

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone: Backbone = backbone  # type: ignore[assignment]  # the registry's builders return Backbones
        # typed Any: heads of different tasks have different contracts (loss, point, quantiles ...)
        self.head: Any = head
        self.stage: StageSpec = StageSpec()
        self.stage_index = 0
        self.seed = 0
        self.data_signature: dict[str, Any] = {}
        self._test_outputs: list[dict[str, torch.Tensor]] = []
        self.test_results: dict[str, Any] = {}
        # per-window accumulators of the table metrics from the last test or baseline scoring, in
        # window (time) order: what the comparison's bootstrap intervals resample. Filled by the
        # task's evaluate_outputs and baseline; empty when a task keeps none (rows without intervals).
        self.test_window_scores: dict[str, WindowScores] = {}
        # Optional batch entries a backbone declares in its forward_features signature (x_mask,
        # future_exog, ...): passed when the batch has them, so one loop serves every backbone.
        forward_features: Any = backbone.forward_features
        params = inspect.signature(forward_features).parameters
        self.backbone_inputs = tuple(n for n in params if n != "x" and n in MODEL_INPUTS)

    # -- forward --------------------------------------------------------------------------
    def model_inputs(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The optional inputs of ``batch`` the backbone accepts."""
        return {k: batch[k] for k in self.backbone_inputs if batch.get(k) is not None}

    def forward(self, x: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.backbone.forward_features(x, **inputs))
        return out

    def _loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self(batch["x"], **self.model_inputs(batch))
        return self.head.loss(pred, batch["y"], batch.get("mask")), pred

    # -- the loop -------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        # Dropout and any other in-step randomness follow (seed, stage, epoch), so a run
        # resumed at an epoch boundary draws the same numbers as an uninterrupted one.
        torch.manual_seed(self.seed * 7919 + self.stage_index * 1009 + self.current_epoch)
        # A frozen encoder stays frozen: BatchNorm layers whose parameters do not train keep their
        # running statistics too (train mode would keep updating them from the new domain).
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
                params = list(module.parameters(recurse=False))
                if params and not any(p.requires_grad for p in params):
                    module.eval()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss at step {self.global_step} of stage {self.stage.name!r}: "
                "lower the learning rate, set gradient_clip_val, or check the data for NaNs"
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["x"]))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        loss, pred = self._loss(batch)
        bs = len(batch["x"])
        # sync_dist: under DDP each rank sees its shard; early stopping and restore_best need the split's value
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=bs, sync_dist=True)
        for name, value in self.validation_metrics(pred, batch).items():
            self.log(f"val/{name}", value, on_epoch=True, batch_size=bs, sync_dist=True)

    def validation_metrics(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        return {}

    @staticmethod
    def migrate_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state of a checkpoint written by an earlier release in this release's keys (a declared
        filter, applied before every strict load). Default: as it is."""
        return state

    def follow_data(self, facts: Mapping[str, Any]) -> None:
        """Re-derive what the task takes from the data but is not part of the model (loss weights on
        the grid, verification settings) from ``facts`` (a datamodule's ``facts()``): the runner calls
        it when a stage keeps the model on other data and before scoring on a datamodule. Default: nothing."""

    def baseline(self, name: str, dm: Any) -> dict[str, Any]:
        """Score baseline ``name`` (one of ``BASELINES``) on ``dm``'s test split, with the metrics
        the task's own test reports (and their per-window accumulators in ``test_window_scores``,
        as the test keeps them)."""
        raise ConfigError(
            f"task {type(self).__name__} has no baseline {name!r}; its baselines: {', '.join(self.BASELINES) or 'none'}"
        )

    def on_test_epoch_start(self) -> None:
        self._test_outputs = []
        self.test_window_scores = {}

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        loss, pred = self._loss(batch)
        self.log("test/loss", loss, on_epoch=True, batch_size=len(batch["x"]))
        self._test_outputs.append(self.collect_test_outputs(pred, batch))

    def collect_test_outputs(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        return {"pred": pred.detach().cpu()}

    def on_test_epoch_end(self) -> None:
        outs = {k: torch.cat([o[k] for o in self._test_outputs]) for k in self._test_outputs[0]}
        self._test_outputs = []
        self.test_results = self.evaluate_outputs(outs)

    def evaluate_outputs(self, outs: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {}

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        out: torch.Tensor = self(batch["x"], **self.model_inputs(batch))
        return out

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # what the weights were trained on, so a later load onto other channels fails clearly
        checkpoint["sciadapt"] = {
            "data_signature": self.data_signature or None,
            "stage": self.stage.name or None,
        }

    # -- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optim = self.stage.optim
        params = [p for p in self.parameters() if p.requires_grad]
        lr, wd = optim.lr, optim.weight_decay
        betas = (optim.betas[0], optim.betas[1]) if optim.betas else (0.9, 0.999)
        if optim.name == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=optim.momentum, weight_decay=wd)
        elif optim.name == "adam":
            opt = torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=betas)
        else:
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=betas)
        sched = build_schedule(opt, self.stage.schedule, lr, self._total_steps())
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _total_steps(self) -> int:
        try:
            total = self.trainer.estimated_stepping_batches
        except Exception:  # no trainer attached (unit use)
            return 1
        return max(int(total), 1) if math.isfinite(total) else 1


def build_schedule(
    opt: torch.optim.Optimizer, spec: ScheduleSpec, lr: float, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """constant (with optional warm-up), cosine with warm-up, one-cycle, or cyclical."""
    warmup, min_lr = spec.warmup_steps, spec.min_lr
    if spec.name == "constant":
        if warmup == 0:
            return None
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    if spec.name == "cosine":
        floor = min_lr / lr if lr > 0 else 0.0

        def cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

        return torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    if spec.name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=total_steps + 1, pct_start=spec.pct_start
        )
    # cyclic (the spec's Literal admits nothing else)
    momentum = "momentum" in opt.defaults and not isinstance(opt, torch.optim.Adam | torch.optim.AdamW)
    return torch.optim.lr_scheduler.CyclicLR(
        opt,
        base_lr=min_lr if min_lr > 0 else lr / 10,
        max_lr=lr,
        step_size_up=spec.cycle_steps,
        cycle_momentum=momentum,
    )
