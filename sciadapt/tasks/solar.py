"""Solar irradiance forecasting: the model forecasts the clear-sky index, the scores are in W/m^2.

The data (``data.target_transform=clear_sky_index``, :mod:`sciadapt.datamodules.solar_formats`) gives the
targets as clear-sky index ``k = ghi / ghi_clear``, observed (``mask`` 1) on daytime steps only, and every
window's clear-sky and measured irradiance over the horizon in ``meta``. This task trains on ``k`` like any
forecast and turns forecasts back into irradiance (``k * clear-sky``: never negative, zero at night) to score
them as the solar-forecasting literature does (:mod:`sciadapt.metrics.solar`): daytime RMSE, MAE, MBE in
W/m^2 and the RMSE skill score against smart persistence, per lead.

Baselines: ``smart_persistence`` (the clear-sky index of the forecast origin, the last daytime one,
persisted over the horizon: the reference of the skill score), ``climatology_hour`` (the train split's mean
clear-sky index at each time of day, times the clear-sky irradiance), ``seasonal_naive`` (yesterday's
clear-sky index at the same time) and ``least_squares`` (one linear map from the context's clear-sky index to
the horizon's, fitted in closed form on the train windows, night steps included as the data fills them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from sciadapt.datamodules.solar_formats import K_MAX
from sciadapt.errors import ConfigError
from sciadapt.metrics.forecasting import seasonal_naive
from sciadapt.metrics.least_squares import LeastSquaresForecaster
from sciadapt.metrics.solar import irradiance_metrics, slot_climatology, to_irradiance
from sciadapt.registry import TASKS
from sciadapt.spec import FromData, Ge
from sciadapt.tasks.forecasting import ForecastingTask, _train_batches
from sciadapt.types import Batch


class SolarForecastingTask(ForecastingTask):
    """Forecast the clear-sky index of irradiance targets; score the forecasts in W/m^2 on daytime steps.

    Args:
        backbone: injected by the runner.
        head: injected by the runner.
        n_targets: follows the data.
        seasonality: steps per day; follows the data (the ``seasonal_naive`` lag).
        instance_norm: standardise every window by its own context (see ``forecasting``).
        target_transform: follows the data; must be ``clear_sky_index``.
        loss_weight_power: weight each daytime step of the loss by ``clear_sky ** p`` (normalised to mean
            1): 0 trains on the clear-sky index alone; 2 with an MSE loss (1 with MAE) makes the loss the
            error in W/m^2, which the scores measure.
    """

    #: see the module docstring; ``smart_persistence`` is the reference of the skill score
    BASELINES: ClassVar[tuple[str, ...]] = ("smart_persistence", "climatology_hour", "seasonal_naive", "least_squares")

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        n_targets: Annotated[int, FromData] = 1,
        seasonality: Annotated[int, FromData] = 1,
        instance_norm: bool = False,
        target_transform: Annotated[Literal["none", "clear_sky_index"], FromData] = "none",
        loss_weight_power: Annotated[float, Ge(0)] = 0.0,
    ) -> None:
        if target_transform != "clear_sky_index":
            raise ConfigError(
                "task.name=solar_forecasting forecasts the clear-sky index and scores it in W/m^2, but the data "
                "gives irradiance as it is. Fix: set data.target_transform=clear_sky_index (with data.latitude, "
                "data.longitude and data.timezone where the file lacks them), or use task.name=forecasting"
            )
        super().__init__(backbone, head, n_targets=n_targets, seasonality=seasonality, instance_norm=instance_norm)
        self.loss_weight_power = float(loss_weight_power)

    # -- training ---------------------------------------------------------------------------
    def _loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.loss_weight_power == 0:
            return super()._loss(batch)
        pred = self(batch["x"], **self.model_inputs(batch))
        mask = batch["mask"]
        clear = batch["meta"]["clear_sky"].to(pred.dtype)  # (B, L, C) W/m^2
        weight = mask * clear.clamp_min(0.0) ** self.loss_weight_power
        # normalised to mean 1 over the scored steps, so the loss keeps the scale of the unweighted one
        weight = weight * mask.sum().clamp_min(1.0) / weight.sum().clamp_min(1e-6)
        return self.head.loss(pred, batch["y"], weight), pred

    def validation_metrics(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        out = super().validation_metrics(pred, batch)
        clear = batch["meta"]["clear_sky"].to(pred.dtype)
        truth = batch["meta"]["irradiance"].to(pred.dtype)
        forecast = torch.where(clear > 0, self.point(pred).clamp(0.0, K_MAX) * clear, torch.zeros_like(clear))
        w = batch["mask"]
        out["rmse_wm2"] = ((((forecast - truth) ** 2) * w).sum() / w.sum().clamp_min(1)).sqrt()
        return out

    # -- scoring ----------------------------------------------------------------------------
    def collect_test_outputs(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        out = super().collect_test_outputs(pred, batch)
        out["clear_sky"] = batch["meta"]["clear_sky"].detach().float().cpu()
        out["irradiance"] = batch["meta"]["irradiance"].detach().float().cpu()
        return out

    def evaluate_outputs(self, outs: dict[str, torch.Tensor]) -> dict[str, Any]:
        return self.solar_scores(
            outs["point"].numpy(),
            outs["past"].numpy(),
            outs["clear_sky"].numpy(),
            outs["irradiance"].numpy(),
            outs["mask"].numpy(),
        )

    def solar_scores(
        self, k_pred: np.ndarray, past: np.ndarray, clear_sky: np.ndarray, irradiance: np.ndarray, mask: np.ndarray
    ) -> dict[str, Any]:
        """Daytime W/m^2 scores of clear-sky index forecasts ``k_pred`` ``(N, L, C)``, with the skill against
        smart persistence of the context ``past`` ``(N, T, C)`` (its last value: the clear-sky index of the
        origin, carried over night); keeps the per-window scores in ``test_window_scores``."""
        horizon = k_pred.shape[1]
        persisted = np.repeat(past[:, -1:, :], horizon, axis=1)  # (N, L, C)
        forecast = to_irradiance(k_pred, clear_sky, K_MAX)
        reference = to_irradiance(persisted, clear_sky, K_MAX)
        result, self.test_window_scores = irradiance_metrics(irradiance, forecast, reference, mask)
        return result

    def baseline(self, name: str, dm: Any) -> dict[str, Any]:
        """Score baseline ``name`` (see the module docstring) on ``dm``'s test split like the model.

        Raises:
            ConfigError: For a name not in ``BASELINES``.
        """
        if name not in self.BASELINES:
            raise ConfigError(
                f"evaluation.baselines: {name!r} is not a solar forecasting baseline ({', '.join(self.BASELINES)})"
            )
        n_targets, horizon = self.n_targets, int(dm.facts()["horizon"])
        forecaster: Callable[[np.ndarray, np.ndarray], np.ndarray]
        if name == "smart_persistence":

            def forecaster(past: np.ndarray, starts: np.ndarray) -> np.ndarray:
                return np.repeat(past[:, -1:, :], horizon, axis=1)

        elif name == "seasonal_naive":

            def forecaster(past: np.ndarray, starts: np.ndarray) -> np.ndarray:
                return seasonal_naive(past, horizon, max(1, int(dm.seasonality)))

        elif name == "least_squares":
            # every train window: its night steps carry the last daytime index (the masks would leave no
            # window whole, and the least-squares fit takes whole windows only)
            unmasked = ({"x": b["x"], "y": b["y"]} for b in _train_batches(dm))
            fitted = LeastSquaresForecaster(n_targets).fit(unmasked)

            def forecaster(past: np.ndarray, starts: np.ndarray) -> np.ndarray:
                return fitted.predict(past)

        else:
            forecaster = _climatology_forecaster(dm, n_targets, horizon)
        ks, pasts, clears, truths, masks = [], [], [], [], []
        for batch in dm.test_dataloader():
            past = batch["x"][..., :n_targets].numpy()  # (B, T, C) clear-sky index
            ks.append(forecaster(past, batch["meta"]["start"].numpy()))
            pasts.append(past)
            clears.append(batch["meta"]["clear_sky"].numpy())
            truths.append(batch["meta"]["irradiance"].numpy())
            masks.append(batch["mask"].numpy())
        return self.solar_scores(*(np.concatenate(a) for a in (ks, pasts, clears, truths, masks)))


def _climatology_forecaster(dm: Any, n_targets: int, horizon: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The train split's mean clear-sky index per time-of-day slot, looked up for each window's horizon."""
    train = dm.dataset("train")
    pad, ctx = int(dm.pad_rows), int(dm.context_length)
    start, stop = dm.split_bounds["train"]
    rows = np.arange(max(start, 0), stop)
    stamps = pd.DatetimeIndex(dm.timestamps)
    step = max(1, int(round(np.median(np.diff(stamps.asi8)) / 60e9))) if len(stamps) > 1 else 60  # minutes
    n_slots = max(1, (24 * 60) // step)
    slots = np.asarray((stamps.hour * 60 + stamps.minute) // step, dtype=np.int64) % n_slots  # (T,)
    table = slot_climatology(
        train.values[rows + pad, :n_targets], train.observed[rows + pad, :n_targets], slots[rows], n_slots
    )  # (n_slots, C)

    def forecast(past: np.ndarray, starts: np.ndarray) -> np.ndarray:
        # horizon rows of each window, in file-row coordinates (starts are in padded coordinates)
        lead_rows = starts[:, None] - pad + ctx + np.arange(horizon)[None, :]  # (B, L)
        out: np.ndarray = table[slots[lead_rows]]  # (B, L, C)
        return out

    return forecast


# the class is its own builder: its __init__ is the config schema of `task: {name: solar_forecasting}`
TASKS.register("solar_forecasting")(SolarForecastingTask)
