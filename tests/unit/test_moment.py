"""MOMENT backbone: parity with momentfm's golden outputs, official key layout, loading, backbone contract."""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from sciadapt.backbones.moment import Moment, MomentConfig, build_moment, build_moment_tiny
from sciadapt.errors import CheckpointError, ConfigError, ShapeError
from sciadapt.registry import BACKBONES

ROOT = Path(__file__).resolve().parents[2]
LISTINGS = ROOT / "tests" / "data" / "moment_golden"
GOLDEN = Path(os.environ.get("SCIADAPT_MOMENT_GOLDEN", ROOT.parent / "shared" / "golden" / "moment"))
FOLDERS = ("reconstruction", "embedding", "forecasting", "classification")
TOL = {"rtol": 1e-5, "atol": 1e-5}

needs_golden = pytest.mark.skipif(
    not (GOLDEN / "reconstruction" / "model.safetensors").is_file(), reason=f"golden fixtures absent: {GOLDEN}"
)


def tiny_config(task: str = "reconstruction", **extra: Any) -> dict[str, Any]:
    """The golden fixtures' config.json layout (tiny T5, official defaults left out)."""
    t5 = {
        "d_model": 64,
        "d_ff": 128,
        "d_kv": 16,
        "num_layers": 2,
        "num_heads": 4,
        "vocab_size": 32,
        "feed_forward_proj": "gated-gelu",
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "layer_norm_epsilon": 1e-6,
        "dropout_rate": 0.1,
    }
    return {
        "task_name": task,
        "model_name": "MOMENT",
        "transformer_type": "encoder_only",
        "d_model": None,
        "seq_len": 512,
        "patch_len": 8,
        "patch_stride_len": 8,
        "transformer_backbone": "google/flan-t5-large",
        "t5_config": t5,
        **extra,
    }


