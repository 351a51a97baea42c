"""timm backbones: feature shapes and reductions, channel adaptation, weight loading, offline errors."""

from __future__ import annotations

import fnmatch
import inspect
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models._manipulate import adapt_input_conv

import sciadapt.backbones.timm_vision  # noqa: F401  (registers the builders)
from sciadapt.backbones.timm_vision import TimmBackbone, build_timm, build_timm_tiny
from sciadapt.errors import CheckpointError, ConfigError, ShapeError
from sciadapt.registry import BACKBONES

REPO = Path(__file__).resolve().parents[2]


def _check_levels(model: TimmBackbone, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        feats = model.forward_features(x)
    assert len(feats) == len(model.feature_info)
    h, w = x.shape[-2:]
    for f, info in zip(feats, model.feature_info, strict=True):
        assert info["layout"] == "B C H W"
        assert f.shape == (x.shape[0], info["channels"], h // info["reduction"], w // info["reduction"])
    return feats


def test_cnn_features() -> None:
    model = build_timm_tiny(bands=["B02", "B03", "B04", "B08"])
    assert model.in_chans == 4 and model.input_layout == "B C T H W"
    assert [i["reduction"] for i in model.feature_info] == [2, 4, 8, 16, 32]
    _check_levels(model, torch.randn(2, 4, 1, 64, 64))
    three = build_timm_tiny(out_indices=[2, 3, 4])
    assert [i["reduction"] for i in three.feature_info] == [8, 16, 32]
    _check_levels(three, torch.randn(1, 3, 1, 64, 96))


def test_vit_features_and_img_size() -> None:
    model = build_timm_tiny(model_name="test_vit", in_chans=2, img_size=64, out_indices=[1, 3, 5])
    assert [(i["channels"], i["reduction"]) for i in model.feature_info] == [(64, 16)] * 3
    _check_levels(model, torch.randn(2, 2, 1, 64, 64))


def test_channels_last_features_are_permuted() -> None:
    model = build_timm_tiny(model_name="test_mambaout")  # timm returns NHWC for this family
    assert model.channels_last
    _check_levels(model, torch.randn(1, 3, 1, 64, 64))


def test_img_size_is_ignored_by_convolutional_models() -> None:
    model = build_timm_tiny(img_size=48)  # the data passes its chip size to every backbone
    assert "img_size" not in model._kwargs
    _check_levels(model, torch.randn(1, 3, 1, 64, 64))


def test_input_shape_errors() -> None:
    model = build_timm_tiny()
    with pytest.raises(ShapeError, match=r"T=1(.|\n)*prithvi(.|\n)*stack the frames as channels"):
        model.forward_features(torch.randn(1, 3, 2, 32, 32))
    with pytest.raises(ShapeError, match=r"expected B C T H W"):
        model.forward_features(torch.randn(1, 3, 32, 32))
    with pytest.raises(ShapeError, match=r"C=3"):
        model.forward_features(torch.randn(1, 4, 1, 32, 32))


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"Did you mean 'resnet18'"):
        build_timm(model_name="resnet-18")
    with pytest.raises(ConfigError, match="test_"):
        build_timm_tiny(model_name="resnet18")
    with pytest.raises(ConfigError) as err:
        build_timm_tiny(bands=["a", "b"], in_chans=3, pretrained=True, weights="x.safetensors")
    assert len(err.value.problems) == 2
    with pytest.raises(ConfigError, match="out_indices"):
        build_timm_tiny(out_indices=[7])


def test_local_weights_adapt_the_first_conv(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model("test_resnet")  # a 3-channel classifier, as timm's files hold
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))
    model = build_timm_tiny(in_chans=5, weights=str(path))
    own = model.model.state_dict()
    ref = source.state_dict()
    want = adapt_input_conv(5, ref["conv1.0.weight"])  # RGB repeated, scaled by 3/5
    torch.testing.assert_close(own["conv1.0.weight"], want, atol=0, rtol=0)
    torch.testing.assert_close(own["layer4.0.conv2.weight"], ref["layer4.0.conv2.weight"], atol=0, rtol=0)
    # a folder is searched for model.safetensors
    again = build_timm_tiny(in_chans=5, weights=str(tmp_path))
    torch.testing.assert_close(again.model.state_dict()["bn1.weight"], ref["bn1.weight"], atol=0, rtol=0)


