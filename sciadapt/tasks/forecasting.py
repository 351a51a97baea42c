"""Point and probabilistic forecasting of series: any series backbone + a forecast head."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from torch import nn

from sciadapt.errors import ConfigError, ShapeError
from sciadapt.metrics.forecasting import forecast_metrics, forecast_window_scores, seasonal_naive
from sciadapt.metrics.least_squares import LeastSquaresForecaster
from sciadapt.registry import TASKS
from sciadapt.spec import FromData
from sciadapt.tasks.base import Task
from sciadapt.types import Batch


class ForecastingTask(Task):
    """Forecasting task: forecast ``y`` (B, L, C) from ``x`` (B, T, C + exog); metrics in the scaled space.

    MSE and MAE are computed on z-scored data as the long-horizon tables report them; MASE,
    sMAPE and (for quantile heads) CRPS come from gluonts' definitions.

    Args:
        backbone: injected by the runner.
        head: injected by the runner.
        n_targets: follows the data unless set.
        seasonality: season length for MASE and the seasonal-naive baseline; follows the data's
            frequency unless set.
        instance_norm: standardise every window by its own context mean and std before the
            backbone and undo it on the forecast (RevIN without affine parameters).
    """

    #: ``seasonal_naive`` repeats the last season (``dm.seasonality``), ``naive`` the last value,
    #: ``least_squares`` is one linear map from context to horizon fitted in closed form on the train split
    BASELINES: ClassVar[tuple[str, ...]] = ("seasonal_naive", "naive", "least_squares")

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        n_targets: Annotated[int, FromData] = 1,
        seasonality: Annotated[int, FromData] = 1,
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
        point: torch.Tensor = self.head.point(pred)  # (B, L, C)
        return point

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
        if self.head.quantiles:
            out["quantiles"] = pred.detach().float().cpu()
        return out

    def scored_metrics(
        self,
        y_true: np.ndarray,
        y_pred: np.ndarray,
        past: np.ndarray,
        seasonality: int,
        quantile_pred: np.ndarray | None = None,
        quantiles: list[float] | None = None,
        mask: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """:func:`forecast_metrics`, keeping the per-window scores in ``test_window_scores`` (what the
        comparison's intervals resample)."""
        result = forecast_metrics(y_true, y_pred, past, seasonality, quantile_pred, quantiles, mask)
        self.test_window_scores = forecast_window_scores(y_true, y_pred, past, seasonality, mask)
        return result

    def evaluate_outputs(self, outs: dict[str, torch.Tensor]) -> dict[str, Any]:
        quantiles: list[float] | None = self.head.quantiles  # every forecast head declares it
        return self.scored_metrics(
            outs["y"].numpy(),
            outs["point"].numpy(),
            outs["past"].numpy(),
            seasonality=self.seasonality,
            quantile_pred=outs["quantiles"].numpy() if "quantiles" in outs else None,
            quantiles=quantiles,
            mask=outs["mask"].numpy() if "mask" in outs else None,
        )

    def baseline(self, name: str, dm: Any) -> dict[str, Any]:
        """``seasonal_naive`` (the last ``dm.seasonality`` steps repeated), ``naive`` (the last
        value repeated) or ``least_squares`` (:class:`~sciadapt.metrics.least_squares.LeastSquaresForecaster`
        fitted on ``dm``'s train windows), scored on ``dm``'s test split like the model.

        Raises:
            ConfigError: For another name.
        """
        if name not in self.BASELINES:
            raise ConfigError(
                f"evaluation.baselines: {name!r} is not a forecasting baseline ({', '.join(self.BASELINES)})"
            )
        facts = dm.facts()
        # MASE scales by the seasonal-naive error; data without a declared season uses lag 1
        seasonality = int(facts.get("seasonality", 1))
        if name == "seasonal_naive" and "seasonality" not in facts:
            raise ConfigError(
                f"evaluation.baselines: seasonal_naive needs the data's season, but {type(dm).__name__}.facts() "
                "gives no 'seasonality': use evaluation.baselines=[naive], or declare it in facts()"
            )
        season = seasonality if name == "seasonal_naive" else 1
        n_targets, horizon = int(facts["n_targets"]), int(facts["horizon"])
        fitted = LeastSquaresForecaster(n_targets).fit(_train_batches(dm)) if name == "least_squares" else None
        ys, ps, pasts, masks = [], [], [], []
        for batch in dm.test_dataloader():
            past = batch["x"][..., :n_targets].numpy()  # (B, T, C_targets)
            ys.append(batch["y"].numpy())
            pasts.append(past)
            ps.append(fitted.predict(past) if fitted is not None else seasonal_naive(past, horizon, season))
            if batch.get("mask") is not None:
                masks.append(batch["mask"].numpy())
        return self.scored_metrics(
            np.concatenate(ys),
            np.concatenate(ps),
            np.concatenate(pasts),
            seasonality=seasonality,
            mask=np.concatenate(masks) if masks else None,
        )


def _train_batches(dm: Any) -> Any:
    """The train windows in order, unshuffled (the sum the least-squares fit needs does not depend on
    the order, and the training sampler's resume state is left alone)."""
    dataset = getattr(dm, "dataset", None)
    if callable(dataset):
        from torch.utils.data import DataLoader

        return DataLoader(dataset("train"), batch_size=int(getattr(dm, "eval_batch_size", 512)), shuffle=False)
    return dm.train_dataloader()


# the class is its own builder: its __init__ is the config schema of `task: {name: forecasting}`
TASKS.register("forecasting")(ForecastingTask)
