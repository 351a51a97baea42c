"""N-HiTS backbone: contract, semantics (level, residuals, exog, channel independence), training, IO."""

from __future__ import annotations

import math
import time
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sciadapt.backbones.nhits import NHiTS, build_nhits, build_nhits_tiny
from sciadapt.errors import CheckpointError, ConfigError, ShapeError

CTX, H = 48, 12


def tiny(seed: int = 0, **kw: Any) -> NHiTS:
    torch.manual_seed(seed)
    return build_nhits_tiny(**{"context_length": CTX, "horizon": H, **kw})


def zero_theta(model: NHiTS) -> None:
    for block in model.blocks:
        nn.init.zeros_(block.theta.weight)
        nn.init.zeros_(block.theta.bias)


def sine_windows(n: int, ctx: int = CTX, horizon: int = H, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, ctx, 1) inputs and (n, horizon, 1) targets cut from sines of random phase."""
    g = torch.Generator().manual_seed(seed)
    phase = torch.rand(n, 1, generator=g) * 2 * math.pi
    t = torch.arange(ctx + horizon, dtype=torch.float32)
    series = torch.sin(2 * math.pi * t / 16 + phase)  # (n, ctx + horizon)
    return series[:, :ctx, None], series[:, ctx:, None]


def test_output_shape_and_contract() -> None:
    model = tiny(feature_dim=3)
    x = torch.randn(5, CTX, 4)
    out = model.forward_features(x)
    assert out.shape == (5, H, 4, 3)
    assert torch.equal(model(x), out)
    assert model.input_layout == "B T C"
    assert model.feature_info == [{"layout": "B L C D", "channels": 3, "horizon": H}]
    assert len(model.blocks) == 3


def test_default_config_matches_paper() -> None:
    model = build_nhits()
    assert model.config["pool_kernel_sizes"] == [2, 2, 1]
    assert model.config["downsample_freqs"] == [4, 2, 1]
    assert model.config["mlp_units"] == [512, 512]
    assert [b.n_knots for b in model.blocks] == [6, 12, 24]  # horizon 24 // [4, 2, 1]
    assert model.feature_dim == 8
    tiny_model = build_nhits_tiny()
    assert tiny_model.config["mlp_units"] == [32, 32] and tiny_model.feature_dim == 4


def test_default_peft_targets_match_only_linear_layers() -> None:
    model = tiny()
    names = dict(model.named_modules())
    for pattern in model.default_peft_targets:
        matched = [n for n in names if fnmatch(n, pattern)]
        assert matched, pattern
        assert all(isinstance(names[n], nn.Linear) for n in matched)


@pytest.mark.parametrize(
    ("shape", "n_exog", "message"),
    [
        ((4, CTX + 1, 2), 0, f"expected B T C with T={CTX}, got (4, {CTX + 1}, 2)"),
        ((4, CTX), 0, f"expected B T C, got (4, {CTX})"),
        ((4, CTX, 2), 2, "C > n_exog=2"),
    ],
)
def test_shape_errors(shape: tuple[int, ...], n_exog: int, message: str) -> None:
    with pytest.raises(ShapeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny(n_exog=n_exog)(torch.randn(*shape))


def test_config_errors_are_collected() -> None:
    with pytest.raises(ConfigError) as info:
        build_nhits(pool_kernel_sizes=[2, 1], pooling="median", dropout=1.5)
    text = str(info.value)
    assert "one entry per stack" in text and "backbone.pooling" in text and "backbone.dropout" in text
    with pytest.raises(ConfigError, match="backbone.mlp_units"):
        build_nhits(mlp_units=[])


@pytest.mark.parametrize("feature_dim", [1, 4])
def test_level_init_gives_naive_forecast(feature_dim: int) -> None:
    model = tiny(feature_dim=feature_dim)
    zero_theta(model)
    x = torch.randn(3, CTX, 2)
    out = model(x)
    expected = x[:, -1:, :, None].expand(3, H, 2, feature_dim)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize(("interpolation", "pooling"), [("linear", "max"), ("nearest", "avg"), ("cubic", "max")])
def test_interpolation_and_pooling_modes(interpolation: str, pooling: str) -> None:
    model = tiny(interpolation=interpolation, pooling=pooling, feature_dim=2, context_length=CTX + 1)
    out = model(torch.randn(2, CTX + 1, 3))  # odd length: exercises ceil_mode pooling
    assert out.shape == (2, H, 3, 2) and torch.isfinite(out).all()


def test_cubic_interpolates_each_feature_curve_separately() -> None:
    model = tiny(interpolation="cubic", feature_dim=3)
    block = model.blocks[0]
    knots = torch.randn(2, 3, block.n_knots)
    single = torch.stack([block._interpolate(knots[:, d : d + 1])[:, 0] for d in range(3)], dim=1)
    # Each curve alone must match the joint interpolation: no mixing across D.
    torch.testing.assert_close(block._interpolate(knots), single)


def test_decompose_sums_to_forward() -> None:
    model = tiny()
    x = torch.randn(2, CTX, 3)
    parts = model.decompose(x)
    assert len(parts["blocks"]) == 3 and parts["residual"].shape == (2, CTX, 3)
    torch.testing.assert_close(parts["level"] + sum(parts["blocks"]), model(x))


def test_exog_only_matters_when_declared() -> None:
    x = torch.randn(2, CTX, 3)
    bumped = x.clone()
    bumped[..., 2] += 1.0

    with_exog = tiny(n_exog=1)
    out, out_bumped = with_exog(x), with_exog(bumped)
    assert out.shape[2] == 2  # the exogenous channel is an input, not a forecast target
    assert not torch.allclose(out, out_bumped)  # shared by both targets
    assert not torch.allclose(out[:, :, 0], out_bumped[:, :, 0])
    assert not torch.allclose(out[:, :, 1], out_bumped[:, :, 1])

    without_exog = tiny(n_exog=0)
    out, out_bumped = without_exog(x), without_exog(bumped)
    torch.testing.assert_close(out[:, :, :2], out_bumped[:, :, :2])  # other channels untouched


def test_channel_independence() -> None:
    model = tiny(n_exog=1)
    x = torch.randn(2, CTX, 5)  # 4 targets + 1 exog
    perm = torch.tensor([2, 0, 3, 1])
    permuted = torch.cat([x[..., perm], x[..., 4:]], dim=-1)
    torch.testing.assert_close(model(permuted), model(x)[:, :, perm])


def test_gradients_reach_all_blocks() -> None:
    model = tiny(n_exog=1)
    model(torch.randn(4, CTX, 3)).square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.fixture(scope="module")
def sine_training() -> tuple[NHiTS, list[float], float]:
    torch.manual_seed(0)
    model = build_nhits_tiny(context_length=CTX, horizon=H, feature_dim=1)
    x, y = sine_windows(64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    # Ops this small gain nothing from threads, and spinning OpenMP workers stall on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for _ in range(200):
            loss = (model(x)[..., 0] - y).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return model, losses, seconds


def test_overfits_sine(sine_training: tuple[NHiTS, list[float], float]) -> None:
    _, losses, seconds = sine_training
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])
    assert seconds < 5.0


def test_backcast_residual_reduces() -> None:
    # Two identity-like blocks that each explain half of their input window: residual 1/4 remains.
    model = tiny(pool_kernel_sizes=[1], downsample_freqs=[1], n_blocks=[2], mlp_units=[CTX])
    with torch.no_grad():
        for block in model.blocks:
            block.hidden[0].weight.copy_(torch.eye(CTX))
            block.hidden[0].bias.zero_()
            block.theta.weight.zero_()
            block.theta.weight[:CTX].copy_(0.5 * torch.eye(CTX))
            block.theta.bias.zero_()
    x = 0.5 + torch.rand(3, CTX, 2)  # positive, so the ReLU passes the window unchanged
    with torch.no_grad():
        parts = model.decompose(x)
    torch.testing.assert_close(parts["residual"], 0.25 * x)
    torch.testing.assert_close(parts["level"] + sum(parts["blocks"]), parts["level"])


def test_load_pretrained_safetensors_round_trip(tmp_path: Path) -> None:
    source = tiny(n_exog=1, seed=1)
    path = tmp_path / "nhits.safetensors"
    save_file(source.state_dict(), str(path))
    target = tiny(n_exog=1, seed=2)
    x = torch.randn(2, CTX, 3)
    assert not torch.allclose(source(x), target(x))
    target.load_pretrained(str(path))
    torch.testing.assert_close(target(x), source(x))


def test_load_pretrained_from_builder_weights(tmp_path: Path) -> None:
    source = tiny(seed=1)
    path = tmp_path / "nhits.safetensors"
    save_file(source.state_dict(), str(path))
    loaded = build_nhits_tiny(context_length=CTX, horizon=H, weights=str(path))
    x = torch.randn(2, CTX, 1)
    torch.testing.assert_close(loaded(x), source(x))


def test_load_pretrained_lightning_checkpoint(tmp_path: Path) -> None:
    source = tiny(seed=1)
    state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    state["head.proj.weight"] = torch.ones(1, 4)
    path = tmp_path / "task.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    target = tiny(seed=2)
    target.load_pretrained(str(path))
    x = torch.randn(2, CTX, 1)
    torch.testing.assert_close(target(x), source(x))


def test_load_pretrained_context_mismatch_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "ctx96.safetensors"
    save_file(tiny(context_length=96).state_dict(), str(path))
    with pytest.raises(CheckpointError) as info:
        tiny().load_pretrained(str(path))
    text = str(info.value)
    assert str(path) in text
    assert "blocks.0.hidden.0.weight" in text and "blocks.0.theta.weight" in text
    assert "context_length=96" in text


def test_load_pretrained_other_failures(tmp_path: Path) -> None:
    model = tiny()
    with pytest.raises(CheckpointError, match="not found"):
        model.load_pretrained(str(tmp_path / "missing.safetensors"))
    bad_suffix = tmp_path / "weights.npz"
    bad_suffix.write_bytes(b"0")
    with pytest.raises(CheckpointError, match="unsupported checkpoint format"):
        model.load_pretrained(str(bad_suffix))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        model.load_pretrained(str(corrupt))
    deeper = tmp_path / "deeper.safetensors"
    save_file(tiny(n_blocks=[1, 2, 1]).state_dict(), str(deeper))
    with pytest.raises(CheckpointError, match="unexpected keys.*n_blocks"):
        model.load_pretrained(str(deeper))


def test_known_future_covariates_feed_every_block() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 48, 1 + 2)
    fut = torch.randn(3, 12, 2)
    past_only = build_nhits_tiny(context_length=48, horizon=12, n_exog=2)
    # past-observed covariates: their horizon values (if any) are ignored, the outputs unchanged
    assert torch.equal(past_only.forward_features(x), past_only.forward_features(x, future_exog=fut))
    known = build_nhits_tiny(context_length=48, horizon=12, n_exog=2, known_future=True)
    first = known.blocks[0].hidden[0]
    assert first.in_features == past_only.blocks[0].hidden[0].in_features + 6 * 2  # ceil(12 / 2) x 2 covariates
    a, b = known.forward_features(x, future_exog=fut), known.forward_features(x, future_exog=fut + 1.0)
    assert a.shape == (3, 12, 1, 4) and not torch.allclose(a, b)
    with pytest.raises(ShapeError, match="known_future needs the 2 covariates over the horizon"):
        known.forward_features(x)
    assert set(known.example_inputs()) == {"x", "future_exog"}
