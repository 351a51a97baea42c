"""Point and probabilistic forecasting of series: any series backbone + a forecast head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sciadapt.errors import ShapeError
from sciadapt.metrics.forecasting import forecast_metrics
from sciadapt.registry import TASKS
from sciadapt.tasks.base import Task
from sciadapt.types import Batch


class ForecastingTask(Task):
    """Forecast ``y`` (B, L, C) from ``x`` (B, T, C + exog); metrics in the scaled space.

    MSE and MAE are computed on z-scored data as the long-horizon tables report them; MASE,
    sMAPE and (for quantile heads) CRPS come from gluonts' definitions.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, n_targets: int, seasonality: int = 1) -> None:
        super().__init__(backbone, head)
        self.n_targets = n_targets
        self.seasonality = seasonality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ShapeError(f"forecasting input: expected B T C, got {tuple(x.shape)}")
        return super().forward(x)

    def point(self, pred: torch.Tensor) -> torch.Tensor:
        return self.head.point(pred)  # (B, L, C)

    def validation_metrics(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        p = self.point(pred)
        y = batch["y"]
        m = batch.get("mask")
        w = torch.ones_like(y) if m is None else m
        denom = w.sum().clamp_min(1)
        return {
            "mse": (((p - y) ** 2) * w).sum() / denom,
            "mae": ((p - y).abs() * w).sum() / denom,
        }

    def collect_test_outputs(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        out = {
            "point": self.point(pred).detach().float().cpu(),
            "y": batch["y"].detach().float().cpu(),
            "past": batch["x"][..., : self.n_targets].detach().float().cpu(),
        }
        if batch.get("mask") is not None:
            out["mask"] = batch["mask"].detach().float().cpu()
        if getattr(self.head, "quantiles", None):
            out["quantiles"] = pred.detach().float().cpu()
        return out

    def evaluate_outputs(self, outs: dict[str, torch.Tensor]) -> dict[str, Any]:
        quantiles = getattr(self.head, "quantiles", None)
        return forecast_metrics(
            outs["y"].numpy(),
            outs["point"].numpy(),
            outs["past"].numpy(),
            seasonality=self.seasonality,
            quantile_pred=outs["quantiles"].numpy() if "quantiles" in outs else None,
            quantiles=quantiles,
            mask=outs["mask"].numpy() if "mask" in outs else None,
        )


@TASKS.register("forecasting")
def build_forecasting(backbone: nn.Module, head: nn.Module, n_targets: int = 1, seasonality: int = 1) -> ForecastingTask:
    """Forecasting task. ``n_targets`` and ``seasonality`` follow the data unless set."""
    return ForecastingTask(backbone, head, n_targets=n_targets, seasonality=seasonality)
