"""Surya (HelioSpectFormer): golden parity with the official code, the official key listing, the window
attention against a brute-force reference, input and checkpoint errors, the hub reference offline."""

from __future__ import annotations

import fnmatch
import inspect
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from sciadapt.backbones._surya_layers import AttentionLS, fourier_table
from sciadapt.backbones.surya import VARIANTS, HelioSpectFormer, build_surya, build_surya_tiny, resolve_weights
from sciadapt.errors import CheckpointError, ConfigError, ShapeError
from sciadapt.registry import BACKBONES

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO.parent / "shared" / "golden" / "surya"
TOL = {"rtol": 1e-5, "atol": 1e-5}


def golden(name: str) -> Path:
    path = GOLDEN / name
    if not path.exists():
        pytest.skip(f"Surya golden fixtures not found: {path}")
    return path


def run(model: HelioSpectFormer, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The golden outputs' names for a forward pass of ``model`` on the golden inputs."""
    embedded: list[torch.Tensor] = []
    hook = model.embedding.register_forward_hook(lambda _m, _i, out: embedded.append(out))
    with torch.no_grad():
        feats = model.forward_features(inputs["ts"], time_delta_input=inputs["time_delta_input"])
    hook.remove()
    depth = len(model.backbone.blocks())
    out = {"embedding": embedded[0], "backbone": feats[depth - 1]}
    out.update({f"block_out.{i}": feats[i] for i in range(depth)})
    if model.unembed is not None:
        out["forecast"] = feats[depth]
    return out


# ---------------------------------------------------------------------------------------------
# golden parity


@pytest.mark.parametrize("file", ["surya_tiny.pt", "surya_tiny.safetensors"])
def test_golden_parity(file: str) -> None:
    folder = golden("tiny")
    model = build_surya_tiny(head="forecast", weights=str(folder / file)).eval()
    config = json.loads((folder / "config.json").read_text())
    v = VARIANTS["tiny"]
    assert (config["img_size"], config["in_chans"], config["time_embedding"]["time_dim"]) == (32, 3, 2)
    assert (v.patch_size, v.embed_dim, v.depth, v.n_spectral_blocks, v.num_heads, v.window_size, v.dp_rank) == (
        config["patch_size"],
        config["embed_dim"],
        config["depth"],
        config["n_spectral_blocks"],
        config["num_heads"],
        config["window_size"],
        config["dp_rank"],
    )
    ref = load_file(str(folder / "outputs.safetensors"))
    got = run(model, load_file(str(folder / "inputs.safetensors")))
    assert set(got) == set(ref)
    for key, want in ref.items():
        diff = (got[key] - want).abs().max().item()
        assert torch.allclose(got[key], want, **TOL), f"{key}: max abs diff {diff:.3g}"


def test_head_none_drops_the_decoder(caplog: pytest.LogCaptureFixture) -> None:
    folder = golden("tiny")
    model = build_surya_tiny().eval()
    with caplog.at_level(logging.INFO, logger="sciadapt.backbones.surya"):
        model.load_pretrained(str(folder / "surya_tiny.safetensors"))
    assert "dropped the 2 entries of the pre-training decoder" in caplog.text
    assert not any(k.startswith("unembed.") for k in model.state_dict())
    assert [lvl["kind"] for lvl in model.feature_info] == ["spectral_gating", "attention", "attention"]
    ref = load_file(str(folder / "outputs.safetensors"))
    got = run(model, load_file(str(folder / "inputs.safetensors")))
    assert "forecast" not in got
    torch.testing.assert_close(got["backbone"], ref["backbone"], **TOL)


def test_stored_position_signal_is_the_fourier_table() -> None:
    stored = load_file(str(golden("tiny") / "surya_tiny.safetensors"))["embedding.pos_embed"]
    torch.testing.assert_close(fourier_table(8, 32), stored, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# the official geometry (meta device: no memory, no time)


def test_official_keys_shapes_and_parameter_count() -> None:
    listing = json.loads(golden("keys_official.json").read_text())
    cfg = listing["config"]
    with torch.device("meta"):
        model = build_surya(head="forecast")
        bare = build_surya()
    v = VARIANTS["1.0"]
    assert (model.img_size, model.in_chans, model.num_frames) == (
        cfg["img_size"],
        cfg["in_chans"],
        cfg["time_embedding"]["time_dim"],
    )
    assert (v.patch_size, v.embed_dim, v.depth, v.n_spectral_blocks, v.num_heads, v.mlp_ratio) == (
        cfg["patch_size"],
        cfg["embed_dim"],
        cfg["depth"],
        cfg["n_spectral_blocks"],
        cfg["num_heads"],
        cfg["mlp_ratio"],
    )
    assert (v.window_size, v.dp_rank) == (cfg["window_size"], cfg["dp_rank"])
    want = {k: entry["shape"] for k, entry in listing["keys"].items()}
    assert {k: list(t.shape) for k, t in model.state_dict().items()} == want
    assert len(want) == listing["n_keys"] == 159
    buffers = {k for k, entry in listing["keys"].items() if entry["kind"] == "buffer"}
    assert buffers == {k for k, _ in model.named_buffers()} == {"embedding.pos_embed"}

    def count(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    assert count(model) == listing["n_params"] == 366_190_080
    assert count(bare) == listing["n_params_without_unembed"]
    assert count(model.embedding) == listing["n_params_embedding"]
    assert count(model.backbone) == listing["n_params_backbone"]
    assert model.feature_info[-1] == {"layout": "B C H W", "channels": 13, "reduction": 1, "kind": "forecast"}
    assert model.feature_info[0]["grid"] == [1, 256, 256] and len(model.feature_info) == 11


# ---------------------------------------------------------------------------------------------
# long-short attention against a brute-force reference (grids and windows the fixtures lack)


def _reference_attention(attn: AttentionLS, x: torch.Tensor) -> torch.Tensor:
    """Query by query: softmax over the r compressed keys and the keys of the query window's neighbourhood."""
    b, n, d = x.shape
    h, e, g, w, s = attn.num_heads, d // attn.num_heads, attn.grid, attn.window, attn.side
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    q = q * attn.scale
    k, v = attn.dual_ln_full(k), attn.dual_ln_full(v)
    q, k, v = (t.reshape(b, n, h, e).transpose(1, 2) for t in (q, k, v))  # (B, h, N, e)
    p = attn.to_dynamic_projection(x).transpose(1, 2).reshape(b, h, attn.dp_rank, n).softmax(-1)
    k_lr = attn.dual_ln_dp((p @ k).transpose(1, 2).reshape(b, attn.dp_rank, d)).reshape(b, -1, h, e).transpose(1, 2)
    v_lr = attn.dual_ln_dp((p @ v).transpose(1, 2).reshape(b, attn.dp_rank, d)).reshape(b, -1, h, e).transpose(1, 2)
    out = torch.zeros(b, h, n, e)
    for i in range(n):
        y, xx = divmod(i, g)
        y0, x0 = (y // w) * w - s, (xx // w) * w - s
        near = [
            r * g + c for r in range(y0, y0 + w + 2 * s) for c in range(x0, x0 + w + 2 * s) if 0 <= r < g and 0 <= c < g
        ]
        keys = torch.cat([k_lr, k[:, :, near]], dim=2)  # (B, h, r + |near|, e)
        values = torch.cat([v_lr, v[:, :, near]], dim=2)
        weights = (q[:, :, i : i + 1] @ keys.transpose(-1, -2)).softmax(-1)
        out[:, :, i] = (weights @ values)[:, :, 0]
    return attn.proj(out.transpose(1, 2).reshape(b, n, d))


@pytest.mark.parametrize(("grid", "window", "rank"), [(6, 2, 3), (6, 3, 2), (4, 1, 1), (8, 4, 2)])
def test_long_short_attention_matches_a_brute_force_reference(grid: int, window: int, rank: int) -> None:
    torch.manual_seed(0)
    attn = AttentionLS(dim=16, num_heads=2, grid=grid, window_size=window, dp_rank=rank).eval()
    for m in (attn.dual_ln_dp, attn.dual_ln_full):  # non-trivial LayerNorm affines
        torch.nn.init.normal_(m.weight, 1.0, 0.3)
        torch.nn.init.normal_(m.bias, 0.0, 0.3)
    x = torch.randn(2, grid * grid, 16)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _reference_attention(attn, x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# inputs, settings, checkpoints


def test_wrong_inputs_name_the_setting_to_change() -> None:
    model = build_surya_tiny().eval()
    x = model.example_inputs(2)["x"]
    assert x.shape == (2, 3, 2, 32, 32)
    with pytest.raises(ShapeError, match=r"C=3 channels.*backbone\.in_chans=4"):
        model.forward_features(torch.zeros(2, 4, 2, 32, 32))
    with pytest.raises(ShapeError, match=r"T=2 time steps.*backbone\.num_frames=3"):
        model.forward_features(torch.zeros(2, 3, 3, 32, 32))
    with pytest.raises(ShapeError, match=r"H=W=32.*backbone\.img_size=64"):
        model.forward_features(torch.zeros(2, 3, 2, 64, 64))
    with pytest.raises(ShapeError, match=r"expected B C T H W, got \(2, 3, 32, 32\)"):
        model.forward_features(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ShapeError, match=r"time_delta_input: expected \(B, T\) = \(2, 2\)"):
        model.forward_features(x, time_delta_input=torch.zeros(2, 3))
    # the time stamps are checked, not used (upstream's linear embedding ignores them)
    with torch.no_grad():
        a = model.forward_features(x)[-1]
        b = model.forward_features(x, time_delta_input=torch.tensor([[-120.0, 0.0], [-60.0, 0.0]]))[-1]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_model_for_other_data_runs_and_its_settings_are_checked() -> None:
    torch.manual_seed(0)
    model = build_surya_tiny(img_size=48, in_chans=5, num_frames=3, head="forecast").eval()
    with torch.no_grad():
        feats = model.forward_features(**model.example_inputs(1))
    assert [tuple(f.shape) for f in feats] == [(1, 144, 32)] * 3 + [(1, 5, 48, 48)]
    with pytest.raises(ConfigError) as err:
        build_surya_tiny(img_size=30, in_chans=0, drop_rate=1.5)
    text = str(err.value)
    assert "surya_tiny.in_chans: expected an int >= 1, got 0" in text
    assert "drop_rate" in text
    with pytest.raises(ConfigError, match=r"img_size=36: its token grid \(9\) must be a multiple of the attention"):
        build_surya_tiny(img_size=36)
    with pytest.raises(ConfigError, match=r"img_size=30 must be a multiple of the patch size 4"):
        build_surya_tiny(img_size=30)


def test_checkpoint_mismatches_say_which_setting_the_file_needs(tmp_path: Path) -> None:
    path = golden("tiny") / "surya_tiny.safetensors"
    with pytest.raises(CheckpointError, match=r"(?s)patch_embed.*in_chans=3, num_frames=2"):
        build_surya_tiny(in_chans=4, weights=str(path))
    with pytest.raises(CheckpointError, match=r"(?s)complex_weight.*img_size=32"):
        build_surya_tiny(img_size=64, weights=str(path))
    state = load_file(str(path))
    save_file({k: t for k, t in state.items() if not k.startswith("unembed.")}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(CheckpointError, match=r"(?s)2 keys missing.*unembed.*set backbone\.head=none"):
        build_surya_tiny(head="forecast", weights=str(tmp_path / "bare.safetensors"))
    build_surya_tiny(weights=str(tmp_path / "bare.safetensors"))


def test_a_folder_is_searched_for_the_official_name(tmp_path: Path) -> None:
    state = load_file(str(golden("tiny") / "surya_tiny.safetensors"))
    save_file(state, str(tmp_path / "surya.366m.v1.safetensors"))
    assert resolve_weights(str(tmp_path), VARIANTS["1.0"].hub_files) == tmp_path / "surya.366m.v1.safetensors"
    model = build_surya_tiny(head="forecast")
    model.weight_files = VARIANTS["1.0"].hub_files
    model.load_pretrained(str(tmp_path))
    torch.testing.assert_close(model.unembed.unembed[0].bias.detach(), state["unembed.unembed.0.bias"], rtol=0, atol=0)  # type: ignore[union-attr]


def test_offline_hub_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls: list[dict[str, Any]] = []

    def unreachable(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        raise OSError("network unreachable")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    pattern = (
        r"(?s)cannot fetch hf://nasa-ibm-ai4science/Surya-1\.0 .*HF_HUB_OFFLINE is set.*"
        r"hf download nasa-ibm-ai4science/Surya-1\.0 --local-dir"
    )
    with torch.device("meta"), pytest.raises(CheckpointError, match=pattern):
        build_surya(weights="hf://nasa-ibm-ai4science/Surya-1.0")
    assert calls[-1]["repo_id"] == "nasa-ibm-ai4science/Surya-1.0"
    assert calls[-1]["allow_patterns"] == ["surya.366m.v1.pt"] and calls[-1]["revision"] is None
    with pytest.raises(CheckpointError, match=r"hf://nasa-ibm-ai4science/Surya-1\.0@v1"):
        resolve_weights("hf://nasa-ibm-ai4science/Surya-1.0/surya.366m.v1.pt@v1", ())
    assert calls[-1]["allow_patterns"] == ["surya.366m.v1.pt"] and calls[-1]["revision"] == "v1"


# ---------------------------------------------------------------------------------------------
# fine-tuning plumbing


def test_peft_targets_and_activation_checkpointing() -> None:
    torch.manual_seed(0)
    model = build_surya_tiny()
    names = [n for n, _ in model.named_modules()]
    hits = {p: sum(fnmatch.fnmatchcase(n, p) for n in names) for p in model.default_peft_targets}
    assert list(hits.values()) == [2, 2, 3, 3], hits
    inputs = model.example_inputs(2)
    model.train()
    plain = model.forward_features(**inputs)[-1]
    plain.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing = True
    again = model.forward_features(**inputs)[-1]
    again.square().mean().backward()
    torch.testing.assert_close(again, plain)
    assert len(grads) == len(list(model.parameters()))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "backbone").glob("surya*.yaml")), ids=lambda p: p.stem)
def test_bundled_configs_name_real_builders(path: Path) -> None:
    import yaml

    cfg = yaml.safe_load(path.read_text())
    params = inspect.signature(BACKBONES.get(cfg.pop("name"))).parameters
    assert set(cfg) <= set(params), set(cfg) - set(params)
    if "weights" in cfg:
        assert cfg["weights"] == "hf://nasa-ibm-ai4science/Surya-1.0"
