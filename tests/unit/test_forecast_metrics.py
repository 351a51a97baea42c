"""Forecast metrics: hand-computed values, agreement with gluonts' per-series functions, masks, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from gluonts.evaluation import metrics as gm

from sciadapt.errors import ShapeError
from sciadapt.metrics.forecasting import forecast_metrics, seasonal_naive

QUANTILES = [0.1, 0.5, 0.9]


def random_case(n: int = 3, horizon: int = 5, channels: int = 2, context: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n, horizon, channels))
    pred = y + rng.normal(scale=0.5, size=y.shape)
    past = rng.normal(size=(n, context, channels))
    qpred = np.stack([pred - 0.6, pred, pred + 0.6], axis=-1)
    return y, pred, past, qpred


def series(a: np.ndarray) -> list[np.ndarray]:
    """(N, L, C) -> the N*C series in window-major order."""
    return [a[i, :, c] for i in range(a.shape[0]) for c in range(a.shape[2])]


def test_mse_mae_hand_computed() -> None:
    y = np.array([[[1.0], [2.0]], [[0.0], [0.0]]])  # (N=2, L=2, C=1)
    pred = np.array([[[1.0], [4.0]], [[1.0], [-1.0]]])  # errors 0, 2, 1, 1
    past = np.ones((2, 4, 1))
    past[:, ::2] = 0.0  # alternating: lag-1 seasonal error is 1
    result = forecast_metrics(y, pred, past, seasonality=1)
    assert result["mse"] == pytest.approx((0 + 4 + 1 + 1) / 4)
    assert result["mae"] == pytest.approx((0 + 2 + 1 + 1) / 4)
    assert result["per_step"] == {"mse": [0.5, 2.5], "mae": [0.5, 1.5]}
    assert result["mase"] == pytest.approx((1.0 + 1.0) / 2)
    assert "crps" not in result


def test_point_metrics_equal_gluonts_per_series() -> None:
    y, pred, past, _ = random_case()
    result = forecast_metrics(y, pred, past, seasonality=3)
    scales = [gm.calculate_seasonal_error(p, seasonality=3) for p in series(past)]
    mase = [gm.mase(t, f, s) for t, f, s in zip(series(y), series(pred), scales, strict=True)]
    smape = [gm.smape(t, f) for t, f in zip(series(y), series(pred), strict=True)]
    assert result["mase"] == pytest.approx(np.mean(mase), rel=1e-12)
    assert result["smape"] == pytest.approx(np.mean(smape), rel=1e-12)
    mse = [gm.mse(t, f) for t, f in zip(series(y), series(pred), strict=True)]
    assert result["mse"] == pytest.approx(np.mean(mse))


def test_seasonality_not_shorter_than_context_falls_back_like_gluonts() -> None:
    y, pred, past, _ = random_case(context=6)
    result = forecast_metrics(y, pred, past, seasonality=6)
    scales = [gm.calculate_seasonal_error(p, seasonality=6) for p in series(past)]
    mase = [gm.mase(t, f, s) for t, f, s in zip(series(y), series(pred), scales, strict=True)]
    assert result["mase"] == pytest.approx(np.mean(mase), rel=1e-12)


def test_quantile_metrics_equal_gluonts() -> None:
    y, pred, past, qpred = random_case()
    result = forecast_metrics(y, pred, past, 3, quantile_pred=qpred, quantiles=QUANTILES)
    abs_sum = sum(gm.abs_target_sum(t) for t in series(y))
    weighted = [
        sum(gm.quantile_loss(t, f, q) for t, f in zip(series(y), series(qpred[..., i]), strict=True)) / abs_sum
        for i, q in enumerate(QUANTILES)
    ]
    assert result["crps"] == pytest.approx(np.mean(weighted), rel=1e-12)
    for i, q in enumerate(QUANTILES):
        assert result[f"coverage_{q}"] == pytest.approx(gm.coverage(y, qpred[..., i]))


def test_mask_excludes_entries() -> None:
    y, pred, past, qpred = random_case()
    mask = np.ones_like(y)
    mask[0, 1:, 0] = 0.0
    mask[:, 3, :] = 0.0  # one step unobserved everywhere
    spoiled = pred.copy()
    spoiled[mask == 0] = 1e6
    spoiled_q = qpred.copy()
    spoiled_q[mask == 0] = 1e6
    result = forecast_metrics(y, spoiled, past, 3, quantile_pred=spoiled_q, quantiles=QUANTILES, mask=mask)
    observed = mask == 1
    assert result["mse"] == pytest.approx(np.mean((y - pred)[observed] ** 2))
    assert result["mae"] == pytest.approx(np.mean(np.abs(y - pred)[observed]))
    assert np.isnan(result["per_step"]["mse"][3])
    assert result["per_step"]["mae"][0] == pytest.approx(np.mean(np.abs(y - pred)[:, 0][observed[:, 0]]))
    assert result["coverage_0.9"] == pytest.approx(np.mean((y <= qpred[..., 2])[observed]))
    scales = [gm.calculate_seasonal_error(p, seasonality=3) for p in series(past)]
    mase = [
        gm.mase(t[m == 1], f[m == 1], s)
        for t, f, m, s in zip(series(y), series(pred), series(mask), scales, strict=True)
    ]
    assert result["mase"] == pytest.approx(np.mean(mase))
    assert result["crps"] < 10  # the 1e6 forecasts at missing entries did not count


def test_undefined_mase_series_are_left_out_with_a_warning() -> None:
    y, pred, past, _ = random_case()
    past[0, :, 0] = 2.0  # constant context: zero seasonal error
    with pytest.warns(RuntimeWarning, match="mase is undefined .* for 1 of 6 series"):
        result = forecast_metrics(y, pred, past, seasonality=1)
    rest = [
        gm.mase(t, f, gm.calculate_seasonal_error(p, seasonality=1))
        for t, f, p in zip(series(y)[1:], series(pred)[1:], series(past)[1:], strict=True)
    ]
    assert result["mase"] == pytest.approx(np.mean(rest))


def test_shape_and_argument_errors() -> None:
    y, pred, past, qpred = random_case()
    with pytest.raises(ShapeError, match="y_pred"):
        forecast_metrics(y, pred[:, :-1], past, 1)
    with pytest.raises(ShapeError, match="past"):
        forecast_metrics(y, pred, past[:, :, :1], 1)
    with pytest.raises(ShapeError, match="quantile_pred"):
        forecast_metrics(y, pred, past, 1, quantile_pred=qpred[..., :2], quantiles=QUANTILES)
    with pytest.raises(ValueError, match="together"):
        forecast_metrics(y, pred, past, 1, quantile_pred=qpred)
    with pytest.raises(ShapeError, match="mask"):
        forecast_metrics(y, pred, past, 1, mask=np.ones((3, 5)))


def test_large_evaluation_is_fast() -> None:
    rng = np.random.default_rng(0)
    n, horizon, channels = 2000, 720, 10  # 20,000 series
    y = rng.normal(size=(n, horizon, channels)).astype(np.float32)
    pred = y + 0.1
    past = rng.normal(size=(n, 96, channels)).astype(np.float32)
    qpred = np.stack([pred - 1, pred, pred + 1], axis=-1)
    start = time.perf_counter()
    result = forecast_metrics(y, pred, past, 24, quantile_pred=qpred, quantiles=QUANTILES)
    assert time.perf_counter() - start < 15.0
    assert result["mse"] == pytest.approx(0.01, rel=1e-4)
    assert len(result["per_step"]["mse"]) == horizon


def test_seasonal_naive_values() -> None:
    past = np.arange(10.0).reshape(1, 10, 1) * np.array([1.0, -1.0])  # (1, 10, 2)
    out = seasonal_naive(past, horizon=7, season=3)
    assert out.shape == (1, 7, 2)
    np.testing.assert_array_equal(out[0, :, 0], [7, 8, 9, 7, 8, 9, 7])
    np.testing.assert_array_equal(out[0, :, 1], [-7, -8, -9, -7, -8, -9, -7])
    np.testing.assert_array_equal(seasonal_naive(past, horizon=2, season=1)[0, :, 0], [9, 9])
    np.testing.assert_array_equal(seasonal_naive(past, horizon=3, season=24)[0, :, 0], [9, 9, 9])
    with pytest.raises(ShapeError):
        seasonal_naive(past[0], horizon=3, season=2)
