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
    code = main(["predict", "--backbone", "moment_tiny", "--weights", str(weights), "--data", str(data), "--out", str(out)])
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
    torch.testing.assert_close(torch.tensor(got[["y0", "y1"]].to_numpy()), torch.tensor(want, dtype=torch.float64), rtol=1e-4, atol=1e-4)


def test_zero_shot_predict_needs_a_horizon_when_the_checkpoint_has_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_series_csv(tmp_path / "s.csv", n=300, channels=1, exog=False)
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"seq_len": 512}))
    code = main(["predict", "--backbone", "moment_tiny", "--weights", str(folder), "--data", str(data), "--out", str(tmp_path / "o.csv")])
    assert code == 2
    assert "--horizon" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()