def write_folder(folder: Path, config: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny reconstruction checkpoint in the official folder layout."""
    torch.manual_seed(0)
    model = Moment.from_config(tiny_config())
    return write_folder(tmp_path_factory.mktemp("moment") / "recon", tiny_config(), model.state_dict())


def inputs(batch: int = 2, channels: int = 3, length: int = 512, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float32)
    return torch.randn(batch, channels, length, generator=g) + 3 * torch.sin(2 * torch.pi * t / 24) + 5.0


# ---------------------------------------------------------------------------------------------
# golden parity with momentfm 0.1.4


@needs_golden
@pytest.mark.parametrize("task", FOLDERS)
def test_golden_outputs(task: str) -> None:
    model = Moment.from_pretrained(GOLDEN / task).eval()
    assert model.task_name == task
    x = load_file(str(GOLDEN / task / "inputs.safetensors"))
    ref = load_file(str(GOLDEN / task / "outputs.safetensors"))
    x_enc, im, mask = x["x_enc"], x["input_mask"], x["mask"]
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.patch_embedding.register_forward_hook(lambda m, i, o: seen.setdefault("enc_in", o)),
        model.encoder.register_forward_hook(lambda m, i, o: seen.setdefault("enc_out", o)),
    ]
    with torch.no_grad():
        out = model.forward_official(x_enc, input_mask=im)
        for h in hooks:
            h.remove()
        got = {**seen, **out}
        if task == "reconstruction":
            got["masked.reconstruction"] = model.forward_official(x_enc, input_mask=im, mask=mask)["reconstruction"]
            got["nomask.reconstruction"] = model.forward_official(x_enc)["reconstruction"]
        elif task == "embedding":
            got["none.embeddings"] = model.forward_official(x_enc, input_mask=im, reduction="none")["embeddings"]
            got["nomask.embeddings"] = model.forward_official(x_enc)["embeddings"]
        elif task == "forecasting":
            got["nomask.forecast"] = model.forward_official(x_enc)["forecast"]
        else:
            got["nomask.logits"] = model.forward_official(x_enc)["logits"]
    for key, want in ref.items():
        torch.testing.assert_close(got[key], want, **TOL, msg=lambda m, k=key: f"{task}/{k}: {m}")
    if task == "reconstruction":
        assert got["pretrain_mask"].dtype == torch.int64 and torch.equal(got["pretrain_mask"], ref["pretrain_mask"])


@needs_golden
def test_golden_embedding_from_reconstruction_checkpoint(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sciadapt.backbones.moment"):
        model = Moment.from_pretrained(GOLDEN / "reconstruction", task_name="embedding").eval()
    assert any("reconstruction head, unused" in r.message for r in caplog.records)
    x = load_file(str(GOLDEN / "embedding" / "inputs.safetensors"))
    ref = load_file(str(GOLDEN / "embedding" / "outputs.safetensors"))
    with torch.no_grad():
        emb = model.forward_official(x["x_enc"], input_mask=x["input_mask"])["embeddings"]
    torch.testing.assert_close(emb, ref["embeddings"], **TOL)


@needs_golden
def test_golden_folder_keys_and_counts() -> None:
    for task in FOLDERS:
        listing = json.loads((GOLDEN / task / "keys.json").read_text())
        model = Moment.from_config(json.loads((GOLDEN / task / "config.json").read_text()))
        assert {k: list(v.shape) for k, v in model.state_dict().items()} == listing, task


# ---------------------------------------------------------------------------------------------
# official geometries (meta device: no memory, no weights)


@pytest.mark.parametrize("size", ["small", "base", "large"])
def test_official_key_listing(size: str) -> None:
    listing = json.loads((LISTINGS / f"keys_moment_1_{size}.json").read_text())
    with torch.device("meta"):
        model = Moment.from_config(listing["config"])
        built = build_moment(size=size, task="embedding")
    params = dict(model.named_parameters())
    got = {
        k: {
            "shape": list(v.shape),
            "dtype": str(v.dtype).removeprefix("torch."),
            "kind": "param" if k in params else "buffer",
        }
        for k, v in model.state_dict().items()
    }
    assert got == listing["keys"]
    assert list(got) == list(listing["keys"])  # same order as momentfm's state_dict
    assert sum(p.numel() for p in model.parameters()) == listing["n_params"]
    assert sum(p.numel() for p in model.encoder.parameters()) == listing["n_params_encoder"]
    assert sum(p.numel() for p in model.head.parameters()) == listing["n_params_head"]
    assert sum(b.numel() for b in model.buffers()) == listing["n_buffer_elements"]
    # the builder's size table gives the same encoder; the embedding task has no head keys
    want = {k: v["shape"] for k, v in listing["keys"].items() if not k.startswith("head.")}
    assert {k: list(v.shape) for k, v in built.state_dict().items()} == want
    if size == "large":
        assert listing["published"]["n_params_encoder"] == sum(p.numel() for p in built.encoder.parameters())


def test_task_heads_shapes() -> None:
    with torch.device("meta"):
        fc = build_moment(size="base", horizon=24)
    assert tuple(fc.head.linear.weight.shape) == (24, 64 * 768)
    cls = Moment.from_config(tiny_config("classification", n_channels=3, num_class=5))
    assert tuple(cls.head.linear.weight.shape) == (5, 3 * 64)
    with pytest.raises(ConfigError, match="forecast_horizon"):
        Moment.from_config(tiny_config("forecasting"))


# ---------------------------------------------------------------------------------------------
# loading


def test_load_is_strict_and_warning_free(checkpoint: Path) -> None:
    torch.manual_seed(1)
    model = Moment.from_config(tiny_config())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.load_pretrained(str(checkpoint))
    want = load_file(str(checkpoint / "model.safetensors"))
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())


def test_optional_entries_may_be_absent(checkpoint: Path, tmp_path: Path) -> None:
    state = load_file(str(checkpoint / "model.safetensors"))
    slim = {
        k: v
        for k, v in state.items()
        if k not in ("patch_embedding.position_embedding.pe", "encoder.embed_tokens.weight")
    }
    folder = write_folder(tmp_path / "slim", tiny_config(), slim)
    model = Moment.from_pretrained(folder).eval()
    full = Moment.from_pretrained(checkpoint).eval()
    # the sinusoid is rebuilt identically; embed_tokens is never read
    assert torch.equal(model.patch_embedding.position_embedding.pe, state["patch_embedding.position_embedding.pe"])
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_official(x)["reconstruction"], full.forward_official(x)["reconstruction"]
        )


def test_new_head_is_logged_and_encoder_loaded(checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sciadapt.backbones.moment"):
        model = build_moment_tiny(task="forecasting", horizon=12, weights=str(checkpoint))
    lines = [r.message for r in caplog.records if "head is new" in r.message]
    assert len(lines) == 1 and "reconstruction" in lines[0]
    state = load_file(str(checkpoint / "model.safetensors"))
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("head."))
    assert tuple(own["head.linear.weight"].shape) == (12, 64 * 64)


def test_geometry_mismatch_names_file_and_size(checkpoint: Path) -> None:
    model = build_moment_tiny()
    with torch.device("meta"):
        small = build_moment(size="small")
    with pytest.raises(CheckpointError) as err:
        small.load_pretrained(str(checkpoint))
    msg = str(err.value)
    assert "config.json" in msg and "d_model: file 64, model 512" in msg and "num_layers" in msg
    big = json.loads((LISTINGS / "keys_moment_1_base.json").read_text())["config"]
    folder = checkpoint.parent / "base_cfg"
    write_folder(folder, big, {})
    with pytest.raises(CheckpointError, match="MOMENT-1-base: build the backbone with size: base"):
        model.load_pretrained(str(folder))
    patch16 = tiny_config(patch_len=16, patch_stride_len=16)
    write_folder(checkpoint.parent / "patch16", patch16, {})
    with pytest.raises(CheckpointError, match="patch_len: file 16, model 8"):
        model.load_pretrained(str(checkpoint.parent / "patch16"))


def test_unexpected_and_missing_keys(checkpoint: Path, tmp_path: Path) -> None:
    state = load_file(str(checkpoint / "model.safetensors"))
    model = Moment.from_config(tiny_config())
    extra = write_folder(
        tmp_path / "extra", tiny_config(), {**state, "encoder.block.2.layer.0.layer_norm.weight": torch.ones(64)}
    )
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors(.|\n)*1 unexpected keys in the file: encoder\.block\.2"
    ):
        model.load_pretrained(str(extra))
    missing = {k: v for k, v in state.items() if k != "encoder.final_layer_norm.weight"}
    with pytest.raises(CheckpointError, match="missing from the file: encoder.final_layer_norm.weight"):
        model.load_pretrained(str(write_folder(tmp_path / "missing", tiny_config(), missing)))


def test_same_task_head_mismatch_says_which_setting(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = tiny_config("forecasting", forecast_horizon=96)
    folder = write_folder(tmp_path / "fc96", cfg, Moment.from_config(cfg).state_dict())
    model = build_moment_tiny(task="forecasting", horizon=24)
    with pytest.raises(CheckpointError, match="forecast_horizon=96(.|\n)*forecast_horizon=24"):
        model.load_pretrained(str(folder))
    build_moment_tiny(task="forecasting", horizon=96, weights=str(folder))  # matching horizon: loads


def test_missing_folder_and_offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    def offline(*args: Any, **kwargs: Any) -> str:
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    model = build_moment_tiny()
    with pytest.raises(CheckpointError, match=r"hf://AutonLab/MOMENT-1-large(.|\n)*local folder"):
        model.load_pretrained("hf://AutonLab/MOMENT-1-large")
    with pytest.raises(CheckpointError, match="not found"):
        model.load_pretrained(str(tmp_path / "nowhere"))
    (tmp_path / "cfg_only").mkdir()
    (tmp_path / "cfg_only" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        model.load_pretrained(str(tmp_path / "cfg_only"))


# ---------------------------------------------------------------------------------------------
# backbone contract


def test_registered_and_contract_attributes() -> None:
    assert {"moment", "moment_tiny"} <= set(BACKBONES.list())
    model = build_moment_tiny(horizon=12)
    assert model.input_layout == "B T C"
    assert model.feature_info == [{"layout": "B L C D", "channels": 1, "reduction": 1, "horizon": 12}]
    emb = build_moment_tiny(task="embedding")
    assert emb.feature_info[0]["layout"] == "B C D" and emb.feature_info[0]["channels"] == 64
    names = dict(model.named_modules())
    matched = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in model.default_peft_targets)]
    assert matched == [f"encoder.block.{i}.layer.0.SelfAttention.{w}" for i in range(2) for w in "qv"]


def test_builder_validation_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as err:
        build_moment_tiny(task="forecast", context_length=0, horizon=-1, head_dropout=1.5)
    assert len(err.value.problems) == 4 and "backbone.task" in str(err.value)
    with pytest.raises(ConfigError, match="backbone.size"):
        build_moment(size="huge")
    with pytest.raises(ConfigError, match="use Moment.from_pretrained"):
        build_moment_tiny(task="reconstruction")


def test_padding_matches_momentfm_recipe() -> None:
    torch.manual_seed(0)
    model = build_moment_tiny(horizon=12, context_length=96).eval()
    assert (
        model.input_policy(96) == "pad" and model.input_policy(512) == "exact" and model.input_policy(600) == "truncate"
    )
    assert "left-padded with 416 masked zeros" in model.describe_input_policy()
    x = inputs(2, 3, 96)
    padded = torch.cat([torch.zeros(2, 3, 416), x], dim=-1)
    input_mask = torch.cat([torch.zeros(2, 416), torch.ones(2, 96)], dim=-1)
    with torch.no_grad():
        feats = model.forward_features(x.transpose(1, 2))
        want = model.forward_official(padded, input_mask=input_mask)["forecast"]
    assert feats.shape == (2, 12, 3, 1)
    torch.testing.assert_close(feats[..., 0], want.transpose(1, 2))


def test_truncation_keeps_last_steps() -> None:
    torch.manual_seed(0)
    model = build_moment_tiny(horizon=12, context_length=600).eval()
    x = inputs(2, 2, 600).transpose(1, 2)  # (B, T, C)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), model.forward_features(x[:, -512:]))
        assert torch.equal(model(x), model.forward_features(x))


def test_forecast_is_in_input_scale_and_channel_independent() -> None:
    torch.manual_seed(0)
    # full windows only: zero padding is not shifted along with the series
    model = build_moment_tiny(horizon=12).eval()
    x = inputs(2, 3, 512).transpose(1, 2)
    with torch.no_grad():
        base = model.forward_features(x)
        torch.testing.assert_close(model.forward_features(10 * x - 3), 10 * base - 3, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(model.forward_features(x[..., 1:2]), base[:, :, 1:2], **TOL)


def test_missing_values_and_covariates() -> None:
    torch.manual_seed(0)
    model = build_moment_tiny(horizon=12, context_length=64, n_exog=1).eval()
    x = inputs(2, 3, 64).transpose(1, 2)
    mask = torch.ones_like(x)
    mask[0, 10:20, 0] = 0
    holes = x.clone()
    holes[0, 10:20, 0] = float("nan")
    with torch.no_grad():
        a = model.forward_features(holes, mask)
        b = model.forward_features(torch.where(mask > 0, x, 0.0), mask)
        c = model.forward_features(holes)  # NaN alone counts as missing
    assert a.shape == (2, 12, 2, 1) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_embedding_features() -> None:
    torch.manual_seed(0)
    model = build_moment_tiny(task="embedding", context_length=512).eval()
    x = inputs(2, 1, 512)
    with torch.no_grad():
        emb = model.forward_features(x.transpose(1, 2))
        want = model.forward_official(x)["embeddings"]  # mean over the one channel and all patches
    assert emb.shape == (2, 1, 64)
    torch.testing.assert_close(emb[:, 0], want)


def test_shape_errors() -> None:
    model = build_moment_tiny(horizon=12, n_exog=1)
    with pytest.raises(ShapeError, match=r"expected B T C, got \(4, 512\)"):
        model.forward_features(torch.randn(4, 512))
    with pytest.raises(ShapeError, match="x_mask"):
        model.forward_features(torch.randn(2, 64, 3), torch.ones(2, 64))
    with pytest.raises(ShapeError, match="n_exog=1"):
        model.forward_features(torch.randn(2, 64, 1))
    with pytest.raises(ShapeError, match="T=512"):
        model.forward_official(torch.randn(2, 3, 100))
    recon = Moment.from_config(tiny_config())
    with pytest.raises(ConfigError, match="forward_official"):
        recon.forward_features(torch.randn(2, 64, 1))


def test_training_with_checkpointing_and_lora() -> None:
    from sciadapt.peft import core
    from sciadapt.registry import PEFT_METHODS

    x = inputs(2, 2, 64).transpose(1, 2)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build_moment_tiny(
            horizon=12, context_length=64, dropout=0.0, head_dropout=0.0, gradient_checkpointing=ckpt
        )
        model.train()
        model.forward_features(x).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "encoder.block.1.layer.1.DenseReluDense.wo.weight" in grads[0]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=name)
    names = core.attach(model, PEFT_METHODS.build("lora", r=2))
    assert len(names) == 4
    model.forward_features(x).mean().backward()


def test_config_round_trip() -> None:
    cfg = MomentConfig.from_dict(tiny_config("classification", n_channels=3, num_class=4))
    again = MomentConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.d_model == 64 and again.n_patches == 64
    assert again.t5.dense_act_fn == "gelu_new" and again.t5.is_gated_act
    relu = Moment.from_config(tiny_config(t5_config={**tiny_config()["t5_config"], "feed_forward_proj": "relu"}))
    assert "encoder.block.0.layer.1.DenseReluDense.wi.weight" in relu.state_dict()
