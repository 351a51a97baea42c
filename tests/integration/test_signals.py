"""Signals in every phase of `sciadapt fit`: SIGTERM/SIGUSR1 (preemption, exit 3) and SIGINT (Ctrl-C,
exit 130) during setup, training, validation, a stage's test, between stages, checkpoint saving and the
final comparison stop cleanly (no traceback, `state.json` says so with a record of the signal, stage and
phase, the resume hint), and `--resume` finishes with exactly the metrics of an uninterrupted run.

Each phase is hit exactly through the testing aid `SCIADAPT_FAULT=<phase>[@<stage>]:<SIGNAL>`
(:func:`sciadapt.stages.preempt.fault_point`: the run sends itself the signal when it gets there), in a
real `python -m sciadapt.cli fit` subprocess. By default two runs are each stopped once in each of three
phases in turn (setup, training, validation; a stage's test, between stages, the comparison), each stop
resumed by the next process; the two and the uninterrupted reference run side by side (8 processes,
mostly Python imports). Every phase x signal on a fresh run, a stop during the pipeline checks, a
comparison that tests again, a second Ctrl-C, DDP and the quickstart pipeline are `slow`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sciadapt.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED
from tests.conftest import REPO, make_series_csv, tiny_pipeline

# cheap: 3 train and 2 val batches an epoch; `source` runs two epochs so that a signal in its
# first epoch's validation (or checkpoint) stops mid-stage, at the next step
OVERRIDES = [
    "stages.*.max_epochs=1",
    "stages.source.max_epochs=2",
    "stages.*.limit_train_batches=3",
    "stages.*.limit_val_batches=2",
]
METRICS = ("mse", "mae", "mase", "smape")


def _fit(*args: str) -> list[str]:
    return [sys.executable, "-m", "sciadapt.cli", "fit", *args]


def _env(fault: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "SCIADAPT_FAULT"}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    if fault:
        env["SCIADAPT_FAULT"] = fault
    return env


def _runs(root: Path, name: str = "tiny") -> list[Path]:
    return sorted(p.parent for p in root.glob(f"{name}/*/config.yaml"))


class Reference:
    """The uninterrupted run, started in the background (it runs while the stopped runs run)."""

    def __init__(self, cmd: list[str], root: Path, name: str = "tiny") -> None:
        self.root, self.name = root, name
        self.proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._summary: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        if self._summary is None:
            _, err = self.proc.communicate(timeout=600)
            assert self.proc.returncode == 0, err.decode()[-3000:]
            (run,) = _runs(self.root, self.name)
            self._summary = json.loads((run / "summary.json").read_text())
        return self._summary

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_series_csv(tmp_path_factory.mktemp("series") / "s.csv", n=1200)


@pytest.fixture(scope="module")
def reference(series: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:
    tmp = tmp_path_factory.mktemp("ref")
    ref = Reference(_fit(str(tiny_pipeline(tmp / "ref.yaml", series, tmp / "runs")), *OVERRIDES), tmp / "runs")
    yield ref
    ref.close()


def assert_stopped(
    done: subprocess.CompletedProcess[str], run: Path, sig: str, stage: str, phase: str, received: str
) -> dict[str, Any]:
    """The process stopped cleanly on ``sig`` at ``phase`` of ``stage``; returns state.json."""
    interrupted = sig == "SIGINT"
    err = done.stderr
    assert done.returncode == (EXIT_INTERRUPTED if interrupted else EXIT_PREEMPTED), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert f"{'interrupted' if interrupted else 'preempted'}: {sig} received" in err, err[-3000:]
    assert f"resume with: sciadapt fit --resume {run}" in err, err[-3000:]
    assert ("not a SLURM job" in err) != interrupted, err[-3000:]  # a preemption requeues; Ctrl-C does not
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == ("interrupted" if interrupted else "preempted"), state
    record = state["interruptions" if interrupted else "preemptions"][-1]
    assert (record["signal"], record["stage"], record["phase"], record["received"]) == (sig, stage, phase, received)
    assert not list(run.rglob("*.tmp")), list(run.rglob("*.tmp"))
    return state


def assert_same_metrics(run: Path, reference: dict[str, Any]) -> None:
    got = json.loads((run / "summary.json").read_text())
    assert json.loads((run / "state.json").read_text())["status"] == "done"
    for stage, ref in reference["stages"].items():
        assert got["stages"][stage]["steps"] == ref["steps"], stage
        for m in METRICS:
            assert got["stages"][stage]["test"][m] == ref["test"][m], (stage, m)
    assert [r["model"] for r in got["evaluation"]["rows"]] == [r["model"] for r in reference["evaluation"]["rows"]]
    for row, ref_row in zip(got["evaluation"]["rows"], reference["evaluation"]["rows"], strict=True):
        for m in METRICS:
            assert row.get(m) == ref_row.get(m), (row["model"], m)


# Two runs, each stopped once in each of its phases in turn and resumed by the next process:
# (fault, signal, stage and phase recorded, phase it came in). The two run side by side (and beside
# the reference): a process is mostly Python imports, and the machine has two cores.
CHAINS = {
    "setup-train-validation": [
        ("setup:SIGINT", "SIGINT", "source", "setup", "setup"),  # the run dir exists, no stage has started
        ("train@source:SIGTERM", "SIGTERM", "source", "train", "train"),  # after step 1: last.ckpt mid-epoch
        ("validation@source:SIGUSR1", "SIGUSR1", "source", "train", "validation"),  # stops at the next step
    ],
    "test-between-compare": [
        ("test@source:SIGTERM", "SIGTERM", "source", "test", "test"),  # before the 2nd test batch
        ("between@source:SIGINT", "SIGINT", "probe", "between", "between"),  # source scored again, then stop
        ("compare:SIGUSR1", "SIGUSR1", "", "compare", "compare"),  # every stage complete
    ],
}


def _chain(root: Path, pipe: Path, faults: list[tuple[str, str, str, str, str]]) -> Path:
    """Start ``pipe`` with the first fault, resume with each next one (checking each stop), then
    resume to the end; returns the run."""
    run: Path | None = None
    for fault, sig, stage, phase, received in faults:
        args = [str(pipe), *OVERRIDES] if run is None else ["--resume", str(run)]
        done = subprocess.run(_fit(*args), env=_env(fault), capture_output=True, text=True, timeout=300)
        if run is None:
            runs = _runs(root)
            assert len(runs) == 1, (runs, done.stderr[-3000:])
            run = runs[0]
        state = assert_stopped(done, run, sig, stage, phase, received)
        if phase == "test":  # trained, not complete: the resume scores the saved weights again
            assert stage in state["trained"] and stage not in state["completed"], state
            assert (run / "checkpoints" / stage / "final.ckpt").is_file()
        if phase == "compare":
            assert state["completed"] == ["source", "probe", "finetune"], state
    assert run is not None
    done = subprocess.run(_fit("--resume", str(run)), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((run / "state.json").read_text())
    assert len(state.get("preemptions", [])) + len(state.get("interruptions", [])) == len(faults), state
    return run


@pytest.mark.slow  # 52 s of the default run's 6-minute budget; tests/integration/test_preempt.py keeps one signal-and-resume in it
def test_a_signal_in_each_phase_stops_cleanly_and_the_resumes_equal_an_uninterrupted_run(
    tmp_path: Path, series: Path, reference: Reference
) -> None:
    with ThreadPoolExecutor(len(CHAINS)) as pool:
        futures = [
            pool.submit(_chain, tmp_path / name, tiny_pipeline(tmp_path / f"{name}.yaml", series, tmp_path / name), f)
            for name, f in CHAINS.items()
        ]
        runs = [f.result() for f in futures]
    for run in runs:
        assert_same_metrics(run, reference.summary())


def test_the_watch_defers_a_signal_to_the_next_safe_point_except_before_anything_is_written() -> None:
    """In-process, the watch's three behaviours: deferred to :meth:`check`, at once while nothing is
    written (the pipeline checks), and at once on a second Ctrl-C."""
    from sciadapt.errors import Interrupted, Preempted
    from sciadapt.stages.preempt import SignalWatch, enter_phase

    before = signal.getsignal(signal.SIGINT)
    with SignalWatch() as watch:
        with pytest.raises(Preempted) as preflight, watch.at_once():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        assert preflight.value.phase == "preflight" and preflight.value.run_dir is None
        assert not isinstance(preflight.value, Interrupted)
    with SignalWatch() as watch:
        enter_phase("train", "probe")
        os.kill(os.getpid(), signal.SIGINT)  # recorded only: training goes on to the next step
        time.sleep(0.05)
        assert watch.received == signal.SIGINT and watch.received_in == "train"
        with pytest.raises(Interrupted) as later:
            watch.check("between", "finetune")
        assert later.value.record() == {
            "signal": "SIGINT",
            "stage": "finetune",
            "epoch": None,
            "step": None,
            "phase": "between",
            "received": "train",
        }
        with pytest.raises(Interrupted):  # a second Ctrl-C does not wait
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert signal.getsignal(signal.SIGINT) == before


@pytest.mark.slow
def test_a_signal_while_checking_the_pipeline_stops_at_once_and_writes_nothing(tmp_path: Path, series: Path) -> None:
    pipe = tiny_pipeline(tmp_path / "p.yaml", series, tmp_path / "runs")
    done = subprocess.run(
        _fit(str(pipe), *OVERRIDES), env=_env("preflight:SIGTERM"), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == EXIT_PREEMPTED, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "nothing was written: run the same command again" in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists()


def test_fault_point_fires_once_for_its_phase_and_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    from sciadapt.stages import preempt

    got: list[int] = []
    monkeypatch.setattr(preempt, "_fired", set())
    monkeypatch.setattr(preempt.os, "kill", lambda pid, sig: got.append(sig))
    monkeypatch.setenv(preempt.FAULT_ENV, "test@probe:SIGTERM, compare:sigint")
    preempt.fault_point("test", "source")  # another stage
    preempt.fault_point("train", "probe")  # another phase
    preempt.fault_point("test", "probe")
    preempt.fault_point("test", "probe")  # once per process
    preempt.fault_point("compare")
    assert got == [signal.SIGTERM, signal.SIGINT]
    monkeypatch.delenv(preempt.FAULT_ENV)
    preempt.fault_point("compare")  # a real run: nothing
    assert len(got) == 2


def test_lightning_installs_no_handlers_while_a_watch_is_installed() -> None:
    """Inside a watch, a Trainer's test keeps our handlers and never sets ``received_sigterm``."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from sciadapt.stages.preempt import SignalWatch

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)
            self.seen: list[Any] = []

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    with SignalWatch() as watch:
        model = Tiny()
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.test(model, DataLoader(TensorDataset(torch.zeros(4, 2)), batch_size=2), verbose=False)
        assert all(h == watch._handle for h in model.seen), model.seen
        assert signal.getsignal(signal.SIGTERM) == watch._handle and not trainer.received_sigterm
    assert signal.getsignal(signal.SIGTERM) == before


