"""Sweeps: every point validated before the first run, one run directory each, one summary table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sciadapt.cli import main
from sciadapt.errors import ConfigError
from sciadapt.hpc.sweep import expand_sweep
from tests.conftest import tiny_pipeline


def test_expand_sweep_is_the_cartesian_product_and_keeps_bracketed_values() -> None:
    assert expand_sweep(["a=1,2", "b=[1,2],x"]) == [
        ["a=1", "b=[1,2]"],
        ["a=1", "b=x"],
        ["a=2", "b=[1,2]"],
        ["a=2", "b=x"],
    ]
    with pytest.raises(ConfigError) as err:
        expand_sweep(["a", "b=1,,2", "c=1", "c=2"])
    text = str(err.value)
    assert "key=value1,value2" in text and "empty value" in text and "given twice" in text


def test_local_sweep_runs_every_point_and_summarizes(
    tmp_path: Path, series_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    args = ["submit", str(pipe), "stages.*.max_epochs=1", "--sweep", "seed=0,1", "stages.finetune.optim.lr=1e-3,3e-3"]
    assert main(args) == 0
    (folder,) = (tmp_path / "runs").glob("tiny-sweep-*")
    record = json.loads((folder / "sweep.json").read_text())
    assert [r["point"] for r in record["runs"]] == [
        ["seed=0", "stages.finetune.optim.lr=1e-3"],
        ["seed=0", "stages.finetune.optim.lr=3e-3"],
        ["seed=1", "stages.finetune.optim.lr=1e-3"],
        ["seed=1", "stages.finetune.optim.lr=3e-3"],
    ]
    assert len({r["run_dir"] for r in record["runs"]}) == 4
    capsys.readouterr()
    assert main(["summarize", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.count("seed=") == 4 and "MSE" in out


def test_a_sweep_key_that_does_not_exist_fails_before_any_run(
    tmp_path: Path, series_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    assert main(["submit", str(pipe), "--sweep", "optim.lrr=1e-3,3e-3"]) == 2
    assert "optim" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*"))
