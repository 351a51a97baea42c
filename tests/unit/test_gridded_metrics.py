"""Tests of the WeatherBench-2 style gridded scores (``sciadapt.metrics.gridded``) against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sciadapt.errors import ShapeError
from sciadapt.metrics import gridded as gmet

N, L, C, H, W = 3, 2, 2, 4, 5
LAT = np.array([60.0, 20.0, -20.0, -60.0])
VARS = ["z_500", "t2m"]


def fields(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(N, L, C, H, W))


def test_latitude_weights() -> None:
    w = gmet.latitude_weights(LAT)
    np.testing.assert_allclose(w.mean(), 1.0)
    np.testing.assert_allclose(w / w[1], np.cos(np.deg2rad(LAT)) / np.cos(np.deg2rad(20.0)))
    # WB2 cell areas: bounds at -90, -40, 0, 40, 90 degrees
    area = gmet.latitude_weights(LAT, kind="cell_area")
    s = np.sin(np.deg2rad([90.0, 40.0, 0.0, -40.0, -90.0]))
    expect = s[:-1] - s[1:]
    np.testing.assert_allclose(area, expect / expect.mean())
    np.testing.assert_allclose(gmet.latitude_weights(LAT[::-1], kind="cell_area"), area[::-1])
    with pytest.raises(ValueError, match="cell_area"):
        gmet.latitude_weights(LAT, kind="gauss")


def test_constant_error_gives_that_rmse_and_bias() -> None:
    truth = fields()
    w = gmet.latitude_weights(LAT)
    scores = gmet.gridded_scores(truth + 1.5, truth, w, VARS, lead_hours=[6, 12])
    for var in VARS:
        assert scores["rmse"][var] == pytest.approx({6: 1.5, 12: 1.5})
        assert scores["bias"][var] == pytest.approx({6: 1.5, 12: 1.5})
    assert "acc" not in scores
    assert gmet.rmse(truth, truth, w, VARS)["t2m"] == {1: 0.0, 2: 0.0}


def test_rmse_is_the_root_of_the_time_mean_weighted_mse() -> None:
    truth = np.zeros((2, 1, 1, H, W))
    fc = truth.copy()
    fc[0] = 1.0  # per-time MSE 1 and 9
    fc[1] = 3.0
    w = np.ones(H)
    assert gmet.rmse(fc, truth, w, ["v"])["v"][1] == pytest.approx(np.sqrt(5.0))
    assert gmet.rmse(fc, truth, w, ["v"], sqrt_before_time_mean=True)["v"][1] == pytest.approx(2.0)
    assert gmet.mse(fc, truth, w, ["v"])["v"][1] == pytest.approx(5.0)


def test_weighted_spatial_mean_by_hand() -> None:
    truth = np.zeros((1, 1, 1, 2, 2))
    fc = np.array([[[[[1.0, 1.0], [3.0, 3.0]]]]])  # error 1 on row 0, 3 on row 1
    w = np.array([0.5, 1.5])  # mean 1
    # bias = (0.5*1*2 + 1.5*3*2) / (2*2) = 2.5; mse = (0.5*1*2 + 1.5*9*2) / 4 = 7
    assert gmet.bias(fc, truth, w, ["v"])["v"][1] == pytest.approx(2.5)
    assert gmet.rmse(fc, truth, w, ["v"])["v"][1] == pytest.approx(np.sqrt(7.0))
    # a masked point leaves numerator and denominator: only row 0 and one point of row 1 count
    mask = np.ones_like(fc)
    mask[0, 0, 0, 1, 1] = 0
    expect = (0.5 * 1 * 2 + 1.5 * 3) / (0.5 * 2 + 1.5)
    assert gmet.bias(fc, truth, w, ["v"], mask=mask)["v"][1] == pytest.approx(expect)


def test_acc_of_the_truth_is_one_and_of_the_opposite_minus_one() -> None:
    truth = fields(1)
    clim = fields(2).mean(axis=(0, 1))  # (C, H, W)
    w = gmet.latitude_weights(LAT)
    for centered in (False, True):
        same = gmet.acc(truth, truth, clim, w, VARS, centered=centered)
        opposite = gmet.acc(2 * clim - truth, truth, clim, w, VARS, centered=centered)
        for var in VARS:
            assert same[var] == pytest.approx({1: 1.0, 2: 1.0})
            assert opposite[var] == pytest.approx({1: -1.0, 2: -1.0})
    # the climatology itself has zero anomaly: undefined, reported as NaN
    fc = np.broadcast_to(clim, truth.shape)
    assert np.isnan(gmet.acc(fc, truth, clim, w, VARS)["t2m"][1])


def test_acc_by_hand() -> None:
    # one field of 2 points with weights 1: ACC = sum(f'a') / sqrt(sum f'^2 sum a'^2)
    truth = np.array([1.0, -1.0]).reshape(1, 1, 1, 2, 1)
    fc = np.array([2.0, 1.0]).reshape(1, 1, 1, 2, 1)
    value = gmet.acc(fc, truth, np.zeros((1, 2, 1)), np.ones(2), ["v"])["v"][1]
    assert value == pytest.approx((2 - 1) / np.sqrt(5 * 2))


def test_torch_inputs_and_masked_out_times() -> None:
    truth = fields(3)
    fc = truth + 2.0
    mask = np.ones_like(truth)
    mask[0] = 0  # the first initial time is missing entirely: left out of the mean
    fc[0] += 100.0
    w = gmet.latitude_weights(LAT)
    out = gmet.rmse(torch.from_numpy(fc).float(), torch.from_numpy(truth), torch.from_numpy(w), VARS, mask=mask)
    assert out["z_500"][1] == pytest.approx(2.0, rel=1e-5)


def test_baselines_are_forecast_arrays() -> None:
    initial = np.random.default_rng(4).normal(size=(N, C, H, W))
    pers = gmet.persistence_forecast(initial, n_lead=L)
    assert pers.shape == (N, L, C, H, W) and np.array_equal(pers[:, 1], initial)
    clim = gmet.climatology_forecast(initial[0], n_init=N, n_lead=L)
    assert clim.shape == (N, L, C, H, W) and np.array_equal(clim[2, 1], initial[0])
    full = fields()
    assert gmet.climatology_forecast(full) is not None and gmet.climatology_forecast(full).shape == full.shape
    # persistence of a state that does not change is perfect
    truth = np.broadcast_to(initial[:, None], (N, L, C, H, W))
    assert gmet.rmse(pers, truth, np.ones(H), VARS)["t2m"] == {1: 0.0, 2: 0.0}
    with pytest.raises(ShapeError, match="n_init and n_lead"):
        gmet.climatology_forecast(initial[0])


def test_shape_errors() -> None:
    truth = fields()
    w = np.ones(H)
    with pytest.raises(ShapeError, match="N_init, n_lead, C, H, W"):
        gmet.rmse(truth[0], truth[0], w, VARS)
    with pytest.raises(ShapeError, match="truth"):
        gmet.rmse(truth, truth[:, :1], w, VARS)
    with pytest.raises(ShapeError, match="weights"):
        gmet.rmse(truth, truth, np.ones(W), VARS)
    with pytest.raises(ShapeError, match="2 names|1 names"):
        gmet.rmse(truth, truth, w, ["only_one"])
    with pytest.raises(ShapeError, match="lead_hours"):
        gmet.rmse(truth, truth, w, VARS, lead_hours=[1, 2, 3])
    with pytest.raises(ShapeError, match="climatology"):
        gmet.acc(truth, truth, np.zeros((3, H, W)), w, VARS)


def test_lead_table() -> None:
    truth = fields()
    w = np.ones(H)
    results = {
        "model": gmet.rmse(truth + 0.5, truth, w, VARS, lead_hours=[3, 6]),
        "persistence": gmet.rmse(truth + 1.0, truth, w, VARS, lead_hours=[3, 6]),
    }
    table = gmet.lead_table(results, "t2m", digits=2)
    assert table.splitlines()[0] == "| lead (h) | model RMSE | persistence RMSE |"
    assert table.splitlines()[2] == "| 3 | 0.50 | 1.00 |"


def test_cell_area_weights_of_a_projected_grid_equal_broadcast_latitude_weights() -> None:
    """(H, W) cell areas (projected and curvilinear grids) weight like (H,) latitude weights repeated
    along W, with and without a mask; another shape names both forms."""
    from sciadapt.metrics.gridded import bias, rmse

    rng = np.random.default_rng(0)
    f, t = rng.normal(size=(2, 3, 2, 4, 5)), rng.normal(size=(2, 3, 2, 4, 5))
    w1 = np.array([0.5, 1.0, 1.2, 1.3])
    w2 = np.repeat(w1[:, None], 5, axis=1)
    mask = (rng.random(f.shape) > 0.2).astype(float)
    for m in (None, mask):
        assert rmse(f, t, w2, ["a", "b"], mask=m) == rmse(f, t, w1, ["a", "b"], mask=m)
        assert bias(f, t, w2, ["a", "b"], mask=m) == bias(f, t, w1, ["a", "b"], mask=m)
    uneven = w2.copy()
    uneven[:, 0] = 10.0
    assert rmse(f, t, uneven, ["a", "b"]) != rmse(f, t, w2, ["a", "b"])
    with pytest.raises(ShapeError, match=r"\(H, W\)"):
        rmse(f, t, np.ones(5), ["a", "b"])
