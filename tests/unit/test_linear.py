"""NLinear / DLinear backbone and the closed-form least-squares baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sciadapt.backbones.linear import build_linear
from sciadapt.errors import ConfigError, ShapeError
from sciadapt.metrics.least_squares import LeastSquaresForecaster
from sciadapt.registry import BACKBONES

CTX, H = 32, 8


def test_registered_and_shapes() -> None:
    assert "linear" in BACKBONES
    for variant in ("nlinear", "dlinear"):
        model = build_linear(context_length=CTX, horizon=H, n_exog=1, variant=variant, moving_avg=5)
        out = model(torch.randn(4, CTX, 3))  # 2 targets + 1 covariate
        assert out.shape == (4, H, 2, 1)
        assert model.feature_info == [{"layout": "B L C D", "channels": 1, "horizon": H}]


def test_nlinear_starts_as_naive_and_dlinear_as_mean() -> None:
    x = torch.randn(3, CTX, 2)
    naive = build_linear(context_length=CTX, horizon=H, variant="nlinear")(x)
    assert torch.allclose(naive[..., 0], x[:, -1:, :].expand(-1, H, -1))
    mean = build_linear(context_length=CTX, horizon=H, variant="dlinear", moving_avg=5)(x)
    # trend + remainder each mapped to their mean: the sum is the context mean
    assert torch.allclose(mean[..., 0], x.mean(dim=1, keepdim=True).expand(-1, H, -1), atol=1e-5)


def test_channels_are_independent() -> None:
    torch.manual_seed(0)
    model = build_linear(context_length=CTX, horizon=H, variant="dlinear", moving_avg=5)
    torch.nn.init.normal_(model.proj.weight)
    x = torch.randn(2, CTX, 3)
    base = model(x)
    x2 = x.clone()
    x2[..., 1] += 5.0
    moved = model(x2)
    assert torch.allclose(base[:, :, [0, 2]], moved[:, :, [0, 2]])
    assert not torch.allclose(base[:, :, 1], moved[:, :, 1])


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="odd window"):
        build_linear(context_length=CTX, horizon=H, variant="dlinear", moving_avg=4)
    with pytest.raises(ConfigError, match="longer than context_length"):
        build_linear(context_length=CTX, horizon=H, variant="dlinear", moving_avg=33)
    with pytest.raises(ShapeError, match="linear input"):
        build_linear(context_length=CTX, horizon=H)(torch.randn(2, CTX + 1, 1))


def _ar_windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of a noiseless AR(2) series, so the future is an exact linear map of the past."""
    rng = np.random.default_rng(seed)
    series = np.zeros((n + CTX + H, 2))
    series[:2] = rng.normal(size=(2, 2))
    for t in range(2, len(series)):
        series[t] = 1.6 * series[t - 1] - 0.8 * series[t - 2] + 0.1
    idx = np.arange(n)[:, None]
    x = series[idx + np.arange(CTX)]  # (n, CTX, 2)
    y = series[idx + CTX + np.arange(H)]  # (n, H, 2)
    return x.astype(np.float32), y.astype(np.float32)


def test_least_squares_recovers_an_exact_linear_process() -> None:
    x, y = _ar_windows(200, seed=0)
    batches = [{"x": x[i : i + 50], "y": y[i : i + 50]} for i in range(0, 200, 50)]
    fitted = LeastSquaresForecaster(n_targets=2).fit(batches)
    xt, yt = _ar_windows(40, seed=1)
    assert np.abs(fitted.predict(xt) - yt).max() < 1e-3
    # a noisy target keeps the fit finite and close
    rng = np.random.default_rng(2)
    noisy = [{"x": b["x"], "y": b["y"] + rng.normal(0, 0.01, b["y"].shape).astype(np.float32)} for b in batches]
    assert np.abs(LeastSquaresForecaster(2).fit(noisy).predict(xt) - yt).max() < 0.1


def test_least_squares_skips_masked_windows_and_needs_one() -> None:
    x, y = _ar_windows(100, seed=0)
    mask = np.ones_like(y)
    y_bad = y.copy()
    y_bad[50:] = 99.0  # garbage targets, masked out (the series has settled there; the start informs)
    mask[50:] = 0.0
    fitted = LeastSquaresForecaster(2).fit([{"x": x, "y": y_bad, "mask": mask}])
    xt, yt = _ar_windows(10, seed=3)
    assert np.abs(fitted.predict(xt) - yt).max() < 1e-3
    with pytest.raises(ValueError, match="no complete train window"):
        LeastSquaresForecaster(2).fit([{"x": x, "y": y, "mask": np.zeros_like(y)}])
