"""Foundation-model pipelines end to end from the CLI: TTM and MOMENT checkpoints in the official
on-disk format (config.json + model.safetensors), zero-shot, few-shot, LoRA, linear probe, predict."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from sciadapt.cli import main
from sciadapt.registry import BACKBONES
from tests.conftest import make_series_csv

COMMON = ["trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "data.split=ratio"]


def _run(tmp_path: Path) -> Path:
    (run,) = [p for p in (tmp_path / "runs").glob("*/*") if p.is_dir()]
    return run


def _write_moment_checkpoint(folder: Path, horizon: int) -> Path:
    """A tiny MOMENT forecasting checkpoint in the official layout (seeded weights)."""
    torch.manual_seed(0)
    model = BACKBONES.build("moment_tiny", horizon=horizon)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def test_moment_linear_probe_pads_short_contexts_and_trains_only_the_head(tmp_path: Path) -> None:
    data = make_series_csv(tmp_path / "s.csv", n=900, channels=2, exog=False)
    weights = _write_moment_checkpoint(tmp_path / "moment", horizon=12)
    args = [
        "fit",
        "moment_linear_probe",
        f"data.path={data}",
        f"run_dir={tmp_path / 'runs'}",
        "backbone=moment_tiny",
        f"backbone.weights={weights}",
        "data.context_length=96",
        "data.horizon=12",
        "data.batch_size=16",
        "stages.probe.max_epochs=1",
        "stages.probe.limit_train_batches=4",
        *COMMON,
    ]
    assert main(args) == 0
    run = _run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    probe = summary["stages"]["probe"]
    assert probe["backbone_input"] == "pad"  # 96-step windows, left-padded to MOMENT's 512
    start = load_file(str(weights / "model.safetensors"))
    end = torch.load(run / "checkpoints" / "probe" / "final.ckpt", weights_only=True)["state_dict"]
    for key, value in start.items():
        trained = end[f"backbone.{key}"]
        if key.startswith("head."):
            assert not torch.equal(trained, value), key  # the linear probe learned
        else:
            assert torch.equal(trained, value), key  # encoder and patch embedding frozen
    assert main(["predict", "--run", str(run), "--out", str(tmp_path / "f.csv")]) == 0
    forecast = pd.read_csv(tmp_path / "f.csv")
    assert len(forecast) == 12 and list(forecast.columns) == ["timestamp", "y0", "y1"]


def test_moment_zero_shot_predict_from_weights_matches_the_model(tmp_path: Path) -> None:
    data = make_series_csv(tmp_path / "s.csv", n=300, channels=2, exog=False)
    weights = _write_moment_checkpoint(tmp_path / "moment", horizon=12)
    out = tmp_path / "zs.csv"
    code = main(
        ["predict", "--backbone", "moment_tiny", "--weights", str(weights), "--data", str(data), "--out", str(out)]
    )
    assert code == 0
    got = pd.read_csv(out)
    # the same forecast straight from the model on the last 300 raw rows (left-padded to 512 inside)
    model = BACKBONES.build("moment_tiny", horizon=12, context_length=512, weights=str(weights)).eval()
    frame = pd.read_csv(data)
    x = torch.tensor(frame[["y0", "y1"]].to_numpy(), dtype=torch.float32)
    x = torch.cat([torch.zeros(512 - len(x), 2), x])[None]
    mask = torch.cat([torch.zeros(512 - 300, 2), torch.ones(300, 2)])[None]
    with torch.no_grad():
        want = model.forward_features(x, x_mask=mask)[0, :, :, 0].numpy()
    assert len(got) == 12
    torch.testing.assert_close(
        torch.tensor(got[["y0", "y1"]].to_numpy()), torch.tensor(want, dtype=torch.float64), rtol=1e-4, atol=1e-4
    )


def test_zero_shot_predict_needs_a_horizon_when_the_checkpoint_has_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_series_csv(tmp_path / "s.csv", n=300, channels=1, exog=False)
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"seq_len": 512}))
    code = main(
        [
            "predict",
            "--backbone",
            "moment_tiny",
            "--weights",
            str(folder),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "o.csv"),
        ]
    )
    assert code == 2
    assert "--horizon" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


TTM_TINY = Path(__file__).resolve().parents[1] / "data" / "ttm_golden" / "tiny"  # context 64, horizon 16
TTM_ARGS = [f"backbone.weights={TTM_TINY}", "data.context_length=64", "data.horizon=16"]


def test_ttm_zeroshot_scores_the_checkpoint_unchanged(tmp_path: Path) -> None:
    data = make_series_csv(tmp_path / "s.csv", n=600, channels=2, exog=False)
    args = ["fit", "ttm_zeroshot", f"data.path={data}", f"run_dir={tmp_path / 'runs'}", *TTM_ARGS, *COMMON]
    assert main(args) == 0
    run = _run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    zs = summary["stages"]["zeroshot"]
    assert zs["steps"] == 0 and zs["test"]["mse"] > 0
    rows = {r["model"]: r for r in summary["evaluation"]["rows"]}
    assert set(rows) == {"seasonal-naive", "TTM zero-shot"}
    state = torch.load(run / "checkpoints" / "zeroshot" / "final.ckpt", weights_only=True)["state_dict"]
    for key, value in load_file(str(TTM_TINY / "model.safetensors")).items():
        assert torch.equal(state[f"backbone.{key}"], value), key


def test_ttm_fewshot_trains_decoder_and_head_on_a_fraction(tmp_path: Path) -> None:
    data = make_series_csv(tmp_path / "s.csv", n=1200, channels=2, exog=False)
    args = [
        "fit",
        "ttm_fewshot",
        f"data.path={data}",
        f"run_dir={tmp_path / 'runs'}",
        *TTM_ARGS,
        "data.fewshot_fraction=0.1",
        "stages.fewshot.max_epochs=3",
        "data.batch_size=16",
        *COMMON,
    ]
    assert main(args) == 0
    run = _run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    fs = summary["stages"]["fewshot"]
    n_train_all = 840 - 64 - 16 + 1  # ratio split 0.7 of 1200 rows
    assert fs["data"]["train"]["windows"] == int(n_train_all * 0.1)
    assert fs["data"]["fewshot"] == {"fraction": 0.1, "location": "last"}
    start = load_file(str(TTM_TINY / "model.safetensors"))
    end = torch.load(run / "checkpoints" / "fewshot" / "final.ckpt", weights_only=True)["state_dict"]
    moved = {k.split(".")[0] for k, v in start.items() if not torch.equal(end[f"backbone.{k}"], v)}
    assert moved == {"decoder", "head"}  # the TTM backbone (encoder) stayed frozen
    rows = {r["model"]: r for r in summary["evaluation"]["rows"]}
    # random golden weights: few-shot training must beat the untrained zero-shot forecast
    assert rows["TTM 5 % few-shot"]["mse"] < rows["TTM zero-shot"]["mse"]


def test_ttm_lora_writes_a_peft_adapter_and_keeps_the_base(tmp_path: Path) -> None:
    data = make_series_csv(tmp_path / "s.csv", n=900, channels=2, exog=False)
    args = [
        "fit",
        "ttm_lora",
        f"data.path={data}",
        f"run_dir={tmp_path / 'runs'}",
        *TTM_ARGS,
        "data.fewshot_fraction=0.2",
        "stages.lora.max_epochs=2",
        "stages.lora.peft.r=2",
        "data.batch_size=16",
        *COMMON,
    ]
    assert main(args) == 0
    run = _run(tmp_path)
    cfg = json.loads((run / "adapters" / "lora" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 2
    adapter = load_file(str(run / "adapters" / "lora" / "adapter_model.safetensors"))
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    assert any("mlp_mixer_encoder" in k for k in adapter) and any("decoder_block" in k for k in adapter)
    lora = json.loads((run / "summary.json").read_text())["stages"]["lora"]
    assert lora["trainable_params"] < 0.5 * lora["total_params"]
    assert main(["predict", "--run", str(run), "--out", str(tmp_path / "f.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "f.csv")) == 16


def test_ttm_zero_shot_predict_from_weights_equals_the_official_forward(tmp_path: Path) -> None:
    from sciadapt.backbones.ttm import TTM

    data = make_series_csv(tmp_path / "s.csv", n=200, channels=3, exog=False)
    out = tmp_path / "zs.csv"
    assert (
        main(["predict", "--backbone", "ttm", "--weights", str(TTM_TINY), "--data", str(data), "--out", str(out)]) == 0
    )
    got = pd.read_csv(out)
    model = TTM.from_pretrained(str(TTM_TINY)).eval()
    past = torch.tensor(pd.read_csv(data)[["y0", "y1", "y2"]].to_numpy()[-64:], dtype=torch.float32)[None]
    with torch.no_grad():
        want = model.forward_official(past_values=past)["prediction_outputs"][0]
    assert list(got.columns) == ["timestamp", "y0", "y1", "y2"] and len(got) == 16
    torch.testing.assert_close(
        torch.tensor(got[["y0", "y1", "y2"]].to_numpy(), dtype=torch.float32), want, rtol=1e-5, atol=1e-5
    )
    assert pd.Timestamp(got["timestamp"].iloc[0]) == pd.Timestamp(pd.read_csv(data)["date"].iloc[-1]) + pd.Timedelta(
        "1h"
    )
