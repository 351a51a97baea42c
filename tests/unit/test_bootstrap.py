"""The paired moving-block bootstrap against cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from sciadapt.errors import ShapeError
from sciadapt.metrics.bootstrap import block_means, default_block, draw_starts, paired_interval, resample_sums


def test_a_constant_difference_has_a_zero_width_interval() -> None:
    a = np.linspace(0, 1, 500)
    iv = paired_interval(a + 0.25, a)
    assert iv.diff == pytest.approx(0.25) and iv.low == pytest.approx(0.25) and iv.high == pytest.approx(0.25)
    assert not iv.covers_zero


def test_block_means_equal_a_direct_resample() -> None:
    rng = np.random.default_rng(3)
    d = rng.standard_normal(103)
    block, reps = 7, 50
    fast = block_means(d, block, reps, np.random.default_rng(11))
    # the same draw, done the slow way: concatenate blocks, cut to n, average
    starts = np.random.default_rng(11).integers(0, len(d) - block + 1, size=(reps, -(-len(d) // block)))
    slow = [np.concatenate([d[s : s + block] for s in row])[: len(d)].mean() for row in starts]
    np.testing.assert_allclose(fast, slow, rtol=1e-12)


def test_resampled_sums_of_several_columns_equal_a_direct_resample() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 3))
    block = 6
    starts = draw_starts(len(x), block, 20, np.random.default_rng(9))
    fast = resample_sums(x, block, starts)
    slow = [np.concatenate([x[s : s + block] for s in row])[: len(x)].sum(axis=0) for row in starts]
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)


def test_iid_differences_give_the_normal_interval() -> None:
    """Independent differences: the half-width is 1.96 sigma / sqrt(n) (block 1)."""
    rng = np.random.default_rng(0)
    n, sigma = 4000, 2.0
    b = rng.standard_normal(n)
    a = b + 0.1 + sigma * rng.standard_normal(n)
    iv = paired_interval(a, b, block=1, replicates=4000, seed=1)
    half = (iv.high - iv.low) / 2
    assert half == pytest.approx(1.96 * sigma / np.sqrt(n), rel=0.08)
    assert iv.low < 0.1 < iv.high


def test_correlated_windows_widen_the_interval_as_theory_says() -> None:
    """AR(1) differences with phi = 0.8: the long-run variance is (1 + phi) / (1 - phi) = 9 times the
    marginal one, so the interval is 3 times the iid one; single-window resampling misses that."""
    rng = np.random.default_rng(5)
    n, phi = 20000, 0.8
    e = rng.standard_normal(n)
    d = np.empty(n)
    d[0] = e[0] / np.sqrt(1 - phi**2)
    for i in range(1, n):
        d[i] = phi * d[i - 1] + e[i]
    sd = 1 / np.sqrt(1 - phi**2)  # marginal standard deviation
    expect = 1.96 * sd * np.sqrt((1 + phi) / (1 - phi) / n)
    wide = paired_interval(d, np.zeros(n), block=100, replicates=2000, seed=2)
    narrow = paired_interval(d, np.zeros(n), block=1, replicates=2000, seed=2)
    assert (wide.high - wide.low) / 2 == pytest.approx(expect, rel=0.15)
    assert (narrow.high - narrow.low) / 2 == pytest.approx(1.96 * sd / np.sqrt(n), rel=0.15)


def test_deterministic_with_the_seed_and_nan_windows_dropped() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(300), rng.standard_normal(300)
    a[[3, 50]] = np.nan
    one, two = paired_interval(a, b, seed=4), paired_interval(a, b, seed=4)
    assert one == two and one.n == 298 and one.block == default_block(298)
    assert paired_interval(a, b, seed=5) != one


def test_shapes_are_checked() -> None:
    with pytest.raises(ShapeError, match=r"\(N,\)"):
        paired_interval(np.zeros(3), np.zeros(4))
