"""TTM: parity with granite-tsfm's golden outputs, official key listings, loading errors, the backbone contract."""

from __future__ import annotations

import fnmatch
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from sciadapt.backbones.ttm import (
    TTM,
    TTMConfig,
    build_ttm,
    build_ttm_tiny,
    select_checkpoint,
    ttm_revision,
)
from sciadapt.errors import CheckpointError, ConfigError, ShapeError
from sciadapt.registry import BACKBONES

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "ttm_golden"
SHARED_R2 = Path(__file__).resolve().parents[3] / "shared" / "golden" / "ttm" / "r2_512_96"
TINY_VARIANTS = ["tiny", "tiny_fcm_exog", "tiny_freq", "tiny_misc"]
OUTPUTS = ("prediction_outputs", "backbone_hidden_state", "decoder_hidden_state", "loc", "scale", "loss")


def variant_dir(name: str) -> Path:
    if name == "r2_512_96":
        if not (SHARED_R2 / "model.safetensors").is_file():
            pytest.skip(f"r2 512-96 golden fixture not found at {SHARED_R2}")
        return SHARED_R2
    return GOLDEN / name


def golden(name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    folder = variant_dir(name)
    return load_file(str(folder / "inputs.safetensors")), load_file(str(folder / "outputs.safetensors"))


def extras(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: inputs[k] for k in ("freq_token", "static_categorical_values") if k in inputs}


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# parity with granite-tsfm


@pytest.mark.parametrize("name", [*TINY_VARIANTS, "r2_512_96"])
def test_golden_variant_matches_upstream(name: str) -> None:
    folder = variant_dir(name)
    model = TTM.from_pretrained(folder).eval()
    keys = json.loads((folder / "keys.json").read_text())
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == keys
    inputs, ref = golden(name)
    with torch.no_grad():
        plain = model.forward_official(
            inputs["past_values"],
            future_values=inputs["future_values"],
            output_hidden_states=True,
            **extras(inputs),
        )
        masked = model.forward_official(
            inputs["past_values"],
            past_observed_mask=inputs["past_observed_mask"],
            future_values=inputs["future_values"],
            **extras(inputs),
        )
    for prefix, out in (("", plain), ("masked.", masked)):
        for key in OUTPUTS:
            close(out[key].reshape(ref[prefix + key].shape), ref[prefix + key])
    hidden = sorted(k for k in ref if k.startswith("hidden_states."))
    assert len(plain["hidden_states"]) == len(hidden)
    for key, tensor in zip(hidden, plain["hidden_states"], strict=True):
        close(tensor, ref[key])
    assert masked["hidden_states"] == []


@pytest.mark.parametrize("listing", ["keys_r1_512_96", "keys_r2_1024_96", "keys_r2_1536_96"])
def test_full_size_key_listings(listing: str) -> None:
    spec = json.loads((GOLDEN / f"{listing}.json").read_text())
    want = {k: v["shape"] for k, v in spec["keys"].items()}
    with torch.device("meta"):
        from_config = TTM(TTMConfig.from_dict(spec["config"]))
        # the default scratch geometry of `ttm` is the r2 family's at these contexts
        scratch = build_ttm(context_length=spec["config"]["context_length"], horizon=96)
    for model in (from_config, scratch):
        assert {k: list(v.shape) for k, v in model.state_dict().items()} == want
        assert sum(p.numel() for p in model.parameters()) == spec["n_params"]
        outside = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
        assert outside == spec["n_params_outside_backbone"]


# ---------------------------------------------------------------------------------------------
# the builder and the backbone contract


def test_builder_forward_features_matches_golden() -> None:
    inputs, ref = golden("tiny")
    model = build_ttm(context_length=64, horizon=16, n_targets=3, weights=str(GOLDEN / "tiny")).eval()
    assert model.input_layout == "B T C"
    assert model.feature_info == [{"layout": "B L C D", "channels": 1, "reduction": 1}]
    with torch.no_grad():
        out = model.forward_features(inputs["past_values"], x_mask=inputs["past_observed_mask"])
        plain = model.forward_features(inputs["past_values"])
    assert out.shape == (2, 16, 3, 1)
    close(out[..., 0], ref["masked.prediction_outputs"])
    close(plain[..., 0], ref["prediction_outputs"])


def test_forward_features_with_future_exog() -> None:
    inputs, ref = golden("tiny_fcm_exog")
    model = build_ttm(context_length=64, horizon=16, n_targets=2, n_exog=1, weights=str(GOLDEN / "tiny_fcm_exog"))
    model.eval()
    x, cats = inputs["past_values"], inputs["static_categorical_values"]
    with torch.no_grad():
        out = model.forward_features(
            x,
            x_mask=inputs["past_observed_mask"],
            future_exog=inputs["future_values"][..., 2:],
            static_categorical_values=cats,
        )
    assert out.shape == (2, 16, 2, 1)
    close(out[..., 0], ref["masked.prediction_outputs"])
    with pytest.raises(ShapeError, match="future_exog"):
        model.forward_features(x, static_categorical_values=cats)
    with pytest.raises(ShapeError, match=r"future_exog: expected \(B, L, n_exog\) = \(2, 16, 1\)"):
        model.forward_features(x, future_exog=inputs["future_values"], static_categorical_values=cats)
    with pytest.raises(ShapeError, match="built for 3 input channels"):
        model.forward_features(torch.cat([x, x[..., :1]], dim=-1))


def test_forward_features_freq_token() -> None:
    inputs, ref = golden("tiny_freq")
    folder = str(GOLDEN / "tiny_freq")
    model = build_ttm(context_length=64, horizon=16, n_targets=3, weights=folder, freq_token=1).eval()
    x = inputs["past_values"]
    with torch.no_grad():
        per_row = model.forward_features(x, freq_token=inputs["freq_token"])  # tokens [1, 3]
        default = model.forward_features(x)  # the built-in token 1 for every row
    close(per_row[..., 0], ref["prediction_outputs"])
    close(default[0, ..., 0], ref["prediction_outputs"][0])
    with pytest.raises(ShapeError, match=r"tokens must be in 0\.\.4"):
        model.forward_features(x, freq_token=torch.tensor([1, 5]))
    with pytest.raises(CheckpointError, match=r"freq_token=7 \('h'\) is not in the frequency vocabulary(.|\n)*0\.\.4"):
        build_ttm(context_length=64, horizon=16, n_targets=3, weights=folder, freq_token="h")
    with pytest.raises(ConfigError, match="frequency prefix token: set backbone.freq_token"):
        build_ttm(context_length=64, horizon=16, n_targets=3, weights=folder)
    scratch = build_ttm(context_length=64, horizon=16, weights=None, freq_token=3, resolution_prefix_tuning=True)
    model.freq_token = 7  # e.g. set by hand: loading checks it against the file's vocabulary
    with pytest.raises(CheckpointError, match="freq_token=7 is not in the checkpoint's frequency vocabulary"):
        model.load_pretrained(folder)
    assert scratch.config.num_patches == 8 + 1


def test_horizon_shorter_than_checkpoint_uses_filter(caplog: pytest.LogCaptureFixture) -> None:
    inputs, ref = golden("tiny")
    with caplog.at_level(logging.INFO, logger="sciadapt"):
        model = build_ttm(context_length=64, horizon=10, n_targets=3, weights=str(GOLDEN / "tiny")).eval()
    assert "prediction_filter_length=10" in caplog.text
    assert model.config.prediction_filter_length == 10 and model.horizon == 10
    with torch.no_grad():
        out = model.forward_features(inputs["past_values"])
    close(out[..., 0], ref["prediction_outputs"][:, :10])
    with pytest.raises(ConfigError, match="horizon=32 is longer than the checkpoint's prediction_length=16"):
        build_ttm(context_length=64, horizon=32, n_targets=3, weights=str(GOLDEN / "tiny"))
    with pytest.raises(ConfigError, match="prediction_filter_length=8 but horizon=10"):
        build_ttm(context_length=64, horizon=10, weights=str(GOLDEN / "tiny"), prediction_filter_length=8)


def test_adapting_a_checkpoint_logs_the_new_modules(caplog: pytest.LogCaptureFixture) -> None:
    folder = GOLDEN / "tiny"
    with caplog.at_level(logging.INFO, logger="sciadapt"):
        model = build_ttm(
            context_length=64,
            horizon=16,
            n_targets=2,
            n_exog=1,
            weights=str(folder),
            decoder_mode="mix_channel",
            enable_forecast_channel_mixing=True,
            fcm_use_mixer=True,
        )
    assert "newly initialised" in caplog.text
    assert "decoder.decoder_block.mixers.0.channel_feature_mixer" in caplog.text and "head.fcm_block" in caplog.text
    state = load_file(str(folder / "model.safetensors"))
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())
    out = model.forward_features(torch.randn(2, 64, 3), future_exog=torch.randn(2, 16, 1))
    assert out.shape == (2, 16, 2, 1)


