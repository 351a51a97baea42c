"""Forecast evaluation on whole arrays, with the metric definitions of gluonts.

Every ``(window, channel)`` pair is one series. The ``(N, L, C)`` arrays go to gluonts' vectorised
evaluation metrics (``gluonts.ev``) as they are, with the aggregation axes chosen per metric (time
axis 1 for per-series values, axes 0 and 2 for per-step values), so MASE, sMAPE and the weighted
quantile loss follow gluonts' definitions exactly while running on all series at once, without copies.

Missing targets (``mask == 0``) are excluded. gluonts aggregates in two ways, and each wants the gap
marked differently: means over all entries or per step (the axes include 0) use ``numpy.ma`` counts,
so they get a masked array; per-series means (axis 1 only) and sums use ``nanmean``/``nansum``, so
they get NaN at the missing entries.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from gluonts.ev.metrics import MAE, MASE, MSE, SMAPE, Coverage, MeanWeightedSumQuantileLoss
from gluonts.ev.ts_stats import seasonal_error

from sciadapt.errors import ShapeError
from sciadapt.metrics.bootstrap import WindowScores, column_scores

_POINT = "mean"  # the gluonts forecast_type under which the point forecast is stored
_SERIES_AXIS = 1  # mean over time: one value per (window, channel) series
_STEP_AXES = (0, 2)  # mean over windows and channels: one value per horizon step


def _as_float(a: np.ndarray) -> np.ndarray:
    """Float32/64 arrays as they are (no copy of large model outputs), anything else as float64."""
    a = np.asarray(a)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


def _check(name: str, a: np.ndarray, expected: tuple[int, ...], layout: str) -> None:
    if a.shape != expected:
        raise ShapeError(f"{name}: expected {layout} = {expected}, got {a.shape}")


def _mean_over_series(per_series: np.ndarray, metric: str) -> float:
    """Mean of a per-series metric, skipping series where it is undefined (and saying how many)."""
    defined = np.isfinite(per_series)
    n_undefined = int(per_series.size - defined.sum())
    if n_undefined:
        warnings.warn(
            f"{metric} is undefined (zero denominator or no observed values) for {n_undefined} of "
            f"{per_series.size} series; they are left out of the {metric} mean",
            RuntimeWarning,
            stacklevel=3,
        )
    return float(per_series[defined].mean()) if defined.any() else float("nan")


def forecast_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    past: np.ndarray,
    seasonality: int,
    quantile_pred: np.ndarray | None = None,
    quantiles: list[float] | None = None,
    mask: np.ndarray | None = None,
) -> dict[str, Any]:
    """Point and (optionally) probabilistic forecast metrics over windows and channels.

    Args:
        y_true: ``(N, L, C)`` targets.
        y_pred: ``(N, L, C)`` point forecasts.
        past: ``(N, T, C)`` context targets, for the MASE seasonal error (gluonts' definition: the mean
            absolute ``seasonality``-lag difference of each window's context, lag 1 when
            ``seasonality >= T``).
        seasonality: Season length ``m`` of the MASE denominator.
        quantile_pred: ``(N, L, C, Q)`` quantile forecasts.
        quantiles: The ``Q`` levels of ``quantile_pred``.
        mask: ``(N, L, C)``, 1 where ``y_true`` is observed; missing entries are left out everywhere.

    Returns:
        ``{"mse", "mae", "mase", "smape"}`` floats, plus ``"crps"`` (gluonts' mean weighted quantile
        loss over ``quantiles``) and ``"coverage_<q>"`` per level when quantiles are given, and
        ``"per_step": {"mse": [L floats], "mae": [L floats]}``. MSE, MAE and coverage average over all
        observed ``(window, step, channel)`` entries; MASE and sMAPE average per-series values over
        the series where they are defined.

    Raises:
        ShapeError: If the arrays do not have the documented shapes.
        ValueError: If only one of ``quantile_pred`` and ``quantiles`` is given, or ``seasonality < 1``.
    """
    y_true = np.asarray(y_true)
    if y_true.ndim != 3:
        raise ShapeError(f"y_true: expected N L C, got {y_true.shape}")
    n, horizon, channels = y_true.shape
    _check("y_pred", np.asarray(y_pred), y_true.shape, "N L C")
    past = np.asarray(past)
    if past.ndim != 3 or past.shape[0] != n or past.shape[2] != channels:
        raise ShapeError(f"past: expected N T C with N={n}, C={channels}, got {past.shape}")
    if seasonality < 1:
        raise ValueError(f"seasonality must be >= 1, got {seasonality}")
    if (quantile_pred is None) != (quantiles is None):
        raise ValueError("pass quantile_pred and quantiles together, or neither")

    label = _as_float(y_true)  # (N, L, C)
    forecasts = {_POINT: _as_float(y_pred)}  # (N, L, C)
    levels: list[float] = []
    if quantile_pred is not None and quantiles is not None:
        levels = [float(q) for q in quantiles]
        quantile_pred = _as_float(quantile_pred)
        _check("quantile_pred", quantile_pred, (n, horizon, channels, len(levels)), "N L C Q")
        forecasts.update({str(q): quantile_pred[..., i] for i, q in enumerate(levels)})  # (N, L, C)

    # gluonts' evaluation.metrics.calculate_seasonal_error falls back to lag 1 when m >= T; ev's
    # seasonal_error only does so for m > T, so clamp here to keep the classic definition.
    context = _as_float(past)  # (N, T, C)
    lag = seasonality if seasonality < context.shape[1] else 1
    scale = seasonal_error(context, lag, time_axis=1)  # (N, 1, C)

    observed = None
    if mask is not None:
        _check("mask", np.asarray(mask), y_true.shape, "N L C")
        observed = np.asarray(mask) > 0  # (N, L, C)
    if observed is None or observed.all():
        entries = {"label": label, **forecasts}
        series = {"label": label, "seasonal_error": scale, **forecasts}
    else:
        entries = {"label": np.ma.masked_array(label, mask=~observed), **forecasts}
        series = {"label": np.where(observed, label, np.nan), "seasonal_error": scale, **forecasts}

    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # Zero denominators and empty slices are reported once by _mean_over_series instead.
        warnings.simplefilter("ignore", RuntimeWarning)
        result: dict[str, Any] = {
            "mse": float(MSE(forecast_type=_POINT)(axis=None).update(entries).get()),
            "mae": float(MAE(forecast_type=_POINT)(axis=None).update(entries).get()),
        }
        mase = MASE(forecast_type=_POINT)(axis=_SERIES_AXIS).update(series).get()  # (N, C)
        smape = SMAPE(forecast_type=_POINT)(axis=_SERIES_AXIS).update(series).get()  # (N, C)
        per_step = {
            "mse": MSE(forecast_type=_POINT)(axis=_STEP_AXES).update(entries).get(),  # (L,)
            "mae": MAE(forecast_type=_POINT)(axis=_STEP_AXES).update(entries).get(),  # (L,)
        }
        if levels:
            wql = MeanWeightedSumQuantileLoss(quantile_levels=levels)(axis=None).update(series).get()
            result["crps"] = float(wql)
            for q in levels:
                result[f"coverage_{q}"] = float(Coverage(q=q)(axis=None).update(entries).get())
    result["mase"] = _mean_over_series(np.asarray(mase).ravel(), "mase")
    result["smape"] = _mean_over_series(np.asarray(smape).ravel(), "smape")
    result["per_step"] = {k: [float(v) for v in np.asarray(arr)] for k, arr in per_step.items()}
    return result


def seasonal_naive(past: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Seasonal naive forecast: repeat the last observed season over the horizon.

    Args:
        past: ``(N, T, C)`` context values.
        horizon: Forecast length ``L``.
        season: Season length; when ``T < season`` the forecast is the last value (naive).

    Returns:
        ``(N, L, C)`` forecasts.

    Raises:
        ShapeError: If ``past`` is not ``N T C`` with ``T >= 1``.
        ValueError: If ``horizon`` or ``season`` is below 1.
    """
    past = np.asarray(past)
    if past.ndim != 3 or past.shape[1] < 1:
        raise ShapeError(f"past: expected N T C with T >= 1, got {past.shape}")
    if horizon < 1 or season < 1:
        raise ValueError(f"horizon and season must be >= 1, got horizon={horizon}, season={season}")
    if past.shape[1] < season:
        season = 1
    last_season = past[:, -season:, :]  # (N, season, C)
    return last_season[:, np.arange(horizon) % season, :]  # (N, L, C)


