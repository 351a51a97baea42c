"""Prithvi-EO: golden parity with terratorch, official key listings, band mapping, loading errors, the contract."""

from __future__ import annotations

import fnmatch
import inspect
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from einops import rearrange
from safetensors.torch import load_file, save_file

import sciadapt.backbones.prithvi  # noqa: F401  (registers the builders)
from sciadapt.backbones.prithvi import (
    HLS_BANDS,
    VARIANTS,
    PrithviViT,
    build_prithvi_tiny,
    encoder_state,
    resolve_weights,
    sincos_3d,
)
from sciadapt.errors import CheckpointError, ConfigError, ShapeError
from sciadapt.registry import BACKBONES

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "tests" / "data" / "prithvi_golden"
SHARED = REPO.parent / "shared" / "golden" / "prithvi"
FILES = {
    "tiny_v1": ("Prithvi_tiny_v1.pt", "Prithvi_tiny_v1.safetensors"),
    "tiny_v2_tl": ("Prithvi_tiny_v2_tl.pt", "Prithvi_tiny_v2_tl.safetensors"),
}
FULL = ["prithvi_v1_100m", "prithvi_v2_300m", "prithvi_v2_300m_tl", "prithvi_v2_600m", "prithvi_v2_600m_tl"]
ATOL, RTOL = 2e-5, 1e-5


def golden(name: str = "") -> Path:
    """A golden folder (``tests/data`` copy first, else the shared fixtures); skip when absent."""
    for root in (LOCAL, SHARED):
        if (root / name).is_dir():
            return root / name
    pytest.skip(f"Prithvi golden fixtures not found under {LOCAL} or {SHARED}")


def tiny(variant: str, **kwargs: Any) -> PrithviViT:
    model = build_prithvi_tiny(temporal_location=variant == "tiny_v2_tl", **kwargs)
    return model.eval()


def coords(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: inputs[k] for k in ("temporal_coords", "location_coords") if k in inputs}


# ---------------------------------------------------------------------------------------------
# golden parity


