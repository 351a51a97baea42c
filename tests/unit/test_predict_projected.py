"""`sciadapt predict --run RUN --init ...` on a projected grid: the forecast is written on the input
grid with its projection (CF grid mapping, y/x projection coordinates, 2-D latitude/longitude), plus a
PNG of forecast vs observed at three leads. A tiny LAEA store (``make_projected``, rows stored south
to north so the flip on read is exercised) and a ``unet_grid_tiny`` rollout run trained for one epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyproj
import pytest
import torch
import xarray as xr

from sciadapt.cli import main
from sciadapt.config import build_datamodule
from sciadapt.datamodules.gridded import GriddedDataModule
from sciadapt.predict import rollout
from sciadapt.runs import Run
from sciadapt.tasks.rollout import RolloutTask
from tests.data.gridded.make import write_zarr
from tests.data.gridded.make_projected import make_curvilinear, make_projected

PIPELINE = """
name: projected_rollout
seed: 0
run_dir: {runs}
defaults:
  - backbone: unet_grid_tiny
head: {{name: grid}}
task: {{name: rollout}}
data:
  name: gridded
  path: {store}
  variables: [tp]
  n_input: 2
  split: fractions
  split_fractions: [0.6, 0.2, 0.2]
  batch_size: 8
  eval_batch_size: 8
  num_workers: 0
trainer: {{accelerator: cpu, enable_progress_bar: false}}
stages:
  - name: single_step
    rollout: {{steps: 1}}
    max_epochs: 1
    optim: {{lr: 1.0e-3}}
evaluation:
  data: {{n_lead: 2}}
  baselines: [persistence]
  metrics: [rmse]