def test_local_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file(timm.create_model("test_convnext").state_dict(), str(path))
    with pytest.raises(
        CheckpointError,
        match=r"other.safetensors(.|\n)*keys missing from the file: (.|\n)*unexpected keys in the file: head.fc.bias",
    ):
        build_timm_tiny(weights=str(path))
    state = timm.create_model("test_resnet").state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    save_file(state, str(tmp_path / "shaped.safetensors"))
    with pytest.raises(CheckpointError, match=r"shaped.safetensors(.|\n)*layer1.0.conv1.weight"):
        build_timm_tiny(weights=str(tmp_path / "shaped.safetensors"))


@pytest.mark.parametrize(
    ("settings", "size"),
    [({"in_chans": 4}, 64), ({"model_name": "test_vit"}, 160), ({"model_name": "test_vit", "img_size": 96}, 96)],
    ids=["resnet-4ch", "vit", "vit-96"],
)
def test_save_pretrained_round_trips_strictly(settings: dict[str, Any], size: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_timm_tiny(**settings).eval()
    inputs = model.example_inputs(2)
    assert set(inputs) == {"x"} and inputs["x"].shape == (2, model.in_chans, 1, size, size)
    saved = model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in saved.iterdir()) == ["model.safetensors"]
    torch.manual_seed(1)
    other = build_timm_tiny(**settings).eval()
    other.load_pretrained(str(saved))  # no first-conv adaptation: the file is already at in_chans
    with torch.no_grad():
        for a, b in zip(model.forward_features(**inputs), other.forward_features(**inputs), strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_saved_file_of_another_model_is_refused(tmp_path: Path) -> None:
    saved = build_timm_tiny(in_chans=4).save_pretrained(tmp_path)
    with pytest.raises(
        CheckpointError, match=r"save_pretrained(.|\n)*in_chans=4(.|\n)*conv1.0.weight: file \(16, 4, 3, 3\)"
    ):
        build_timm_tiny(in_chans=3).load_pretrained(str(saved))
    with pytest.raises(CheckpointError, match=r"saved from timm 'test_resnet': set model_name"):
        build_timm_tiny(model_name="test_convnext", in_chans=4).load_pretrained(str(saved))


def test_offline_pretrained(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm.models._hub as timm_hub

    def unreachable(*args: Any, **kwargs: Any) -> str:
        raise OSError("network unreachable")

    monkeypatch.setattr(timm_hub, "hf_hub_download", unreachable)
    with pytest.raises(CheckpointError) as err:
        build_timm_tiny(pretrained=True)
    msg = str(err.value)
    assert "hf://timm/test_resnet.r160_in1k" in msg and "network unreachable" in msg
    assert "hf download timm/test_resnet.r160_in1k model.safetensors" in msg and "pretrained: false" in msg


def test_offline_hub_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def unreachable(*args: Any, **kwargs: Any) -> str:
        raise OSError("network unreachable")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(CheckpointError, match=r"hf://timm/test_resnet.r160_in1k(.|\n)*HF_HUB_OFFLINE"):
        build_timm_tiny(weights="hf://timm/test_resnet.r160_in1k")


def test_default_peft_targets() -> None:
    cnn = build_timm_tiny()
    names = dict(cnn.named_modules())
    assert cnn.default_peft_targets and all(t in names for t in cnn.default_peft_targets)
    assert all(t.startswith(("model.layer3.", "model.layer4.")) for t in cnn.default_peft_targets)
    assert all(isinstance(names[t], torch.nn.Conv2d | torch.nn.Linear) for t in cnn.default_peft_targets)
    vit = build_timm_tiny(model_name="test_vit", img_size=32)
    modules = [n for n, _ in vit.named_modules()]
    assert vit.default_peft_targets == ["model.*attn.qkv", "model.*attn.proj", "model.*mlp.fc1", "model.*mlp.fc2"]
    for pattern in vit.default_peft_targets:
        assert any(fnmatch.fnmatchcase(n, pattern) for n in modules), pattern


def test_builder_schemas_and_configs() -> None:
    import yaml

    for name in ("timm", "timm_tiny"):
        params = inspect.signature(BACKBONES.get(name)).parameters
        assert list(params) == [
            "model_name",
            "pretrained",
            "weights",
            "bands",
            "in_chans",
            "out_indices",
            "img_size",
            "drop_path",
        ]
    for path in sorted((REPO / "configs" / "backbone").glob("timm*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        params = inspect.signature(BACKBONES.get(cfg.pop("name"))).parameters
        assert set(cfg) <= set(params), (path.name, set(cfg) - set(params))
        assert timm.is_model(cfg["model_name"]), path.name