def forecast_window_scores(
    y_true: np.ndarray, y_pred: np.ndarray, past: np.ndarray, seasonality: int, mask: np.ndarray | None = None
) -> dict[str, WindowScores]:
    """Per-window accumulators of MSE, MAE, MASE and sMAPE as :func:`forecast_metrics` defines them,
    for the comparison's bootstrap intervals (:mod:`sciadapt.metrics.bootstrap`).

    Each metric keeps one value and one weight per window, in window (time) order: MSE and MAE the
    window's mean over its observed entries, weighted by their number; MASE and sMAPE the mean of the
    window's defined per-series values, weighted by their number. The weighted mean over all windows is
    :func:`forecast_metrics`' value. Arguments as there (already checked by it).
    """
    label, point, context = _as_float(y_true), _as_float(y_pred), _as_float(past)  # (N, L, C), (N, T, C)
    n = label.shape[0]
    observed = np.ones(label.shape, dtype=bool) if mask is None else np.asarray(mask) > 0  # (N, L, C)
    err = np.where(observed, point - label, 0.0)
    count = observed.sum(axis=(1, 2))  # (N,)
    lag = seasonality if seasonality < context.shape[1] else 1
    series = {
        "label": label if observed.all() else np.where(observed, label, np.nan),
        "seasonal_error": seasonal_error(context, lag, time_axis=1),
        _POINT: point,
    }
    scores = {}
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        for name, per_entry in (("mse", err**2), ("mae", np.abs(err))):
            scores[name] = column_scores(per_entry.sum(axis=(1, 2)) / count, count)
        for name, metric in (("mase", MASE), ("smape", SMAPE)):
            per_series = np.asarray(metric(forecast_type=_POINT)(axis=_SERIES_AXIS).update(series).get())
            per_series = per_series.astype(np.float64).reshape(n, -1)  # (N, C)
            defined = np.isfinite(per_series)
            n_defined = defined.sum(axis=1)
            scores[name] = column_scores(np.where(defined, per_series, 0.0).sum(axis=1) / n_defined, n_defined)
    return scores
