"""Scores of gridded forecasts with the WeatherBench-2 definitions, per variable and lead time.

Arrays are ``(N_init, n_lead, C, H, W)`` (initial times, lead times, channels, latitude,
longitude), in physical units, numpy or torch. Every score is first reduced over the grid for each
(initial time, lead, channel) with latitude weights ``w`` of mean 1 (a weighted mean over latitude
*and* longitude: ``sum_ij w_i e_ij / sum_ij w_i``), then over initial times:

- **RMSE** = ``sqrt(mean_t MSE_t)``: the square root of the time-mean of the weighted spatial MSE.
  This is WB2's headline RMSE (its evaluation stores ``MSE`` per time, averages over time and takes
  the square root afterwards; its ``RMSESqrtBeforeTimeAvg`` is the mean of per-time RMSEs instead,
  available here as ``sqrt_before_time_mean=True``).
- **ACC** = ``mean_t [ sum w f'a' / sqrt(sum w f'^2 * sum w a'^2) ]`` with anomalies
  ``f' = forecast - climatology`` and ``a' = truth - climatology`` (WB2's ``ACC``: anomalies with
  respect to the climatology only). ``centered=True`` also removes each anomaly field's weighted
  spatial mean first (the "centred" ACC of ECMWF's definition).
- **Bias** = ``mean_t`` of the weighted spatial mean of ``forecast - truth`` (WB2's ``Bias``).

WB2 weights latitudes by the area of their grid cells (``sin`` of the cell's upper minus lower
bound); :func:`latitude_weights` gives that (``"cell_area"``) or ``cos(lat)`` (``"cos"``, what the
datamodule's ``area_weights`` and the training loss use); both are normalised to mean 1 and agree
closely away from the poles. Entries with ``mask == 0`` (missing truth) leave both numerator and
denominator of the spatial means; an (initial time, lead, channel) with no observed point is left
out of the time mean.

The per-time values behind all three come from one pass (:func:`per_time_scores`); the comparison's
bootstrap over initial times resamples them (:func:`window_scores`).

Results are nested dicts ``{variable: {lead_hours: value}}``; :func:`persistence_forecast` and
:func:`climatology_forecast` build the baselines as forecast arrays, scored by the same functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sciadapt.errors import ShapeError
from sciadapt.metrics.bootstrap import WindowScores, column_scores

LAYOUT = "(N_init, n_lead, C, H, W)"


def latitude_weights(lat: Any, kind: str = "cos") -> np.ndarray:
    """Latitude weights ``(H,)`` of mean 1.

    Args:
        lat: Latitudes in degrees, any order.
        kind: ``"cos"`` (cosine of latitude) or ``"cell_area"`` (WB2: ``sin(upper) - sin(lower)``
            of each cell, its bounds half way to the neighbours and +-90 degrees at the ends).

    Raises:
        ValueError: For an unknown ``kind``.
    """
    lat = np.asarray(lat, dtype=np.float64)
    if kind == "cos":
        w = np.clip(np.cos(np.deg2rad(lat)), 0.0, None)
    elif kind == "cell_area":
        order = np.argsort(lat)
        s = np.deg2rad(lat[order])
        bounds = np.concatenate([[-np.pi / 2], (s[:-1] + s[1:]) / 2, [np.pi / 2]])
        area = np.sin(bounds[1:]) - np.sin(bounds[:-1])
        w = np.empty_like(area)
        w[order] = area
    else:
        raise ValueError(f"latitude_weights: kind must be 'cos' or 'cell_area', got {kind!r}")
    normalised: np.ndarray = w / w.mean()
    return normalised


def _np(a: Any, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def _prepare(
    forecast: Any, truth: Any, weights: Any, variables: Sequence[str], mask: Any | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    f, t = _np(forecast, "forecast"), _np(truth, "truth")
    if f.ndim != 5:
        raise ShapeError(f"forecast: expected {LAYOUT}, got {f.shape}")
    if t.shape != f.shape:
        raise ShapeError(f"truth: expected the forecast's shape {f.shape} {LAYOUT}, got {t.shape}")
    w = _np(weights, "weights")
    if w.shape not in ((f.shape[3],), (f.shape[3], f.shape[4])):
        raise ShapeError(
            f"weights: expected (H,) = ({f.shape[3]},) latitude weights or (H, W) = {f.shape[3:]} cell areas "
            f"(projected and curvilinear grids), got {w.shape}"
        )
    if len(variables) != f.shape[2]:
        raise ShapeError(f"variables: {len(variables)} names for C={f.shape[2]} channels")
    m = None
    if mask is not None:
        m = _np(mask, "mask")
        if m.shape != f.shape:
            raise ShapeError(f"mask: expected the forecast's shape {f.shape}, got {m.shape}")
    return f, t, w, m


def _spatial_mean(x: np.ndarray, w: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    """Area-weighted mean over (H, W) of ``x (N, L, C, H, W)`` -> ``(N, L, C)`` (NaN where nothing observed);
    ``w`` is ``(H,)`` latitude weights or ``(H, W)`` cell areas."""
    ww = w[:, None] if w.ndim == 1 else w  # (H, 1) broadcast over W, or (H, W)
    if m is None:
        mean: np.ndarray = (x * ww).sum(axis=(-2, -1)) / np.broadcast_to(ww, x.shape[-2:]).sum()  # (N, L, C)
        return mean
    wm = m * ww
    den = wm.sum(axis=(-2, -1))
    num = (np.where(m > 0, x, 0.0) * wm).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _time_mean(x: np.ndarray) -> np.ndarray:
    """Mean over initial times ``(N, L, C) -> (L, C)``, skipping (t, l, c) without observations."""
    with np.errstate(invalid="ignore"):
        count = np.isfinite(x).sum(axis=0)
        total = np.where(np.isfinite(x), x, 0.0).sum(axis=0)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _lead_keys(n_lead: int, lead_hours: Sequence[float] | None) -> list[Any]:
    hours = list(lead_hours) if lead_hours is not None else list(range(1, n_lead + 1))
    if len(hours) != n_lead:
        raise ShapeError(f"lead_hours: {len(hours)} values for n_lead={n_lead}")
    return [int(h) if float(h).is_integer() else float(h) for h in hours]


def _as_dict(values: np.ndarray, variables: Sequence[str], leads: list[Any]) -> dict[str, dict[Any, float]]:
    """``(L, C)`` -> ``{variable: {lead: value}}``."""
    return {v: {lead: float(values[k, c]) for k, lead in enumerate(leads)} for c, v in enumerate(variables)}


def mse(
    forecast: Any,
    truth: Any,
    weights: Any,
    variables: Sequence[str],
    lead_hours: Sequence[float] | None = None,
    mask: Any | None = None,
) -> dict[str, dict[Any, float]]:
    """Time-mean of the latitude-weighted spatial mean squared error (WB2 ``MSE``).

    Args:
        forecast: ``(N_init, n_lead, C, H, W)``.
        truth: Same shape.
        weights: Latitude weights ``(H,)`` (see :func:`latitude_weights`) or cell areas ``(H, W)``.
        variables: Channel names ``(C,)``.
        lead_hours: Lead time of each step (dict keys); default ``1..n_lead``.
        mask: 1 where the truth is observed (same shape); default all observed.

    Returns:
        ``{variable: {lead: value}}``.
    """
    f, t, w, m = _prepare(forecast, truth, weights, variables, mask)
    per_time = _spatial_mean((f - t) ** 2, w, m)  # (N, L, C)
    return _as_dict(_time_mean(per_time), variables, _lead_keys(f.shape[1], lead_hours))


def rmse(
    forecast: Any,
    truth: Any,
    weights: Any,
    variables: Sequence[str],
    lead_hours: Sequence[float] | None = None,
    mask: Any | None = None,
    sqrt_before_time_mean: bool = False,
) -> dict[str, dict[Any, float]]:
    """Latitude-weighted RMSE per variable and lead time (WB2 definition, see the module docstring).

    Args:
        forecast / truth / weights / variables / lead_hours / mask: As :func:`mse`.
        sqrt_before_time_mean: Average per-time RMSEs (WB2 ``RMSESqrtBeforeTimeAvg``) instead of
            taking the root of the time-mean MSE.

    Returns:
        ``{variable: {lead: value}}``.
    """
    f, t, w, m = _prepare(forecast, truth, weights, variables, mask)
    per_time = _spatial_mean((f - t) ** 2, w, m)  # (N, L, C)
    values = _time_mean(np.sqrt(per_time)) if sqrt_before_time_mean else np.sqrt(_time_mean(per_time))
    return _as_dict(values, variables, _lead_keys(f.shape[1], lead_hours))


def bias(
    forecast: Any,
    truth: Any,
    weights: Any,
    variables: Sequence[str],
    lead_hours: Sequence[float] | None = None,
    mask: Any | None = None,
) -> dict[str, dict[Any, float]]:
    """Time-mean of the latitude-weighted spatial mean of ``forecast - truth`` (WB2 ``Bias``).

    Args:
        forecast / truth / weights / variables / lead_hours / mask: As :func:`mse`.

    Returns:
        ``{variable: {lead: value}}``.
    """
    f, t, w, m = _prepare(forecast, truth, weights, variables, mask)
    per_time = _spatial_mean(f - t, w, m)
    return _as_dict(_time_mean(per_time), variables, _lead_keys(f.shape[1], lead_hours))


def acc(
    forecast: Any,
    truth: Any,
    climatology: Any,
    weights: Any,
    variables: Sequence[str],
    lead_hours: Sequence[float] | None = None,
    mask: Any | None = None,
    centered: bool = False,
) -> dict[str, dict[Any, float]]:
    """Anomaly correlation coefficient against a climatology, per variable and lead (WB2 ``ACC``).

    Args:
        forecast / truth / weights / variables / lead_hours / mask: As :func:`mse`.
        climatology: The climatological state at each valid time, broadcastable to the forecast's
            shape, e.g. ``(N_init, n_lead, C, H, W)`` from the datamodule's ``climatology`` at the
            valid times, or ``(C, H, W)`` for a time-independent one.
        centered: Remove each anomaly field's weighted spatial mean before correlating.

    Returns:
        ``{variable: {lead: value}}``; a field whose anomaly is zero everywhere gives NaN.
    """
    f, t, w, m = _prepare(forecast, truth, weights, variables, mask)
    per_time = _per_time_acc(f, t, climatology, w, m, centered)
    return _as_dict(_time_mean(per_time), variables, _lead_keys(f.shape[1], lead_hours))


def _per_time_acc(
    f: np.ndarray, t: np.ndarray, climatology: Any, w: np.ndarray, m: np.ndarray | None, centered: bool = False
) -> np.ndarray:
    """The anomaly correlation of every (initial time, lead, channel): ``(N, L, C)``."""
    c = _np(climatology, "climatology")
    try:
        c = np.broadcast_to(c, f.shape)
    except ValueError:
        raise ShapeError(
            f"climatology: shape {c.shape} does not broadcast to the forecast's {f.shape} {LAYOUT}"
        ) from None
    fa, ta = f - c, t - c
    if centered:
        fa = fa - _spatial_mean(fa, w, m)[..., None, None]
        ta = ta - _spatial_mean(ta, w, m)[..., None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_time: np.ndarray = _spatial_mean(fa * ta, w, m) / np.sqrt(
            _spatial_mean(fa**2, w, m) * _spatial_mean(ta**2, w, m)
        )
    return per_time


def per_time_scores(
    forecast: Any,
    truth: Any,
    weights: Any,
    variables: Sequence[str],
    climatology: Any | None = None,
    mask: Any | None = None,
) -> dict[str, np.ndarray]:
    """The per-initial-time values every score here averages over time, in one pass over the grid.

    Args:
        forecast / truth / weights / variables / mask: As :func:`mse`.
        climatology: As :func:`acc`; without it there is no ``"acc"``.

    Returns:
        ``{"mse": ..., "bias": ..., "acc": ...}``, each ``(N_init, n_lead, C)`` (NaN where nothing is
        observed): the weighted spatial MSE, the spatial mean of ``forecast - truth`` and the ACC of
        every initial time. :func:`time_means` turns them into the tables of :func:`gridded_scores`;
        they are also what a bootstrap over initial times resamples.
    """
    f, t, w, m = _prepare(forecast, truth, weights, variables, mask)
    out = {"mse": _spatial_mean((f - t) ** 2, w, m), "bias": _spatial_mean(f - t, w, m)}
    if climatology is not None:
        out["acc"] = _per_time_acc(f, t, climatology, w, m)
    return out


def time_means(
    per_time: dict[str, np.ndarray], variables: Sequence[str], lead_hours: Sequence[float] | None = None
) -> dict[str, dict[str, dict[Any, float]]]:
    """``{"rmse", "bias", "acc"}: {variable: {lead: value}}`` from :func:`per_time_scores` (RMSE the
    root of the time-mean MSE), as :func:`gridded_scores` gives them."""
    leads = _lead_keys(per_time["mse"].shape[1], lead_hours)
    out = {"rmse": _as_dict(np.sqrt(_time_mean(per_time["mse"])), variables, leads)}
    for name in ("bias", "acc"):
        if name in per_time:
            out[name] = _as_dict(_time_mean(per_time[name]), variables, leads)
    return out


def window_scores(per_time: dict[str, np.ndarray]) -> dict[str, WindowScores]:
    """The headline scores (``rmse``, ``bias``, ``acc``: means over variables and leads of the
    time-mean tables) as per-initial-time accumulators for the comparison's bootstrap intervals
    (:mod:`sciadapt.metrics.bootstrap`): each (lead, variable) is a column, RMSE the mean of the
    columns' roots of their time-mean MSE; an unobserved (initial time, lead, variable) weighs nothing."""
    out = {"rmse": column_scores(per_time["mse"], root=True)}
    for name in ("bias", "acc"):
        if name in per_time:
            out[name] = column_scores(per_time[name])
    return out


