"""Nowcast verification (CSI/POD/FAR, FSS, MAE) and rain-rate transforms, against pysteps when installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sciadapt.errors import ShapeError
from sciadapt.metrics import nowcast as nm
from sciadapt.metrics.bootstrap import metric_interval
from sciadapt.nowcast_transforms import db_to_rate, depth_to_rate, floor_db, rate_to_db, rate_to_depth

try:
    import pysteps  # noqa: F401

    HAVE_PYSTEPS = True
except ImportError:
    HAVE_PYSTEPS = False

needs_pysteps = pytest.mark.skipif(not HAVE_PYSTEPS, reason='pysteps is not installed (pip install -e ".[nowcast]")')


def _fields(seed: int, shape: tuple[int, ...] = (48, 40), nan_frac: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Two correlated lognormal rain fields with independent NaN holes."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=shape)
    f = np.exp(base + 0.6 * rng.normal(size=shape) - 0.5)
    o = np.exp(base + 0.6 * rng.normal(size=shape) - 0.5)
    f[rng.random(shape) < nan_frac] = np.nan
    o[rng.random(shape) < nan_frac] = np.nan
    return f, o


def _blob(shape: tuple[int, int], centre: tuple[int, int], radius: int, value: float = 4.0) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.where((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2, value, 0.0)


def test_identical_fields_score_perfectly() -> None:
    f, _ = _fields(0)
    counts = nm.contingency_counts(f, f, (0.1, 1.0, 5.0))
    np.testing.assert_array_equal(nm.csi(counts), 1.0)
    np.testing.assert_array_equal(nm.pod(counts), 1.0)
    np.testing.assert_array_equal(nm.far(counts), 0.0)
    np.testing.assert_array_equal(nm.fss(nm.fss_sums(f, f, 1.0, (1, 2, 5, 8))), 1.0)
    assert nm.mae(nm.abs_error_sums(f, f)) == 0.0


def test_hand_counted_contingency_and_mae() -> None:
    f = np.array([[2.0, 2.0, 0.0], [0.0, np.nan, 2.0]])
    o = np.array([[2.0, 0.0, 2.0], [0.0, 2.0, np.nan]])
    c = nm.contingency_counts(f, o, (1.0,))[0]
    np.testing.assert_array_equal(c, [1, 1, 1])  # the two pixels with a NaN are left out
    assert nm.csi(c) == pytest.approx(1 / 3) and nm.pod(c) == 0.5 and nm.far(c) == 0.5
    s = nm.abs_error_sums(f, o)
    np.testing.assert_allclose(s, [4.0, 4.0])
    # nothing forecast, nothing observed: undefined, not zero
    assert np.isnan(nm.csi(nm.contingency_counts(np.zeros((3, 3)), np.zeros((3, 3)), (1.0,))[0]))


def test_fss_of_shifted_blob_rises_with_scale() -> None:
    o = _blob((64, 64), (32, 28), 5)
    f = _blob((64, 64), (32, 36), 5)  # 8 pixels east
    scores = nm.fss(nm.fss_sums(f, o, 1.0, (1, 3, 5, 9, 17, 33)))
    assert np.all(np.diff(scores) > 0)
    assert scores[0] < 0.2 and scores[-1] > 0.8
    # in km: a 2 km grid halves the pixel sizes
    assert nm.scale_pixels(16, 2.0) == 8 and nm.scale_pixels(1, 2.0) == 1


def test_fss_box_counts_match_brute_force_for_odd_and_even_sizes() -> None:
    rng = np.random.default_rng(3)
    ev = rng.random((11, 9)) < 0.4
    for n in (1, 2, 3, 4, 7, 12):
        lo = n // 2
        brute = np.zeros(ev.shape, dtype=np.int64)
        for i in range(ev.shape[0]):
            for j in range(ev.shape[1]):
                brute[i, j] = ev[max(0, i - lo) : i - lo + n, max(0, j - lo) : j - lo + n].sum()
        np.testing.assert_array_equal(nm._box_counts(ev, n), brute)


def test_fss_mask_leaves_pixels_out_of_the_sums() -> None:
    f, o = _fields(4, nan_frac=0.0)
    mask = np.zeros(f.shape, dtype=bool)
    mask[:, :20] = True
    part = nm.fss_sums(f, o, 1.0, (3,), mask=mask)
    full = nm.fss_sums(f, o, 1.0, (3,))
    assert 0 < part[0, 1] < full[0, 1]


def test_sums_pool_over_initial_times_not_averaged() -> None:
    leads = [5.0, 10.0]
    f = np.stack([np.stack(_fields(s, (24, 20))) for s in range(5)])  # (N=5, L=2, H, W)
    o = np.stack([np.stack(_fields(s + 50, (24, 20))) for s in range(5)])
    sums = nm.concat_sums([nm.nowcast_sums(f[i], o[i], 1.0) for i in range(5)])
    assert sums.counts.shape == (5, 2, 3, 3) and sums.fss.shape == (5, 2, 6, 2)
    table = nm.nowcast_table(sums, leads)
    c = nm.contingency_counts(f, o, nm.THRESHOLDS)[:, :, 1].sum(axis=0)  # (L, 3) pooled
    assert table["csi@1"][5.0] == pytest.approx(float(nm.csi(c[0])), abs=1e-15)
    assert table["csi@1"]["all"] == pytest.approx(float(nm.csi(c.sum(0))), abs=1e-15)
    fs = nm.fss_sums(f, o, 1.0, (8,))[..., 0, :].sum(axis=0)  # (L, 2)
    assert table["fss@1/8km"][10.0] == pytest.approx(float(nm.fss(fs[1])), abs=1e-15)
    # the bootstrap rows recompute the same values and pair initial times
    ws = nm.nowcast_window_scores(sums, leads)
    assert ws["csi@1/5min"].value() == pytest.approx(table["csi@1"][5.0], abs=1e-15)
    assert ws["fss@1/8km"].value() == pytest.approx(table["fss@1/8km"]["all"], abs=1e-15)
    assert ws["mae/10min"].n == 5
    iv = metric_interval(ws["csi@1/5min"], ws["csi@1/5min"], replicates=50)
    assert iv.diff == 0.0 and iv.low == 0.0 == iv.high
    with pytest.raises(ShapeError):
        nm.nowcast_table(sums, [5.0])
    with pytest.raises(ShapeError):
        nm.nowcast_sums(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), 1.0)


def test_transforms_round_trip_and_torch() -> None:
    r = np.array([0.0, 0.05, 0.1, 1.0, 10.0, np.nan])
    db = rate_to_db(r)
    np.testing.assert_allclose(db[:5], [floor_db(), floor_db(), -10.0, 0.0, 10.0])
    assert floor_db() == pytest.approx(-15.0) and np.isnan(db[5])
    back = db_to_rate(db)
    np.testing.assert_allclose(back[:5], [0.0, 0.0, 0.1, 1.0, 10.0])
    t = torch.tensor(r)
    np.testing.assert_allclose(rate_to_db(t).numpy(), db, equal_nan=True)
    np.testing.assert_allclose(db_to_rate(rate_to_db(t)).numpy(), back, equal_nan=True)
    np.testing.assert_allclose(depth_to_rate(np.array([0.01, 1.0])), [0.12, 12.0])
    np.testing.assert_allclose(rate_to_depth(depth_to_rate(np.array([0.01, 1.0]), 10.0), 10.0), [0.01, 1.0])


@needs_pysteps
def test_categorical_scores_agree_with_pysteps() -> None:
    from pysteps.verification.detcatscores import det_cat_fct

    worst = 0.0
    for seed in range(4):
        f, o = _fields(seed)
        valid = np.isfinite(f) & np.isfinite(o)
        c = nm.contingency_counts(f, o, (0.1, 1.0, 5.0))
        for k, thr in enumerate((0.1, 1.0, 5.0)):
            ref = det_cat_fct(f[valid], o[valid], thr, scores=("CSI", "POD", "FAR"))
            for name, fn in (("CSI", nm.csi), ("POD", nm.pod), ("FAR", nm.far)):
                worst = max(worst, abs(float(fn(c[k])) - float(ref[name])))
    assert worst < 1e-10


@needs_pysteps
def test_fss_agrees_with_pysteps_on_fields_with_nans() -> None:
    from pysteps.verification.spatialscores import fss as ps_fss

    worst = 0.0
    for seed in range(3):
        f, o = _fields(seed, (60, 52), nan_frac=0.2)
        sizes = (1, 2, 3, 4, 8, 16, 32)
        ours = nm.fss(nm.fss_sums(f, o, 1.0, sizes))
        for s, n in enumerate(sizes):
            worst = max(worst, abs(float(ours[s]) - float(ps_fss(f, o, 1.0, n))))
    assert worst < 1e-10


@needs_pysteps
def test_transforms_agree_with_pysteps() -> None:
    from pysteps.utils.conversion import to_raindepth, to_rainrate
    from pysteps.utils.transformation import dB_transform

    f, _ = _fields(7)
    ref, _ = dB_transform(f, threshold=0.1)
    np.testing.assert_allclose(rate_to_db(f, threshold=0.1), ref, rtol=0, atol=1e-10, equal_nan=True)
    ref, _ = dB_transform(f, threshold=0.5, zerovalue=-20.0)
    np.testing.assert_allclose(rate_to_db(f, 0.5, -20.0), ref, rtol=0, atol=1e-10, equal_nan=True)
    db = rate_to_db(f)
    back, _ = dB_transform(db, threshold=-10.0, inverse=True)
    np.testing.assert_allclose(db_to_rate(db, -10.0), back, rtol=0, atol=1e-10, equal_nan=True)
    meta = {"unit": "mm", "accutime": 5.0, "transform": None, "threshold": 0.01, "zerovalue": 0.0}
    rate, _ = to_rainrate(f, meta)
    np.testing.assert_allclose(depth_to_rate(f, 5.0), rate, rtol=0, atol=1e-10, equal_nan=True)
    depth, _ = to_raindepth(f, {**meta, "unit": "mm/h"})
    np.testing.assert_allclose(rate_to_depth(f, 5.0), depth, rtol=0, atol=1e-10, equal_nan=True)
