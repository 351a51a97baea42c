"""Point and quantile forecast heads: shapes, initialisation, validation and losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sciadapt.backbones.nhits import build_nhits_tiny
from sciadapt.config import validate
from sciadapt.errors import ConfigError, ShapeError
from sciadapt.heads.forecast import build_point_head, build_quantile_head


def test_point_head_starts_as_feature_mean() -> None:
    head = build_point_head(in_features=5, horizon=7)
    features = torch.randn(2, 7, 3, 5)
    out = head(features)
    assert out.shape == (2, 7, 3)
    torch.testing.assert_close(out, features.mean(-1))
    assert head.quantiles is None
    assert head.point(out) is out


def test_quantile_head_starts_as_feature_mean_for_every_level() -> None:
    head = build_quantile_head(in_features=4, horizon=6)
    assert head.quantiles == [0.1, 0.5, 0.9]
    features = torch.randn(2, 6, 3, 4)
    out = head(features)
    assert out.shape == (2, 6, 3, 3)
    torch.testing.assert_close(out, features.mean(-1, keepdim=True).expand(-1, -1, -1, 3))


def test_untrained_head_on_nhits_is_plain_nhits() -> None:
    torch.manual_seed(0)
    backbone = build_nhits_tiny(context_length=32, horizon=8, feature_dim=4)
    head = build_point_head(in_features=4, horizon=8)
    x = torch.randn(3, 32, 2)
    for block in backbone.blocks:
        nn.init.zeros_(block.theta.weight)
        nn.init.zeros_(block.theta.bias)
    # Zeroed blocks leave only the naive level: the last observed value.
    torch.testing.assert_close(head(backbone(x)), x[:, -1:, :].expand(3, 8, 2))


def test_pooled_layout_reshapes_per_step_and_quantile() -> None:
    torch.manual_seed(0)
    head = build_quantile_head(in_features=4, horizon=5, in_layout="B C D", quantiles=[0.2, 0.8])
    features = torch.randn(2, 3, 4)
    out = head(features)
    assert out.shape == (2, 5, 3, 2)
    flat = head.proj(features[1, 2])  # (L * Q,)
    torch.testing.assert_close(out[1, 4, 2, 1], flat[4 * 2 + 1])
    point = build_point_head(in_features=4, horizon=5, in_layout="B C D")
    assert point(features).shape == (2, 5, 3)


@pytest.mark.parametrize(
    "quantiles",
    [[0.9, 0.5, 0.1], [0.1, 0.5, 0.5], [0.0, 0.5], [0.5, 1.0], [-0.1, 0.5], []],
)
def test_quantile_levels_are_validated(quantiles: list[float]) -> None:
    with pytest.raises(ConfigError, match="head.quantiles"):
        build_quantile_head(quantiles=quantiles)


def test_config_errors_are_collected() -> None:
    text = "\n".join(head_config_problems(name="point", in_features=0, in_layout="B T C", loss="rmse"))
    assert "head.in_features" in text and "head.in_layout" in text and "head.loss" in text


def test_shape_errors() -> None:
    head = build_point_head(in_features=4, horizon=6)
    with pytest.raises(ShapeError, match="D=4"):
        head(torch.randn(2, 6, 3, 5))
    with pytest.raises(ShapeError, match="L=6"):
        head(torch.randn(2, 7, 3, 4))
    with pytest.raises(ShapeError, match=r"expected B L C D, got \(2, 6, 4\)"):
        head(torch.randn(2, 6, 4))
    pred = torch.zeros(2, 6, 3)
    with pytest.raises(ShapeError, match="target y"):
        head.loss(pred, torch.zeros(2, 6, 4))
    with pytest.raises(ShapeError, match="mask"):
        head.loss(pred, torch.zeros(2, 6, 3), torch.ones(2, 6))
    quantile = build_quantile_head(in_features=4, horizon=6)
    with pytest.raises(ShapeError, match="Q=3"):
        quantile.loss(torch.zeros(2, 6, 3, 2), torch.zeros(2, 6, 3))


def test_pinball_loss_hand_computed_and_masked() -> None:
    head = build_quantile_head(in_features=2, horizon=2, quantiles=[0.1, 0.9])
    y = torch.tensor([[[1.0], [3.0]]])  # (B=1, L=2, C=1)
    pred = torch.tensor([[[[0.0, 2.0]], [[4.0, 5.0]]]])  # (1, 2, 1, Q=2)
    # step 0: y=1 -> q0.1 under by 1: 0.1*1; q0.9 over by 1: 0.1*1  -> mean 0.1
    # step 1: y=3 -> q0.1 over by 1: 0.9*1; q0.9 over by 2: 0.1*2  -> mean 0.55
    torch.testing.assert_close(head.loss(pred, y), torch.tensor(0.325))
    torch.testing.assert_close(head.loss(pred, y, torch.tensor([[[1.0], [0.0]]])), torch.tensor(0.1))
    torch.testing.assert_close(head.loss(pred, y, torch.zeros(1, 2, 1)), torch.tensor(0.0))


@pytest.mark.parametrize(("loss", "expected"), [("mse", (4.0 + 0.25) / 2), ("mae", (2.0 + 0.5) / 2)])
def test_point_loss_hand_computed_and_masked(loss: str, expected: float) -> None:
    head = build_point_head(in_features=1, horizon=3, loss=loss)
    pred = torch.tensor([[[2.0], [0.5], [100.0]]])
    y = torch.zeros(1, 3, 1)
    mask = torch.tensor([[[1.0], [1.0], [0.0]]])  # the huge error is unobserved
    torch.testing.assert_close(head.loss(pred, y, mask), torch.tensor(expected))


def test_huber_loss() -> None:
    head = build_point_head(in_features=1, horizon=2, loss="huber")
    pred = torch.tensor([[[3.0], [0.5]]])
    # |e|=3 -> 3 - 0.5 = 2.5 (linear part); |e|=0.5 -> 0.5 * 0.25 = 0.125 (quadratic part)
    torch.testing.assert_close(head.loss(pred, torch.zeros(1, 2, 1)), torch.tensor((2.5 + 0.125) / 2))


def test_point_picks_the_quantile_nearest_the_median() -> None:
    head = build_quantile_head(in_features=2, horizon=3, quantiles=[0.2, 0.4, 0.7])
    pred = torch.arange(3.0).expand(1, 3, 2, 3)  # value == quantile index
    assert torch.equal(head.point(pred), torch.ones(1, 3, 2))


def test_quantile_head_trains() -> None:
    torch.manual_seed(0)
    head = build_quantile_head(in_features=3, horizon=4, quantiles=[0.1, 0.5, 0.9])
    features = torch.randn(64, 4, 2, 3)
    y = features.sum(-1) + 0.3 * torch.randn(64, 4, 2)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    first = head.loss(head(features), y).item()
    for _ in range(100):
        loss = head.loss(head(features), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    pred = head(features)
    assert (pred[..., 0] <= pred[..., 2]).float().mean() > 0.9  # learned levels come out ordered


def head_config_problems(**head: object) -> list[str]:
    """The problems the config layer finds in a ``head:`` section (the checks its signature declares)."""
    with pytest.raises(ConfigError) as e:
        validate({"head": head, "stages": [{"name": "s", "max_steps": 1}]})
    return [p for p in e.value.problems if p.startswith("head.")]
