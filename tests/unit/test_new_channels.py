"""New input channels for a pretrained model (a stage's ``new_channels``): the shared weight rule, Prithvi, Surya
and Swin3D, the config and preflight checks, and pipelines on generated rasters that add a band, are
stopped, and resume."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from sciadapt.backbones._channels import extend_channels, grow_linear_input
from sciadapt.cli import main
from sciadapt.config import validate
from sciadapt.errors import EXIT_PREEMPTED, CheckpointError, ConfigError
from sciadapt.registry import BACKBONES
from sciadapt.runs import Run
from sciadapt.stages import preempt
from sciadapt.stages.plan import new_channel_problems, plan
from sciadapt.types import ExtendsChannels
from tests.data.raster.make import write_mask, write_scene

OLD = ["B02", "B03", "B04"]
ALL = [*OLD, "B8A"]
EXTENSION_LOG = "new input channels"


# ------------------------------------------------------------------------------- the weight rule
@pytest.mark.parametrize("rule", ["zeros", "mean", "copy:b03"])
def test_old_slices_are_kept_bit_for_bit_and_new_ones_follow_the_rule(rule: str) -> None:
    torch.manual_seed(0)
    weight = torch.randn(5, 3, 2, 4, 4)  # (D, C, t, p, p)
    grown = extend_channels(weight, OLD, ["X", "Y"], rule, dim=1)
    assert grown.shape == (5, 5, 2, 4, 4)
    assert torch.equal(grown[:, :3], weight)  # the very same values
    want = {"zeros": torch.zeros(5, 2, 4, 4), "mean": weight.mean(dim=1), "copy:b03": weight[:, 1]}[rule]
    for k in (3, 4):
        assert torch.equal(grown[:, k], want), (rule, k)


def test_a_wrong_rule_or_name_is_named() -> None:
    w = torch.zeros(2, 3, 1)
    with pytest.raises(ConfigError, match=r"init: 'median' is not a rule; use zeros .*, mean .* or copy:<name>"):
        extend_channels(w, OLD, ["X"], "median")
    with pytest.raises(ConfigError, match=r"'copy:B8A' names no channel of the model; known channels: B02, B03, B04"):
        extend_channels(w, OLD, ["X"], "copy:B8A")
    with pytest.raises(ConfigError, match=r"the model already has b02"):
        extend_channels(w, OLD, ["b02"], "zeros")
    with pytest.raises(ConfigError, match=r"2 slices along axis 1"):
        extend_channels(torch.zeros(2, 2), OLD, ["X"], "zeros")


@pytest.mark.parametrize("order", ["channel_first", "channel_last"])
def test_a_linear_patch_embedding_grows_and_zeros_keep_its_outputs(order: str) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(3 * 4, 6)  # patches of 4 pixels x 3 channels, flattened
    patches = torch.randn(7, 3, 4)  # (N, C, k)
    flat = (lambda p: p.flatten(1)) if order == "channel_first" else (lambda p: p.transpose(1, 2).flatten(1))
    before = linear(flat(patches))
    grow_linear_input(linear, OLD, ["X"], "zeros", order=order)  # type: ignore[arg-type]
    assert linear.in_features == 16 and linear.weight.shape == (6, 16)
    wider = torch.cat([patches, torch.randn(7, 1, 4)], dim=1)  # any values in the new channel
    torch.testing.assert_close(linear(flat(wider)), before)


# ------------------------------------------------------------------------------- the backbones
def _prithvi() -> Any:
    torch.manual_seed(0)
    return BACKBONES.build("prithvi_tiny", bands=list(OLD), num_frames=1, img_size=32).eval()


def _swin3d() -> Any:
    torch.manual_seed(0)
    return BACKBONES.build("swin3d_tiny", bands=list(OLD), num_frames=2, head="forecast").eval()


@pytest.mark.parametrize("build", [_prithvi, _swin3d], ids=["prithvi", "swin3d"])
def test_backbones_implement_the_protocol_and_keep_their_weights(
    build: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = build()
    assert isinstance(model, ExtendsChannels) and type(model).CHANNELS_FACT == "bands"
    assert not isinstance(BACKBONES.build("nhits_tiny"), ExtendsChannels)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_old = model.example_inputs(2)["x"]
    with torch.no_grad():
        out_old = model.forward_features(x_old)
    with caplog.at_level(logging.INFO):
        model.extend_input_channels(["B8A"], "zeros")
    assert len(_lines(caplog)) == 1 and "B8A" in _lines(caplog)[0] and "zeros" in _lines(caplog)[0]
    assert model.channel_names == ALL and model.in_chans == 4
    after = model.state_dict()
    assert set(after) == set(before)
    for key, old in before.items():
        new = after[key]
        if new.shape == old.shape:
            assert torch.equal(new, old), key  # every other weight untouched
    kernel = after["patch_embed.proj.weight"]
    assert torch.equal(kernel[:, :3], before["patch_embed.proj.weight"]) and not kernel[:, 3].any()
    # zeros: the extended model computes what the pretrained one did, whatever the new band holds
    x_new = torch.cat([x_old, torch.randn_like(x_old[:, :1])], dim=1)
    with torch.no_grad():
        out_new = model.forward_features(x_new)
    n_enc = len(out_old) - (1 if getattr(model, "decoder", None) is not None else 0)
    for a, b in zip(out_old[:n_enc], out_new[:n_enc], strict=True):
        torch.testing.assert_close(a, b)
    if n_enc < len(out_old):  # Swin3D's decoder: old channels' forecast kept, the new one is persistence
        torch.testing.assert_close(out_new[-1][:, :3], out_old[-1])
        torch.testing.assert_close(out_new[-1][:, 3], x_new[:, 3, -1])
        assert model.feature_info[-1]["channels"] == 4
    # the extended model saves and reloads into a model built with the new bands
    saved = model.save_pretrained(tmp_path / "saved")
    torch.manual_seed(3)
    kwargs: dict[str, Any] = {"bands": ALL}
    name = "prithvi_tiny" if build is _prithvi else "swin3d_tiny"
    kwargs.update({"num_frames": 1, "img_size": 32} if build is _prithvi else {"num_frames": 2, "head": "forecast"})
    other = BACKBONES.build(name, **kwargs).eval()
    other.load_pretrained(str(saved))
    with torch.no_grad():
        again = other.forward_features(x_new)
    for a, b in zip(out_new, again, strict=True):
        torch.testing.assert_close(a, b)


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if EXTENSION_LOG in r.getMessage()]


@pytest.mark.parametrize("rule", ["mean", "copy:B02"])
def test_swin3d_decoder_rows_follow_the_rule(rule: str) -> None:
    model = _swin3d()
    rr = model.decoder.reduction**2  # pixels per token
    w = model.decoder.proj.weight.detach().clone().view(1, 3, rr, -1)  # (L, C, r*r, K)
    b = model.decoder.proj.bias.detach().clone().view(1, 3, rr)
    model.extend_input_channels(["B8A"], rule)
    w2 = model.decoder.proj.weight.detach().view(1, 4, rr, -1)
    b2 = model.decoder.proj.bias.detach().view(1, 4, rr)
    assert torch.equal(w2[:, :3], w) and torch.equal(b2[:, :3], b)
    want_w, want_b = (w.mean(1), b.mean(1)) if rule == "mean" else (w[:, 0], b[:, 0])
    assert torch.equal(w2[:, 3], want_w) and torch.equal(b2[:, 3], want_b)
    kernel = model.patch_embed.proj.weight.detach()
    assert torch.equal(kernel[:, 3], kernel[:, :3].mean(1) if rule == "mean" else kernel[:, 0])


# ------------------------------------------------------------------------------- config and preflight
@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path]:
    image = write_scene(tmp_path / "scene.tif", height=96, width=128, n_bands=4, seed=0, date="2021-06-01")
    return image, write_mask(tmp_path / "mask.tif", image, thresholds=(0.5,))


def _pipeline(scene: tuple[Path, Path], run_dir: Path, backbone: dict[str, Any], stages: list[dict[str, Any]]) -> dict:
    image, mask = scene
    return {
        "name": "new_band",
        "seed": 0,
        "run_dir": str(run_dir),
        "backbone": backbone,
        "head": {"name": "fcn", "channels": 8, "n_convs": 1},
        "task": {"name": "segmentation"},
        "data": {
            "name": "raster",
            "images": str(image),
            "masks": str(mask),
            "bands": list(ALL),
            "chip_size": 32,
            "split_fractions": [0.5, 0.25, 0.25],
            "batch_size": 4,
            "eval_batch_size": 8,
            "chips_per_epoch": 8,
        },
        "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
        "stages": stages,
        "evaluation": {"baselines": ["majority"], "metrics": ["miou", "accuracy"]},
    }


def _problems(cfg: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        plan(validate(cfg))
    return str(err.value)


def test_the_config_check_names_what_to_change(scene: tuple[Path, Path], tmp_path: Path) -> None:
    add = {"name": "add", "max_steps": 1, "new_channels": {"names": ["B8A"], "init": "mean"}}
    # a backbone that cannot add channels: the stage and the backbones that can
    text = _problems(_pipeline(scene, tmp_path, {"name": "timm_tiny"}, [add]))
    assert "stages[0] (add).new_channels: backbone timm_tiny cannot add input channels" in text
    assert "prithvi_tiny" in text and "swin3d_tiny" in text and "nhits_tiny" not in text
    # nothing pretrained to extend
    text = _problems(_pipeline(scene, tmp_path, {"name": "prithvi_tiny"}, [add]))
    assert "stages[0] (add).new_channels: the stage starts from scratch" in text
    # a rule that is none, and the block's required keys
    bad = {**add, "init_from": "pretrained", "new_channels": {"names": ["B8A", "b8a"], "init": "copy"}}
    text = _problems(_pipeline(scene, tmp_path, {"name": "prithvi_tiny", "weights": "w.pt"}, [bad]))
    assert "names repeat (case-insensitive): B8A, b8a" in text and "'copy' is not a rule" in text
    with pytest.raises(ConfigError, match=r"new_channels.init: required"):
        validate(_pipeline(scene, tmp_path, {"name": "prithvi_tiny"}, [{**add, "new_channels": {"names": ["B8A"]}}]))
    # earlier stages cannot be scored on the last stage's (wider) data
    stages = [{"name": "probe", "max_steps": 1}, {**add, "init_from": "previous"}]
    text = _problems(_pipeline(scene, tmp_path, {"name": "prithvi_tiny"}, stages))
    assert "evaluation.stages: probe ran before stage 'add' adds the input channels B8A" in text
    assert "(evaluation.stages: [add])" in text


def test_preflight_checks_the_stage_against_its_data(scene: tuple[Path, Path], tmp_path: Path) -> None:
    add = {"name": "add", "max_steps": 1, "init_from": "pretrained"}
    cfg = _pipeline(scene, tmp_path, {"name": "swin3d_tiny", "weights": "w.pt"}, [add])

    def problems(names: list[str], init: str, bands: list[str]) -> list[str]:
        cfg["stages"][0]["new_channels"] = {"names": names, "init": init}
        (p,) = plan(validate(cfg))
        return new_channel_problems(p, {"bands": bands, "img_size": 32})

    assert problems(["B8A"], "copy:B04", ALL) == []
    (text,) = problems(["B8A"], "copy:B05", ALL)
    assert "init: 'copy:B05' names no channel of the model; known channels: B02, B03, B04" in text
    (text,) = problems(["B11"], "mean", ALL)
    assert (
        "names: the stage's data has no channel B11; its channels: B02, B03, B04, B8A (choose them with data.bands)"
        in text
    )
    (text,) = problems(["B02"], "mean", ALL)
    assert "the data must list the new channels last" in text and "expected data.bands: [B03, B04, B8A, B02]" in text


# ------------------------------------------------------------------------------- pipelines
def _fit(cfg: dict[str, Any], path: Path, *extra: str) -> int:
    path.write_text(yaml.safe_dump(cfg))
    return main(["fit", str(path), *extra])


def _state(run: Path, stage: str) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(run / "checkpoints" / stage / "final.ckpt", weights_only=True)[
        "state_dict"
    ]
    return state


def _stop_in(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    monkeypatch.setattr(preempt, "_fired", set())
    monkeypatch.setenv(preempt.FAULT_ENV, f"train@{where}:SIGTERM")


def test_a_stage_adds_a_band_to_the_model_it_starts_from_and_the_run_resumes(
    scene: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """probe (3 bands) -> add_nir (B8A added by the mean rule; scored as extended, no training) ->
    finetune (4 bands), stopped mid-stage and resumed: it restarts from add_nir's extended weights and
    its own extended last.ckpt; the finished run reopens with the data's 4 bands."""
    stages = [
        {"name": "probe", "max_steps": 2, "limit_val_batches": 1, "data": {"bands": list(OLD)}},
        {"name": "add_nir", "max_epochs": 0, "new_channels": {"names": ["B8A"], "init": "mean"}},
        {"name": "finetune", "max_steps": 2, "limit_val_batches": 1},
    ]
    cfg = _pipeline(scene, tmp_path / "runs", {"name": "prithvi_tiny"}, stages)
    cfg["evaluation"]["stages"] = ["add_nir", "finetune"]
    _stop_in(monkeypatch, "finetune")
    with caplog.at_level(logging.INFO):
        assert _fit(cfg, tmp_path / "p.yaml") == EXIT_PREEMPTED
    assert len(_lines(caplog)) == 1, _lines(caplog)  # one extension, one line
    (run,) = (tmp_path / "runs" / "new_band").iterdir()
    key = "backbone.patch_embed.proj.weight"
    probe, added = _state(run, "probe")[key], _state(run, "add_nir")[key]
    assert probe.shape[1] == 3 and added.shape[1] == 4
    assert torch.equal(added[:, :3], probe)  # the trained bands, bit for bit
    assert torch.equal(added[:, 3], probe.mean(dim=1))
    assert (run / "checkpoints" / "finetune" / "last.ckpt").is_file()

    monkeypatch.delenv(preempt.FAULT_ENV)
    assert main(["fit", "--resume", str(run)]) == 0
    assert _state(run, "finetune")[key].shape[1] == 4
    opened = Run.open(run)
    dm = opened.datamodule(-1)
    dm.setup("fit")
    task = opened.task(-1, dm.facts())
    assert task.backbone.channel_names == ALL