"""


@pytest.fixture(scope="module")
def projected_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("projected_predict")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCIADAPT_CACHE_DIR", str(folder / "cache"))
        store = write_zarr(make_projected(n_time=48, ny=10, nx=12, y_ascending=True), folder / "laea.zarr")
        pipe = folder / "p.yaml"
        pipe.write_text(PIPELINE.format(runs=folder / "runs", store=store))
        assert main(["fit", str(pipe)]) == 0
    (run,) = (folder / "runs" / "projected_rollout").glob("*")
    return run, store


def _datamodule(run: Path, n_lead: int) -> Any:
    cfg = Run.open(run).data_config(-1)
    cfg.update({"n_lead": n_lead, "num_workers": 0})
    dm = build_datamodule(cfg)
    dm.setup("test")
    return dm


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_projected_forecast_keeps_the_projection(
    projected_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    run, store = projected_run
    monkeypatch.setenv("SCIADAPT_CACHE_DIR", str(tmp_path / "cache"))
    rolled: list[torch.Tensor] = []
    rollout = RolloutTask.rollout

    def capture(self: RolloutTask, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = rollout(self, *args, **kwargs)
        rolled.append(out.detach().clone())
        return out

    monkeypatch.setattr(RolloutTask, "rollout", capture)
    src = xr.open_zarr(store, consolidated=False)
    dm = _datamodule(run, 3)
    inits = [str(t)[:16] for t in dm.split_times("test")[[0, 2]]]
    out = tmp_path / f"fc{suffix}"
    init_flags = [flag for t in inits for flag in ("--init", t)]
    assert main(["predict", "--run", str(run), *init_flags, "--lead", "3", "--out", str(out)]) == 0
    assert not list(tmp_path.glob(".fc*"))  # the temporary sibling of the atomic write is gone

    ds = xr.open_zarr(out) if suffix == ".zarr" else xr.open_dataset(out)
    assert ds["tp"].dims == ("init_time", "lead_time", "y", "x") and ds["tp"].shape == (2, 3, 10, 12)
    # grid mapping: CF parameters and the WKT, both giving back the store's CRS
    assert ds["tp"].attrs["grid_mapping"] == "crs" and ds["tp_truth"].attrs["grid_mapping"] == "crs"
    mapping = ds["crs"].attrs
    assert mapping["grid_mapping_name"] == "lambert_azimuthal_equal_area"
    source = pyproj.CRS.from_epsg(3035)
    assert pyproj.CRS.from_cf(dict(mapping)) == source
    assert pyproj.CRS.from_wkt(mapping["crs_wkt"]) == source
    # 1-D projection coordinates (north to south as the datamodule reads them) and 2-D lat/lon
    assert ds["y"].attrs["standard_name"] == "projection_y_coordinate" and ds["y"].attrs["units"] == "m"
    assert ds["x"].attrs["standard_name"] == "projection_x_coordinate" and ds["x"].attrs["units"] == "m"
    np.testing.assert_array_equal(ds["y"].values, dm.y)
    np.testing.assert_array_equal(ds["x"].values, dm.x)
    assert np.all(np.diff(ds["y"].values) < 0)
    assert ds["latitude"].dims == ("y", "x") and ds["longitude"].dims == ("y", "x")
    np.testing.assert_array_equal(ds["latitude"].values, dm.lat)
    np.testing.assert_array_equal(ds["longitude"].values, dm.lon)
    assert {"latitude", "longitude", "y", "x"} <= set(ds["tp"].coords)
    # the values: the rolled-out forecast in output units, and the truth is the store's field at the
    # valid time at the same projected coordinates (rows stored south to north, so this checks the flip)
    (pred,) = rolled
    expect = dm.to_output_units(dm.denormalise(pred.numpy()))[:, :, 0]
    np.testing.assert_allclose(ds["tp"].values, expect, rtol=1e-6, atol=1e-6)
    for i in range(2):
        for k in range(3):
            when = ds["valid_time"].values[i, k]
            field = src["tp"].sel(time=when, y=ds["y"], x=ds["x"]).values
            np.testing.assert_allclose(ds["tp_truth"].values[i, k], field, rtol=1e-5, atol=1e-5)
    assert ds["tp"].attrs["units"] == "mm" and ds.attrs["Conventions"] == "CF-1.8"
    png = out.with_suffix(".png")
    assert png.is_file() and png.stat().st_size > 1000
    ds.close()


def test_netcdf_grid_variables_are_cf_linked(projected_run: tuple[Path, Path], tmp_path: Path) -> None:
    """Read without xarray's decoding: the data variable names its auxiliary coordinates and mapping."""
    run, _ = projected_run
    stamp = str(_datamodule(run, 2).split_times("test")[0])[:16]
    out = tmp_path / "fc.nc"
    assert main(["predict", "--run", str(run), "--init", stamp, "--lead", "2", "--out", str(out)]) == 0
    raw = xr.open_dataset(out, decode_coords=False)
    attrs = raw["tp"].attrs
    assert attrs["grid_mapping"] == "crs"
    assert {"latitude", "longitude", "valid_time"} <= set(attrs["coordinates"].split())
    assert raw["crs"].ndim == 0 and "crs_wkt" in raw["crs"].attrs


def test_curvilinear_forecast_has_2d_latitude_longitude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No CRS: the store's y/x dimensions with 2-D latitude/longitude auxiliary coordinates, no mapping."""
    monkeypatch.setenv("SCIADAPT_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "curvi.nc"
    make_curvilinear(n_time=12).to_netcdf(path, engine="h5netcdf")
    dm = GriddedDataModule(str(path), n_input=2, n_lead=3, num_workers=0)
    assert dm.grid_kind == "curvilinear"
    forecast = np.random.default_rng(0).normal(size=(1, 3, 1, 6, 5))
    ds = rollout._cf_dataset(xr, forecast, forecast + 1, dm, [pd.Timestamp("2021-07-14T02:00")])
    out = tmp_path / "fc.nc"
    rollout._write_atomic(ds, out)
    rollout._plot(forecast, forecast + 1, dm, "tp", "2021-07-14T02:00", out.with_suffix(".png"))
    back = xr.open_dataset(out, decode_coords=False)
    assert back["tp"].dims == ("init_time", "lead_time", "y", "x") and "grid_mapping" not in back["tp"].attrs
    assert {"latitude", "longitude"} <= set(back["tp"].attrs["coordinates"].split()) and "crs" not in back
    np.testing.assert_array_equal(back["latitude"].values, dm.lat)
    np.testing.assert_array_equal(back["longitude"].values, dm.lon)
    np.testing.assert_allclose(back["tp"].values, forecast[:, :, 0].astype(np.float32))
    assert out.with_suffix(".png").stat().st_size > 1000
