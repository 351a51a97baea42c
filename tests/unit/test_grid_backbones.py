"""Grid-native rollout backbones (unet_grid, swin_grid): any grid size, padding and cropping, forcings
and static fields, one rollout training step, PEFT targets, checkpoints; the mesh refuses projected grids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sciadapt.backbones._grid_common import crop_grid, pad_amounts, pad_grid
from sciadapt.config import call_builder
from sciadapt.errors import CheckpointError, ConfigError, ShapeError
from sciadapt.heads.grid import GridHead
from sciadapt.registry import BACKBONES, PEFT_METHODS
from sciadapt.tasks.rollout import RolloutTask

GRID_BACKBONES = ["unet_grid_tiny", "swin_grid_tiny"]
SIZES = dict(n_channels=3, n_forcings=2, n_static=1, n_input=2)


def _model(name: str, seed: int = 0, **kw: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return BACKBONES.build(name, **{**SIZES, **kw}).eval()


def _inputs(h: int, w: int, batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "x": torch.randn(batch, 2, 3, h, w, generator=g),
        "forcings": torch.randn(batch, 3, 2, h, w, generator=g),  # B T+1 F H W
        "static": torch.randn(1, 1, h, w, generator=g),
    }


@pytest.mark.parametrize("name", GRID_BACKBONES)
@pytest.mark.parametrize("hw", [(33, 49), (51, 47), (8, 12), (16, 16)], ids=str)
def test_output_is_on_the_input_grid(name: str, hw: tuple[int, int]) -> None:
    # odd sizes, and 51 x 47: the 765 x 700 aspect ratio of a projected km-scale domain, at small size
    model = _model(name)
    inputs = _inputs(*hw)
    with torch.no_grad():
        out = model.forward_features(**inputs)
        flat = model.forward_features(inputs["x"], inputs["forcings"].flatten(1, 2), inputs["static"])
    assert out.shape == (2, 3, *hw) and torch.isfinite(out).all()
    torch.testing.assert_close(out, flat)  # B T F H W and the rollout task's B (T F) H W agree
    assert model.feature_info == [{"layout": "B C H W", "channels": 3, "reduction": 1}]


@pytest.mark.parametrize("mode", ["replicate", "zeros", "circular"])
@pytest.mark.parametrize("hw", [(33, 49), (3, 5), (32, 16)], ids=str)
def test_pad_then_crop_is_the_identity(mode: str, hw: tuple[int, int]) -> None:
    x = torch.randn(2, 4, *hw)
    padded, pads = pad_grid(x, 16, mode)  # type: ignore[arg-type]
    assert padded.shape[-2] % 16 == 0 and padded.shape[-1] % 16 == 0
    left, right, top, bottom = pads
    assert abs(left - right) <= 1 and abs(top - bottom) <= 1  # split evenly: no side is favoured
    torch.testing.assert_close(crop_grid(padded, pads), x)
    if mode == "circular" and left:
        torch.testing.assert_close(padded[..., top : top + hw[0], left - 1], x[..., -1])  # wraps around


def test_pad_amounts() -> None:
    assert pad_amounts(33, 49, 4) == (1, 2, 1, 2)
    assert pad_amounts(32, 48, 16) == (0, 0, 0, 0)


@pytest.mark.parametrize("name", GRID_BACKBONES)
def test_every_input_reaches_the_output_and_the_crop_is_aligned(name: str) -> None:
    model = _model(name)
    inputs = {k: v.requires_grad_(True) for k, v in _inputs(33, 49, batch=1).items()}
    out = model.forward_features(**inputs)
    out[0, :, 16, 24].sum().backward()  # one grid point at the centre
    for key, value in inputs.items():
        assert value.grad is not None and value.grad.abs().sum() > 0, key
    # the point's own input pixel matters most: the crop maps output pixels back onto their input pixels
    g = inputs["x"].grad.abs().sum(dim=(0, 1, 2))  # (H, W)
    row, col = divmod(int(g.argmax()), g.shape[1])
    assert abs(row - 16) <= 1 and abs(col - 24) <= 1, (row, col)


@pytest.mark.parametrize("name", GRID_BACKBONES)
def test_missing_or_misshapen_inputs_are_refused(name: str) -> None:
    model = _model(name)
    inputs = _inputs(9, 11)
    with pytest.raises(ShapeError, match="needs forcings"):
        model.forward_features(inputs["x"], static=inputs["static"])
    with pytest.raises(ShapeError, match="n_static"):
        model.forward_features(inputs["x"], inputs["forcings"])
    with pytest.raises(ShapeError, match="static"):
        model.forward_features(inputs["x"], inputs["forcings"], torch.randn(1, 1, 9, 12))
    with pytest.raises(ShapeError, match="T = n_input = 2"):
        model.forward_features(inputs["x"][:, :1], inputs["forcings"], inputs["static"])


@pytest.mark.parametrize("name", GRID_BACKBONES)
def test_one_rollout_training_step(name: str) -> None:
    model = _model(name).train()
    task = RolloutTask(
        model, GridHead(3), variables=["t2m", "z_500", "u_500"], tendency_scale=[0.1, 0.2, 0.3],
        area_weights=[1.0] * 33, n_input=2,
    )  # fmt: skip
    task.rollout_steps = 2
    g = torch.Generator().manual_seed(2)
    batch = {
        "x": torch.randn(2, 2, 3, 33, 49, generator=g),
        "y": torch.randn(2, 2, 3, 33, 49, generator=g),
        "mask": torch.ones(2, 2, 3, 33, 49),
        "forcings": torch.randn(2, 4, 2, 33, 49, generator=g),  # n_input + steps forcing times
        "static": torch.randn(1, 1, 33, 49, generator=g),
        "meta": {},
    }
    opt = torch.optim.AdamW(task.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in task.parameters()]
    loss, pred = task._loss(batch)  # type: ignore[arg-type]
    assert pred.shape == (2, 2, 3, 33, 49) and torch.isfinite(loss)
    loss.backward()
    opt.step()
    changed = sum(not torch.equal(a, b) for a, b in zip(before, task.parameters(), strict=True))
    assert changed == len(before)


@pytest.mark.parametrize("name", GRID_BACKBONES)
def test_default_peft_targets_take_lora(name: str) -> None:
    from sciadapt.peft import core

    model = _model(name)
    inputs = _inputs(33, 49)
    with torch.no_grad():
        base = model.forward_features(**inputs)
    found = core.attach(model, PEFT_METHODS.build("lora"), "a", None)
    assert found, model.default_peft_targets
    if name.startswith("swin"):
        assert any(n.endswith("attn.qkv") for n in found) and all(n.startswith("model.") for n in found)
    else:
        assert all(n.startswith(("down.", "up.")) for n in found)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(**inputs), base)  # LoRA starts as the identity


@pytest.mark.parametrize("name", GRID_BACKBONES)
def test_save_load_round_trip_and_mismatch(name: str, tmp_path: Path) -> None:
    model = _model(name)
    inputs = _inputs(21, 30)
    saved = model.save_pretrained(tmp_path / "saved")
    other = _model(name, seed=5)
    other.load_pretrained(str(saved))
    with torch.no_grad():
        torch.testing.assert_close(other.forward_features(**inputs), model.forward_features(**inputs))
    again = BACKBONES.build(name, **{**SIZES, "weights": str(saved)})
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values(), strict=True))
    wrong = _model(name, n_channels=4)
    with pytest.raises(CheckpointError, match="n_channels=3"):
        wrong.load_pretrained(str(saved))


def test_swin_grid_takes_other_timm_encoders() -> None:
    model = BACKBONES.build("swin_grid", model_name="test_convnext", n_channels=2, decoder_channels=8)
    with torch.no_grad():
        out = model.forward_features(torch.randn(1, 1, 2, 33, 49))
    assert out.shape == (1, 2, 33, 49)
    with pytest.raises(ConfigError, match="model_name"):
        BACKBONES.build("swin_grid", model_name="swin_tinny")


def test_invalid_settings_are_reported() -> None:
    with pytest.raises(ConfigError, match="depth"):
        BACKBONES.build("unet_grid_tiny", depth=0)
    with pytest.raises(ConfigError, match="set one"):
        BACKBONES.build("swin_grid", pretrained=True, weights="x")


@pytest.mark.parametrize("kind", ["projected", "curvilinear"])
def test_the_mesh_refuses_grids_that_are_not_lat_lon(kind: str) -> None:
    facts = {"n_channels": 2, "grid_kind": kind}
    with pytest.raises(ConfigError, match=f"on a {kind} grid: use backbone=unet_grid or swin_grid"):
        call_builder("backbone", {"name": "graphcast_tiny"}, facts)
    # the grid-native backbones take the same facts
    for name in GRID_BACKBONES:
        assert call_builder("backbone", {"name": name}, facts).n_channels == 2
    assert call_builder("backbone", {"name": "graphcast_tiny"}, {**facts, "grid_kind": "latlon"}).n_channels == 2


def test_rollout_task_takes_cell_area_weights_of_a_projected_grid() -> None:
    # a projected grid has no latitude rows: the data gives (H, W) cell areas
    areas = torch.rand(9, 11) + 0.5
    task = RolloutTask(
        _model("unet_grid_tiny"), GridHead(3), variables=["a", "b", "c"], tendency_scale=[1.0, 1.0, 1.0],
        area_weights=areas.tolist(), n_input=2,
    )  # fmt: skip
    assert task.area_w.shape == (1, 1, 1, 9, 11)
    pred, y = torch.randn(2, 1, 3, 9, 11), torch.randn(2, 1, 3, 9, 11)
    w = (areas / areas.mean()).expand_as(pred)
    torch.testing.assert_close(task.weighted_mse(pred, y, None), ((pred - y) ** 2 * w).sum() / w.sum())


def test_swin_grid_encoder_takes_timm_image_weights(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    from sciadapt.backbones.swin_grid import TINY_SWIN, SwinGrid

    torch.manual_seed(3)
    rgb = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, **TINY_SWIN)
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(tmp_path / "model.safetensors"))
    torch.manual_seed(0)
    model = SwinGrid(3, 2, 1, 2, "swin_tiny_patch4_window7_224", 16, 4, "replicate", timm_kwargs=TINY_SWIN)
    model.load_encoder_weights(str(tmp_path / "model.safetensors"))
    own = model.model.state_dict()
    qkv = "layers_0.blocks.0.attn.qkv.weight"
    torch.testing.assert_close(own[qkv], rgb.state_dict()[qkv.replace("layers_0", "layers.0")])
    # the RGB patch embedding is spread over the 2 * 3 + 3 * 2 + 1 = 13 stacked channels
    assert own["patch_embed.proj.weight"].shape[1] == 13
    with pytest.raises(CheckpointError, match="not found"):
        model.load_encoder_weights(str(tmp_path / "missing.safetensors"))
    partial = {k: v.contiguous() for k, v in rgb.state_dict().items() if "layers.2" not in k}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError, match="cannot load .* into the timm"):
        model.load_encoder_weights(str(tmp_path / "partial.safetensors"))