@pytest.mark.parametrize("fmt", [0, 1], ids=["pt", "safetensors"])
@pytest.mark.parametrize("variant", ["tiny_v1", "tiny_v2_tl"])
def test_golden_parity(variant: str, fmt: int) -> None:
    folder = golden(variant)
    model = tiny(variant)
    model.load_pretrained(str(folder / FILES[variant][fmt]))
    inputs = load_file(str(folder / "inputs.safetensors"))
    ref = load_file(str(folder / "outputs.safetensors"))
    block_out: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: block_out.append(out)) for b in model.blocks]
    with torch.no_grad():
        feats = model.forward_features(inputs["pixel_values"], **coords(inputs))
    for h in hooks:
        h.remove()
    assert len(feats) == len(model.feature_info) == 2
    for i, f in enumerate(feats):
        torch.testing.assert_close(f, ref[f"features.{i}"], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(block_out[i], ref[f"block_out.{i}"], atol=ATOL, rtol=RTOL)
        # feature_info's grid is what a neck needs to turn tokens into images (terratorch's layout)
        t, h, w = model.feature_info[i]["grid"]
        image = rearrange(f[:, 1:], "b (t h w) e -> b (t e) h w", t=t, h=h, w=w)
        torch.testing.assert_close(image, ref[f"features_image.{i}"], atol=ATOL, rtol=RTOL)


def test_tl_without_coords_skips_the_encodings() -> None:
    folder = golden("tiny_v2_tl")
    model = tiny("tiny_v2_tl")
    model.load_pretrained(str(folder / FILES["tiny_v2_tl"][1]))
    inputs = load_file(str(folder / "inputs.safetensors"))
    ref = load_file(str(folder / "outputs.safetensors"))
    x = inputs["pixel_values"]
    with torch.no_grad():
        plain = model.forward_features(x)
        assert not torch.allclose(plain[-1], ref["features.1"], atol=1e-3)  # the encodings matter
        assert model.temporal_embed_enc is not None and model.location_embed_enc is not None
        model.temporal_embed_enc.scale.zero_()
        model.location_embed_enc.scale.zero_()
        zeroed = model.forward_features(x, **coords(inputs))
    for a, b in zip(plain, zeroed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_stored_pos_embed_equals_the_recomputed_table() -> None:
    folder = golden("tiny_v1")
    stored = load_file(str(folder / FILES["tiny_v1"][1]))["pos_embed"]
    torch.testing.assert_close(sincos_3d(64, (3, 2, 2)), stored, atol=1e-7, rtol=0)


# ---------------------------------------------------------------------------------------------
# official key listings (meta device: no memory)


def _listing(file: str, layout: str = "terratorch_layout") -> dict[str, Any]:
    path = SHARED / file
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = json.loads(path.read_text())
    return {"config": data["config"], "n_params_encoder": data.get("n_params_encoder"), "keys": data[layout]}


def _meta(name: str, num_frames: int) -> PrithviViT:
    with torch.device("meta"):
        return BACKBONES.get(name)(num_frames=num_frames)


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in state.items()}


@pytest.mark.parametrize(
    ("name", "file"),
    [
        ("prithvi_v1_100m", "keys_v1_100m.json"),
        ("prithvi_v2_300m", "keys_v2_300m.json"),
        ("prithvi_v2_300m_tl", "keys_v2_300m_tl.json"),
    ],
)
def test_key_listing_matches_the_official_encoder(name: str, file: str) -> None:
    ref = _listing(file)
    model = _meta(name, ref["config"]["num_frames"])
    want = {k.removeprefix("encoder."): v["shape"] for k, v in ref["keys"].items() if k.startswith("encoder.")}
    assert _shapes(model.state_dict()) == want
    kinds = {k.removeprefix("encoder."): v["kind"] for k, v in ref["keys"].items() if k.startswith("encoder.")}
    buffers = {k for k, _ in model.named_buffers()}
    assert {k for k, kind in kinds.items() if kind == "buffer"} == buffers == {"pos_embed"}
    if ref["n_params_encoder"] is not None and not name.endswith("_tl"):
        assert sum(p.numel() for p in model.parameters()) == ref["n_params_encoder"]


def test_v1_checkpoint_layout_converts_to_the_encoder() -> None:
    ref = _listing("keys_v1_100m.json", "v1_checkpoint_layout")
    state = {k: torch.empty(v["shape"], device="meta") for k, v in ref["keys"].items()}
    encoder, dropped, layout = encoder_state(state)
    assert layout == "v1"
    model = _meta("prithvi_v1_100m", ref["config"]["num_frames"])
    assert _shapes(encoder) == _shapes(model.state_dict())
    assert "mask_token" in dropped and "decoder_pos_embed" in dropped
    assert all("decoder" in k or k == "mask_token" for k in dropped)
    # the same tensors under terratorch's names give the same encoder
    tt = _listing("keys_v1_100m.json")
    v2, v2_dropped, v2_layout = encoder_state(
        {k: torch.empty(v["shape"], device="meta") for k, v in tt["keys"].items()}
    )
    assert v2_layout == "v2" and _shapes(v2) == _shapes(encoder) and len(v2_dropped) == len(dropped)


def test_600m_geometry() -> None:
    # terratorch prithvi_cfgs: embed 1280, depth 32, 16 heads, patch (1, 14, 14)
    model = _meta("prithvi_v2_600m", 4)
    assert model.patch_embed.proj.weight.shape == (1280, 6, 1, 14, 14)
    assert len(model.blocks) == 32 and model.blocks[0].attn.num_heads == 16
    assert model.pos_embed.shape == (1, 1 + 4 * 16 * 16, 1280)
    assert model.feature_info[0] == {
        "layout": "B N D",
        "channels": 1280,
        "reduction": 14,
        "cls_token": True,
        "grid": [4, 16, 16],
    }
    tl = _meta("prithvi_v2_600m_tl", 1)
    assert set(tl.state_dict()) - set(model.state_dict()) == {"temporal_embed_enc.scale", "location_embed_enc.scale"}


# ---------------------------------------------------------------------------------------------
# bands, grids


def test_band_mapping(caplog: pytest.LogCaptureFixture) -> None:
    folder = golden("tiny_v1")
    file_w = load_file(str(folder / FILES["tiny_v1"][1]))["patch_embed.proj.weight"]  # (64, 6, 1, 16, 16)
    torch.manual_seed(3)
    model = tiny("tiny_v1", bands=["red", "GREEN", "NDVI"])
    assert model.in_chans == 3 and model.patch_embed.proj.weight.shape[1] == 3
    fresh = model.patch_embed.proj.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="sciadapt.backbones.prithvi"):
        model.load_pretrained(str(folder / FILES["tiny_v1"][1]))
    w = model.patch_embed.proj.weight.detach()
    assert torch.equal(w[:, 0], file_w[:, HLS_BANDS.index("RED")])
    assert torch.equal(w[:, 1], file_w[:, HLS_BANDS.index("GREEN")])
    assert torch.equal(w[:, 2], fresh[:, 2])  # the new band keeps its initialisation
    lines = [r.getMessage() for r in caplog.records]
    assert any("pretrained patch-embedding weights: red, GREEN" in m for m in lines)
    assert any("new bands" in m and "NDVI" in m for m in lines)
    assert any("sliced out: BLUE, NIR_NARROW, SWIR_1, SWIR_2" in m for m in lines)
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 3, 32, 32))[-1].shape == (1, 13, 64)


