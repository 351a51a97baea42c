"""Preemption: SIGUSR1 / SIGTERM to a running `sciadapt fit` writes a checkpoint at the current
stage and step and exits cleanly; `--resume` finishes with exactly the metrics of an
uninterrupted run (the issue-7 test, on a local run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sciadapt.datamodules.sampling import ShardedEpochSampler, apply_resume
from sciadapt.errors import EXIT_PREEMPTED
from tests.conftest import REPO, make_series_csv, tiny_pipeline

# stage 2 ("probe", unfrozen) runs 6 epochs of ~250 batches, with dropout so that the RNG state
# matters: long enough to be signalled mid-stage and mid-epoch
OVERRIDES = [
    "stages.probe.max_epochs=6",
    "stages.probe.frozen=[]",
    "stages.probe.limit_train_batches=null",
    "data.batch_size=8",
    "stages.*.limit_val_batches=5",
    "backbone.dropout=0.2",
]


def _fit(*args: str) -> list[str]:
    return [sys.executable, "-m", "sciadapt.cli", "fit", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _only_run(root: Path) -> Path:
    (run,) = (p.parent for p in root.glob("tiny/*/config.yaml"))
    return run


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_series_csv(tmp_path_factory.mktemp("series") / "s.csv", n=3000)


@pytest.fixture(scope="module")
def reference(series: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("ref")
    pipe = tiny_pipeline(tmp / "ref.yaml", series, tmp / "runs")
    subprocess.run(_fit(str(pipe), *OVERRIDES), env=_env(), check=True, capture_output=True)
    return json.loads((_only_run(tmp / "runs") / "summary.json").read_text())


# SIGTERM takes the same path as SIGUSR1 (test_signals checks every signal in every phase); it runs with
# `-m slow` to keep the default suite under six minutes
@pytest.mark.parametrize("sig", [signal.SIGUSR1, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_signal_checkpoints_mid_epoch_and_resume_matches_uninterrupted(
    tmp_path: Path, series: Path, reference: dict, sig: signal.Signals
) -> None:
    pipe = tiny_pipeline(tmp_path / "p.yaml", series, tmp_path / "runs")
    proc = subprocess.Popen(_fit(str(pipe), *OVERRIDES), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    sent = False
    while time.time() < deadline and proc.poll() is None:
        if list((tmp_path / "runs").glob("tiny/*/checkpoints/probe/last.ckpt")):  # probe's first epoch ended
            time.sleep(0.3)  # into the next epoch
            proc.send_signal(sig)
            sent = True
            break
        time.sleep(0.02)
    assert sent, f"the run ended before stage 2 checkpointed: {proc.stderr.read() if proc.stderr else ''}"
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "Traceback" not in err, err[-3000:]  # a clean stop, not a crash
    assert "resume with: sciadapt fit --resume" in err and "not a SLURM job" in err

    run = _only_run(tmp_path / "runs")
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "preempted" and state["completed"] == ["source"]
    (record,) = state["preemptions"]
    assert record["signal"] == sig.name and record["stage"] == "probe"
    ckpt = torch.load(run / "checkpoints" / "probe" / "last.ckpt", weights_only=True, map_location="cpu")
    position = next(v for k, v in ckpt["callbacks"].items() if "PreemptionCheckpoint" in k)
    assert position["step"] == record["step"] == ckpt["global_step"]
    assert 0 < position["batches"] < 250, position["batches"]  # in the middle of an epoch
    assert not list(run.rglob("*.tmp"))

    done = subprocess.run(_fit("--resume", str(run)), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads((run / "summary.json").read_text())
    final_state = json.loads((run / "state.json").read_text())
    assert final_state["status"] == "done" and len(final_state["preemptions"]) == 1
    for stage in ("source", "probe", "finetune"):
        assert got["stages"][stage]["steps"] == reference["stages"][stage]["steps"], stage
        for m in ("mse", "mae", "mase", "smape"):
            assert got["stages"][stage]["test"][m] == reference["stages"][stage]["test"][m], (stage, m)
    assert got["final"]["mse"] == reference["final"]["mse"]


def test_sampler_resume_skips_this_ranks_done_samples_once() -> None:
    class DM:
        train_resume = (3, 2)  # epoch 3, 2 batches done

    whole = ShardedEpochSampler(40, seed=5, num_replicas=2, rank=1)
    whole.set_epoch(3)
    expected = list(whole)
    s = apply_resume(ShardedEpochSampler(40, seed=5, num_replicas=2, rank=1), DM, batch_size=4)
    assert DM.train_resume is None  # handed over once
    s.set_epoch(3)
    assert list(s) == expected[8:] and len(s) == 20  # len() still counts the whole shard
    assert list(s) == expected  # the next pass over an epoch is whole again


@pytest.mark.slow  # two gloo processes stopped and resumed (about a minute); DDP itself: test_ddp.py
def test_ddp_ranks_stop_at_the_same_step_and_resume_exactly(tmp_path: Path, series: Path) -> None:
    """Two CPU DDP processes: the signal reaches rank 0 only (as a local `kill` does); the flag is
    all-reduced, both ranks checkpoint at the same step, one reports, and the resumed DDP run
    equals an uninterrupted one."""
    ddp = [*OVERRIDES, "stages.probe.max_epochs=3", "trainer.devices=2", "trainer.strategy=ddp"]
    ref_pipe = tiny_pipeline(tmp_path / "ref.yaml", series, tmp_path / "ref")
    subprocess.run(_fit(str(ref_pipe), *ddp), env=_env(), check=True, capture_output=True, timeout=300)
    reference = json.loads((_only_run(tmp_path / "ref") / "summary.json").read_text())

    pipe = tiny_pipeline(tmp_path / "p.yaml", series, tmp_path / "runs")
    proc = subprocess.Popen(_fit(str(pipe), *ddp), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if list((tmp_path / "runs").glob("tiny/*/checkpoints/probe/last.ckpt")):
            time.sleep(0.3)
            proc.send_signal(signal.SIGUSR1)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    assert err.count("preempted: SIGUSR1") == 1, err[-3000:]  # both ranks stopped, rank 0 reported
    run = _only_run(tmp_path / "runs")
    assert json.loads((run / "state.json").read_text())["status"] == "preempted"
    done = subprocess.run(_fit("--resume", str(run)), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads((run / "summary.json").read_text())
    for stage in ("source", "probe", "finetune"):
        assert got["stages"][stage]["steps"] == reference["stages"][stage]["steps"], stage
        assert got["stages"][stage]["test"]["mse"] == reference["stages"][stage]["test"]["mse"], stage


def test_requeue_calls_scontrol_for_this_job_on_rank_zero_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sciadapt.stages.preempt import requeue

    log = tmp_path / "calls.txt"
    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    assert "not a SLURM job" in requeue() and not log.exists()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert "requeued" in requeue()
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    requeue()  # an array task requeues itself, not the whole array
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert "rank 0 requeues" in requeue()  # other ranks leave it to rank 0
    assert log.read_text().splitlines() == ["requeue 4242", "requeue 77_3"]
