"""The bundled quickstart runs from any folder, and a built wheel carries everything it needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sciadapt.cli import main
from tests.conftest import REPO


def test_quickstart_runs_from_bundled_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    # one epoch per stage: the full recipe is measured in the benchmark notes, not here
    args = ["stages.*.max_epochs=1", "stages.*.limit_train_batches=5", "trainer.enable_progress_bar=false"]
    assert main(["fit", "quickstart", *args]) == 0
    out = capsys.readouterr().out
    for label in ("seasonal-naive", "target-only (NC, scratch)", "source-only (AK)", "adapted (AK -> NC)"):
        assert label in out
    (summary,) = tmp_path.glob("runs/quickstart/*/summary.json")
    rows = json.loads(summary.read_text())["evaluation"]["rows"]
    assert [r["model"] for r in rows][0] == "seasonal-naive"
    assert all(r["mse"] > 0 for r in rows)


def test_wheel_has_pipelines_configs_data_and_runs_elsewhere(tmp_path: Path) -> None:
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheel_dir.glob("sciadapt-*.whl")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sciadapt.cli", *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
        )

    where = subprocess.run(
        [sys.executable, "-c", "import sciadapt, sciadapt.datamodules; print(sciadapt.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(target)), where  # the wheel, not the checkout
    listed = cli("list", "pipelines")
    assert "quickstart" in listed.stdout and "nhits_ltsf" in listed.stdout, listed.stderr
    ok = cli("validate", "quickstart")
    assert ok.returncode == 0, ok.stderr
    run = cli(
        "fit",
        "quickstart",
        "stages.*.max_epochs=1",
        "stages.*.limit_train_batches=2",
        "trainer.enable_progress_bar=false",
    )
    assert run.returncode == 0, run.stderr
    assert "adapted (AK -> NC)" in run.stdout
