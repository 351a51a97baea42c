"""Radar nowcasting: the dBR transform on read, train windows, the nowcast task and its loss."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from sciadapt.datamodules.gridded import GriddedDataModule
from sciadapt.datamodules.gridded.transforms import RainTransform, rate_factor
from sciadapt.errors import ConfigError, DataError
from sciadapt.nowcast_transforms import rate_to_db
from tests.data.gridded.make_projected import make_projected


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCIADAPT_CACHE_DIR", str(tmp_path / "cache"))


def _rain_store(tmp_path: Path, units: dict[str, object] | None = None, n_time: int = 24) -> Path:
    """A projected store of one rain variable (mm per 5 minutes by default, with a dry half and NaNs)."""
    ds = make_projected(n_time=n_time, ny=12, nx=10)
    name = next(v for v in ds.data_vars if "y" in ds[v].dims and "time" in ds[v].dims)
    rain = ds[name].values.copy()
    rain[:, :, :4] = 0.0  # dry columns
    rain[:, 0, 0] = np.nan  # outside the radar's range
    ds = ds.drop_vars([name]).assign(precip=(ds[name].dims, rain.astype(np.float32)))
    ds["precip"].attrs.update(units or {"units": "mm", "accutime": 5.0})
    path = tmp_path / "rain.zarr"
    ds.to_zarr(path)
    return path


def _dm(path: Path, **kw: object) -> GriddedDataModule:
    args: dict[str, object] = {
        "variables": ["precip"],
        "transform": "dbr",
        "n_input": 3,
        "n_lead": 2,
        "forcings": False,
        "static_fields": False,
        "num_workers": 0,
        "batch_size": 2,
        "split_fractions": [0.5, 0.0, 0.5],
    }
    args.update(kw)
    return GriddedDataModule(str(path), **args)  # type: ignore[arg-type]


def test_rain_transform_matches_pysteps_definition() -> None:
    t = RainTransform({"r": 12.0}, 0.1)  # 5-minute depths (mm) -> mm/h
    depth = np.array([[0.0, 0.005, 0.01, 0.1, 2.5, np.nan]], np.float32)
    block = depth.copy()
    t.apply("r", block)
    np.testing.assert_allclose(block, rate_to_db(depth * 12.0), rtol=1e-6)
    assert block[0, 0] == block[0, 1] == pytest.approx(-15.0)  # dry: the floor
    assert np.isnan(block[0, -1])
    lazy = t.apply_lazy("r", xr.DataArray(depth)).values
    np.testing.assert_allclose(lazy, block, rtol=1e-6)
    back = t.to_rate(block)
    np.testing.assert_allclose(back[0, 2:5], depth[0, 2:5] * 12.0, rtol=1e-5)
    assert back[0, 0] == back[0, 1] == 0.0


@pytest.mark.parametrize(
    ("units", "factor"),
    [({"units": "mm/h"}, 1.0), ({"units": "kg m-2 s-1"}, 3600.0), ({"units": "mm", "accutime": 15.0}, 4.0)],
)
def test_rate_factor_follows_the_units(units: dict[str, object], factor: float) -> None:
    assert rate_factor("p", units, "s.zarr") == factor


@pytest.mark.parametrize("units", [{}, {"units": "K"}, {"units": "mm"}])
def test_rate_factor_refuses_what_is_not_rain(units: dict[str, object]) -> None:
    with pytest.raises(DataError, match="data.transform=dbr needs a rain rate.*variable 'p'.*Fix"):
        rate_factor("p", units, "s.zarr")


def test_datamodule_reads_dbr_and_gives_rates_back(tmp_path: Path) -> None:
    path = _rain_store(tmp_path)
    raw = xr.open_zarr(path)["precip"].values  # (T, y, x) mm per 5 min
    dm = _dm(path)
    dm.setup()
    ev = dm.evaluation_arrays("test")
    truth = ev["truth"][:, :, 0]  # dBR, output orientation
    assert np.nanmin(truth) == pytest.approx(-15.0) and np.nanmax(truth) < 20
    rates = dm.to_output_units(ev["truth"])[:, :, 0]
    flip = (lambda a: a[..., ::-1, :]) if dm.flip_lat else (lambda a: a)
    idx = dm.dataset("test").indices
    expected = flip(raw[idx[0] + 1]) * 12.0
    wet = expected >= 0.1
    np.testing.assert_allclose(rates[0, 0][wet], expected[wet], rtol=1e-4)
    assert (rates[0, 0][~wet & np.isfinite(expected)] == 0).all()
    assert dm.output_units == ["mm/h"]
    # statistics are of dBR, cached apart from those of the values as stored
    plain = _dm(path, transform="none")
    assert dm.stats["mean"][0] < 0 < plain.stats["mean"][0]
    facts = dm.facts()
    assert facts["value_transform"] == "dbr@0.1" and facts["grid_spacing_km"] > 0


def test_transform_refuses_a_variable_without_rain_units(tmp_path: Path) -> None:
    path = _rain_store(tmp_path, units={"units": "K"})
    with pytest.raises(DataError, match="'precip' has units 'K'"):
        _dm(path).setup()


def test_train_windows_are_cut_from_the_grid(tmp_path: Path) -> None:
    path = _rain_store(tmp_path)
    dm = _dm(path, patch=[6, 5])
    whole = _dm(path)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape[-2:] == (6, 5) and batch["y"].shape[-2:] == (6, 5)
    origin = batch["meta"]["patch_origin"]
    assert origin.shape == (len(batch["x"]), 2)
    # each window holds the whole grid's values at its origin
    full = whole.dataset("train")
    pos = {int(t): i for i, t in enumerate(full.indices)}
    for b, t in enumerate(batch["meta"]["time_index"].tolist()):
        ref = full[pos[t]]["x"]  # (T, C, H, W)
        r0, c0 = origin[b].tolist()
        np.testing.assert_allclose(batch["x"][b], ref[..., r0 : r0 + 6, c0 : c0 + 5])
    # validation and test see the whole grid
    assert next(iter(dm.test_dataloader()))["x"].shape[-2:] == whole.grid_shape
    # a window larger than the grid along a side takes the whole side
    tall = _dm(path, patch=[40, 5])
    assert next(iter(tall.train_dataloader()))["x"].shape[-2:] == (12, 5)


def _task(dm: GriddedDataModule, loss: str = "balanced") -> torch.nn.Module:
    from sciadapt.config import build_task

    model = {
        "backbone": {"name": "unet_grid_tiny"},
        "head": {"name": "grid"},
        "task": {"name": "nowcast", "loss": loss},
    }
    return build_task(model, dm.facts())


def test_balanced_loss_weighs_heavy_rain(tmp_path: Path) -> None:
    dm = _dm(_rain_store(tmp_path))
    task = _task(dm)
    mean, std = dm.stats["mean"][0], dm.stats["std"][0]
    y = torch.tensor([1.0, 3.0, 7.0, 20.0, 40.0])  # mm/h
    y_norm = ((10 * torch.log10(y) - mean) / std).reshape(1, 5, 1, 1, 1)
    pred = y_norm + 0.1
    w = task.db_weights[torch.bucketize(y_norm.contiguous(), task.db_edges, right=True)]
    assert w.flatten().tolist() == [1.0, 2.0, 5.0, 10.0, 30.0]
    area = torch.ones(1, 1, 1, 1, 1)
    assert task.rollout_loss(pred, y_norm, None, area).item() == pytest.approx(0.01, rel=1e-4)
    mse_task = _task(dm, "mse")
    assert mse_task.rollout_loss(pred, y_norm, None, area).item() == pytest.approx(0.01, rel=1e-4)
    # a miss of heavy rain costs more under the balanced loss
    miss = y_norm.clone()
    miss[0, 4] -= 1.0
    assert task.rollout_loss(miss, y_norm, None, area) > 2 * mse_task.rollout_loss(miss, y_norm, None, area)


def test_nowcast_task_needs_one_channel_in_dbr(tmp_path: Path) -> None:
    path = _rain_store(tmp_path)
    with pytest.raises(ConfigError, match="data.transform=dbr"):
        _task(_dm(path, transform="none"))


def test_verification_of_a_perfect_and_a_persistent_forecast(tmp_path: Path) -> None:
    dm = _dm(_rain_store(tmp_path), n_lead=3)
    task = _task(dm)
    cat = task.test_arrays(dm)
    perfect, _ = task.score(cat["y"].numpy(), cat, dm)
    assert perfect["csi@1"] == pytest.approx(1.0) and perfect["mae"] == pytest.approx(0.0, abs=1e-5)
    assert perfect["fss@1/8km/15min"] == pytest.approx(1.0)
    persistence = task.baseline("persistence", dm)
    assert persistence["csi@1"] < 1.0 and persistence["mae"] > 0
    assert set(persistence["by_lead"]["csi@1"]) == {"5.0", "10.0", "15.0", "all"}


@pytest.mark.skipif(
    importlib.util.find_spec("pysteps") is None or importlib.util.find_spec("cv2") is None,
    reason="pysteps or OpenCV not installed (sciadapt[nowcast])",
)
def test_extrapolation_baseline_runs_pysteps(tmp_path: Path) -> None:
    dm = _dm(_rain_store(tmp_path), n_lead=3)
    task = _task(dm)
    out = task.baseline("extrapolation", dm)
    assert 0.0 <= out["csi@0.1"] <= 1.0 and np.isfinite(out["mae"])


def test_a_step_stays_between_dry_and_max_rate(tmp_path: Path) -> None:
    dm = _dm(_rain_store(tmp_path))
    task = _task(dm)
    lo, hi = task._bounds
    mean, std = dm.stats["mean"][0], dm.stats["std"][0]
    assert lo * std + mean == pytest.approx(-15.0) and hi * std + mean == pytest.approx(10 * np.log10(250.0))
    state = torch.full((1, 3, 1, 12, 10), 50.0)  # far above any rain rate
    assert task.step(state, None, None).max().item() == pytest.approx(hi)
    assert task.step(-state, None, None).min().item() == pytest.approx(lo)


def test_checkpoints_that_saved_area_weights_still_load(tmp_path: Path) -> None:
    from sciadapt.runs import load_into

    task = _task(_dm(_rain_store(tmp_path)))
    state = {k: v.clone() for k, v in task.state_dict().items()}
    assert "area_w" not in state and "db_edges" not in state  # grid loss weights follow the data
    load_into(task, {**state, "area_w": torch.ones(1, 1, 1, 12, 10)}, "old.ckpt")  # an earlier release's


def test_forecast_frames_take_the_observed_intensity_distribution(tmp_path: Path) -> None:
    dm = _dm(_rain_store(tmp_path), n_lead=3)
    task = _task(dm).eval()
    batch = next(iter(dm.test_dataloader()))
    # a missing value (outside the radar) is read as dry, not as the channel mean
    lo = task._bounds[0]
    missing = batch["x_mask"] == 0
    assert missing.any() and torch.allclose(batch["x"][missing], torch.tensor(lo, dtype=torch.float32))
    with torch.no_grad():
        pred = task.rollout(batch, 3)  # (B, 3, 1, H, W)
        task.match_distribution = False
        raw = task.rollout(batch, 3)
    last = batch["x"][:, -1].reshape(len(pred), -1).sort(dim=1).values
    for k in range(3):
        assert torch.equal(pred[:, k].reshape(len(pred), -1).sort(dim=1).values, last)
    assert not torch.equal(raw, pred)
    # the matched frame keeps the raw forecast's ranks (its pattern)
    r = raw[0, 0].flatten().argsort()
    assert torch.equal(pred[0, 0].flatten()[r], pred[0, 0].flatten()[r].sort().values)