def gridded_scores(
    forecast: Any,
    truth: Any,
    weights: Any,
    variables: Sequence[str],
    lead_hours: Sequence[float] | None = None,
    climatology: Any | None = None,
    mask: Any | None = None,
) -> dict[str, dict[str, dict[Any, float]]]:
    """RMSE, bias and (given a climatology) ACC in one call: ``{"rmse": ..., "bias": ..., "acc": ...}``."""
    out = {
        "rmse": rmse(forecast, truth, weights, variables, lead_hours, mask),
        "bias": bias(forecast, truth, weights, variables, lead_hours, mask),
    }
    if climatology is not None:
        out["acc"] = acc(forecast, truth, climatology, weights, variables, lead_hours, mask)
    return out


def persistence_forecast(initial: Any, n_lead: int) -> np.ndarray:
    """The persistence baseline: the initial state repeated at every lead.

    Args:
        initial: ``(N_init, C, H, W)`` states at the initial times.
        n_lead: Lead steps.

    Returns:
        ``(N_init, n_lead, C, H, W)`` (a read-only broadcast view).
    """
    x = _np(initial, "initial")
    if x.ndim != 4:
        raise ShapeError(f"initial: expected (N_init, C, H, W), got {x.shape}")
    return np.broadcast_to(x[:, None], (x.shape[0], n_lead, *x.shape[1:]))