# -- slow: every phase with every signal on a fresh run, and harder cases -------------------------

PHASES = [  # (fault, stage and phase recorded, phase it came in)
    ("setup", "source", "setup", "setup"),
    ("train@probe", "probe", "train", "train"),
    ("validation@source", "source", "train", "validation"),
    ("validation@probe", "probe", "trained", "validation"),  # the stage's last epoch: stops once it is saved
    ("checkpoint@source", "source", "train", "checkpoint"),
    ("checkpoint@finetune", "finetune", "trained", "checkpoint"),
    ("trained@probe", "probe", "trained", "trained"),  # final.ckpt written, the stage not complete
    ("test@probe", "probe", "test", "test"),
    ("test@finetune", "finetune", "test", "test"),
    ("between@probe", "finetune", "between", "between"),
    ("compare", "", "compare", "compare"),
]


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1", "SIGINT"])
@pytest.mark.parametrize(("fault", "stage", "phase", "received"), PHASES, ids=[p[0] for p in PHASES])
def test_every_phase_and_signal_resumes_exactly(
    tmp_path: Path, series: Path, reference: Reference, fault: str, stage: str, phase: str, received: str, sig: str
) -> None:
    pipe = tiny_pipeline(tmp_path / "p.yaml", series, tmp_path / "runs")
    done = subprocess.run(
        _fit(str(pipe), *OVERRIDES), env=_env(f"{fault}:{sig}"), capture_output=True, text=True, timeout=300
    )
    (run,) = _runs(tmp_path / "runs")
    assert_stopped(done, run, sig, stage, phase, received)
    resumed = subprocess.run(_fit("--resume", str(run)), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_metrics(run, reference.summary())


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_while_the_comparison_tests_a_stage_resumes_exactly(tmp_path: Path, series: Path, sig: str) -> None:
    """With `evaluation.data` the comparison scores every stage again: stop inside one of those tests."""
    extra = [*OVERRIDES, "evaluation.data.batch_size=16"]
    ref = Reference(_fit(str(tiny_pipeline(tmp_path / "r.yaml", series, tmp_path / "ref")), *extra), tmp_path / "ref")
    try:
        pipe = tiny_pipeline(tmp_path / "p.yaml", series, tmp_path / "runs")
        done = subprocess.run(
            _fit(str(pipe), *extra), env=_env(f"compare@probe:{sig}"), capture_output=True, text=True, timeout=300
        )
        (run,) = _runs(tmp_path / "runs")
        assert_stopped(done, run, sig, "probe", "compare", "compare")
        resumed = subprocess.run(_fit("--resume", str(run)), env=_env(), capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert_same_metrics(run, ref.summary())
    finally:
        ref.close()


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_resumes_from_the_last_epoch_checkpoint(
    tmp_path: Path, series: Path, reference: Reference
) -> None:
    """The first Ctrl-C (in validation) waits for the next step; the second (as the epoch-end checkpoint
    is about to be written) stops at once: the stage continues from its beginning, exactly."""
    pipe = tiny_pipeline(tmp_path / "p.yaml", series, tmp_path / "runs")
    fault = "validation@source:SIGINT,checkpoint@source:SIGINT"
    done = subprocess.run(_fit(str(pipe), *OVERRIDES), env=_env(fault), capture_output=True, text=True, timeout=300)
    (run,) = _runs(tmp_path / "runs")
    assert_stopped(done, run, "SIGINT", "source", "checkpoint", "checkpoint")
    assert not (run / "checkpoints" / "source" / "last.ckpt").exists()  # the stop came before it was written
    resumed = subprocess.run(_fit("--resume", str(run)), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_metrics(run, reference.summary())


@pytest.mark.slow
def test_ddp_ranks_agree_on_a_signal_during_the_test_and_resume_exactly(tmp_path: Path, series: Path) -> None:
    """Two CPU DDP processes score the test each on its own; after it, the all-reduced flag stops both."""
    ddp = [*OVERRIDES, "trainer.devices=2", "trainer.strategy=ddp"]
    ref = Reference(_fit(str(tiny_pipeline(tmp_path / "r.yaml", series, tmp_path / "ref")), *ddp), tmp_path / "ref")
    try:
        reference = ref.summary()  # one DDP run at a time on a small machine
        pipe = tiny_pipeline(tmp_path / "p.yaml", series, tmp_path / "runs")
        done = subprocess.run(
            _fit(str(pipe), *ddp), env=_env("test@probe:SIGTERM"), capture_output=True, text=True, timeout=600
        )
        (run,) = _runs(tmp_path / "runs")
        assert_stopped(done, run, "SIGTERM", "probe", "test", "test")
        assert done.stderr.count("preempted: SIGTERM") == 1, done.stderr[-3000:]  # one rank reports
        resumed = subprocess.run(_fit("--resume", str(run)), env=_env(), capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert_same_metrics(run, reference)
    finally:
        ref.close()


@pytest.mark.slow
def test_quickstart_sigterm_while_testing_finetune_resumes_to_the_uninterrupted_metrics(tmp_path: Path) -> None:
    """Issue 14's case: SIGTERM during the quickstart's finetune Testing exited 0 with the run unfinished."""
    ref = Reference(_fit("quickstart", f"run_dir={tmp_path / 'ref'}"), tmp_path / "ref", "quickstart")
    try:
        done = subprocess.run(
            _fit("quickstart", f"run_dir={tmp_path / 'runs'}"),
            env=_env("test@finetune:SIGTERM"),
            capture_output=True,
            text=True,
            timeout=600,
        )
        (run,) = _runs(tmp_path / "runs", "quickstart")
        assert_stopped(done, run, "SIGTERM", "finetune", "test", "test")
        resumed = subprocess.run(_fit("--resume", str(run)), env=_env(), capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert_same_metrics(run, ref.summary())
    finally:
        ref.close()