def test_custom_pretrained_bands_and_band_count_mismatch() -> None:
    folder = golden("tiny_v1")
    file_w = load_file(str(folder / FILES["tiny_v1"][1]))["patch_embed.proj.weight"]
    names = ["b1", "b2", "b3", "b4", "b5", "b6"]
    model = tiny("tiny_v1", bands=["b6", "b1"], pretrained_bands=names)
    model.load_pretrained(str(folder / FILES["tiny_v1"][1]))
    assert torch.equal(model.patch_embed.proj.weight.detach()[:, 0], file_w[:, 5])
    five = tiny("tiny_v1", pretrained_bands=names[:5])
    with pytest.raises(CheckpointError, match=r"Prithvi_tiny_v1.safetensors: its patch embedding takes 6 bands"):
        five.load_pretrained(str(folder / FILES["tiny_v1"][1]))


def test_pos_embed_is_recomputed_for_another_grid() -> None:
    folder = golden("tiny_v1")
    big = tiny("tiny_v1", img_size=64, num_frames=2)
    big.load_pretrained(str(folder / FILES["tiny_v1"][0]))  # file table is (1, 13, 64): not loaded
    assert big.grid == (2, 4, 4) and big.feature_info[-1]["grid"] == [2, 4, 4]
    torch.testing.assert_close(big.pos_embed, sincos_3d(64, (2, 4, 4)), atol=0, rtol=0)
    small = tiny("tiny_v1")
    small.load_pretrained(str(folder / FILES["tiny_v1"][0]))
    x = torch.randn(2, 6, 2, 64, 64)
    with torch.no_grad():
        ref = big.forward_features(x)
        # an input of another size gets its table on the fly: same result as a model built for it
        out = small.forward_features(x)
    assert ref[-1].shape == (2, 1 + 2 * 4 * 4, 64)
    for a, b in zip(ref, out, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# loading errors and logs


def test_decoder_keys_are_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    folder = golden("tiny_v2_tl")
    model = tiny("tiny_v2_tl")
    with caplog.at_level(logging.INFO, logger="sciadapt.backbones.prithvi"):
        model.load_pretrained(str(folder / FILES["tiny_v2_tl"][0]))
    dropped = [r.getMessage() for r in caplog.records if "MAE decoder" in r.getMessage()]
    assert len(dropped) == 1 and "Prithvi_tiny_v2_tl.pt: dropped 22 MAE decoder entries" in dropped[0]
    assert any("pos_embed of Prithvi_tiny_v2_tl.pt not loaded" in r.getMessage() for r in caplog.records)


def _edited(tmp_path: Path, variant: str, edit: Any) -> Path:
    state = load_file(str(golden(variant) / FILES[variant][1]))
    edit(state)
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path))
    return path


def test_patch_size_mismatch(tmp_path: Path) -> None:
    def coarse(state: dict[str, torch.Tensor]) -> None:
        state["patch_embed.proj.weight"] = torch.zeros(64, 6, 1, 8, 8)

    path = _edited(tmp_path, "tiny_v1", coarse)
    with pytest.raises(CheckpointError, match=r"edited.safetensors(.|\n)*patch size \(1, 8, 8\)(.|\n)*\(1, 16, 16\)"):
        tiny("tiny_v1").load_pretrained(str(path))


