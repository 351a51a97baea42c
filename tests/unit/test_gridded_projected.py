"""Projected and curvilinear grids in the gridded datamodule and ``sciadapt data prepare`` (issue 17).

Tiny seeded files from ``tests/data/gridded/make_projected.py``; the real KNMI composites of
``../shared/data/gridded/knmi_20100826`` are read by the slow test only.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pyproj
import pytest
import xarray as xr

from sciadapt.cli import main
from sciadapt.datamodules.gridded import GriddedDataModule, curvilinear_area_weights, prepare_store
from sciadapt.errors import DataError
from tests.data.gridded import make
from tests.data.gridded import make_projected as mp

KNMI = Path(__file__).resolve().parents[3] / "shared" / "data" / "gridded" / "knmi_20100826"
needs_pysteps = pytest.mark.skipif(importlib.util.find_spec("pysteps") is None, reason="pysteps not installed")


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCIADAPT_CACHE_DIR", str(tmp_path / "cache"))


def _dm(path: Path | str, **kw: object) -> GriddedDataModule:
    return GriddedDataModule(str(path), num_workers=0, static_fields=True, **kw)  # type: ignore[arg-type]


def test_latlon_facts_say_latlon(tmp_path: Path) -> None:
    path = make.write_zarr(make.make_dataset(n_time=12), tmp_path / "s.zarr")
    facts = _dm(path).facts()
    assert facts["grid_kind"] == "latlon" and facts["grid_crs"] is None
    assert np.asarray(facts["lat"]).ndim == 1 and np.asarray(facts["area_weights"]).shape == (6,)


@pytest.mark.parametrize("y_ascending", [False, True])
def test_projected_netcdf_reads_north_up_with_equal_area_weights(tmp_path: Path, y_ascending: bool) -> None:
    ds = mp.make_projected(y_ascending=y_ascending)
    ds.to_netcdf(tmp_path / "p.nc", engine="h5netcdf")
    dm = _dm(tmp_path / "p.nc", n_input=2, n_lead=1)
    assert dm.grid_kind == "projected" and dm.grid_shape == (6, 5)
    assert pyproj.CRS.from_wkt(dm.crs_wkt) == pyproj.CRS.from_epsg(3035)
    lat = dm.lat
    assert lat.shape == (6, 5) and lat[0, 0] > lat[-1, 0]  # north to south either way
    assert np.all(np.diff(dm.y) < 0)
    # LAEA is an equal-area projection: every cell of a regular x/y grid has the same area
    np.testing.assert_allclose(dm.area_weights, 1.0, atol=1e-9)
    dm.setup()
    block = dm.dataset("train").read_states(1)  # (T, C, H, W) physical
    north_up = mp.make_projected()["tp"].values  # generated north to south
    np.testing.assert_allclose(block[:, 0], north_up[0:3], rtol=1e-6)
    batch = next(iter(dm.train_dataloader()))
    assert batch["forcings"].shape[-2:] == (6, 5) and batch["static"].shape == (1, 4, 6, 5)
    facts = dm.facts()
    assert facts["grid_kind"] == "projected" and np.asarray(facts["lon"]).shape == (6, 5)


def test_polar_stereographic_weights_follow_the_scale_factor() -> None:
    crs = pyproj.CRS.from_proj4(mp.KNMI_PROJ4)
    x, y = np.arange(0.5, 700, 100.0), -3650.5 - np.arange(0, 765, 100.0)
    to_geo = pyproj.Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
    lon, lat = to_geo.transform(*np.meshgrid(x, y))
    from sciadapt.datamodules.gridded import projected_area_weights

    w = projected_area_weights(crs.to_wkt(), x, y, lat, lon)
    # true at 60N: cells further south (lower latitude) are smaller on the Earth
    k = (1 + np.sin(np.deg2rad(60.0))) / (1 + np.sin(np.deg2rad(lat)))  # spherical scale factor
    expect = 1 / k**2
    np.testing.assert_allclose(w, expect / expect.mean(), rtol=2e-3)


def test_curvilinear_weights_match_cos_latitude_on_a_regular_grid(tmp_path: Path) -> None:
    lat1 = np.linspace(70.0, -70.0, 15)
    lat, lon = np.meshgrid(lat1, np.arange(0.0, 40.0, 2.0), indexing="ij")
    w = curvilinear_area_weights(lat, lon)
    # the exact area of a 10-degree band cell is proportional to sin(upper) - sin(lower)
    half = np.deg2rad(5.0)
    band = np.sin(np.deg2rad(lat1) + half) - np.sin(np.deg2rad(lat1) - half)
    np.testing.assert_allclose(w[:, 3], band / band.mean(), rtol=1e-3)
    np.testing.assert_allclose(w[:, 0], w[:, 7], rtol=1e-3)  # edge columns: corners mirrored

    ds = mp.make_curvilinear(rotate_deg=25.0)
    ds.to_netcdf(tmp_path / "c.nc", engine="h5netcdf")
    dm = _dm(tmp_path / "c.nc")
    assert dm.grid_kind == "curvilinear" and dm.crs_wkt is None
    assert dm.area_weights.shape == (6, 5) and dm.area_weights.mean() == pytest.approx(1.0)
    facts = dm.facts()
    assert facts["grid_kind"] == "curvilinear" and np.asarray(facts["lat"]).shape == (6, 5)
    dm.setup()
    assert next(iter(dm.train_dataloader()))["x"].shape == (1, 1, 1, 6, 5)


def test_projected_without_crs_says_how_to_give_one(tmp_path: Path) -> None:
    mp.make_projected(crs=None).to_netcdf(tmp_path / "p.nc", engine="h5netcdf")
    with pytest.raises(DataError, match=r"no CRS.*--crs EPSG:3035.*data\.crs"):
        _dm(tmp_path / "p.nc").facts()
    assert _dm(tmp_path / "p.nc", crs="EPSG:3035").grid_kind == "projected"
    out = tmp_path / "s.zarr"
    assert main(["data", "prepare", str(tmp_path / "p.nc"), str(out), "--no-progress"]) == 2
    assert not out.exists() and not list(tmp_path.glob("s.zarr.tmp-*"))
    assert main(["data", "prepare", str(tmp_path / "p.nc"), str(out), "--crs", "EPSG:3035", "--no-progress"]) == 0
    assert _dm(out).grid_kind == "projected"


def test_prepare_many_frames_sorts_them_and_keeps_the_projection(tmp_path: Path) -> None:
    ds = mp.make_projected(n_time=10)
    files = mp.write_frames(ds, tmp_path / "frames")
    shuffled = [str(files[i]) for i in (3, 0, 9, 5, 1, 7, 2, 8, 4, 6)]
    out = prepare_store(shuffled, str(tmp_path / "s.zarr"), progress=False)
    st = xr.open_zarr(out)
    assert st["tp"].attrs["grid_mapping"] == "crs" and st["tp"].attrs["units"] == "mm"
    assert pyproj.CRS.from_wkt(st["crs"].attrs["crs_wkt"]) == pyproj.CRS.from_epsg(3035)
    assert "proj4" in st["crs"].attrs and st["latitude"].dims == ("y", "x")
    np.testing.assert_array_equal(st["time"].values, ds["time"].values)
    np.testing.assert_allclose(st["tp"].values, ds["tp"].values)
    dm = _dm(out)
    assert dm.grid_kind == "projected" and dm.variables == ["tp"]
    np.testing.assert_allclose(dm.x, ds["x"].values)


def test_prepare_refuses_duplicate_times_naming_both_files(tmp_path: Path) -> None:
    files = mp.write_frames(mp.make_projected(n_time=4), tmp_path / "a")
    again = mp.write_frames(mp.make_projected(n_time=1), tmp_path / "b")
    with pytest.raises(DataError, match=r"frame_202107140000\.nc and .*frame_202107140000\.nc both hold time"):
        prepare_store([str(f) for f in files + again], str(tmp_path / "s.zarr"), progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_prepare_refuses_other_shapes_and_projections(tmp_path: Path) -> None:
    a = mp.write_frames(mp.make_projected(n_time=3), tmp_path / "a")
    b = mp.write_frames(mp.make_projected(n_time=2, start="2021-07-14T00:15", nx=4), tmp_path / "b")
    with pytest.raises(DataError, match=r"has the grid .* files of one store share one grid"):
        prepare_store([str(f) for f in a + b], str(tmp_path / "s.zarr"), progress=False)
    c = mp.write_frames(mp.make_projected(n_time=2, start="2021-07-14T00:15", crs="EPSG:3034"), tmp_path / "c")
    with pytest.raises(DataError, match="different projections"):
        prepare_store([str(f) for f in a + c], str(tmp_path / "s.zarr"), progress=False)
    assert not (tmp_path / "s.zarr").exists()


@needs_pysteps
def test_prepare_knmi_like_frames_through_pysteps(tmp_path: Path) -> None:
    files = mp.write_knmi_frames(tmp_path / "radar", n_time=6)
    out = tmp_path / "r.zarr"
    pattern = str(tmp_path / "radar" / "*.h5")
    assert main(["data", "prepare", "--format", "knmi_hdf5", pattern, str(out), "--no-progress"]) == 0
    st = xr.open_zarr(out)
    da = st["precip_accum"]
    assert da.attrs["units"] == "mm" and da.attrs["accutime"] == 5.0 and da.shape == (6, 8, 7)
    assert np.isnan(da.values[:, :2, :2]).all() and not np.isnan(da.values[:, 2:, 2:]).any()
    crs = pyproj.CRS.from_wkt(st["crs"].attrs["crs_wkt"])
    assert "Polar Stereographic" in crs.to_wkt()
    np.testing.assert_allclose(st["y"].values[:2], [-3650.5, -3651.5])
    dm = _dm(out, n_input=2)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["x_mask"][0, 0, 0, :2, :2].sum() == 0 and batch["x_mask"][0, 0, 0, 2:, 2:].all()
    assert dm.area_weights.shape == (8, 7)
    assert len(files) == 6


@needs_pysteps
def test_radar_bad_inputs(tmp_path: Path) -> None:
    files = mp.write_knmi_frames(tmp_path / "radar", n_time=3)
    odd = tmp_path / "odd" / "frame.h5"
    odd.parent.mkdir()
    odd.write_bytes(files[0].read_bytes())
    with pytest.raises(DataError, match="cannot read a time from the file name"):
        prepare_store([str(odd)], str(tmp_path / "s.zarr"), format="knmi_hdf5", progress=False)
    with pytest.raises(DataError, match="not a pysteps importer"):
        prepare_store([str(f) for f in files], str(tmp_path / "s.zarr"), format="knmi_hdf6", progress=False)
    bigger = mp.write_knmi_frames(tmp_path / "big", n_time=1, nx=9, start="2010-08-26T00:15")
    with pytest.raises(DataError, match=r"is 8x9 but .* is 8x7"):
        prepare_store([str(f) for f in files + bigger], str(tmp_path / "s.zarr"), format="knmi_hdf5", progress=False)
    assert not (tmp_path / "s.zarr").exists() and not list(tmp_path.glob("s.zarr.tmp-*"))


@needs_pysteps
def test_odim_without_nodata_is_refused(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "T_PAAH21_C_EUOC_20100826000000.h5"
    with h5py.File(path, "w") as f:
        what = f.create_group("dataset1/data1/what")
        what.attrs["quantity"] = np.bytes_("DBZH")
        f["dataset1/data1"].create_dataset("data", data=np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match=r"dataset1/data1/what has no 'nodata' attribute"):
        prepare_store([str(path)], str(tmp_path / "s.zarr"), format="odim_hdf5", progress=False)


@pytest.mark.slow
@needs_pysteps
@pytest.mark.skipif(not KNMI.is_dir(), reason=f"{KNMI} (real KNMI composites) is absent")
def test_knmi_real_frames(tmp_path: Path) -> None:
    out = tmp_path / "knmi.zarr"
    t0 = time.perf_counter()
    rc = main(["data", "prepare", "--format", "knmi_hdf5", str(KNMI / "*.h5"), str(out), "--no-progress"])
    seconds = time.perf_counter() - t0
    assert rc == 0
    st = xr.open_zarr(out)
    assert st["precip_accum"].shape == (92, 765, 700) and st["precip_accum"].attrs["units"] == "mm"
    assert "Polar Stereographic" in st["crs"].attrs["crs_wkt"]
    dm = _dm(out, n_input=2, n_lead=3, batch_size=2)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["y"].shape == (2, 3, 1, 765, 700)
    assert 0.1 < float(batch["mask"].mean()) < 0.9  # the composite covers part of the rectangle
    w = dm.area_weights
    assert w.shape == (765, 700) and w[0].mean() > w[-1].mean()  # true at 60N: the north is larger
    assert dm.facts()["grid_kind"] == "projected"
    print(f"KNMI prepare: {seconds:.1f} s")


def test_an_hdf5_radar_file_without_format_names_the_importer(tmp_path: Path) -> None:
    frame = tmp_path / "RAD_NL25_RAP_5min_201008260000.h5"
    frame.write_bytes(b"\x89HDF\r\n\x1a\n")  # the HDF5 signature; nothing is read before the check
    with pytest.raises(DataError, match=r"needs its importer.*--format knmi_hdf5"):
        prepare_store([str(frame)], str(tmp_path / "s.zarr"), progress=False)
    assert not (tmp_path / "s.zarr").exists()
