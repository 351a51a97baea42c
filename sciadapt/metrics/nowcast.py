"""Verification of precipitation nowcasts at each lead time, with the field's definitions (NumPy only).

Fields are rain rates in mm/h on a regular grid, ``(..., H, W)``; NaN marks a pixel without data
(outside the radar's range). Scores, each per lead and pooled over initial times:

- **CSI, POD, FAR** at thresholds (0.1, 1, 5 mm/h) from contingency counts over the pixels where
  both fields are finite (and ``mask`` is true): hits ``H`` (forecast and observed event), misses
  ``M`` (observed, not forecast) and false alarms ``F`` (forecast, not observed). ``CSI = H / (H + M
  + F)``, ``POD = H / (H + M)``, ``FAR = F / (H + F)``. An event is a rate *above* the threshold
  (``> thr``, as ``pysteps.verification.detcatscores``). pysteps itself counts a NaN pixel as "no
  event" in both fields; here it is left out, which is pysteps' count on the finite pixels.
- **FSS** (Roberts & Lean 2008) at a threshold over square neighbourhoods of ``n`` pixels: the
  binary event fields (``>= thr``, as ``pysteps.verification.spatialscores.fss``; NaN is no event)
  are turned into fractions ``S = (events in the n x n window) / n^2``, the window centred as
  ``scipy.ndimage.uniform_filter`` centres it (for even ``n`` one more pixel before than after) and
  zero outside the grid, and ``FSS = 1 - sum (S_f - S_o)^2 / sum (S_f^2 + S_o^2)``. The window
  counts come from summed-area tables, exact in integers, so any size costs four lookups per pixel.
  The sums run over ``mask`` (every pixel when it is None, as pysteps). Neighbourhood sizes are
  given in km and turned into pixels with the grid spacing (:func:`scale_pixels`).
- **MAE** in mm/h over the pixels where both fields are finite.

Every score is a ratio of sums, so a table over initial times is not the mean of per-time scores:
:func:`nowcast_sums` keeps the additive sums of every (initial time, lead) — counts, FSS numerator
and denominator, absolute error and pixels — and :func:`nowcast_table` recomputes each score from
their totals, CSI as ``sum H / sum (H + M + F)`` and FSS as ``1 - sum num / sum den`` over initial
times. :func:`nowcast_window_scores` wraps the same sums as
:class:`~sciadapt.metrics.bootstrap.WindowScores`, so a moving-block bootstrap over initial times
recomputes each score from the resampled times' sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sciadapt.errors import ShapeError
from sciadapt.metrics.bootstrap import WindowScores

#: Columns of the contingency counts: hits, misses, false alarms.
COUNTS = ("hits", "misses", "false_alarms")
#: Columns of the FSS sums: ``sum (S_f - S_o)^2`` and ``sum S_f^2 + S_o^2``.
FSS_SUMS = ("num", "den")
#: Columns of the absolute-error sums: ``sum |f - o|`` and the pixels behind it.
ABS_ERROR_SUMS = ("sum_abs", "n")

THRESHOLDS = (0.1, 1.0, 5.0)  # mm/h
FSS_SCALES_KM = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def _pair(forecast: Any, observed: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(forecast, dtype=np.float64)
    o = np.asarray(observed, dtype=np.float64)
    if f.ndim < 2 or f.shape != o.shape:
        raise ShapeError(
            f"{name}: expected forecast and observed of one shape (..., H, W), got {f.shape} and {o.shape}"
        )
    return f, o


def _mask(mask: Any | None, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask, dtype=bool)
    try:
        return np.broadcast_to(m, shape)
    except ValueError:
        raise ShapeError(f"{name}: mask of shape {m.shape} does not broadcast to the fields' {shape}") from None


def scale_pixels(scale_km: float, spacing_km: float) -> int:
    """The side in pixels of a square neighbourhood of ``scale_km``: ``round(scale_km / spacing_km)``, at least 1.

    Raises:
        ValueError: If the grid spacing is not positive.
    """
    if not spacing_km > 0:
        raise ValueError(f"scale_pixels: the grid spacing must be positive, got {spacing_km} km")
    return max(1, int(round(scale_km / spacing_km)))


def contingency_counts(
    forecast: Any, observed: Any, thresholds: Sequence[float] = THRESHOLDS, mask: Any | None = None
) -> np.ndarray:
    """Hits, misses and false alarms over the last two axes, per threshold.

    Args:
        forecast: Rain rates ``(..., H, W)``; NaN where there is none.
        observed: The verifying rates, same shape.
        thresholds: ``K`` thresholds; an event is a rate above one.
        mask: Pixels to score (broadcast to the fields), on top of those finite in both.

    Returns:
        ``(..., K, 3)`` int64: :data:`COUNTS` per leading index and threshold.
    """
    f, o = _pair(forecast, observed, "contingency_counts")
    valid = np.isfinite(f) & np.isfinite(o)
    m = _mask(mask, f.shape, "contingency_counts")
    if m is not None:
        valid &= m
    out = np.empty((*f.shape[:-2], len(thresholds), 3), dtype=np.int64)
    with np.errstate(invalid="ignore"):  # NaN compares False and is not in `valid` anyway
        for k, thr in enumerate(thresholds):
            fe = (f > thr) & valid
            oe = (o > thr) & valid
            hits = fe & oe
            out[..., k, 0] = hits.sum(axis=(-2, -1))
            out[..., k, 1] = (oe & ~hits).sum(axis=(-2, -1))
            out[..., k, 2] = (fe & ~hits).sum(axis=(-2, -1))
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: np.ndarray = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def csi(counts: np.ndarray) -> np.ndarray:
    """Critical success index ``H / (H + M + F)`` of counts ``(..., 3)``; NaN where there is no event at all."""
    c = np.asarray(counts)
    return _ratio(c[..., 0], c[..., 0] + c[..., 1] + c[..., 2])


def pod(counts: np.ndarray) -> np.ndarray:
    """Probability of detection ``H / (H + M)``; NaN where nothing was observed."""
    c = np.asarray(counts)
    return _ratio(c[..., 0], c[..., 0] + c[..., 1])


def far(counts: np.ndarray) -> np.ndarray:
    """False alarm ratio ``F / (H + F)``; NaN where nothing was forecast."""
    c = np.asarray(counts)
    return _ratio(c[..., 2], c[..., 0] + c[..., 2])


def _box_counts(events: np.ndarray, n: int) -> np.ndarray:
    """Events in the ``n x n`` window around every pixel of ``events`` ``(..., H, W)`` (zero outside).

    A summed-area table of the events padded with ``n // 2 + 1`` zeros before (one for the table's
    zero row) and ``n - 1 - n // 2`` after, so the window of output ``i`` (input rows ``i - n // 2``
    to ``i + n - 1 - n // 2``, scipy's centring) is ``T[i + n] - T[i]`` along each axis.
    """
    if n == 1:
        return events.astype(np.int64)
    lo = n // 2 + 1
    hi = n - 1 - n // 2
    pad = [(0, 0)] * (events.ndim - 2) + [(lo, hi), (lo, hi)]
    table = np.pad(events, pad).astype(np.int64)
    np.cumsum(table, axis=-2, out=table)
    np.cumsum(table, axis=-1, out=table)
    out: np.ndarray = table[..., n:, n:] - table[..., :-n, n:] - table[..., n:, :-n] + table[..., :-n, :-n]
    return out


def fss_sums(
    forecast: Any, observed: Any, threshold: float, sizes: Sequence[int], mask: Any | None = None
) -> np.ndarray:
    """The FSS numerator and denominator over the last two axes, per neighbourhood size.

    Args:
        forecast: Rain rates ``(..., H, W)``; NaN counts as no event.
        observed: The verifying rates, same shape.
        threshold: Event threshold (``>=``, pysteps' convention for the FSS).
        sizes: ``S`` neighbourhood sides in pixels (:func:`scale_pixels`).
        mask: Pixels whose fractions enter the sums (broadcast to the fields); all when None.

    Returns:
        ``(..., S, 2)`` float64: :data:`FSS_SUMS`, ``sum (S_f - S_o)^2`` and ``sum (S_f^2 + S_o^2)``;
        :func:`fss` of their (summed) values is the score.
    """
    f, o = _pair(forecast, observed, "fss_sums")
    m = _mask(mask, f.shape, "fss_sums")
    with np.errstate(invalid="ignore"):
        fe = f >= threshold
        oe = o >= threshold
    lead_shape = f.shape[:-2]
    fe = fe.reshape(-1, *f.shape[-2:])  # (P, H, W): one field at a time keeps the int64 tables small
    oe = oe.reshape(-1, *f.shape[-2:])
    mm = None if m is None else m.reshape(-1, *f.shape[-2:])
    out = np.empty((fe.shape[0], len(sizes), 2), dtype=np.float64)
    for p in range(fe.shape[0]):
        for s, n in enumerate(sizes):
            if n < 1:
                raise ValueError(f"fss_sums: neighbourhood sizes must be >= 1 pixel, got {n}")
            cf = _box_counts(fe[p], int(n))  # (H, W) window counts; fractions are counts / n^2
            co = _box_counts(oe[p], int(n))
            diff = (cf - co) ** 2
            both = cf**2 + co**2
            if mm is not None:
                diff = np.where(mm[p], diff, 0)
                both = np.where(mm[p], both, 0)
            scale = float(n) ** 4
            out[p, s, 0] = float(diff.sum()) / scale  # integer sums: exact before the one division
            out[p, s, 1] = float(both.sum()) / scale
    return out.reshape(*lead_shape, len(sizes), 2)


def fss(sums: np.ndarray) -> np.ndarray:
    """FSS ``1 - num / den`` of sums ``(..., 2)`` (:func:`fss_sums`, summed over fields); NaN where
    neither field has an event (``den == 0``)."""
    s = np.asarray(sums, dtype=np.float64)
    out: np.ndarray = 1.0 - _ratio(s[..., 0], s[..., 1])
    return out


def abs_error_sums(forecast: Any, observed: Any, mask: Any | None = None) -> np.ndarray:
    """``sum |f - o|`` and the pixels behind it over the last two axes: ``(..., 2)`` float64 (finite pixels only)."""
    f, o = _pair(forecast, observed, "abs_error_sums")
    valid = np.isfinite(f) & np.isfinite(o)
    m = _mask(mask, f.shape, "abs_error_sums")
    if m is not None:
        valid &= m
    out = np.empty((*f.shape[:-2], 2), dtype=np.float64)
    out[..., 0] = np.where(valid, np.abs(f - o), 0.0).sum(axis=(-2, -1))
    out[..., 1] = valid.sum(axis=(-2, -1))
    return out


def mae(sums: np.ndarray) -> np.ndarray:
    """MAE of sums ``(..., 2)`` (:func:`abs_error_sums`); NaN without pixels."""
    s = np.asarray(sums, dtype=np.float64)
    return _ratio(s[..., 0], s[..., 1])


@dataclass(frozen=True, eq=False)
class NowcastSums:
    """Additive sums of every (initial time, lead), from which every score is recomputed.

    Attributes:
        counts: ``(N, L, K, 3)`` contingency counts (:data:`COUNTS`) per threshold.
        fss: ``(N, L, S, 2)`` FSS sums (:data:`FSS_SUMS`) per neighbourhood scale.
        abs_error: ``(N, L, 2)`` absolute-error sums (:data:`ABS_ERROR_SUMS`).
        thresholds: The ``K`` contingency thresholds (mm/h).
        fss_threshold: The FSS threshold (mm/h).
        scales_km: The ``S`` neighbourhood scales (km).
        sizes: Their sides in pixels.
    """

    counts: np.ndarray
    fss: np.ndarray
    abs_error: np.ndarray
    thresholds: tuple[float, ...]
    fss_threshold: float
    scales_km: tuple[float, ...]
    sizes: tuple[int, ...]

    @property
    def n(self) -> int:
        """Initial times."""
        return int(self.counts.shape[0])

    @property
    def n_lead(self) -> int:
        return int(self.counts.shape[1])


def nowcast_sums(
    forecast: Any,
    observed: Any,
    spacing_km: float,
    *,
    thresholds: Sequence[float] = THRESHOLDS,
    fss_threshold: float = 1.0,
    scales_km: Sequence[float] = FSS_SCALES_KM,
    mask: Any | None = None,
) -> NowcastSums:
    """The sums behind every score of forecasts ``(N, L, H, W)`` (initial times, leads) against observations.

    Args:
        forecast: Rain rates (mm/h) ``(N, L, H, W)``, or ``(L, H, W)`` for one initial time.
        observed: The verifying rates at each valid time, same shape.
        spacing_km: Grid spacing, to turn ``scales_km`` into pixels.
        thresholds: Contingency thresholds (mm/h).
        fss_threshold: FSS threshold (mm/h).
        scales_km: FSS neighbourhood sides (km).
        mask: Pixels to score, broadcast to ``(N, L, H, W)`` (e.g. the radar's range ``(H, W)``).

    Raises:
        ShapeError: For fields that are not ``(N, L, H, W)`` or ``(L, H, W)`` of one shape.
    """
    f, o = _pair(forecast, observed, "nowcast_sums")
    if f.ndim == 3:
        f, o = f[None], o[None]
    if f.ndim != 4:
        raise ShapeError(f"nowcast_sums: expected (N, L, H, W) or (L, H, W) rain rates, got {f.shape}")
    m = _mask(mask, f.shape, "nowcast_sums")
    sizes = tuple(scale_pixels(s, spacing_km) for s in scales_km)
    return NowcastSums(
        counts=contingency_counts(f, o, thresholds, m),
        fss=fss_sums(f, o, fss_threshold, sizes, m),
        abs_error=abs_error_sums(f, o, m),
        thresholds=tuple(float(t) for t in thresholds),
        fss_threshold=float(fss_threshold),
        scales_km=tuple(float(s) for s in scales_km),
        sizes=sizes,
    )


def concat_sums(parts: Sequence[NowcastSums]) -> NowcastSums:
    """Several :class:`NowcastSums` of one set-up (e.g. one per initial time) as one, in the given order.

    Raises:
        ValueError: If the parts differ in thresholds, scales or leads.
    """
    if not parts:
        raise ValueError("concat_sums: nothing to concatenate")
    first = parts[0]
    for p in parts[1:]:
        if (p.thresholds, p.fss_threshold, p.sizes, p.n_lead) != (
            first.thresholds,
            first.fss_threshold,
            first.sizes,
            first.n_lead,
        ):
            raise ValueError("concat_sums: parts differ in thresholds, FSS threshold, scales or leads")
    return NowcastSums(
        counts=np.concatenate([p.counts for p in parts]),
        fss=np.concatenate([p.fss for p in parts]),
        abs_error=np.concatenate([p.abs_error for p in parts]),
        thresholds=first.thresholds,
        fss_threshold=first.fss_threshold,
        scales_km=first.scales_km,
        sizes=first.sizes,
    )


def _fmt(x: float) -> str:
    return f"{x:g}"


def metric_names(sums: NowcastSums) -> list[str]:
    """The table's metrics: ``csi@1`` (threshold in mm/h), ``pod@..``, ``far@..``, ``fss@1/8km``, ``mae``."""
    names = [f"{s}@{_fmt(t)}" for s in ("csi", "pod", "far") for t in sums.thresholds]
    names += [f"fss@{_fmt(sums.fss_threshold)}/{_fmt(k)}km" for k in sums.scales_km]
    return [*names, "mae"]


def _picker(sums: NowcastSums, name: str) -> tuple[np.ndarray, Any]:
    """The ``(N, L, C)`` sums behind a metric name and the statistic ``(..., C) -> (...)`` of their totals."""
    if name == "mae":
        return sums.abs_error, mae
    kind, _, rest = name.partition("@")
    if kind in ("csi", "pod", "far"):
        k = [_fmt(t) for t in sums.thresholds].index(rest)
        return sums.counts[:, :, k], {"csi": csi, "pod": pod, "far": far}[kind]
    if kind == "fss":
        s = [f"{_fmt(sums.fss_threshold)}/{_fmt(k)}km" for k in sums.scales_km].index(rest)
        return sums.fss[:, :, s], fss
    raise KeyError(name)


def nowcast_table(sums: NowcastSums, lead_minutes: Sequence[float]) -> dict[str, dict[float, float]]:
    """Every score per lead, recomputed from the sums pooled over initial times.

    Args:
        sums: :func:`nowcast_sums` (or :func:`concat_sums`) of ``N`` initial times.
        lead_minutes: The ``L`` lead times, the table's keys.

    Returns:
        ``{metric: {lead_minutes: value}}`` for :func:`metric_names`, plus ``{"all": value}`` under
        each metric's ``"all"`` key pooled over leads too.
    """
    if len(lead_minutes) != sums.n_lead:
        raise ShapeError(f"nowcast_table: {len(lead_minutes)} lead times for L={sums.n_lead} leads")
    out: dict[str, dict[Any, float]] = {}
    for name in metric_names(sums):
        acc, stat = _picker(sums, name)
        total = np.asarray(acc, dtype=np.float64).sum(axis=0)  # (L, C)
        per_lead = stat(total)
        row: dict[Any, float] = {float(m): float(v) for m, v in zip(lead_minutes, per_lead, strict=True)}
        row["all"] = float(stat(total.sum(axis=0)))
        out[name] = row
    return out


def nowcast_window_scores(sums: NowcastSums, lead_minutes: Sequence[float]) -> dict[str, WindowScores]:
    """The table's scores as per-initial-time accumulators for bootstrap intervals.

    Returns:
        ``{"<metric>/<lead>min": WindowScores}`` for every metric and lead, and ``"<metric>"`` pooled
        over leads; a replicate recomputes each from its initial times' summed counts or sums.
    """
    if len(lead_minutes) != sums.n_lead:
        raise ShapeError(f"nowcast_window_scores: {len(lead_minutes)} lead times for L={sums.n_lead} leads")
    out: dict[str, WindowScores] = {}
    for name in metric_names(sums):
        acc, stat = _picker(sums, name)
        acc = np.asarray(acc, dtype=np.float64)  # (N, L, C)
        out[name] = WindowScores(acc, _over_leads(stat))
        for i, m in enumerate(lead_minutes):
            out[f"{name}/{_fmt(float(m))}min"] = WindowScores(acc[:, i], stat)
    return out


def _over_leads(stat: Any) -> Any:
    def pooled(total: np.ndarray) -> np.ndarray:  # (R, L, C) -> (R,)
        out: np.ndarray = stat(total.sum(axis=1))
        return out

    return pooled


def lead_table(results: dict[str, dict[str, dict[Any, float]]], metrics: Sequence[str], digits: int = 3) -> str:
    """A Markdown table by lead time, one column per (forecast, metric).

    Args:
        results: ``{forecast name: nowcast_table(...)}``.
        metrics: Metric names to show (:func:`metric_names`).
        digits: Decimals.
    """
    names = list(results)
    cols = [(n, m) for m in metrics for n in names]
    first = results[names[0]][metrics[0]]
    leads = [k for k in first if k != "all"]
    lines = [
        "| lead (min) | " + " | ".join(f"{n} {m}" for n, m in cols) + " |",
        "|---:|" + "---:|" * len(cols),
    ]
    for lead in [*leads, "all"]:
        label = lead if lead == "all" else _fmt(float(lead))
        cells = " | ".join(f"{results[n][m][lead]:.{digits}f}" for n, m in cols)
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines)
