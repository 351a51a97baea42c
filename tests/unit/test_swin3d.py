"""Swin3D: shapes, (shifted) window attention that stays inside its windows, padding, the forecast
decoder, and save/load."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest
import torch
import yaml

from sciadapt.backbones.swin3d import (
    MASKED,
    Swin3D,
    SwinBlock3d,
    attention_mask,
    effective_window,
    relative_position_index,
)
from sciadapt.config import argument_problems
from sciadapt.errors import CheckpointError, ConfigError, ShapeError
from sciadapt.registry import BACKBONES
from tests.conftest import REPO
from tests.unit.test_contracts import TINY_BACKBONES

WINDOW = (2, 4, 4)


def _tiny(**kwargs: object) -> Swin3D:
    torch.manual_seed(0)
    model: Swin3D = BACKBONES.build("swin3d_tiny", **kwargs).eval()
    return model


def test_tiny_is_found_by_the_contract_tests() -> None:
    # the registry-wide contract (build with defaults, example inputs, PEFT targets, save/load) runs on it
    assert "swin3d_tiny" in TINY_BACKBONES


def test_stage_features_forecast_and_feature_info_agree() -> None:
    model = _tiny(bands=["a", "b", "c"], num_frames=2, img_size=32, head="forecast", forecast_frames=2)
    x = model.example_inputs(3)["x"]
    assert x.shape == (3, 3, 2, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
    info = model.feature_info
    assert len(feats) == len(info) == 3
    for f, level in zip(feats[:2], info[:2], strict=True):
        t, h, w = level["grid"]
        assert level["layout"] == "B N D" and f.shape == (3, t * h * w, level["channels"])
    assert [lvl["grid"] for lvl in info[:2]] == [[2, 8, 8], [2, 4, 4]]
    assert [lvl["reduction"] for lvl in info[:2]] == [4, 8]
    assert info[-1] == {"layout": "B C H W", "channels": 6, "reduction": 1, "kind": "forecast"}
    assert feats[-1].shape == (3, 6, 32, 32)  # 2 frames x 3 channels, full resolution
    # the default PEFT targets are the attention projections of every block
    names = [n for n, _ in model.named_modules()]
    assert sum(n.endswith("attn.qkv") for n in names) == 4
    assert model.default_peft_targets == ["stages.*.blocks.*.attn.qkv", "stages.*.blocks.*.attn.proj"]


def test_residual_forecast_is_persistence_plus_the_decoder_output() -> None:
    model = _tiny(bands=["a", "b"], head="forecast", forecast_frames=2)
    assert model.decoder is not None
    with torch.no_grad():
        model.decoder.proj.weight.zero_()
        model.decoder.proj.bias.zero_()
        x = model.example_inputs(2)["x"]
        forecast = model.forward_features(x)[-1]
    last = x[:, :, -1]  # (B, C, H, W)
    torch.testing.assert_close(forecast, torch.cat([last, last], dim=1))  # frames major: (l c)
    with pytest.raises(ShapeError, match="num_frames"):
        model.forward_features(torch.randn(1, 2, 4, 32, 32))  # 4 frames, the decoder reads 2


def _groups(n: int, window: int, shift: int) -> list[int]:
    """The window of each position along one axis when windows are shifted by ``shift`` *without*
    wrap-around (the partition the cyclic shift plus mask must reproduce): [0, shift), then every
    ``window`` positions from ``shift`` on."""
    return [(x + window - shift) // window if shift else x // window for x in range(n)]


@pytest.mark.parametrize("shifted", [False, True], ids=["regular", "shifted"])
def test_a_token_only_attends_inside_its_window(shifted: bool) -> None:
    """Perturb one token: exactly the tokens of its window change (norms and MLP act per token, so
    the block's dependence pattern is the attention's). Fails if the shift, the roll back, or the
    mask that keeps wrapped-around tokens apart is wrong. (The perturbation is a random vector: a
    constant added to every feature would vanish in the LayerNorm.)"""
    torch.manual_seed(0)
    block = SwinBlock3d(dim=8, num_heads=2, window=WINDOW, shifted=shifted).double().eval()
    grid = (4, 8, 8)
    shift = (1, 2, 2) if shifted else (0, 0, 0)
    groups = [_groups(n, w, s) for n, w, s in zip(grid, WINDOW, shift, strict=True)]
    x = torch.randn(1, *grid, 8, dtype=torch.float64)
    kick = 5.0 * torch.randn(8, dtype=torch.float64)
    with torch.no_grad():
        base = block(x)
        # corners (where a cyclic shift wraps around), window edges and an inner token
        for p in [(0, 0, 0), (3, 7, 7), (0, 7, 0), (1, 2, 5), (2, 4, 3), (3, 1, 6)]:
            moved = x.clone()
            moved[0, p[0], p[1], p[2]] += kick
            changed = (block(moved) - base).abs().amax(-1)[0] > 1e-9  # (T, H, W)
            expected = torch.zeros(grid, dtype=torch.bool)
            for q in itertools.product(*(range(n) for n in grid)):
                expected[q] = all(groups[a][q[a]] == groups[a][p[a]] for a in range(3))
            assert torch.equal(changed, expected), (p, shifted)
    if shifted:  # the shifted partition differs from the regular one (the test would notice a no-op shift)
        assert groups[1] != _groups(8, 4, 0)


@pytest.mark.parametrize("shifted", [False, True], ids=["regular", "shifted"])
def test_padded_tokens_are_never_attended(shifted: bool) -> None:
    """A (3, 5, 7) grid is padded to (4, 8, 8) windows (padding amounts unlike the shift, so shifted
    windows mix real and padded tokens too). Every real token carries the same features, so
    every value vector a real query may attend to is the same: all real outputs must be equal. A padded
    (zero) token attended to would pull the windows that hold padding away from the others."""
    torch.manual_seed(0)
    block = SwinBlock3d(dim=8, num_heads=2, window=WINDOW, shifted=shifted).double().eval()
    with torch.no_grad():
        block.attn.qkv.bias.normal_(std=2.0)  # padded tokens' keys and values: the qkv bias, far from the real ones
    token = torch.randn(8, dtype=torch.float64)
    x = token.expand(1, 3, 5, 7, 8).clone()
    with torch.no_grad():
        out = block(x)
    assert out.shape == x.shape
    flat = out.reshape(-1, 8)
    torch.testing.assert_close(flat, flat[:1].expand_as(flat))


def test_mask_values_and_window_rules() -> None:
    mask = attention_mask((4, 8, 8), (4, 8, 8), WINDOW, (1, 2, 2), torch.device("cpu"))
    assert mask is not None and mask.shape == (2 * 2 * 2, 32, 32)
    assert set(mask.unique().tolist()) == {0.0, MASKED}
    assert attention_mask((4, 8, 8), (4, 8, 8), WINDOW, (0, 0, 0), torch.device("cpu")) is None
    # a grid no larger than the window along an axis: the window shrinks to it, no shift there
    assert effective_window((1, 3, 8), WINDOW, (1, 2, 2)) == ((1, 3, 4), (0, 0, 2))


def test_relative_position_bias_index() -> None:
    index = relative_position_index(WINDOW, WINDOW)  # (N, N)
    coords = list(itertools.product(*(range(w) for w in WINDOW)))
    n_entries = (2 * 2 - 1) * (2 * 4 - 1) * (2 * 4 - 1)
    assert index.shape == (32, 32) and int(index.min()) == 0 and int(index.max()) == n_entries - 1
    seen: dict[tuple[int, ...], int] = {}
    for i, a in enumerate(coords):
        for j, b in enumerate(coords):
            offset = tuple(x - y for x, y in zip(a, b, strict=True))
            assert seen.setdefault(offset, int(index[i, j])) == int(index[i, j]), offset  # one entry per offset
    assert len(set(seen.values())) == len(seen)  # and one offset per entry
    # a shrunk window indexes the entries its offsets have in the full window
    small = relative_position_index((1, 2, 4), WINDOW)
    inside = [i for i, c in enumerate(coords) if c[0] < 1 and c[1] < 2]
    assert torch.equal(small, index[inside][:, inside])


def test_sizes_that_are_not_multiples_are_padded() -> None:
    model = _tiny(bands=["a", "b"], num_frames=3, img_size=30, head="forecast")
    assert [lvl["grid"] for lvl in model.feature_info[:2]] == [[3, 8, 8], [3, 4, 4]]
    x = model.example_inputs(2)["x"]  # (2, 2, 3, 30, 30): not multiples of the (2, 4, 4) window or the 4-px patch
    with torch.no_grad():
        feats = model.forward_features(x)
    assert feats[0].shape == (2, 3 * 8 * 8, 16) and feats[1].shape == (2, 3 * 4 * 4, 32)
    assert feats[-1].shape == (2, 2, 30, 30)
    assert all(torch.isfinite(f).all() for f in feats)
    # odd sizes on an encoder-only model (no decoder): any size goes
    enc = _tiny(bands=["a"], num_frames=1)
    with torch.no_grad():
        out = enc.forward_features(torch.randn(1, 1, 1, 21, 13))
    assert out[-1].shape == (1, 1 * 3 * 2, 32)


def test_a_setting_that_breaks_the_geometry_is_named() -> None:
    with pytest.raises(ConfigError, match=r"bands: channel names repeat"):
        Swin3D(bands=["a", "A"])
    with pytest.raises(ConfigError, match=r"stage 1 width 32 is not divisible by num_heads 3"):
        Swin3D(embed_dim=16, depths=(1, 1), num_heads=(2, 3))
    with pytest.raises(ShapeError, match="C=2"):
        _tiny(bands=["a", "b"]).forward_features(torch.randn(1, 3, 2, 32, 32))


def test_save_and_load_with_the_decoder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _tiny(bands=["a", "b"], head="forecast", forecast_frames=2)
    x = model.example_inputs(2)["x"]
    with torch.no_grad():
        want = model.forward_features(x)
    folder = model.save_pretrained(tmp_path / "saved")
    torch.manual_seed(1)
    other = BACKBONES.build("swin3d_tiny", bands=["a", "b"], head="forecast", forecast_frames=2).eval()
    other.load_pretrained(str(folder))
    with torch.no_grad():
        got = other.forward_features(x)
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(a, b)
    # an encoder-only model takes the encoder and says it dropped the decoder
    encoder = BACKBONES.build("swin3d_tiny", bands=["a", "b"]).eval()
    with caplog.at_level(logging.INFO, logger="sciadapt.backbones.swin3d"):
        encoder.load_pretrained(str(folder))
    assert "dropped the forecast decoder" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(encoder.forward_features(x)[-1], want[1])
    # other channels than the file's: named, with the fix
    with pytest.raises(CheckpointError, match=r"the file's channels are a, b, this model's b, a"):
        BACKBONES.build("swin3d_tiny", bands=["b", "a"]).load_pretrained(str(folder))
    # a task checkpoint's backbone.* entries load as they are
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "t.ckpt")
    again = BACKBONES.build("swin3d_tiny", bands=["a", "b"], head="forecast", forecast_frames=2).eval()
    again.load_pretrained(str(tmp_path / "t.ckpt"))
    with torch.no_grad():
        torch.testing.assert_close(again.forward_features(x)[-1], want[-1])


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "backbone").glob("swin3d*.yaml")), ids=lambda p: p.stem)
def test_bundled_configs_are_valid_builder_arguments(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    name = cfg.pop("name")
    assert argument_problems(BACKBONES.get(name), cfg, "backbone") == []
