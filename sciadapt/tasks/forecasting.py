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

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        n_targets: int,
        seasonality: int = 1,
        instance_norm: bool = False,
    ) -> None:
        super().__init__(backbone, head)
        self.n_targets = n_targets
        self.seasonality = seasonality
        self.instance_norm = instance_norm

    def forward(self, x: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ShapeError(f"forecasting input: expected B T C, got {tuple(x.shape)}")
        if not self.instance_norm:
            return super().forward(x, **inputs)
        # Each window is standardised by its own context statistics and the forecast mapped
        # back (as neuralforecast's temporal "standard" scaler and RevIN do): level and scale
        # shifts between domains or seasons then never reach the backbone. Missing and padded
        # rows (x_mask 0) do not count.
        w = inputs.get("x_mask")
        w = torch.ones_like(x) if w is None else w.to(x.dtype)
        n = w.sum(dim=1, keepdim=True).clamp_min(1.0)  # (B, 1, C)
        mean = (x * w).sum(dim=1, keepdim=True) / n
        std = ((((x - mean) * w) ** 2).sum(dim=1, keepdim=True) / n).sqrt().clamp_min(1e-5)
        if "future_exog" in inputs:
            exog_mean, exog_std = mean[:, :, self.n_targets :], std[:, :, self.n_targets :]
            inputs = {**inputs, "future_exog": (inputs["future_exog"] - exog_mean) / exog_std}
        out = super().forward((x - mean) / std * w, **inputs)
        m, s = mean[:, :, : self.n_targets], std[:, :, : self.n_targets]  # (B, 1, C_targets)
        if out.dim() == 4:  # (B, L, C, Q)
            return out * s.unsqueeze(-1) + m.unsqueeze(-1)
        return out * s + m

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
def build_forecasting(
    backbone: nn.Module,
    head: nn.Module,
    n_targets: int = 1,
    seasonality: int = 1,
    instance_norm: bool = False,
) -> ForecastingTask:
    """Forecasting task.

    Args:
        backbone: injected by the runner.
        head: injected by the runner.
        n_targets: follows the data unless set.
        seasonality: season length for MASE and the seasonal-naive baseline; follows the data's
            frequency unless set.
        instance_norm: standardise every window by its own context mean and std before the
            backbone and undo it on the forecast (RevIN without affine parameters).
    """
    return ForecastingTask(backbone, head, n_targets=n_targets, seasonality=seasonality, instance_norm=instance_norm)
