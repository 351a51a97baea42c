"""Experiment tracking (trainer.logger) and the one-line-per-epoch progress of non-terminal output."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sciadapt.cli import main
from sciadapt.stages.progress import is_terminal
from tests.conftest import tiny_pipeline

# short stages: the tracking is under test, not the model
FAST = ["stages.*.max_epochs=1", "stages.*.limit_train_batches=2", "stages.*.limit_val_batches=2"]


def _fit(tmp_path: Path, series_csv: Path, *overrides: str) -> Path:
    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    assert main(["fit", str(pipe), *FAST, *overrides]) == 0
    (run,) = (tmp_path / "runs").glob("tiny/*")
    return run


def test_mlflow_run_holds_config_stage_tests_comparison_and_plot(
    tmp_path: Path, series_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'sciadapt[tracking]')")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # the tracker sets MLFLOW_ALLOW_FILE_STORE itself when absent; this undoes it after the test
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    run = _fit(tmp_path, series_csv, "trainer.logger=mlflow")
    assert "MLFLOW_TRACKING_URI" not in os.environ  # not left for the next run of this process

    record = json.loads((run / "tracking.json").read_text())
    assert record["logger"] == "mlflow" and record["tracking_uri"] is None  # None: the run's own mlruns
    client = MlflowClient(f"file:{run / 'mlruns'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "tiny"]
    (found,) = client.search_runs([exp.experiment_id])  # one tracker run for the three stages
    assert found.info.run_id == record["run_id"] and found.info.status == "FINISHED"
    data = found.data
    assert data.params["trainer.logger"] == "mlflow"
    assert data.params["stages.probe.frozen"] == "['backbone']"
    for stage in ("source", "probe", "finetune"):
        assert f"{stage}/test/mse" in data.metrics
    summary = json.loads((run / "summary.json").read_text())
    assert data.metrics["finetune/test/mse"] == pytest.approx(summary["stages"]["finetune"]["test"]["mse"])
    row = summary["evaluation"]["rows"][-1]
    assert data.metrics[f"compare/{row['model']}/mse"] == pytest.approx(row["mse"])
    # stage boundaries on one step axis: stage i starts where the stages before it ended
    stages = client.get_metric_history(found.info.run_id, "stage")
    steps = [summary["stages"][s]["steps"] for s in ("source", "probe", "finetune")]
    assert sorted((m.step, int(m.value)) for m in stages)[-3:] == [(0, 0), (steps[0], 1), (steps[0] + steps[1], 2)]
    val_steps = [m.step for m in client.get_metric_history(found.info.run_id, "val/loss")]
    ends = [0, steps[0], sum(steps[:2]), sum(steps)]  # each stage's epoch within its part of the run's axis
    assert len(val_steps) == 3 and all(ends[i] <= v <= ends[i + 1] for i, v in enumerate(sorted(val_steps)))
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"config.yaml", "summary.json", "plots"} <= artifacts
    assert [a.path for a in client.list_artifacts(found.info.run_id, "plots")] == ["plots/loss.png"]

    # a run stopped after training its last stage: the resume logs into the same tracker run
    state = json.loads((run / "state.json").read_text())
    state["completed"].remove("finetune")
    state["status"] = "preempted"
    (run / "state.json").write_text(json.dumps(state))
    assert main(["fit", "--resume", str(run)]) == 0
    (again,) = client.search_runs([exp.experiment_id])
    assert again.info.run_id == found.info.run_id and again.info.status == "FINISHED"
    history = client.get_metric_history(found.info.run_id, "finetune/test/mse")
    assert [m.step for m in history] == [sum(steps)] * 2


def test_tensorboard_event_file_holds_the_scalars_text_and_plot(tmp_path: Path, series_csv: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'sciadapt[tracking]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _fit(tmp_path, series_csv, "trainer.logger=tensorboard")
    assert (run / "metrics.csv").is_file()  # kept beside the tracker
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1  # one event file for the whole pipeline run
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss_epoch", "val/loss", "stage", "source/test/mse", "finetune/test/mse"} <= scalars
    assert any(t.startswith("compare/") for t in scalars)
    assert [e.value for e in acc.Scalars("stage")][-3:] == [0.0, 1.0, 2.0]
    val_steps = [e.step for e in acc.Scalars("val/loss")]
    assert val_steps == sorted(val_steps) and len(set(val_steps)) == 3  # one axis across the stages
    assert acc.Tags()["images"] == ["plots/loss"]
    assert "config.yaml/text_summary" in acc.Tags()["tensors"]


def test_wandb_offline_run_stays_in_the_run_folder(
    tmp_path: Path, series_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = _fit(tmp_path, series_csv, "trainer.logger=wandb")
    record = json.loads((run / "tracking.json").read_text())
    assert record["logger"] == "wandb" and record["id"]
    (offline,) = (run / "wandb").glob(f"offline-run-*-{record['id']}")  # one tracker run for the three stages
    assert any(offline.rglob("*.wandb"))


def test_progress_is_one_line_per_epoch_when_not_a_terminal(
    tmp_path: Path, series_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not is_terminal()  # pytest captures stdout
    assert not is_terminal(io.StringIO()) and is_terminal(type("Tty", (), {"isatty": lambda self: True})())
    _fit(tmp_path, series_csv, "trainer.enable_progress_bar=true", "stages.probe.max_epochs=3")
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = [ln for ln in out.splitlines() if ln.startswith("[")]
    assert [ln.split("]")[0][1:] for ln in lines] == ["source", "probe", "probe", "probe", "finetune"]
    pattern = (
        r"\[probe\] epoch (\d)/3 \(step \d+\)  train/loss [\d.e+-]+  val/loss [\d.e+-]+  elapsed \d:\d\d:\d\d  eta "
    )
    assert [re.match(pattern, ln).group(1) for ln in lines[1:4]] == ["1", "2", "3"]  # type: ignore[union-attr]
    assert lines[3].endswith("eta 0:00:00")


def test_progress_line_counts_steps_under_max_steps() -> None:
    from sciadapt.stages.progress import EpochLines

    cb = EpochLines("s")
    trainer = SimpleNamespace(current_epoch=0, global_step=0, max_epochs=-1, max_steps=40, callback_metrics={})
    cb.on_train_start(trainer, None)  # type: ignore[arg-type]
    trainer.current_epoch, trainer.global_step = 1, 10  # the second epoch ends
    trainer.callback_metrics = {"train/loss_epoch": torch.tensor(0.5), "val/loss": torch.tensor(0.25)}
    line = cb.line(trainer)  # type: ignore[arg-type]
    assert re.fullmatch(
        r"\[s\] step 10/40 \(epoch 2\)  train/loss 0.5  val/loss 0.25  elapsed 0:00:00  eta 0:00:00", line
    )


def test_missing_tracker_package_exits_2_before_any_run_dir(
    tmp_path: Path, series_csv: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now fails
    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    capsys.readouterr()
    assert main(["fit", str(pipe), "trainer.logger=mlflow"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert 'pip install "sciadapt[tracking]"' in err and "trainer.logger" in err
    assert not (tmp_path / "runs").exists()
    # a value that is no tracker is refused by the config check, naming the choices
    assert main(["validate", str(pipe), "trainer.logger=mlfow"]) == 2
    assert "mlflow" in capsys.readouterr().err
