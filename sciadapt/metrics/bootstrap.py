"""Paired moving-block bootstrap intervals for differences between comparison rows.

Rows of a comparison table (stages, baselines) are scored on the same test windows (or initial
times), so their per-window scores are paired: the difference ``d_i = a_i - b_i`` removes what the
windows share (a hard week is hard for every model). Neighbouring windows overlap in time and their
errors are correlated, so resampling single windows would understate the spread; the moving-block
bootstrap (Künsch 1989) resamples runs of ``block`` consecutive windows instead, which keeps that
correlation inside each block.

A table metric that is a mean over windows (MSE, MAE, sMAPE, MASE with a fixed scale) has a
difference that is the mean of ``d``; the interval here is the percentile interval of that mean over
bootstrap replicates, drawn with a seeded generator, so the same inputs and seed give the same
interval (:func:`paired_interval`).

A metric that is not a mean of per-window values (an RMSE as the root of a mean, a mean over leads
of such roots, an IoU of pooled counts, a ratio of sums) is kept as :class:`WindowScores`: additive
per-window accumulators and the function that turns their sum into the metric. A replicate then
recomputes both rows' metric from the same resampled windows (:func:`metric_interval`); plain means
(:func:`column_scores` with one column) give the same interval as :func:`paired_interval`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sciadapt.errors import ShapeError


@dataclass(frozen=True)
class Interval:
    """A difference of means and its bootstrap interval."""

    diff: float  # mean(a - b)
    low: float
    high: float
    level: float  # e.g. 0.95
    block: int  # windows per resampled block
    n: int  # paired windows

    @property
    def covers_zero(self) -> bool:
        """True when the interval cannot tell the two rows apart."""
        return self.low <= 0.0 <= self.high

    def as_dict(self) -> dict[str, Any]:
        return {
            "diff": self.diff,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "block": self.block,
            "n": self.n,
            "covers_zero": self.covers_zero,
        }


def default_block(n: int) -> int:
    """The block length: ``n ** (1/3)`` (the order that minimises the variance estimate's error for
    the moving-block bootstrap), at least 1."""
    return max(1, int(round(n ** (1.0 / 3.0))))


def draw_starts(n: int, block: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """The first window of every block of every replicate: ``(replicates, ceil(n / block))``."""
    return rng.integers(0, n - block + 1, size=(replicates, math.ceil(n / block)))


def resample_sums(x: np.ndarray, block: int, starts: np.ndarray) -> np.ndarray:
    """Column sums of moving-block resamples of ``x`` ``(N, M)``: ``(R, M)``, one row per row of
    ``starts`` (:func:`draw_starts`); every resample holds exactly ``N`` windows (its last block cut)."""
    n = x.shape[0]
    k = starts.shape[1]
    csum = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0, dtype=np.float64)])  # (N + 1, M)
    block_sums = csum[block:] - csum[:-block]  # (N - block + 1, M): every run of `block` windows
    tail = n - (k - 1) * block
    out = np.empty((starts.shape[0], x.shape[1]))
    # a few replicates at a time: (chunk, M) gathers, whatever the size of the per-window sums
    chunk = max(1, (1 << 21) // max(1, x.shape[1]))
    for lo in range(0, starts.shape[0], chunk):
        part = starts[lo : lo + chunk]
        total = csum[part[:, -1] + tail] - csum[part[:, -1]]  # the cut last block
        for j in range(k - 1):
            total += block_sums[part[:, j]]
        out[lo : lo + chunk] = total
    return out


def block_means(d: np.ndarray, block: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``replicates`` moving-block resamples of ``d`` (each ``len(d)`` long)."""
    starts = draw_starts(len(d), block, replicates, rng)
    out: np.ndarray = resample_sums(np.asarray(d, dtype=np.float64)[:, None], block, starts)[:, 0] / len(d)
    return out


