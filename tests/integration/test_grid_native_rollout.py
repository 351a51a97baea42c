"""The gridded rollout pipeline end to end from the CLI with the grid-native backbones swapped in
(`backbone=unet_grid_tiny`, `backbone=swin_grid_tiny`) on a generated store with an odd grid (9 x 14,
so the padding and cropping run), and the mesh backbone refusing data on a projected grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr

from sciadapt.cli import main
from tests.data.gridded.make import make_dataset, write_zarr

PIPELINE = """
name: grid_native
seed: 0
run_dir: {runs}
defaults:
  - backbone: graphcast_tiny
head: {{name: grid}}
task: {{name: rollout}}
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
    max_epochs: 2
    optim: {{lr: 3.0e-3}}
  - name: rollout_3
    rollout: {{steps: 3, checkpoint: true}}
    max_epochs: 1
    optim: {{lr: 1.0e-3}}
evaluation:
  data: {{n_lead: 4}}
  baselines: [persistence, climatology]
  metrics: [rmse, acc, bias]
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("grid_native")
    return write_zarr(make_dataset(n_time=120, n_lat=9, n_lon=14), folder / "tiny.zarr")


def _fit(tmp_path: Path, store: Path, *overrides: str) -> tuple[int, Path | None]:
    pipe = tmp_path / "p.yaml"
    pipe.write_text(PIPELINE.format(runs=tmp_path / "runs", store=store))
    rc = main(["fit", str(pipe), *overrides])
    runs = sorted((tmp_path / "runs" / "grid_native").glob("*")) if (tmp_path / "runs").exists() else []
    return rc, (runs[0] if runs else None)


@pytest.mark.parametrize("backbone", ["unet_grid_tiny", "swin_grid_tiny"])
def test_rollout_pipeline_with_a_grid_native_backbone(tmp_path: Path, store: Path, backbone: str) -> None:
    rc, run = _fit(tmp_path, store, f"backbone={backbone}")
    assert rc == 0 and run is not None
    config = (run / "config.yaml").read_text()
    assert f"name: {backbone}" in config
    ckpt = torch.load(run / "checkpoints" / "rollout_3" / "final.ckpt", weights_only=True)
    assert ckpt["sciadapt"]["rollout_steps"] == 3
    assert any(k.startswith("backbone.") for k in ckpt["state_dict"])
    summary = json.loads((run / "summary.json").read_text())
    rows: dict[str, Any] = {r["model"]: r for r in summary["evaluation"]["rows"]}
    assert {"persistence", "climatology", "single_step", "rollout_3"} <= set(rows)
    for name in ("single_step", "rollout_3"):
        assert np.isfinite(rows[name]["rmse"]) and set(rows[name]["by_variable"]) == {"t2m", "z_500"}
        assert len(rows[name]["by_variable"]["t2m"]["rmse"]) == 4
    # the forecast comes back on the data's 9 x 14 grid (the padding cropped away)
    out = tmp_path / "fc.nc"
    stamp = str(xr.open_zarr(store).time.values[-10])[:16]
    assert main(["predict", "--run", str(run), "--init", stamp, "--lead", "2", "--out", str(out)]) == 0
    ds = xr.open_dataset(out)
    assert ds["t2m"].shape[-2:] == (9, 14) and ds.sizes["lead_time"] == 2
    assert np.isfinite(ds["t2m"].values).all()


def test_the_mesh_backbone_refuses_a_projected_grid(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sciadapt.datamodules.gridded import datamodule

    facts = datamodule.GriddedDataModule.facts

    def projected(self: Any) -> dict[str, Any]:
        return {**facts(self), "grid_kind": "projected"}

    # the datamodule states its grid kind; stand in for a store on a Lambert conformal grid
    monkeypatch.setattr(datamodule.GriddedDataModule, "facts", projected)
    rc, _ = _fit(tmp_path, store)
    assert rc == 2
    err = capsys.readouterr().err
    assert "icosahedral mesh needs a regular latitude-longitude grid" in err and "unet_grid or swin_grid" in err
