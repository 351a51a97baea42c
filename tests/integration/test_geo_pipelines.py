"""The geospatial pipelines end to end from the CLI on tiny generated rasters, and scene prediction.

Each bundled pipeline runs with its full-size blocks swapped for tiny ones (``backbone=prithvi_tiny``,
``backbone=timm_tiny``), 32-pixel chips and one short epoch per stage. The frozen stages start from a
weight file written here, so "frozen" can be checked against known values.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch

from sciadapt.cli import main
from sciadapt.predict.scene import predict_scene_run
from sciadapt.predict.tiles import is_cog

_spec = importlib.util.spec_from_file_location("raster_make", Path(__file__).parents[1] / "data/raster/make.py")
assert _spec is not None and _spec.loader is not None
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)

GREEN, NIR_NARROW = 2, 8  # positions of the two NDWI bands in Sen1Floods11's 13-band S2 files
FAST = ["trainer.enable_progress_bar=false", "data.chip_size=32", "data.batch_size=4", "data.eval_batch_size=8"]


def _flood_chip(folder: Path, height: int = 96, width: int = 128, seed: int = 0) -> tuple[Path, Path]:
    """A 13-band int16 S2 chip (no band descriptions, as Sen1Floods11 writes them) and its label
    raster: water (1) where GREEN exceeds NIR, land (0) elsewhere, an unlabelled (-1) block."""
    image = make.write_scene(
        folder / "chip_S2Hand.tif", height, width, n_bands=13, seed=seed, descriptions=None, nodata=0
    )
    with rasterio.open(image) as src:
        x = src.read().astype(np.float64)
        profile = src.profile.copy()
    labels = (x[GREEN] > x[NIR_NARROW]).astype(np.int16)
    labels[:6, :6] = -1
    profile.update(count=1, dtype="int16", nodata=-1)
    mask = folder / "chip_LabelHand.tif"
    with rasterio.open(mask, "w", **profile) as dst:
        dst.write(labels[None])
    return image, mask


def _only_run(root: Path, pipeline: str) -> Path:
    (run,) = root.glob(f"{pipeline}/*/summary.json")
    return run.parent


def _state(run: Path, stage: str) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / stage / "final.ckpt", weights_only=True)["state_dict"]


def _rows(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["model"]: r for r in summary["evaluation"]["rows"]}


@pytest.fixture(scope="module")
def flood_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, dict[str, torch.Tensor]]:
    """``prithvi_flood`` with a tiny Prithvi whose "pretrained" encoder is a file written here."""
    from sciadapt.registry import BACKBONES

    tmp = tmp_path_factory.mktemp("flood")
    image, mask = _flood_chip(tmp)
    torch.manual_seed(1)
    encoder = BACKBONES.build("prithvi_tiny", num_frames=1, img_size=32)  # the six HLS bands
    weights = tmp / "prithvi_tiny_v2.pt"
    torch.save({f"encoder.{k}": v for k, v in encoder.state_dict().items()}, weights)
    code = main(
        [
            "fit",
            "prithvi_flood",
            "backbone=prithvi_tiny",
            f"backbone.weights={weights}",
            f"data.images={image}",
            f"data.masks={mask}",
            f"run_dir={tmp / 'runs'}",
            "data.chips_per_epoch=8",
            "head.channels=16",
            "stages.*.max_epochs=1",
            *FAST,
        ]
    )
    assert code == 0
    return _only_run(tmp / "runs", "prithvi_flood"), image, mask, encoder.state_dict()


def test_flood_pipeline_frozen_then_lora_against_ndwi(
    flood_run: tuple[Path, Path, Path, dict[str, torch.Tensor]],
) -> None:
    run, _image, _mask, encoder = flood_run
    summary = json.loads((run / "summary.json").read_text())
    rows = _rows(summary)
    assert list(rows) == ["ndwi", "majority", "Prithvi frozen + UPerNet", "Prithvi + LoRA (q, v)"]
    for row in rows.values():
        assert {"miou", "iou/water", "f1/water", "accuracy"} <= set(row), row
    # the labels are NDWI > 0 itself (GREEN > NIR), so the index baseline is exact on them
    assert rows["ndwi"]["iou/water"] == pytest.approx(1.0)
    assert rows["majority"]["iou/water"] in (0.0, pytest.approx(rows["majority"]["accuracy"]))
    # stage 1: the encoder is exactly the weight file; only the decoder trained
    frozen = _state(run, "frozen_encoder")
    for k, v in encoder.items():
        assert torch.equal(frozen[f"backbone.{k}"], v), k
    stages = summary["stages"]
    assert stages["frozen_encoder"]["trainable_params"] == sum(
        v.numel() for k, v in frozen.items() if k.startswith("head.") and "running" not in k and "num_batches" not in k
    )
    # stage 2: LoRA on q and v of every block, written as an adapter directory
    adapter = run / "adapters" / "lora"
    assert (adapter / "adapter_model.safetensors").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8
    assert sorted(config["sciadapt_slices"].values()) == [["q", "v"], ["q", "v"]]
    lora = _state(run, "lora")
    assert any("lora_A" in k for k in lora) and stages["lora"]["trainable_params"] < stages["lora"]["total_params"]


def test_predict_scene_run_matches_the_runs_test_scores(
    flood_run: tuple[Path, Path, Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    run, image, mask, _ = flood_run
    out = tmp_path / "flood.tif"
    # without overlap the tiles are the test chips (32-px grid from column 64): the same pixels,
    # the same model, the same normalisation give the same confusion matrix as the run's own test
    result = predict_scene_run(run, [str(image)], out, overlap=0, batch_size=3)
    assert result["tiles"] == 3 * 4 and result["stage"] == "lora" and result["cog"]
    assert is_cog(out)
    with rasterio.open(out) as dst, rasterio.open(image) as src, rasterio.open(mask) as lab:
        assert dst.crs == src.crs and dst.transform == src.transform and dst.shape == src.shape
        assert dst.dtypes[0] == "uint8" and dst.nodata == 255
        pred, truth = dst.read(1), lab.read(1)
    test = np.s_[:, 64:]
    valid = truth[test] >= 0
    p, t = pred[test][valid], truth[test][valid]
    tp, fp, fn = int(((p == 1) & (t == 1)).sum()), int(((p == 1) & (t == 0)).sum()), int(((p == 0) & (t == 1)).sum())
    expected = json.loads((run / "summary.json").read_text())["stages"]["lora"]["test"]
    assert tp / (tp + fp + fn) == pytest.approx(expected["iou/water"], abs=1e-9)
    assert float((p == t).mean()) == pytest.approx(expected["accuracy"], abs=1e-9)
    # with overlap the seams blend; the map stays a class map of the same scene
    # (through the CLI: sciadapt predict --run R --scene a.tif --out x.tif --overlap 8)
    cli = ["predict", "--run", str(run), "--scene", str(image), "--out", str(tmp_path / "blended.tif")]
    assert main([*cli, "--overlap", "8"]) == 0
    with rasterio.open(tmp_path / "blended.tif") as dst:
        other = dst.read(1)
    assert set(np.unique(other)) <= {0, 1} and (other == pred).mean() > 0.8


def test_predict_scene_run_names_a_missing_band(
    flood_run: tuple[Path, Path, Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    from sciadapt.errors import DataError

    run = flood_run[0]
    small = make.write_scene(tmp_path / "four_bands.tif", 64, 64, n_bands=4, descriptions=None)
    with pytest.raises(DataError, match="SWIR_1|NIR_NARROW|band"):
        predict_scene_run(run, [str(small)], tmp_path / "x.tif")


def test_landcover_pipeline_multitemporal_against_majority(tmp_path: Path) -> None:
    patch = make.write_eopatch(tmp_path / "eopatch", frames=5, height=80, width=80)
    code = main(
        [
            "fit",
            "prithvi_landcover",
            "backbone=prithvi_tiny",
            "backbone.temporal_location=true",
            f"data.images={patch / 'REFERENCE_SCENES.npy'}",
            f"data.masks={patch / 'LULC.npy'}",
            f"run_dir={tmp_path / 'runs'}",
            "data.chips_per_epoch=8",
            "head.channels=16",
            "stages.*.max_epochs=1",
            *FAST,
        ]
    )
    assert code == 0
    run = _only_run(tmp_path / "runs", "prithvi_landcover")
    summary = json.loads((run / "summary.json").read_text())
    rows = _rows(summary)
    assert list(rows) == ["majority", "Prithvi-TL frozen + UPerNet", "Prithvi-TL fine-tuned"]
    assert all({"miou", "mean_f1", "accuracy", "iou/forest"} <= set(r) for r in rows.values())
    stages = summary["stages"]
    assert stages["frozen_encoder"]["trainable_params"] < stages["finetune"]["trainable_params"]
    # five dates in, and the TL encodings' learnt scales are part of the model
    state = _state(run, "finetune")
    assert "backbone.temporal_embed_enc.scale" in state and "backbone.location_embed_enc.scale" in state
    scaler = json.loads((run / "scaler.json").read_text())
    assert scaler["frames"] == 5 and scaler["n_classes"] == 5


def test_biomass_frozen_encoder_against_unet_from_scratch(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    from sciadapt.registry import BACKBONES

    image = make.write_scene(tmp_path / "hls.tif", height=64, width=160, seed=3)
    target = make.write_mask(tmp_path / "agb.tif", image, regression=True, nodata=-9999.0)
    with rasterio.open(target, "r+") as dst:  # sparse footprints: most pixels unobserved
        agb = dst.read(1)
        agb[::3] = -9999.0
        dst.write(agb[None])
    torch.manual_seed(2)
    vit = timm.create_model("test_vit", in_chans=4, img_size=32)
    weights = tmp_path / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    code = main(
        [
            "fit",
            "biomass_frozen_encoder",
            "backbone=timm_tiny",
            "backbone.model_name=test_vit",
            f"backbone.weights={weights}",
            "stages.unet_scratch.backbone.model_name=test_resnet",
            "stages.unet_scratch.head.channels=32",
            f"data.images={image}",
            f"data.masks={target}",
            f"run_dir={tmp_path / 'runs'}",
            "data.chips_per_epoch=8",
            "head.channels=16",
            "stages.*.max_epochs=1",
            *FAST,
        ]
    )
    assert code == 0
    run = _only_run(tmp_path / "runs", "biomass_frozen_encoder")
    summary = json.loads((run / "summary.json").read_text())
    rows = _rows(summary)
    assert list(rows) == ["mean", "Swin-T frozen + conv decoder", "U-Net (ResNet-34) from scratch"]
    assert all({"rmse", "mae", "r2"} <= set(r) for r in rows.values())
    assert rows["mean"]["r2"] <= 1e-9  # a constant scores R^2 <= 0 (0 only at the test split's own mean)
    # two architectures: a ViT encoder + conv decoder, then a ResNet + U-Net decoder with skips
    frozen, unet = _state(run, "frozen_encoder"), _state(run, "unet_scratch")
    assert any(k.startswith("backbone.") and ".blocks.0.attn." in k for k in frozen)
    assert any(k.startswith("head.decoder.blocks.") for k in frozen)  # the conv decoder's x2 blocks
    assert any(k.startswith("backbone.model.layer1.") for k in unet) and not any(".attn." in k for k in unet)
    assert any(k.startswith("head.decoder.skip_blocks.") for k in unet)
    assert summary["stages"]["unet_scratch"]["total_params"] != summary["stages"]["frozen_encoder"]["total_params"]
    # the frozen encoder is exactly the weight file after training
    reference = BACKBONES.build("timm_tiny", model_name="test_vit", in_chans=4, img_size=32, weights=str(weights))
    for k, v in reference.state_dict().items():
        assert torch.equal(frozen[f"backbone.{k}"], v), k
    # a regression run predicts float32 values, nodata NaN outside the image's valid pixels
    out = tmp_path / "agb_pred.tif"
    result = predict_scene_run(run, [str(image)], out, overlap=8)
    assert result["stage"] == "unet_scratch" and result["height"] == 64
    with rasterio.open(out) as dst:
        assert dst.count == 1 and dst.dtypes[0] == "float32"
        assert np.isfinite(dst.read(1)).mean() > 0.95


@pytest.mark.parametrize("backbone", ["timm_tiny", "prithvi_tiny"])
def test_unet_heads_skip_over_every_level(backbone: str) -> None:
    from sciadapt.errors import ConfigError
    from sciadapt.registry import BACKBONES, HEADS

    extra = {"num_frames": 1} if backbone == "prithvi_tiny" else {"in_chans": 6}
    bb = BACKBONES.build(backbone, img_size=32, **extra)  # prithvi: the six HLS bands
    x = torch.randn(2, 6, 1, 32, 32)
    feats = bb.forward_features(x)
    seg = HEADS.build("unet", feature_info=bb.feature_info, n_classes=3, img_size=32, channels=32)
    reg = HEADS.build("unet_regression", feature_info=bb.feature_info, n_outputs=2, img_size=32, channels=32)
    assert seg(feats).shape == (2, 3, 32, 32) and reg(feats).shape == (2, 2, 32, 32)
    levels = len(seg.neck.indices)
    # one skip block per level below the coarsest, then x2 blocks up to full resolution
    assert len(seg.decoder.skip_blocks) == levels - 1
    assert seg.neck.reductions[0] / 2 ** len(seg.decoder.up_blocks) == 1
    loss = reg.loss(reg(feats), torch.randn(2, 2, 32, 32), torch.ones(2, 32, 32))
    loss.backward()
    assert all(p.grad is not None for p in reg.decoder.skip_blocks[0].parameters())
    if backbone == "timm_tiny":
        with pytest.raises(ConfigError, match="finest first"):
            HEADS.build("unet", feature_info=bb.feature_info, indices=[4, 0], img_size=32)
    with pytest.raises(ConfigError, match="head.loss"):
        HEADS.build("unet_regression", feature_info=bb.feature_info, loss="l3", img_size=32)


def _benchmark() -> Any:
    spec = importlib.util.spec_from_file_location(
        "geo_real_data", Path(__file__).parents[2] / "benchmarks/geo_real_data.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEO = Path(__file__).resolve().parents[3] / "shared" / "data" / "geo"


@pytest.mark.slow
@pytest.mark.skipif(not (GEO / "sen1floods11").is_dir(), reason=f"{GEO / 'sen1floods11'} absent")
def test_real_sen1floods11_model_chosen_on_validation_beats_ndwi(tmp_path: Path) -> None:
    bench = _benchmark()
    flood = GEO / "sen1floods11"
    _text, rec = bench.run_table(
        "flood", "geo_flood", "sen1floods11", flood / "*_S2Hand.tif", flood / "*_LabelHand.tif",
        bench.FLOOD_CANDIDATES, 20, 6, ["ndwi", "majority"], ["iou/water", "miou"], tmp_path,
    )  # fmt: skip
    rows = {r.get("stage") or r["model"]: r for r in rec["summary"]["evaluation"]["rows"]}
    assert rows[rec["chosen"]]["iou/water"] > rows["ndwi"]["iou/water"]


@pytest.mark.slow
@pytest.mark.skipif(not (GEO / "eolearn-s2").is_dir(), reason=f"{GEO / 'eolearn-s2'} absent")
def test_real_eolearn_landcover_beats_majority(tmp_path: Path) -> None:
    bench = _benchmark()
    patch = GEO / "eolearn-s2"
    _text, rec = bench.run_table(
        "landcover", "geo_landcover", "eolearn_s2", patch / "REFERENCE_SCENES.npy", patch / "LULC.npy",
        bench.LANDCOVER_CANDIDATES, 40, 8, ["majority"], ["miou"], tmp_path,
    )  # fmt: skip
    rows = {r.get("stage") or r["model"]: r for r in rec["summary"]["evaluation"]["rows"]}
    assert rows[rec["chosen"]]["miou"] > rows["majority"]["miou"] + 0.1