def paired_interval(
    a: np.ndarray,
    b: np.ndarray,
    *,
    level: float = 0.95,
    block: int | None = None,
    replicates: int = 2000,
    seed: int = 0,
) -> Interval:
    """The interval of ``mean(a) - mean(b)`` for per-window scores ``a`` and ``b`` of the same windows.

    Args:
        a: Per-window scores of one row, ``(N,)`` in window order (time order).
        b: The reference row's scores of the same windows, ``(N,)``.
        level: Coverage of the interval.
        block: Windows per block; default :func:`default_block`.
        replicates: Bootstrap replicates.
        seed: Seed of the resampling (the same seed gives the same interval).

    Raises:
        ShapeError: If ``a`` and ``b`` are not 1-D arrays of one length.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ShapeError(f"paired_interval: expected two (N,) arrays of one length, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)  # windows with no observed target score NaN in both
    d = (a - b)[keep]
    n = len(d)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, level, 0, 0)
    blk = min(block or default_block(n), n)
    means = block_means(d, blk, replicates, np.random.default_rng(seed))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Interval(float(d.mean()), float(low), float(high), level, blk, n)


#: a table metric as a function of summed per-window accumulators: ``(R, *S) -> (R,)``
Statistic = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class WindowScores:
    """One row's table metric, window by window, for a paired interval of a metric that need not be
    a plain mean of per-window values (a pooled ratio, an RMSE over leads, a mean IoU ...).

    ``sums`` ``(N, *S)`` are additive per-window accumulators in window (time) order, and the metric
    of any multiset of windows is ``statistic`` of their summed accumulators, so the metric of the
    whole split is ``statistic(sums.sum(0))`` and a bootstrap replicate recomputes it from the sums of
    its resampled windows. ``statistic`` is vectorised over a leading replicate axis.
    """

    sums: np.ndarray
    statistic: Statistic

    @property
    def n(self) -> int:
        return int(self.sums.shape[0])

    def value(self) -> float:
        """The metric over every window (the table's value)."""
        total = np.asarray(self.sums, dtype=np.float64).sum(axis=0)
        return float(self.statistic(total[None])[0])


def _mean_of_finite(x: np.ndarray) -> np.ndarray:
    """Mean over axis 1 of the finite entries of ``x`` ``(R, K)``; NaN where there is none (no warning)."""
    finite = np.isfinite(x)
    count = finite.sum(axis=1)
    total = np.where(finite, x, 0.0).sum(axis=1)
    out: np.ndarray = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


def column_scores(values: np.ndarray, weights: np.ndarray | None = None, *, root: bool = False) -> WindowScores:
    """A metric that averages ``K`` columns, each the weighted mean over windows of a per-window value.

    Args:
        values: ``(N,)`` or ``(N, *K)`` per-window values (the mean over the entries of the window behind
            each column: a window's MSE over its observed steps, a per-time spatial MSE per lead and
            variable); NaN where a window has none, which then weighs nothing.
        weights: Same shape, the entries behind each value (observed steps, defined series); default 1.
        root: Each column's mean is square-rooted before the columns are averaged (WeatherBench's RMSE
            per lead and variable, averaged over them).

    Returns:
        :class:`WindowScores` whose value is ``mean_k g(sum_i w_ik v_ik / sum_i w_ik)`` over the columns
        with any weight, ``g`` the square root or the identity: with one column and unit weights, the
        mean of ``values``.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v.reshape(len(v), -1)  # (N, K)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64).reshape(v.shape)
    w = np.where(np.isfinite(v), w, 0.0)
    sums = np.stack([np.where(w > 0, v, 0.0) * w, w], axis=1)  # (N, 2, K)

    def statistic(total: np.ndarray) -> np.ndarray:  # (R, 2, K) -> (R,)
        num, den = total[:, 0], total[:, 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
            return _mean_of_finite(np.sqrt(means) if root else means)

    return WindowScores(sums, statistic)


def metric_interval(
    a: WindowScores,
    b: WindowScores,
    *,
    level: float = 0.95,
    block: int | None = None,
    replicates: int = 2000,
    seed: int = 0,
) -> Interval:
    """The interval of ``metric(a) - metric(b)`` for two rows scored on the same windows.

    Both rows are resampled with the same blocks (the pairing), and the metric is recomputed on each
    replicate's windows, so a metric that is not a mean of per-window values (RMSE as the root of a
    mean, an IoU of pooled counts) gets the interval of the metric itself. For a plain mean with unit
    weights this is :func:`paired_interval` (the same draws for the same seed).

    Raises:
        ShapeError: If the two rows' accumulators differ in shape (not the same windows).
    """
    if a.sums.shape != b.sums.shape or a.sums.ndim < 1:
        raise ShapeError(
            f"metric_interval: both rows need accumulators of one shape (N, ...), got {a.sums.shape} and {b.sums.shape}"
        )
    n = a.n
    diff = a.value() - b.value()
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, level, 0, 0)
    blk = min(block or default_block(n), n)
    starts = draw_starts(n, blk, replicates, np.random.default_rng(seed))
    reps = []
    for row in (a, b):
        flat = np.asarray(row.sums, dtype=np.float64).reshape(n, -1)
        reps.append(row.statistic(resample_sums(flat, blk, starts).reshape(replicates, *row.sums.shape[1:])))
    d = reps[0] - reps[1]
    d = d[np.isfinite(d)]
    if len(d) == 0 or not math.isfinite(diff):
        return Interval(diff, math.nan, math.nan, level, blk, n)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(d, [alpha, 1.0 - alpha])
    return Interval(diff, float(low), float(high), level, blk, n)
