"""Tests of the gridded datamodule (``sciadapt.datamodules.gridded``) on tiny seeded stores."""

from __future__ import annotations

import importlib.util
import inspect
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from sciadapt.datamodules import gridded as gm
from sciadapt.datamodules.gridded import GriddedDataModule, prepare_store, shard_indices
from sciadapt.datamodules.gridded import stats as gstats
from sciadapt.errors import ConfigError, DataError, ShapeError
from sciadapt.registry import DATAMODULES
from tests.data.gridded import make

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "gridded"


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the statistics cache of every test in its own folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SCIADAPT_CACHE_DIR", str(cache))
    return cache


def store(tmp_path: Path, name: str = "s.zarr", **kw: Any) -> Path:
    ds = make.make_dataset(**kw)
    path = tmp_path / name
    return make.write_zarr(ds, path) if name.endswith(".zarr") else make.write_netcdf(ds, path)


def build(path: Path, **kw: Any) -> GriddedDataModule:
    kw.setdefault("num_workers", 0)
    return DATAMODULES.build("gridded", path=str(path), **kw)


def reference(path: Path, var: str, level: int | None = None) -> xr.DataArray:
    """A variable read directly with xarray, oriented north->south."""
    if path.suffix == ".zarr":
        ds = xr.open_zarr(path, consolidated=False)
    else:
        ds = xr.open_dataset(path, engine="h5netcdf")
    da = ds[var] if level is None else ds[var].sel(level=level)
    return da.sortby("latitude", ascending=False).load()


# ---------------------------------------------------------------------------------- schema


def test_builder_is_a_plain_registered_schema() -> None:
    sig = inspect.signature(GriddedDataModule)
    assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in sig.parameters.values())
    assert all(not isinstance(p.default, list | dict | set) for p in sig.parameters.values())
    assert "gridded" in DATAMODULES
    assert set(inspect.signature(GriddedDataModule).parameters) == set(sig.parameters)


def test_config_problems_are_collected() -> None:
    # choices and bounds are the signature's types, checked by the config layer with their key path
    from sciadapt.config import load_config

    bad = ["data.path=x.zarr", "data.split=fraction", "data.n_lead=0", "data.nan_policy=drop"]
    with pytest.raises(ConfigError) as err:
        load_config("graphcast_finetune", bad)
    text = str(err.value)
    assert "data.split" in text and "did you mean 'fractions'" in text and "data.n_lead" in text
    assert "data.nan_policy" in text
    # what the signature cannot say (a duration) the datamodule checks, collected with the rest
    with pytest.raises(ConfigError) as err:
        GriddedDataModule("x.zarr", time_step="soon", split_fractions=[0.5, 0.6, 0.1])
    assert "2 problems" in str(err.value) and "data.time_step" in str(err.value)


# ---------------------------------------------------------------------------------- samples


@pytest.mark.parametrize("name", ["s.zarr", "s.nc"])
def test_samples_match_direct_reads(tmp_path: Path, name: str) -> None:
    # a south->north store with 2 inputs, 2 leads at twice the store's step
    path = store(tmp_path, name, lat_descending=False)
    dm = build(path, variables=["z", "t2m"], levels=[500, 850], n_input=2, n_lead=2, time_step="2h")
    dm.setup()
    assert dm.variables == ["z_500", "z_850", "t2m"]
    assert (dm.n_channels, dm.n_forcings, dm.n_static, dm.grid_shape) == (3, 4, 6, (6, 8))
    assert np.all(np.diff(dm.lat) < 0) and np.all(np.diff(dm.lon) > 0)
    assert dm.time_step == pd.Timedelta("2h") and dm.stride == 2
    item = dm.dataset("train")[5]
    t = item["meta"]["time_index"]
    assert item["x"].shape == (2, 3, 6, 8) and item["y"].shape == (2, 3, 6, 8)
    assert item["forcings"].shape == (4, 4, 6, 8) and item["static"].shape == (6, 6, 8)
    assert item["x"].dtype == torch.float32 and torch.all(item["mask"] == 1)
    times = [t - 2, t, t + 2, t + 4]
    phys = dm.denormalise(torch.cat([item["x"], item["y"]]).double()).numpy()
    for c, (var, lev) in enumerate([("z", 500), ("z", 850), ("t2m", None)]):
        ref = reference(path, var, lev).isel(time=times).values
        np.testing.assert_allclose(phys[:, c], ref, rtol=1e-5, atol=1e-3)
    # x is normalised with the train statistics
    raw = reference(path, "t2m").isel(time=t).values
    expect = (raw - dm.stats["mean"][2]) / dm.stats["std"][2]
    np.testing.assert_allclose(item["x"][1, 2].numpy(), expect, rtol=1e-5, atol=1e-5)