def test_missing_unexpected_and_misshaped_keys(tmp_path: Path) -> None:
    def drop(state: dict[str, torch.Tensor]) -> None:
        del state["blocks.1.mlp.fc2.bias"]
        state["blocks.0.norm1.weight"] = torch.ones(32)
        state["extra.weight"] = torch.ones(1)

    path = _edited(tmp_path, "tiny_v1", drop)
    with pytest.raises(CheckpointError) as err:
        tiny("tiny_v1").load_pretrained(str(path))
    msg = str(err.value)
    assert "edited.safetensors" in msg
    assert "missing from the file: blocks.1.mlp.fc2.bias" in msg
    assert "unexpected keys in the file: extra.weight" in msg
    assert "blocks.0.norm1.weight: file (32,) vs model (64,)" in msg


def test_tl_and_plain_files_do_not_mix() -> None:
    with pytest.raises(CheckpointError, match=r"temporal_embed_enc.scale(.|\n)*use the \*_tl builder"):
        tiny("tiny_v1").load_pretrained(str(golden("tiny_v2_tl") / FILES["tiny_v2_tl"][1]))
    with pytest.raises(CheckpointError, match=r"missing(.|\n)*use the builder without _tl"):
        tiny("tiny_v2_tl").load_pretrained(str(golden("tiny_v1") / FILES["tiny_v1"][1]))


