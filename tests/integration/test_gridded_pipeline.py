"""The rollout curriculum end to end from the CLI on a generated zarr store: stages with growing
rollouts, the length in every checkpoint, WeatherBench-2 scores beside persistence/climatology,
kill-free resume of a finished run's comparison, and a CF netCDF forecast from `sciadapt predict`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import xarray as xr

from sciadapt.cli import main
from tests.data.gridded.make import make_dataset, write_zarr

PIPELINE = """
name: tiny_rollout
seed: 0
run_dir: {runs}
backbone: {{name: graphcast_tiny}}
head: {{name: grid}}
task: {{name: rollout, variable_weights: {{t2m: 2.0}}}}
data:
  name: gridded
  path: {store}
  variables: [t2m, z]
  levels: [500]
  n_input: 2
  split: fractions
  split_fractions: [0.6, 0.2, 0.2]
  batch_size: 4
  eval_batch_size: 8
  num_workers: 0
trainer: {{accelerator: cpu, enable_progress_bar: false}}
stages:
  - name: single_step
    rollout: {{steps: 1}}
    max_epochs: 1
    optim: {{lr: 3.0e-3}}
  - name: grow
    rollout: {{steps: 2, grow_every: 1, max_steps: 3, checkpoint: true, truncate_every: 2}}
    max_epochs: 2
    optim: {{lr: 1.0e-3}}
evaluation:
  data: {{n_lead: 4}}
  baselines: [persistence, climatology]
  metrics: [rmse, acc, bias]
"""


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return write_zarr(make_dataset(n_time=120, n_lat=8, n_lon=12), tmp_path / "tiny.zarr")


def test_rollout_curriculum_pipeline(tmp_path: Path, store: Path) -> None:
    pipe = tmp_path / "p.yaml"
    pipe.write_text(PIPELINE.format(runs=tmp_path / "runs", store=store))
    assert main(["fit", str(pipe)]) == 0
    (run,) = (tmp_path / "runs" / "tiny_rollout").glob("*")
    # the rollout length grew within the stage (2 -> 3) and lives in the checkpoint
    ckpt = torch.load(run / "checkpoints" / "grow" / "final.ckpt", weights_only=True)
    assert ckpt["sciadapt"]["rollout_steps"] == 3
    summary = json.loads((run / "summary.json").read_text())
    rows = {r["model"]: r for r in summary["evaluation"]["rows"]}
    assert {"persistence", "climatology", "single_step", "grow"} <= set(rows)
    for row in rows.values():
        by = row["by_variable"]
        assert set(by) == {"t2m", "z_500"}
        assert len(by["t2m"]["rmse"]) == 4  # 4 lead times, as evaluation.data asks
    # persistence at lead 0 would be perfect; at lead 1 it is the one-step tendency: positive
    assert next(iter(rows["persistence"]["by_variable"]["t2m"]["rmse"].values())) > 0
    out = tmp_path / "fc.nc"
    stamp = str(xr.open_zarr(store).time.values[-10])[:16]
    assert main(["predict", "--run", str(run), "--init", stamp, "--lead", "3", "--out", str(out)]) == 0
    ds = xr.open_dataset(out)
    assert ds.attrs["Conventions"].startswith("CF") and ds["t2m"].dims == (
        "init_time",
        "lead_time",
        "latitude",
        "longitude",
    )
    assert ds.sizes["lead_time"] == 3 and out.with_suffix(".png").is_file()


def test_rollout_longer_than_the_data_is_refused_before_training(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe = tmp_path / "p.yaml"
    pipe.write_text(PIPELINE.format(runs=tmp_path / "runs", store=store).replace("max_steps: 3", "max_steps: 0"))
    assert main(["fit", str(pipe)]) == 2
    assert "rollout.max_steps" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/*"))
