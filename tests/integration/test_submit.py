"""`sciadapt submit --cluster`: profiles, the sbatch script of --dry-run, errors before anything is
submitted, and a real submission through submitit's local executor (the same job path as SLURM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sciadapt.cli import main
from sciadapt.errors import ConfigError
from sciadapt.hpc.cluster import load_cluster, parse_minutes, trainer_overrides
from sciadapt.hpc.sweep import summarize
from tests.conftest import tiny_pipeline


def _profile(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text(text)
    return p


SITE = """
executor: slurm
partition: gpu
account: climate
constraint: a100
nodes: 2
gpus_per_node: 4
cpus_per_task: 10
mem_gb: 200
time: "1-02:30:00"
signal_delay_s: 300
sbatch_extra: ["--exclusive", "--mail-type=END"]
setup: ["module load cuda/12.4", "source ~/venvs/sa/bin/activate"]
"""


def test_dry_run_prints_the_multi_node_sbatch_script(
    tmp_path: Path, series_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    code = main(["submit", str(pipe), "--cluster", str(_profile(tmp_path, SITE)), "--dry-run"])
    assert code == 0
    script = capsys.readouterr().out
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --account=climate",
        "#SBATCH --constraint=a100",
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=4",  # one task per GPU: Lightning's SLURM DDP
        "#SBATCH --cpus-per-task=10",
        "#SBATCH --mem=200GB",
        "#SBATCH --time=1590",  # 1 day 2 h 30 min
        "#SBATCH --signal=USR1@300",  # checkpoint-and-requeue warning
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",  # a requeued job appends to its log
        "#SBATCH --exclusive",
        "#SBATCH --mail-type=END",
        "module load cuda/12.4",
        "export SCIADAPT_MAX_REQUEUES=20",
    ):
        assert line in script, line
    assert "srun --unbuffered" in script and "-m submitit.core._submit" in script
    assert "--array" not in script
    assert not (tmp_path / "runs").exists()  # a dry run makes nothing


def test_dry_run_of_a_sweep_is_one_job_array(
    tmp_path: Path, series_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    args = ["submit", str(pipe), "--cluster", "slurm", "--cluster-set", "partition=gpu", "array_parallelism=2"]
    assert main([*args, "--sweep", "stages.*.optim.lr=1e-3,3e-3,1e-2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --array=0-2%2" in out and out.count("# run ") == 3


def test_profile_implies_trainer_settings() -> None:
    prof = {"gpus_per_node": 4, "nodes": 2}
    assert trainer_overrides(prof) == [
        "trainer.accelerator=gpu",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        "trainer.strategy=ddp",
    ]
    assert trainer_overrides({"gpus_per_node": 0, "nodes": 1}) == []
    assert (
        parse_minutes("00:30:00", "x") == 30 and parse_minutes(90, "x") == 90 and parse_minutes("2:00:01", "x") == 121
    )


def test_bad_profiles_fail_before_anything_is_submitted(
    tmp_path: Path, series_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError) as e:
        load_cluster(str(_profile(tmp_path, "executor: slurm\nnodes: 1\ngpus_per_node: 4\npartiton: gpu\n")))
    msg = str(e.value)
    assert "required field 'time' is missing" in msg and "unknown field 'partiton'" in msg and "partition" in msg
    with pytest.raises(ConfigError, match="partition"):  # the bundled template leaves it for the user
        load_cluster("slurm")
    with pytest.raises(ConfigError, match="no such profile"):
        load_cluster("slrum")
    with pytest.raises(ConfigError, match="time"):
        load_cluster("slurm", ["partition=gpu", "time=soon"])

    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    # a sweep key that does not exist: every point is checked first, nothing is made or submitted
    code = main(["submit", str(pipe), "--cluster", "local", "--sweep", "stages.*.optim.lrr=1e-3,3e-3"])
    assert code == 2
    assert "nothing was submitted" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    # no SLURM on this machine: a clear error, not a traceback from sbatch
    code = main(["submit", str(pipe), "--cluster", "slurm", "--cluster-set", "partition=gpu"])
    assert code == 2
    assert "sbatch not found" in capsys.readouterr().err


# the sweep itself runs in the default suite (test_sweep.py); this one adds the job executor around it
@pytest.mark.slow
def test_local_executor_runs_a_sweep_as_jobs_and_summarizes(
    tmp_path: Path, series_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    code = main(
        [
            "submit",
            str(pipe),
            "stages.*.max_epochs=1",
            "--cluster",
            "local",
            "--sweep",
            "stages.finetune.optim.lr=1e-3,3e-3",
            "--wait",
        ]
    )
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.count(": done (") == 2, out
    (folder,) = (tmp_path / "runs").glob("tiny-sweep-*")
    record = json.loads((folder / "sweep.json").read_text())
    assert len(record["jobs"]) == 2 and record["cluster"]["executor"] == "local"
    for run in record["runs"]:
        state = json.loads((Path(run["run_dir"]) / "state.json").read_text())
        assert state["status"] == "done" and state["completed"] == ["source", "probe", "finetune"]
    assert main(["summarize", str(folder)]) == 0
    rows = summarize(folder)["rows"]  # what the printed table shows, one row per sweep point
    assert [r["run"] for r in rows] == ["stages.finetune.optim.lr=1e-3", "stages.finetune.optim.lr=3e-3"]
    assert all(r["mse"] > 0 for r in rows)


def test_resubmit_continues_an_unfinished_run_and_refuses_others(
    tmp_path: Path, series_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sciadapt.config import load_config
    from sciadapt.stages.runner import PipelineRunner

    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    run = PipelineRunner.create(load_config(str(pipe), ["stages.*.max_epochs=1"])).run_dir  # made, not run
    # a run of another pipeline: refused before anything is submitted
    assert main(["submit", "quickstart", "--resume", str(run), "--cluster", "local"]) == 2
    assert "is a run of pipeline 'tiny'" in capsys.readouterr().err
    assert not (run / "resubmit").exists()
    assert main(["submit", "--resume", str(run), "--cluster", "local", "--wait"]) == 0
    assert ": done (" in capsys.readouterr().out
    assert json.loads((run / "state.json").read_text())["status"] == "done"
    assert main(["submit", "--resume", str(run), "--cluster", "local"]) == 2  # finished: nothing to resume
    assert "already finished" in capsys.readouterr().err