def test_offline_hub_reference(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    calls: list[dict[str, Any]] = []

    def unreachable(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        raise OSError("network unreachable")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    model = tiny("tiny_v1")
    model.weight_files = ("Prithvi_EO_V2_300M.pt",)
    with pytest.raises(CheckpointError, match=r"hf://ibm-nasa-geospatial/Prithvi-EO-2.0-300M(.|\n)*HF_HUB_OFFLINE"):
        model.load_pretrained("hf://ibm-nasa-geospatial/Prithvi-EO-2.0-300M")
    assert calls[-1]["allow_patterns"] == ["Prithvi_EO_V2_300M.pt"]
    with pytest.raises(CheckpointError, match=r"hf://ibm-nasa-geospatial/Prithvi-EO-1.0-100M@v1"):
        model.load_pretrained("hf://ibm-nasa-geospatial/Prithvi-EO-1.0-100M/Prithvi_EO_V1_100M.pt@v1")
    assert calls[-1]["allow_patterns"] == ["Prithvi_EO_V1_100M.pt"] and calls[-1]["revision"] == "v1"
    # each variant names its official file (no full-size model is built here)
    with pytest.raises(CheckpointError, match="Prithvi-EO-2.0-300M-TL"):
        resolve_weights("hf://ibm-nasa-geospatial/Prithvi-EO-2.0-300M-TL", VARIANTS["v2_300m_tl"].hub_files)
    assert calls[-1]["allow_patterns"] == ["Prithvi_EO_V2_300M_TL.pt"]
    with pytest.raises(CheckpointError, match="not found"):
        model.load_pretrained(str(tmp_path / "nowhere"))


def test_a_folder_is_searched_for_the_official_name(tmp_path: Path) -> None:
    state = load_file(str(golden("tiny_v1") / FILES["tiny_v1"][1]))
    save_file(state, str(tmp_path / "Prithvi_EO_V1_100M.safetensors"))
    model = tiny("tiny_v1")
    model.weight_files = ("Prithvi_EO_V1_100M.pt",)
    model.load_pretrained(str(tmp_path))
    torch.testing.assert_close(model.cls_token.detach(), state["cls_token"], atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# save_pretrained / load_pretrained round trip


@pytest.mark.parametrize("variant", ["tiny_v1", "tiny_v2_tl"])
def test_save_pretrained_round_trips_strictly(variant: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bands = ["RED", "NIR_NARROW", "NDVI"]
    torch.manual_seed(0)
    model = tiny(variant, bands=bands)
    inputs = model.example_inputs(2)
    assert inputs["x"].shape == (2, 3, 3, 32, 32)
    assert set(inputs) == ({"x", "temporal_coords", "location_coords"} if variant == "tiny_v2_tl" else {"x"})
    for k, v in model.example_inputs(2).items():
        assert torch.equal(v, inputs[k])  # seeded
    saved = model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in saved.iterdir()) == ["model.safetensors"]
    torch.manual_seed(1)
    other = tiny(variant, bands=bands)
    with caplog.at_level(logging.INFO, logger="sciadapt.backbones.prithvi"):
        other.load_pretrained(str(saved))
    assert any("written by save_pretrained; its bands: RED, NIR_NARROW, NDVI" in r.getMessage() for r in caplog.records)
    assert not any("v1 flat layout" in r.getMessage() for r in caplog.records)
    with torch.no_grad():
        for a, b in zip(model.forward_features(**inputs), other.forward_features(**inputs), strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_saved_bands_drive_the_band_mapping(tmp_path: Path) -> None:
    model = tiny("tiny_v1", bands=["RED", "NDVI"])
    saved = model.save_pretrained(tmp_path)
    file_w = model.patch_embed.proj.weight.detach()
    # pretrained_bands describes official files; a saved file maps from the bands it records
    other = tiny("tiny_v1", bands=["ndvi", "BLUE", "red"])
    other.load_pretrained(str(saved / "model.safetensors"))
    w = other.patch_embed.proj.weight.detach()
    assert torch.equal(w[:, 0], file_w[:, 1]) and torch.equal(w[:, 2], file_w[:, 0])
    # the strict check still applies: a saved TL encoder does not load into a plain one
    tl = tiny("tiny_v2_tl").save_pretrained(tmp_path / "tl")
    with pytest.raises(CheckpointError, match=r"model.safetensors(.|\n)*use the \*_tl builder"):
        tiny("tiny_v1").load_pretrained(str(tl))


# ---------------------------------------------------------------------------------------------
# shapes, config, contract


def test_input_shape_errors() -> None:
    model = tiny("tiny_v2_tl")
    with pytest.raises(ShapeError, match=r"expected B C T H W"):
        model.forward_features(torch.randn(2, 6, 32, 32))
    with pytest.raises(ShapeError, match=r"C=6"):
        model.forward_features(torch.randn(2, 5, 3, 32, 32))
    with pytest.raises(ShapeError, match=r"multiples of the tubelet"):
        model.forward_features(torch.randn(2, 6, 3, 30, 32))
    with pytest.raises(ShapeError, match=r"temporal_coords: expected \(B, T, 2\)"):
        model.forward_features(torch.randn(2, 6, 3, 32, 32), temporal_coords=torch.zeros(2, 2, 2))
    with pytest.raises(ShapeError, match=r"location_coords: expected \(B, 2\)"):
        model.forward_features(torch.randn(2, 6, 3, 32, 32), location_coords=torch.zeros(2, 3))


def test_config_errors() -> None:
    with pytest.raises(ConfigError) as err:
        build_prithvi_tiny(img_size=40, num_frames=0, bands=["RED", "red"], drop_path=1.5)
    problems = "\n".join(err.value.problems)
    assert "num_frames" in problems and "drop_path" in problems and "repeat" in problems
    with pytest.raises(ConfigError, match="img_size=40 must be a multiple of the patch size 16"):
        build_prithvi_tiny(img_size=40)


def test_contract_and_builder_schemas() -> None:
    model = tiny("tiny_v1")
    assert model.input_layout == "B C T H W"
    assert (
        model.feature_info
        == [{"layout": "B N D", "channels": 64, "reduction": 16, "cls_token": True, "grid": [3, 2, 2]}] * 2
    )
    names = [n for n, _ in model.named_modules()]
    for pattern in model.default_peft_targets:
        assert sum(fnmatch.fnmatchcase(n, pattern) for n in names) == 2, pattern
    for name in [*FULL, "prithvi_tiny"]:
        params = inspect.signature(BACKBONES.get(name)).parameters
        assert list(params)[:6] == ["weights", "num_frames", "img_size", "bands", "pretrained_bands", "drop_path"]
        assert params["weights"].default is None
    out = inspect.signature(PrithviViT.forward_features).parameters
    assert list(out) == ["self", "x", "temporal_coords", "location_coords"]


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "backbone").glob("prithvi*.yaml")), ids=lambda p: p.stem)
def test_bundled_configs_name_real_builders(path: Path) -> None:
    import yaml

    cfg = yaml.safe_load(path.read_text())
    params = inspect.signature(BACKBONES.get(cfg.pop("name"))).parameters
    assert set(cfg) <= set(params), set(cfg) - set(params)
    if "weights" in cfg:
        assert cfg["weights"].startswith("hf://ibm-nasa-geospatial/Prithvi-EO-")
