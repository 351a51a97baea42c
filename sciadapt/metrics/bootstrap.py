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
interval.
"""

from __future__ import annotations

import math
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


def block_means(d: np.ndarray, block: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``replicates`` moving-block resamples of ``d`` (each ``len(d)`` long)."""
    n = len(d)
    k = math.ceil(n / block)
    starts = rng.integers(0, n - block + 1, size=(replicates, k))  # (R, k) first window of each block
    # sums of every block of `block` consecutive values, from a cumulative sum: (n - block + 1,)
    csum = np.concatenate([[0.0], np.cumsum(d, dtype=np.float64)])
    block_sums = csum[block:] - csum[:-block]
    total = block_sums[starts[:, :-1]].sum(axis=1)  # the k-1 whole blocks
    # the last block is cut so that every replicate has exactly n values
    tail = n - (k - 1) * block
    last = starts[:, -1]
    total += csum[last + tail] - csum[last]
    out: np.ndarray = total / n
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
