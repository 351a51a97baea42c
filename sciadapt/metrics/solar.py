"""Irradiance forecast scores as the solar-forecasting literature reports them.

Forecasts of the clear-sky index ``k`` are turned into irradiance (``k * clear-sky``, never negative, zero
where the clear-sky irradiance is zero, i.e. at night) and scored in W/m^2 on daytime steps only (the
caller's mask: solar zenith below 85 degrees and an observed value): RMSE, MAE, MBE (mean bias, forecast
minus measurement), and the RMSE skill score against a reference forecast, usually smart persistence
(persistence of the clear-sky index), ``s = 1 - RMSE / RMSE_ref`` per lead time (Marquez and Coimbra 2013;
Yang et al. 2020, "Verification of deterministic solar forecasts"). The table's ``skill`` is the mean of the
per-lead skill scores.

Every score also comes as per-window accumulators (:class:`~sciadapt.metrics.bootstrap.WindowScores`), so
the comparison's paired block-bootstrap intervals cover these metrics too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sciadapt.errors import ShapeError
from sciadapt.metrics.bootstrap import WindowScores, column_scores


def to_irradiance(k: np.ndarray, clear_sky: np.ndarray, k_max: float) -> np.ndarray:
    """Irradiance from clear-sky index forecasts: ``clip(k, 0, k_max) * clear_sky``, 0 where the clear-sky
    irradiance is not positive (the sun below the horizon).

    Args:
        k: ``(N, L, C)`` clear-sky index.
        clear_sky: ``(N, L, C)`` clear-sky irradiance, W/m^2.
        k_max: Upper clip of ``k`` (the datamodule's, so forecasts stay in the range it trained on).
    """
    k, clear_sky = np.asarray(k, dtype=np.float64), np.asarray(clear_sky, dtype=np.float64)
    if k.shape != clear_sky.shape:
        raise ShapeError(f"to_irradiance: k {k.shape} and clear_sky {clear_sky.shape} differ")
    out: np.ndarray = np.where(clear_sky > 0, np.clip(k, 0.0, k_max) * clear_sky, 0.0)
    return out


def _check(truth: np.ndarray, pred: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> None:
    if truth.ndim != 3:
        raise ShapeError(f"truth: expected N L C, got {truth.shape}")
    for name, a in (("pred", pred), ("reference", reference), ("mask", mask)):
        if a.shape != truth.shape:
            raise ShapeError(f"{name}: expected N L C = {truth.shape}, got {a.shape}")


def irradiance_metrics(
    truth: np.ndarray, pred: np.ndarray, reference: np.ndarray, mask: np.ndarray
) -> tuple[dict[str, Any], dict[str, WindowScores]]:
    """Daytime irradiance scores of ``pred`` and its skill against ``reference``.

    Args:
        truth: ``(N, L, C)`` measured irradiance, W/m^2.
        pred: ``(N, L, C)`` forecast irradiance, W/m^2.
        reference: ``(N, L, C)`` the reference forecast (smart persistence), W/m^2.
        mask: ``(N, L, C)``, 1 on the scored (daytime, observed) entries.

    Returns:
        ``({"rmse", "mae", "mbe", "nrmse", "skill", "n_daytime", "per_step": {"rmse", "mae", "mbe",
        "skill", "reference_rmse": [L floats]}}, {"rmse", "mae", "mbe", "skill": WindowScores})``; ``nrmse``
        is the RMSE over the mean measured daytime irradiance, ``skill`` the mean over leads of
        ``1 - RMSE / RMSE_ref``.
    """
    truth, pred, reference = (np.asarray(a, dtype=np.float64) for a in (truth, pred, reference))
    m = np.asarray(mask, dtype=np.float64) > 0
    _check(truth, pred, reference, m)
    n, horizon, _ = truth.shape
    err = np.where(m, pred - truth, 0.0)  # (N, L, C)
    ref_err = np.where(m, reference - truth, 0.0)
    count = m.sum(axis=(1, 2)).astype(np.float64)  # (N,)
    per_lead_count = m.sum(axis=2).astype(np.float64)  # (N, L)
    with np.errstate(invalid="ignore", divide="ignore"):
        win = {
            "mse": (err**2).sum(axis=(1, 2)) / count,
            "mae": np.abs(err).sum(axis=(1, 2)) / count,
            "mbe": err.sum(axis=(1, 2)) / count,
        }
    sse = (err**2).sum(axis=2)  # (N, L)
    ref_sse = (ref_err**2).sum(axis=2)
    scores = {
        "rmse": column_scores(win["mse"], count, root=True),
        "mae": column_scores(win["mae"], count),
        "mbe": column_scores(win["mbe"], count),
        "skill": WindowScores(np.stack([sse, ref_sse, per_lead_count], axis=1), _skill),  # (N, 3, L)
    }
    total = max(float(count.sum()), 1.0)
    lead_n = per_lead_count.sum(axis=0)  # (L,)
    with np.errstate(invalid="ignore", divide="ignore"):
        rmse_l = np.sqrt(sse.sum(axis=0) / lead_n)
        ref_l = np.sqrt(ref_sse.sum(axis=0) / lead_n)
        skill_l = np.where(ref_l > 0, 1.0 - rmse_l / ref_l, np.nan)
        mae_l = np.abs(err).sum(axis=(0, 2)) / lead_n
        mbe_l = err.sum(axis=(0, 2)) / lead_n
    mean_truth = float(np.where(m, truth, 0.0).sum() / total)
    rmse = float(np.sqrt((err**2).sum() / total))
    result: dict[str, Any] = {
        "rmse": rmse,
        "mae": float(np.abs(err).sum() / total),
        "mbe": float(err.sum() / total),
        "nrmse": rmse / mean_truth if mean_truth > 0 else float("nan"),
        "skill": scores["skill"].value(),
        "n_daytime": int(count.sum()),
        "per_step": {
            "rmse": _floats(rmse_l),
            "mae": _floats(mae_l),
            "mbe": _floats(mbe_l),
            "skill": _floats(skill_l),
            "reference_rmse": _floats(ref_l),
        },
    }
    if n == 0 or horizon == 0:
        result["skill"] = float("nan")
    return result, scores


def _floats(a: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(a)]


def _skill(total: np.ndarray) -> np.ndarray:
    """``(R, 3, L)`` summed ``[sse, reference sse, count]`` per lead -> ``(R,)`` mean per-lead skill."""
    sse, ref = total[:, 0], total[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_lead = np.where(ref > 0, 1.0 - np.sqrt(sse / np.where(ref > 0, ref, 1.0)), np.nan)  # (R, L)
    finite = np.isfinite(per_lead)
    n = finite.sum(axis=1)
    out: np.ndarray = np.where(n > 0, np.where(finite, per_lead, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)
    return out


def slot_climatology(values: np.ndarray, observed: np.ndarray, slots: np.ndarray, n_slots: int) -> np.ndarray:
    """The mean of ``values`` per time-of-day slot over the observed entries.

    Args:
        values: ``(T, C)`` e.g. the clear-sky index of the train rows.
        observed: ``(T, C)``, 1 where a value counts (daytime, measured).
        slots: ``(T,)`` slot of each row (e.g. minute of day // step).
        n_slots: Number of slots.

    Returns:
        ``(n_slots, C)``: the mean per slot; a slot without observations gets the channel's overall mean.
    """
    values, observed = np.asarray(values, dtype=np.float64), np.asarray(observed, dtype=np.float64) > 0
    c = values.shape[1]
    total = np.zeros((n_slots, c))
    count = np.zeros((n_slots, c))
    np.add.at(total, slots, np.where(observed, values, 0.0))
    np.add.at(count, slots, observed.astype(np.float64))
    overall = np.where(observed, values, 0.0).sum(axis=0) / np.maximum(observed.sum(axis=0), 1)
    out: np.ndarray = np.where(count > 0, total / np.maximum(count, 1), overall[None, :])
    return out