def test_batches_are_b_t_c_h_w(tmp_path: Path) -> None:
    dm = build(store(tmp_path), n_input=2, n_lead=3, batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (4, 2, 5, 6, 8) and batch["y"].shape == (4, 3, 5, 6, 8)
    assert batch["mask"].shape == batch["y"].shape and batch["x_mask"].shape == batch["x"].shape
    assert batch["forcings"].shape == (4, 5, 4, 6, 8) and batch["static"].shape == (4, 6, 6, 8)
    assert batch["meta"]["time_index"].shape == (4,)


def test_forcings_and_static_fields(tmp_path: Path) -> None:
    path = store(tmp_path, lon_start=-180.0)
    dm = build(path, variables=["t2m"])
    item = dm.dataset("train")[0]
    t = item["meta"]["time_index"]
    stamp = dm.store_times[t]
    local = stamp.hour / 24.0 + dm.lon / 360.0  # fraction of a day
    np.testing.assert_allclose(item["forcings"][0, 0, 2].numpy(), np.cos(2 * np.pi * local), atol=1e-5)
    np.testing.assert_allclose(item["forcings"][0, 1, 0].numpy(), np.sin(2 * np.pi * local), atol=1e-5)
    assert torch.allclose(item["forcings"][0, 2], item["forcings"][0, 2, 0, 0])  # year progress is uniform
    assert dm.static_names == ["land_sea_mask", "orography", "sin_lat", "cos_lat", "sin_lon", "cos_lon"]
    static = item["static"].numpy()
    np.testing.assert_allclose(static[2, :, 0], np.sin(np.deg2rad(dm.lat)), atol=1e-6)
    assert abs(static[1].mean()) < 1e-5 and abs(static[1].std() - 1) < 1e-4  # normalised orography
    lsm = reference(path, "lsm").values
    np.testing.assert_array_equal(static[0], lsm)
    bare = build(path, variables=["t2m"], static_fields=False, forcings=False)
    item = bare.dataset("train")[0]
    assert item["static"].shape == (0, 6, 8) and item["forcings"].shape == (2, 0, 6, 8)
    assert (bare.n_static, bare.n_forcings) == (0, 0)


def test_normalisation_round_trip(tmp_path: Path) -> None:
    dm = build(store(tmp_path))
    a = np.random.default_rng(0).normal(size=(2, 3, 5, 6, 8))
    np.testing.assert_allclose(dm.normalise(dm.denormalise(a)), a, atol=1e-9)
    t = torch.from_numpy(a).float()
    back = dm.normalise(dm.denormalise(t))
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float32
    torch.testing.assert_close(back, t, atol=1e-3, rtol=0)  # z ~ 5e4 in float32 keeps ~4 digits of z/std
    with pytest.raises(ShapeError, match="C=5"):
        dm.denormalise(np.zeros((2, 4, 6, 8)))
    assert dm.area_weights.shape == (6,) and abs(dm.area_weights.mean() - 1) < 1e-12
    np.testing.assert_allclose(dm.tendency_scale, dm.stats["tendency_std"] / dm.stats["std"])


def test_splits_keep_targets_inside(tmp_path: Path) -> None:
    dm = build(store(tmp_path, n_time=40), split="dates", split_dates=["2020-01-01T20", "2020-01-02T06"], n_lead=3)
    assert dm.split_bounds == {"train": (0, 20), "val": (20, 30), "test": (30, 40)}
    for name, (lo, hi) in dm.split_bounds.items():
        idx = dm.sample_indices(name)
        assert idx.min() >= lo and idx.max() + 3 < hi
    assert dm.test_initial_times()[0] == pd.Timestamp("2020-01-02T06")
    assert len(dm.times["val"]) == 10 - 3
    assert dm.lead_hours() == [1.0, 2.0, 3.0]


# ---------------------------------------------------------------------------------- statistics


def test_statistics_are_computed_once_and_match_numpy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = store(tmp_path, n_time=40)
    calls: list[int] = []
    real = gm.compute_statistics

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(gstats, "compute_statistics", counting)
    dm = build(path, variables=["t2m"], time_step="2h", split_fractions=[0.5, 0.25, 0.25])
    dm.setup()
    assert len(calls) == 1
    train = reference(path, "t2m").isel(time=slice(0, 20)).values.astype(np.float64)
    np.testing.assert_allclose(dm.stats["mean"][0], train.mean(), rtol=1e-9)
    np.testing.assert_allclose(dm.stats["std"][0], train.std(), rtol=1e-6)
    np.testing.assert_allclose(dm.stats["tendency_std"][0], (train[2:] - train[:-2]).std(), rtol=1e-6)
    # another rollout length (a new stage) re-uses them
    again = build(path, variables=["t2m"], time_step="2h", split_fractions=[0.5, 0.25, 0.25], n_lead=4)
    again.setup()
    assert len(calls) == 1
    np.testing.assert_array_equal(again.stats["std"], dm.stats["std"])
    assert again.stats_location.in_zarr
    # another time step has other tendencies: computed once more, kept beside the first entry
    build(path, variables=["t2m"], split_fractions=[0.5, 0.25, 0.25]).setup()
    assert len(calls) == 2
    assert len(again.stats_location.read()["entries"]) == 2


def test_read_only_store_caches_statistics_outside(tmp_path: Path, _cache_dir: Path) -> None:
    path = store(tmp_path)
    modes = {}
    for p in [path, *path.rglob("*")]:
        modes[p] = p.stat().st_mode
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        dm = build(path)
        dm.setup()
        where = dm.stats_location
        assert not where.in_zarr and where.path.parent == _cache_dir / "gridded_stats" and where.path.is_file()
        assert "sciadapt_stats" not in xr.open_zarr(path, consolidated=False).attrs
        assert not any(p.name.startswith(".") for p in path.iterdir())
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def test_netcdf_statistics_go_to_the_cache_dir(tmp_path: Path, _cache_dir: Path) -> None:
    path = store(tmp_path, "s.nc")
    build(path).setup()
    assert [p.name.split("-")[0] for p in (_cache_dir / "gridded_stats").iterdir()] == ["s.nc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "s.nc"]


def test_stats_require_and_stats_path(tmp_path: Path) -> None:
    path = store(tmp_path, "s.nc")
    with pytest.raises(DataError, match="no statistics for channel.*data.stats=auto"):
        build(path, stats="require").setup()
    stats_file = tmp_path / "my_stats.json"
    build(path, stats_path=str(stats_file)).setup()
    assert stats_file.is_file()
    build(path, stats="require", stats_path=str(stats_file)).setup()


# ---------------------------------------------------------------------------------- bad input


def test_irregular_time_steps_name_the_index(tmp_path: Path) -> None:
    ds = make.make_dataset(n_time=30)
    ds = ds.isel(time=[i for i in range(30) if i != 12])
    path = make.write_zarr(ds, tmp_path / "gap.zarr")
    with pytest.raises(DataError, match=r"time index 12 \(2020-01-01 13:00:00\) comes 0 days 02:00:00 after") as err:
        build(path).setup()
    assert "reindex" in str(err.value)


def test_missing_variable_and_level_suggest_fixes(tmp_path: Path) -> None:
    path = store(tmp_path)
    with pytest.raises(DataError, match="'t2'.*did you mean 't2m'.*Available variables: t, t2m, z"):
        build(path, variables=["t2"]).setup()
    with pytest.raises(DataError, match="level.*300.*Available levels: 500, 850"):
        build(path, levels=[300]).setup()
    with pytest.raises(DataError, match="no level 700"):
        build(path, variables=["z_700"]).setup()
    with pytest.raises(DataError, match="static field"):
        build(path, variables=["lsm"]).setup()
    assert build(path, variables=["z_850", "t2m"]).variables == ["z_850", "t2m"]
    with pytest.raises(ConfigError, match="whole multiple"):
        build(path, time_step="90min").setup()


def test_nans_become_masks(tmp_path: Path) -> None:
    ds = make.make_dataset(n_time=30)
    ds["t2m"][5, 2, 3] = np.nan
    path = make.write_zarr(ds, tmp_path / "nan.zarr")
    dm = build(path, variables=["t2m"], n_input=2, n_lead=2)
    dm.setup()
    i = int(np.flatnonzero(dm.dataset("train").indices == 4)[0])  # x: t=3,4; y: t=5,6
    item = dm.dataset("train")[i]
    assert item["y"][0, 0, 2, 3] == 0 and item["mask"][0, 0, 2, 3] == 0
    assert item["mask"].sum() == item["mask"].numel() - 1 and torch.all(item["x_mask"] == 1)
    j = int(np.flatnonzero(dm.dataset("train").indices == 6)[0])  # x: t=5,6
    assert dm.dataset("train")[j]["x_mask"][0, 0, 2, 3] == 0
    strict = build(path, variables=["t2m"], n_input=2, n_lead=2, nan_policy="error")
    with pytest.raises(DataError, match=r"NaN in channel 't2m' at time index 5"):
        strict.dataset("train")[i]


def test_corrupt_chunk_names_variable_and_time(tmp_path: Path) -> None:
    path = store(tmp_path)
    build(path, variables=["t2m"]).setup()  # statistics cached while the store is intact
    chunk = path / "t2m" / "c" / "7" / "0" / "0"
    assert chunk.is_file()
    chunk.write_bytes(b"not a zstd frame" * 4)
    ds = build(path, variables=["t2m"]).dataset("train")
    k = int(np.flatnonzero(ds.indices == 6)[0])  # reads time indices 6 and 7
    with pytest.raises(DataError, match=r"variable 't2m' at time index 7 \(2020-01-01 07:00:00\).*corrupt"):
        ds[k]
    with pytest.raises(DataError, match=r"statistics.*'t2m'.*corrupt"):
        build(path, variables=["t2m"], stats="recompute").setup()


def test_missing_cfgrib_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grib = tmp_path / "x.grib"
    grib.write_bytes(b"GRIB")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cfgrib" else real(name, *a))
    with pytest.raises(DataError, match=r"pip install 'sciadapt\[grib\]'"):
        build(grib).setup()


def test_members_and_grid_signature(tmp_path: Path) -> None:
    path = store(tmp_path, members=3)
    dm = build(path, variables=["t2m"], member=2)
    item = dm.dataset("train")[0]
    raw = reference(path, "t2m").isel(number=2, time=item["meta"]["time_index"]).values
    np.testing.assert_allclose(dm.denormalise(item["x"].double()).numpy()[0, 0], raw, atol=1e-3)
    with pytest.raises(DataError, match="3 members"):
        build(path, member=5).setup()
    sig = dm.data_signature()
    dm.check_signature(sig)
    other = build(store(tmp_path, "other.zarr", n_lat=7), variables=["t2m"])
    with pytest.raises(DataError, match="lat: the checkpoint has 6 points"):
        other.check_signature(sig)


def test_climatology_is_the_train_mean_by_hour(tmp_path: Path) -> None:
    path = store(tmp_path, n_time=72)
    dm = build(path, variables=["t2m"], split_fractions=[0.5, 0.25, 0.25])
    train = reference(path, "t2m").isel(time=slice(0, 36))
    expect = train.groupby("time.hour").mean("time").sel(hour=5).values
    got = dm.climatology(np.array(["2020-01-03T05"], dtype="datetime64[ns]"))
    assert got.shape == (1, 1, 6, 8)
    np.testing.assert_allclose(got[0, 0], expect, rtol=1e-6)
    grid = dm.climatology(np.array([["2020-01-03T05", "2020-01-03T06"]] * 3, dtype="datetime64[ns]"))
    assert grid.shape == (3, 2, 1, 6, 8)
    mean = dm.climatology()  # no times: the train time mean per grid point
    np.testing.assert_allclose(mean[0], train.mean("time").values, rtol=1e-6)
    np.testing.assert_allclose(dm.climatology(normalised=True), dm.normalise(mean), rtol=1e-6)


# ---------------------------------------------------------------------------------- loading


def test_rank_shards_are_disjoint_covering_and_per_epoch() -> None:
    for n in (10, 11):
        shards = [shard_indices(n, epoch=3, seed=7, rank=r, world_size=2, shuffle=True) for r in range(2)]
        assert len(shards[0]) == len(shards[1]) == (n + 1) // 2
        assert set(shards[0]) | set(shards[1]) == set(range(n))
        if n % 2 == 0:
            assert not set(shards[0]) & set(shards[1])
        else:
            assert len(set(shards[0]) & set(shards[1])) == 1  # one padded repeat
        assert shard_indices(n, 3, 7, 0, 2, True) == shards[0]  # a function of (seed, epoch)
        assert shard_indices(n, 4, 7, 0, 2, True) != shards[0]
    assert shard_indices(6, 0, 0, 1, 2, shuffle=False) == [1, 3, 5]
    sampler = gm.ShardedEpochSampler(10, seed=7, num_replicas=2, rank=1)
    sampler.set_epoch(3)
    assert list(sampler) == shard_indices(10, 3, 7, 1, 2, True) and len(sampler) == 5
    assert isinstance(sampler, torch.utils.data.DistributedSampler)  # Lightning keeps it as it is


def test_worker_processes_give_the_same_batches(tmp_path: Path) -> None:
    path = store(tmp_path, n_time=30)

    def batches(workers: int) -> list[dict[str, Any]]:
        dm = build(path, n_input=2, n_lead=2, batch_size=3, num_workers=workers, prefetch_factor=2, shuffle_seed=5)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(1)  # type: ignore[attr-defined]
        return [b for _, b in zip(range(4), loader, strict=False)]

    serial, parallel = batches(0), batches(2)
    for a, b in zip(serial, parallel, strict=True):
        for key in ("x", "y", "mask", "forcings", "static"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
        assert torch.equal(a["meta"]["time_index"], b["meta"]["time_index"])
        assert "_release" not in b


def test_recycled_worker_buffers_never_overwrite_kept_batches(tmp_path: Path) -> None:
    path = store(tmp_path, n_time=40)
    dm = build(path, batch_size=2, num_workers=2, prefetch_factor=1, shuffle_seed=3)
    expect = build(path, batch_size=2, num_workers=0, shuffle_seed=3).train_dataloader()
    reference = [b["y"].clone() for b in expect]
    loader = dm.train_dataloader()
    # a consumer that keeps detached aliases (no reference to the batch tensors themselves)
    kept = [b["y"].detach() for b in loader]
    assert len(kept) == len(reference)
    for got, want in zip(kept, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # a consumer that drops each batch lets the workers re-use their few buffers
    del kept, got
    slots = 2 * (dm.prefetch_factor + 3)  # per worker
    held = []
    for _ in loader:
        held.append(len(loader._held))
    assert 0 < max(held[3:]) <= slots and len(held) > slots  # re-used, released: more batches than buffers


# ---------------------------------------------------------------------------------- prepare


def test_prepare_store_converts_netcdf_with_statistics(tmp_path: Path) -> None:
    nc = store(tmp_path, "in.nc", n_time=30)
    out = prepare_store(str(nc), str(tmp_path / "out.zarr"), variables=["z", "t2m"], levels=[500], progress=False)
    assert out == tmp_path / "out.zarr" and out.is_dir()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    ds = xr.open_zarr(out, consolidated=False)
    assert set(ds.data_vars) == {"z", "t2m", "lsm", "orography"} and list(ds["level"].values) == [500]
    assert ds["z"].encoding["chunks"][0] == 1 and ds["z"].dtype == np.float32
    assert ds.attrs["sciadapt_stats"]["entries"]
    a = build(out, variables=["z", "t2m"])
    b = build(nc, variables=["z", "t2m"], levels=[500])
    a.setup()
    reader = a.dataset("test").reader
    reader._open()
    assert set(reader._direct) == {"z", "t2m"}  # what prepare writes decodes straight into batches
    np.testing.assert_allclose(a.stats["mean"], b.stats["mean"], rtol=1e-6)
    torch.testing.assert_close(a.dataset("test")[0]["y"], b.dataset("test")[0]["y"])
    with pytest.raises(DataError, match="already exists"):
        prepare_store(str(nc), str(out), progress=False)
    # several files (a glob) are joined along time; static fields stay static
    full = make.make_dataset(n_time=30)
    make.write_netcdf(full.isel(time=slice(0, 12)), tmp_path / "part1.nc")
    make.write_netcdf(full.isel(time=slice(12, 30)), tmp_path / "part2.nc")
    joined = xr.open_zarr(
        prepare_store(str(tmp_path / "part*.nc"), str(tmp_path / "j.zarr"), progress=False), consolidated=False
    )
    assert joined.sizes["time"] == 30 and joined["lsm"].dims == ("latitude", "longitude")
    np.testing.assert_array_equal(joined["t2m"].values, full["t2m"].values)


# ---------------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "era5-2mt-2019-03-uk.nc").is_file(), reason="shared ERA5 UK file absent")
def test_real_era5_uk_t2m() -> None:
    dm = build(SHARED / "era5-2mt-2019-03-uk.nc", split="dates", split_dates=["2019-03-20", "2019-03-22"], n_lead=24)
    dm.setup()
    assert dm.variables == ["t2m"] and dm.grid_shape == (33, 49) and dm.time_step == pd.Timedelta("1h")
    assert dm.lat[0] == 58.0 and dm.lon[0] == -10.0
    assert 270 < dm.stats["mean"][0] < 290 and dm.stats["tendency_std"][0] < dm.stats["std"][0]
    assert dm.test_initial_times()[0] == pd.Timestamp("2019-03-22")
    batch = next(iter(dm.test_dataloader()))
    assert batch["y"].shape == (1, 24, 1, 33, 49) and torch.isfinite(batch["y"]).all()
    assert not [p for p in SHARED.iterdir() if p.suffix == ".idx"]


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "era5-levels-members.nc").is_file(), reason="shared ERA5 members file absent")
def test_real_era5_levels_members_global() -> None:
    dm = build(
        SHARED / "era5-levels-members.nc", variables=["z", "t"], levels=[500, 850], split_fractions=[0.5, 0.0, 0.5]
    )
    dm.setup()
    assert dm.variables == ["z_500", "z_850", "t_500", "t_850"] and dm.grid_shape == (61, 120)
    assert dm.time_step == pd.Timedelta("12h") and dm.info.n_members == 10
    item = dm.dataset("train")[0]
    assert item["x"].shape == (1, 4, 61, 120) and torch.isfinite(item["x"]).all()
    z500 = xr.open_dataset(SHARED / "era5-levels-members.nc")["z"].sel(isobaricInhPa=500).isel(number=0, time=0)
    np.testing.assert_allclose(dm.denormalise(item["x"].double()).numpy()[0, 0], z500.values, rtol=1e-5)
    if os.environ.get("CI") is None and importlib.util.find_spec("cfgrib") is not None:
        grib = build(SHARED / "era5-levels-members.grib", variables=["z", "t"], split_fractions=[0.5, 0.0, 0.5])
        torch.testing.assert_close(grib.dataset("train")[0]["x"], item["x"], atol=1e-4, rtol=0)


def test_worker_batches_cross_as_one_storage_with_broadcast_views(tmp_path: Path) -> None:
    """What a worker sends: x, y and forcings as views of one shared buffer; masks and static
    (already in the training process) added there as stride-0 views, moved compactly to a device."""
    path = store(tmp_path, n_time=30)
    dm = build(path, n_input=2, n_lead=3, batch_size=2, num_workers=1, prefetch_factor=1)
    batch = next(iter(dm.train_dataloader()))
    storages = {batch[k].untyped_storage().data_ptr() for k in ("x", "y", "forcings")}
    assert len(storages) == 1
    assert 0 in batch["mask"].stride() and 0 in batch["x_mask"].stride() and batch["static"].stride()[0] == 0
    assert batch["meta"]["time_index"].dtype == torch.int64 and batch["meta"]["time_index"].shape == (2,)
    moved = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    for key in ("x", "y", "mask", "static"):
        torch.testing.assert_close(moved[key], batch[key], rtol=0, atol=0)
    static = gm.compact_to_device(batch["static"], torch.device("cpu"))
    assert static.stride()[0] == 0 and torch.equal(static, batch["static"])


def test_second_epoch_rebuilds_batches_from_slots_sent_once(tmp_path: Path) -> None:
    """Persistent workers send a slot's storage once; later batches are rebuilt from it, correctly."""
    path = store(tmp_path, n_time=30)
    serial = build(path, batch_size=2, num_workers=0, shuffle_seed=4).train_dataloader()
    loader = build(path, batch_size=2, num_workers=2, prefetch_factor=1, shuffle_seed=4).train_dataloader()
    for epoch in (0, 1):
        serial.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        want = [(b["x"].clone(), b["y"].clone(), b["forcings"].clone()) for b in serial]
        got = [(b["x"].clone(), b["y"].clone(), b["forcings"].clone()) for b in loader]
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            for a, b in zip(g, w, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(loader._pools) == 2 and all(len(p["slots"]) <= 1 + 3 for p in loader._pools.values())  # per worker