# ---------------------------------------------------------------------------------------------
# loading errors


def copy_variant(tmp_path: Path, name: str = "tiny") -> Path:
    dst = tmp_path / name
    shutil.copytree(GOLDEN / name, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def test_geometry_mismatch_names_file_and_fields(tmp_path: Path) -> None:
    folder = str(GOLDEN / "tiny")
    model = build_ttm(context_length=64, horizon=16, d_model=32, decoder_d_model=8, patch_length=8, num_layers=2)
    with pytest.raises(
        CheckpointError, match=r"tiny/model.safetensors(.|\n)*d_model: the checkpoint has 16, the model 32"
    ):
        model.load_pretrained(folder)
    with pytest.raises(ConfigError) as err:
        build_ttm(context_length=128, horizon=16, weights=folder, d_model=32)
    message = str(err.value)
    assert "context_length=128" in message and "context_length=64" in message and "tiny/config.json" in message
    assert "backbone.d_model=32 but the checkpoint" in message
    with pytest.raises(ConfigError, match="mixes channels and was trained on num_input_channels=3"):
        build_ttm(context_length=64, horizon=16, n_targets=2, weights=str(GOLDEN / "tiny_misc"))


def test_unexpected_and_missing_keys(tmp_path: Path) -> None:
    folder = copy_variant(tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    save_file({**state, "head.extra.weight": torch.zeros(2)}, str(folder / "model.safetensors"))
    model = build_ttm_tiny(n_targets=3)
    with pytest.raises(CheckpointError, match=r"1 unexpected keys in the file: head.extra.weight"):
        model.load_pretrained(str(folder))
    del state["decoder.adapter.bias"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 keys missing from the file: decoder.adapter.bias"):
        model.load_pretrained(str(folder))


def test_config_keys_default_and_unknown_keys(tmp_path: Path) -> None:
    folder = copy_variant(tmp_path)
    full = json.loads((folder / "config.json").read_text())
    defaults = TTMConfig().to_dict()
    # an old (r2-era) config.json: only the values that differ from the TinyTimeMixerConfig defaults
    minimal = {k: v for k, v in full.items() if k in defaults and k != "num_patches" and v != defaults[k]}
    assert "multi_scale" not in minimal and "decoder_mode" not in minimal
    # the official r2 512-96 config.json also carries the pretraining script's scale keys
    minimal.update(d_model_scale=2, decoder_d_model_scale=1, stride_ratio=1, torch_dtype="float32")
    (folder / "config.json").write_text(json.dumps(minimal))
    inputs, ref = golden("tiny")
    model = TTM.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model.forward_official(inputs["past_values"], inputs["past_observed_mask"])
    close(out["prediction_outputs"], ref["masked.prediction_outputs"])

    for key, value, pattern in (
        ("multi_scale", True, r"multi_scale=True: this feature is not implemented"),
        ("gate_mode", "sigmoid", r"gate_mode='sigmoid'"),
        ("minimum_scale", 1e-3, r"minimum_scale=0.001: unknown TinyTimeMixerConfig key"),
        ("num_patches", 9, r"num_patches=9 but context_length=64"),
        ("loss", "nll", r"loss=nll"),
    ):
        (folder / "config.json").write_text(json.dumps({**full, key: value}))
        with pytest.raises(CheckpointError, match=rf"config.json(.|\n)*{pattern}"):
            TTM.from_pretrained(folder)


def test_offline_hub_reference(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    def unreachable(*args: Any, **kwargs: Any) -> str:
        raise OSError("network unreachable")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    model = build_ttm_tiny()
    with pytest.raises(CheckpointError, match=r"hf://ibm-granite/granite-timeseries-ttm-r2@main(.|\n)*HF_HUB_OFFLINE"):
        model.load_pretrained("hf://ibm-granite/granite-timeseries-ttm-r2@main")
    # without a revision the get_model choice is what would be fetched
    with pytest.raises(CheckpointError, match=r"ttm-r2@1024-96-r2"):
        build_ttm(context_length=1024, horizon=96, weights="hf://ibm-granite/granite-timeseries-ttm-r2")
    with pytest.raises(CheckpointError, match="not found"):
        model.load_pretrained(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------------------------------------
# revision choice (granite-tsfm get_model)


def test_revision_table() -> None:
    assert ttm_revision(512, 96) == "main"
    assert ttm_revision(512, 192) == "512-192-r2"
    assert ttm_revision(512, 100) == "512-192-r2"
    assert ttm_revision(1024, 96) == "1024-96-r2"
    assert ttm_revision(1536, 96) == "1536-96-r2"
    assert ttm_revision(1536, 720) == "1536-720-r2"
    assert ttm_revision(2048, 336) == "1536-336-r2"  # the longest context not above the history
    assert ttm_revision(512, 24) == "512-48-ft-r2.1"  # shortest prediction that covers the horizon
    assert ttm_revision(52, 16) == "52-16-ft-r2.1"
    assert ttm_revision(512, 96, release="r1") == "main"
    assert ttm_revision(1024, 96, release="r1") == "1024_96_v1"
    assert ttm_revision(512, 96, release="research") == "main"
    assert ttm_revision(1024, 192, release="research") == "1024-192-ft-r2"
    assert select_checkpoint(512, 96, freq="D").revision == "512-96-ft-r2.1"  # daily: r2.1 only
    assert select_checkpoint(512, 96, prefer_l1_loss=True).revision == "512-96-ft-l1-r2.1"
    assert select_checkpoint(512, 96, freq_prefix_tuning=True).revision == "512-96-ft-r2.1"
    assert select_checkpoint(1024, 96, freq_prefix_tuning=True).revision == "1024-96-r2"  # > 512: no preference
    with pytest.raises(ConfigError, match=r"context_length <= 40(.|\n)*available: 512-96 \(main\)"):
        ttm_revision(40, 16)
    with pytest.raises(ConfigError, match=r"predicts 1000 steps or more"):
        ttm_revision(512, 1000)
    with pytest.raises(ConfigError, match="no checkpoint takes context_length=600"):
        build_ttm(context_length=600, horizon=96, weights="hf://ibm-granite/granite-timeseries-ttm-r2")


# ---------------------------------------------------------------------------------------------
# shapes, PEFT targets, registry


def test_forward_features_shape_errors() -> None:
    model = build_ttm_tiny(n_exog=1)
    with pytest.raises(ShapeError, match=r"T = context_length = 64, got T = 60"):
        model.forward_features(torch.randn(2, 60, 3))
    with pytest.raises(ShapeError, match="expected B T C"):
        model.forward_features(torch.randn(2, 64))
    with pytest.raises(ShapeError, match="x_mask"):
        model.forward_features(torch.randn(2, 64, 3), x_mask=torch.ones(2, 64, 2))
    with pytest.raises(ShapeError, match="C > n_exog=1"):
        model.forward_features(torch.randn(2, 64, 1))
    # channel-independent: any number of targets, the trailing channel is exogenous
    assert model.forward_features(torch.randn(2, 64, 4)).shape == (2, 16, 3, 1)


def test_x_mask_keeps_missing_steps_out_of_the_scaling() -> None:
    model = build_ttm_tiny(n_targets=2).eval()
    x = torch.randn(1, 64, 2)
    mask = torch.ones_like(x)
    mask[:, :20] = 0
    spoiled = x.clone()
    spoiled[:, :20] = 1e3  # values at masked steps must not move the statistics
    with torch.no_grad():
        a = model.forward_official(x, past_observed_mask=mask)
        b = model.forward_official(spoiled, past_observed_mask=mask)
    close(a["loc"], b["loc"])
    close(a["scale"], b["scale"])
    assert not torch.allclose(a["loc"], x.mean(1, keepdim=True))


def test_default_peft_targets_are_mixer_mlps() -> None:
    model = build_ttm_tiny(decoder_mode="mix_channel", n_targets=2)
    names = [n for n, _ in model.named_modules()]
    hits = {n for n in names for p in model.default_peft_targets if fnmatch.fnmatchcase(n, p)}
    assert all(n.endswith((".mlp.fc1", ".mlp.fc2")) for n in hits)
    assert any(n.startswith("backbone.encoder.") and "feature_mixer" in n for n in hits)
    assert any(n.startswith("decoder.decoder_block.") and "channel_feature_mixer" in n for n in hits)
    assert all(isinstance(model.get_submodule(n), torch.nn.Linear) for n in hits)
    wanted = {n for n in names if n.endswith((".mlp.fc1", ".mlp.fc2")) and not n.startswith("head.")}
    assert hits == wanted


def test_registered_builders_train() -> None:
    assert {"ttm", "ttm_tiny"} <= set(BACKBONES.list())
    model = BACKBONES.build("ttm_tiny", context_length=48, horizon=12, n_targets=2, n_exog=1)
    x = torch.randn(4, 48, 3)
    out = model.forward_features(x, x_mask=torch.ones_like(x))
    assert out.shape == (4, 12, 2, 1)
    out.pow(2).mean().backward()
    assert model.backbone.encoder.patcher.weight.grad is not None
    with pytest.raises(ConfigError, match="n_targets"):
        build_ttm(n_targets=0)
    scratch = build_ttm(context_length=96, horizon=24, n_targets=2, mode="mix_channel", norm_mlp="BatchNorm")
    assert scratch.forward_features(torch.randn(3, 96, 2)).shape == (3, 24, 2, 1)
