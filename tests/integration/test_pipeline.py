"""End to end: a tiny three-stage pipeline from the CLI, its run directory, predict, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from sciadapt.cli import main
from tests.conftest import REPO, make_series_csv, tiny_pipeline


def _only_run(root: Path) -> Path:
    runs = sorted(root.glob("tiny/*/config.yaml"))
    assert len(runs) == 1, runs
    return runs[0].parent


def test_fit_writes_run_and_predict_returns_original_units(tmp_path: Path, series_csv: Path) -> None:
    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    assert main(["fit", str(pipe)]) == 0
    run = _only_run(tmp_path / "runs")
    for name in ("config.yaml", "state.json", "summary.json", "metrics.csv", "scaler.json", "plots/loss.png"):
        assert (run / name).is_file(), name
    for stage in ("source", "probe", "finetune"):
        assert (run / "checkpoints" / stage / "final.ckpt").is_file()
        assert not (run / "checkpoints" / stage / "last.ckpt").exists()
    assert not list(run.rglob("*.tmp")), "no temporary files may be left behind"
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["stages"]) == {"source", "probe", "finetune"}
    probe = summary["stages"]["probe"]
    assert probe["trainable_params"] < probe["total_params"]  # frozen backbone
    test = summary["stages"]["finetune"]["test"]
    assert len(test["per_step"]["mse"]) == 12 and test["mse"] > 0
    rows = [r["model"] for r in summary["evaluation"]["rows"]]
    assert rows == ["seasonal-naive", "source", "probe", "finetune"]
    # training helped: the adapted model beats the freshly trained source-stage weights' loss curve start
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["stage"].unique()) == ["source", "probe", "finetune"]
    src = metrics[metrics.stage == "source"]["train/loss"].tolist()
    assert src[-1] < src[0]

    out = tmp_path / "forecast.csv"
    assert main(["predict", "--run", str(run), "--data", str(series_csv), "--out", str(out)]) == 0
    fc = pd.read_csv(out, parse_dates=["timestamp"])
    hist = pd.read_csv(series_csv, parse_dates=["date"])
    assert list(fc.columns) == ["timestamp", "y0", "y1"] and len(fc) == 12
    assert fc["timestamp"].iloc[0] == hist["date"].iloc[-1] + pd.Timedelta(hours=1)
    # original units: the forecast lives on the data's scale, not the z-scored one
    assert abs(fc["y0"].mean() - hist["y0"].tail(200).mean()) < 1.0
    assert out.with_suffix(".png").stat().st_size > 5000

    assert main(["test", "--run", str(run)]) == 0


def test_quantile_head_predicts_quantile_columns(tmp_path: Path, series_csv: Path) -> None:
    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs", extra="evaluation: {metrics: [mse, crps]}")
    assert main(["fit", str(pipe), "head.name=quantile", "stages.*.max_epochs=1"]) == 0
    run = _only_run(tmp_path / "runs")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stages"]["finetune"]["test"]["crps"] > 0
    out = tmp_path / "q.csv"
    assert main(["predict", "--run", str(run), "--out", str(out)]) == 0
    fc = pd.read_csv(out)
    assert {"y0_q0.1", "y0_q0.5", "y0_q0.9"} <= set(fc.columns)
    assert (fc["y0_q0.1"] <= fc["y0_q0.9"]).all()


def test_checkpoint_from_other_channels_is_refused(
    tmp_path: Path, series_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    assert main(["fit", str(pipe), "stages.*.max_epochs=1"]) == 0
    ckpt = _only_run(tmp_path / "runs") / "checkpoints" / "finetune" / "final.ckpt"
    code = main(
        [
            "fit",
            str(pipe),
            "data.exog_columns=[load]",
            "data.target_columns=[y0]",
            f"stages.source.init_from={ckpt}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "n_targets=2" in err and "n_targets=1" in err and "data.target_columns" in err


def _fit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "sciadapt.cli", "fit", *args]


# the LoRA variant resumes through the same code as the full one (plus the adapter file, which the
# fault corpus covers); it runs with `-m slow` to keep the default suite under six minutes
# both with -m slow (35 s each); the default run keeps kill-and-resume in test_preempt.py
@pytest.mark.parametrize(
    "stage2", [pytest.param("full", marks=pytest.mark.slow), pytest.param("lora", marks=pytest.mark.slow)]
)
def test_kill_in_stage_two_then_resume_matches_uninterrupted(tmp_path: Path, stage2: str) -> None:
    data = make_series_csv(tmp_path / "s.csv", n=3000)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # stage 2 ("probe", unfrozen here) gets 8 epochs of ~250 small batches: long enough to be
    # killed mid-stage, mid-epoch
    overrides = [
        "stages.probe.max_epochs=8",
        "stages.probe.frozen=[]",
        "stages.probe.limit_train_batches=null",
        "data.batch_size=8",
        "stages.*.limit_val_batches=5",
    ]
    if stage2 == "lora":  # the adapter's structure and init must be rebuilt exactly on resume
        overrides.append("stages.probe.peft={method: lora, r: 2, alpha: 4}")

    ref_pipe = tiny_pipeline(tmp_path / "ref.yaml", data, tmp_path / "ref")
    subprocess.run(_fit_cmd(str(ref_pipe), *overrides), env=env, check=True, capture_output=True)
    ref = json.loads((_only_run(tmp_path / "ref") / "summary.json").read_text())

    pipe = tiny_pipeline(tmp_path / "p.yaml", data, tmp_path / "runs")
    proc = subprocess.Popen(_fit_cmd(str(pipe), *overrides), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        lasts = list((tmp_path / "runs").glob("tiny/*/checkpoints/probe/last.ckpt"))
        if lasts:
            time.sleep(0.1)  # into the next epoch
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = time.time()
            break
        time.sleep(0.02)
    assert killed_at is not None, (
        f"the run ended before stage 2 checkpointed: {proc.stderr.read() if proc.stderr else ''}"
    )
    run = _only_run(tmp_path / "runs")
    state = json.loads((run / "state.json").read_text())
    assert state["completed"] == ["source"] and state["current"] == "probe"

    done = subprocess.run(_fit_cmd("--resume", str(run)), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    got = json.loads((run / "summary.json").read_text())
    assert json.loads((run / "state.json").read_text())["status"] == "done"
    for stage in ("source", "probe", "finetune"):
        assert got["stages"][stage]["steps"] == ref["stages"][stage]["steps"]
        for m in ("mse", "mae", "mase", "smape"):
            assert got["stages"][stage]["test"][m] == ref["stages"][stage]["test"][m], (stage, m)
    assert got["final"]["mse"] == ref["final"]["mse"]
    epochs = pd.read_csv(run / "metrics.csv")
    assert (epochs.groupby("stage")["epoch"].apply(lambda e: e.is_unique)).all()


def test_resume_refuses_other_pipeline(tmp_path: Path, series_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    assert main(["fit", str(pipe), "stages.*.max_epochs=1"]) == 0
    run = _only_run(tmp_path / "runs")
    assert main(["fit", "quickstart", "--resume", str(run)]) == 2
    assert "is a run of pipeline 'tiny'" in capsys.readouterr().err


def test_a_stage_may_bring_its_own_model(tmp_path: Path, series_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import tiny_pipeline

    extra = """
  - name: wide_scratch       # another architecture, trained from scratch beside the first
    init_from: scratch
    backbone: {mlp_units: [64, 64]}
    max_epochs: 1
    limit_train_batches: 4
"""
    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs", extra=extra)
    assert main(["fit", str(pipe)]) == 0
    (run,) = (tmp_path / "runs").glob("tiny/*")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stages"]["wide_scratch"]["total_params"] > summary["stages"]["finetune"]["total_params"]
    models = {r.get("stage"): r for r in summary["evaluation"]["rows"]}
    assert {"finetune", "wide_scratch"} <= set(models)  # both architectures scored in one table
    state = torch.load(run / "checkpoints" / "wide_scratch" / "final.ckpt", weights_only=True)["state_dict"]
    assert state["backbone.blocks.0.hidden.0.weight"].shape[0] == 64
    # starting another architecture from the previous stage's weights is refused before anything runs
    bad = tiny_pipeline(
        tmp_path / "bad.yaml",
        series_csv,
        tmp_path / "runs2",
        extra=extra.replace("init_from: scratch", "init_from: previous"),
    )
    assert main(["fit", str(bad)]) == 2
    assert "cannot start from 'previous'" in capsys.readouterr().err