def climatology_forecast(climatology: Any, n_init: int | None = None, n_lead: int | None = None) -> np.ndarray:
    """The climatology baseline: the climatological state at every valid time.

    Args:
        climatology: ``(N_init, n_lead, C, H, W)`` climatology at the valid times (e.g. the
            datamodule's ``climatology(valid_times)``), or ``(C, H, W)`` with ``n_init`` and ``n_lead``.
        n_init / n_lead: Output sizes when ``climatology`` is one field per channel.

    Returns:
        ``(N_init, n_lead, C, H, W)``.
    """
    c = _np(climatology, "climatology")
    if c.ndim == 5:
        return c
    if c.ndim != 3 or n_init is None or n_lead is None:
        raise ShapeError(f"climatology: expected {LAYOUT}, or (C, H, W) with n_init and n_lead, got {c.shape}")
    return np.broadcast_to(c[None, None], (n_init, n_lead, *c.shape))


def lead_table(
    results: dict[str, dict[str, dict[Any, float]]], variable: str, digits: int = 3, metric: str = "RMSE"
) -> str:
    """A Markdown table of one variable's score by lead time, one column per forecast.

    Args:
        results: ``{forecast name: {variable: {lead: value}}}``, e.g. ``{"model": rmse(...),
            "persistence": rmse(...), "climatology": rmse(...)}``.
        variable: The variable to show.
        digits: Decimals.
        metric: Name of the score, for the header.
    """
    names = list(results)
    leads = list(next(iter(results.values()))[variable])
    lines = [
        f"| lead (h) | {' | '.join(f'{n} {metric}' for n in names)} |",
        "|---:|" + "---:|" * len(names),
    ]
    for lead in leads:
        cells = " | ".join(f"{results[n][variable][lead]:.{digits}f}" for n in names)
        lines.append(f"| {lead} | {cells} |")
    return "\n".join(lines)