def test_a_pretrained_swin3d_gains_a_band_in_its_first_stage_and_resumes_inside_it(
    scene: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model is built with the file's three bands, loaded, then extended (copy of B04), all before
    training; stopped mid-stage, the resumed stage extends again and continues from its last.ckpt."""
    torch.manual_seed(0)
    pretrained = BACKBONES.build("swin3d_tiny", bands=list(OLD), num_frames=1, img_size=32)
    weights = pretrained.save_pretrained(tmp_path / "pretrained")
    stages = [
        {
            "name": "adapt",
            "max_steps": 3,
            "limit_val_batches": 1,
            "new_channels": {"names": ["B8A"], "init": "copy:B04"},
        }
    ]
    cfg = _pipeline(scene, tmp_path / "runs", {"name": "swin3d_tiny", "weights": str(weights)}, stages)
    _stop_in(monkeypatch, "adapt")
    assert _fit(cfg, tmp_path / "p.yaml") == EXIT_PREEMPTED
    (run,) = (tmp_path / "runs" / "new_band").iterdir()
    last = torch.load(run / "checkpoints" / "adapt" / "last.ckpt", weights_only=True)["state_dict"]
    assert last["backbone.patch_embed.proj.weight"].shape[1] == 4
    monkeypatch.delenv(preempt.FAULT_ENV)
    assert main(["fit", "--resume", str(run)]) == 0
    final = _state(run, "adapt")["backbone.patch_embed.proj.weight"]
    assert final.shape == (16, 4, 1, 4, 4)


# ------------------------------------------------------------------------------- Surya
SDO_OLD = ["aia171", "aia193", "hmi_m"]


def _surya(**kwargs: Any) -> Any:
    torch.manual_seed(0)
    return BACKBONES.build("surya_tiny", channel_names=list(SDO_OLD), img_size=16, head="forecast", **kwargs).eval()


def test_surya_grows_its_patch_planes_and_decoder_keeping_every_weight(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Surya's patch embedding reads C x T planes channel-major and its decoder writes C x p x p maps:
    both grow by one channel (all its frames, all its pixels); with zeros the model computes what it did."""
    model = _surya()
    assert isinstance(model, ExtendsChannels) and type(model).CHANNELS_FACT == "channel_names"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = model.example_inputs(2)
    with torch.no_grad():
        out_old = model.forward_features(**inputs)
    with caplog.at_level(logging.INFO):
        model.extend_input_channels(["aia304"], "zeros")
    (line,) = _lines(caplog)
    assert "aia304" in line and "embedding.patch_embed.proj" in line and "unembed.unembed.0" in line
    assert model.channel_names == [*SDO_OLD, "aia304"] and model.in_chans == 4
    assert model.feature_info[-1] == {"layout": "B C H W", "channels": 4, "reduction": 1, "kind": "forecast"}
    after = model.state_dict()
    assert set(after) == set(before)
    for key, old in before.items():
        if after[key].shape == old.shape:
            assert torch.equal(after[key], old), key
    d, p, t = 32, 4, 2
    kernel = after["embedding.patch_embed.proj.weight"].view(d, 4, t, p, p)
    assert torch.equal(kernel[:, :3], before["embedding.patch_embed.proj.weight"].view(d, 3, t, p, p))
    assert not kernel[:, 3].any()
    rows = after["unembed.unembed.0.weight"].view(4, p * p, d, 1, 1)
    assert torch.equal(rows[:3], before["unembed.unembed.0.weight"].view(3, p * p, d, 1, 1))
    bias = after["unembed.unembed.0.bias"].view(4, p * p)
    assert torch.equal(bias[:3], before["unembed.unembed.0.bias"].view(3, p * p))
    assert not rows[3].any() and not bias[3].any()
    # zeros: the tokens and the old channels' forecast are the pretrained model's; the new channel's is 0
    x_new = torch.cat([inputs["x"], torch.randn_like(inputs["x"][:, :1])], dim=1)
    with torch.no_grad():
        out_new = model.forward_features(x_new, time_delta_input=inputs["time_delta_input"])
    for a, b in zip(out_old[:-1], out_new[:-1], strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(out_new[-1][:, :3], out_old[-1])
    assert not out_new[-1][:, 3].any()
    # the extended model saves its names and reloads into a model built for them, and only those
    saved = model.save_pretrained(tmp_path / "saved")
    torch.manual_seed(3)
    other = BACKBONES.build("surya_tiny", channel_names=[*SDO_OLD, "aia304"], img_size=16, head="forecast").eval()
    other.load_pretrained(str(saved))
    with torch.no_grad():
        again = other.forward_features(x_new, time_delta_input=inputs["time_delta_input"])
    for a, b in zip(out_new, again, strict=True):
        torch.testing.assert_close(a, b)
    shuffled = BACKBONES.build("surya_tiny", channel_names=["aia193", "aia171", "hmi_m", "aia304"], img_size=16)
    with pytest.raises(CheckpointError, match=r"the file's channels are aia171, aia193, hmi_m, aia304"):
        shuffled.load_pretrained(str(saved))


@pytest.mark.parametrize("rule", ["mean", "copy:AIA193"])
def test_surya_new_slices_follow_the_rule(rule: str) -> None:
    model = _surya()
    d, p, t = 32, 4, 2
    kernel = model.embedding.patch_embed.proj.weight.detach().clone().view(d, 3, t, p, p)
    rows = model.unembed.unembed[0].weight.detach().clone().view(3, p * p, d, 1, 1)
    bias = model.unembed.unembed[0].bias.detach().clone().view(3, p * p)
    model.extend_input_channels(["aia304", "aia1600"], rule)
    kernel2 = model.embedding.patch_embed.proj.weight.detach().view(d, 5, t, p, p)
    rows2 = model.unembed.unembed[0].weight.detach().view(5, p * p, d, 1, 1)
    bias2 = model.unembed.unembed[0].bias.detach().view(5, p * p)
    assert model.embedding.patch_embed.proj.in_channels == 10 and model.unembed.unembed[0].out_channels == 5 * p * p
    for k in (3, 4):
        if rule == "mean":
            assert torch.equal(kernel2[:, k], kernel.mean(1)) and torch.equal(rows2[k], rows.mean(0))
            assert torch.equal(bias2[k], bias.mean(0))
        else:  # the slices of aia193, every frame of it
            assert torch.equal(kernel2[:, k], kernel[:, 1]) and torch.equal(rows2[k], rows[1])
            assert torch.equal(bias2[k], bias[1])
    with torch.no_grad():
        out = model.forward_features(**model.example_inputs(1))[-1]
    assert out.shape == (1, 5, 16, 16)


def test_surya_channels_follow_the_names_and_a_count_must_agree() -> None:
    from sciadapt.backbones.surya import SDO_CHANNELS
    from sciadapt.config import from_data_params

    # the names are the one fact the model's channels follow: a stage that adds channels changes no other
    assert from_data_params(BACKBONES.get("surya")) == {"channel_names", "num_frames", "img_size"}
    assert BACKBONES.build("surya_tiny").channel_names == list(SDO_CHANNELS[:3])
    with torch.device("meta"):
        assert BACKBONES.build("surya").channel_names == list(SDO_CHANNELS)
    assert BACKBONES.build("surya_tiny", in_chans=5).channel_names == list(SDO_CHANNELS[:5])
    with pytest.raises(ConfigError) as err:
        BACKBONES.build("surya_tiny", channel_names=["a", "A", "b"], in_chans=2)
    text = str(err.value)
    assert "names repeat (case-insensitive): A, a" in text
    assert "in_chans=2 but channel_names has 3 names (a, A, b): drop in_chans" in text
    with pytest.raises(ConfigError, match=r"in_chans=14: more channels than Surya-1.0's 13 .*backbone.channel_names"):
        BACKBONES.build("surya_tiny", in_chans=14)
