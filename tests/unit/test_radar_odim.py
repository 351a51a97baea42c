"""A radar never seen before: synthetic ODIM_H5 composites (LAEA, 2 km, rain rate) through ``data prepare``.

Frames from ``tests/data/radar/make.py`` differ from the KNMI ones (format, projection, pixel size,
quantity); they go through pysteps' ``odim_hdf5`` importer into a projected zarr store.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("pysteps") is None, reason="pysteps not installed"),
    pytest.mark.skipif(importlib.util.find_spec("h5py") is None, reason="h5py not installed"),
]

N_FRAMES = 8


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCIADAPT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def frames(tmp_path: Path) -> list[Path]:
    from tests.data.radar import make

    return make.write_archive(tmp_path / "radar", frames=N_FRAMES, seed=3)


def _prepare(*args: str) -> int:
    from sciadapt.cli import main

    return main(["data", "prepare", "--format", "odim_hdf5", *args, "--no-progress"])


def test_generator_is_read_by_pysteps(frames: list[Path]) -> None:
    import pyproj
    from pysteps.io import get_method

    from tests.data.radar import make

    precip, quality, meta = get_method("odim_hdf5", "importer")(str(frames[2]))
    assert precip.shape == (make.NY, make.NX) and quality is None
    assert meta["unit"] == "mm/h" and meta["projection"] == make.PROJ4
    assert meta["xpixelsize"] == meta["ypixelsize"] == make.PIXEL
    np.testing.assert_allclose([meta["x1"], meta["x2"]], [-128_000, 128_000], atol=1e-3)
    np.testing.assert_allclose([meta["y1"], meta["y2"]], [-96_000, 96_000], atol=1e-3)
    # no data exactly outside the radar's range; dry and raining pixels inside, at most ~30 mm/h
    x, y = make.grid()
    outside = np.hypot(*np.meshgrid(x, y)) > make.RANGE_M
    assert np.array_equal(np.isnan(precip), outside)
    inside = precip[~outside]
    assert (inside == 0).any() and (inside > 1).any() and inside.max() <= 30.0
    # the hand-written LAEA inverse agrees with PROJ
    lon, lat = make.laea_inverse(np.array([-128e3, 50e3]), np.array([96e3, -70e3]))
    px, py = pyproj.Proj(make.PROJ4)(lon, lat)
    np.testing.assert_allclose([px, py], [[-128e3, 50e3], [96e3, -70e3]], atol=1e-3)
    # seeded: the same seed writes the same values
    again = make.rain_fields(N_FRAMES, seed=3)
    np.testing.assert_allclose(precip, np.round(again[2] / make.GAIN) * make.GAIN, atol=1e-9)


def test_prepare_odim_frames_into_a_projected_store(tmp_path: Path, frames: list[Path]) -> None:
    import pyproj
    import xarray as xr

    from sciadapt.datamodules.gridded import GriddedDataModule
    from tests.data.radar import make

    out = tmp_path / "odim.zarr"
    shuffled = [str(frames[i]) for i in (5, 0, 7, 2, 1, 6, 3, 4)]
    assert _prepare(*shuffled, str(out)) == 0
    st = xr.open_zarr(out, consolidated=False)
    da = st["precip_rate"]
    assert da.shape == (N_FRAMES, make.NY, make.NX)
    assert da.attrs["units"] == "mm/h" and da.attrs["accutime"] == 5.0
    times = st["time"].values
    assert np.all(np.diff(times) == np.timedelta64(5, "m"))
    crs = pyproj.CRS.from_wkt(st["crs"].attrs["crs_wkt"])
    assert crs.coordinate_operation.method_name == "Lambert Azimuthal Equal Area (Spherical)"
    assert np.all(np.diff(st["y"].values) < 0) and np.isclose(st["x"].values[0], -127_000.0)
    x, y = np.meshgrid(st["x"].values, st["y"].values)
    outside = np.hypot(x, y) > make.RANGE_M
    values = da.values
    assert np.isnan(values[:, outside]).all() and not np.isnan(values[:, ~outside]).any()
    dm = GriddedDataModule(path=str(out), num_workers=0, n_input=2)
    assert dm.grid_kind == "projected" and dm.grid_shape == (make.NY, make.NX)
    assert pyproj.CRS.from_wkt(dm.crs_wkt) == crs
    np.testing.assert_allclose(dm.area_weights, 1.0, atol=1e-6)  # equal-area projection
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    mask = batch["x_mask"][0, 0, 0].numpy().astype(bool)
    assert np.array_equal(mask, ~outside)


def test_accumulations_are_read_as_mm(tmp_path: Path) -> None:
    import xarray as xr

    from tests.data.radar import make

    make.write_archive(tmp_path / "acrr", frames=3, seed=1, quantity="ACRR")
    out = tmp_path / "acrr.zarr"
    assert _prepare(str(tmp_path / "acrr" / "*.h5"), str(out)) == 0
    da = xr.open_zarr(out, consolidated=False)["precip_accum"]
    assert da.attrs["units"] == "mm" and da.attrs["accutime"] == 5.0
    rate = make.rain_fields(3, seed=1)
    np.testing.assert_allclose(da.values, rate / 12.0, atol=0.006)


def _set_attr(path: Path, attr: str, value: float | None) -> None:
    """Set (or, with None, delete) an attribute of the frame's ``dataset1/data1/what``."""
    import h5py

    with h5py.File(path, "r+") as f:
        what = f["dataset1/data1/what"]
        if value is None:
            del what.attrs[attr]
        else:
            what.attrs[attr] = np.float64(value)


def test_unknown_missing_value_code_is_refused(
    tmp_path: Path, frames: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import xarray as xr

    pattern, out = str(tmp_path / "radar" / "*.h5"), tmp_path / "bad.zarr"
    # a later frame: found while writing, after the temporary store was started
    _set_attr(frames[4], "nodata", None)
    assert _prepare(pattern, str(out)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert frames[4].name in err and "dataset1/data1/what has no 'nodata' attribute" in err
    assert "--nodata VALUE" in err and "uint16" in err and "65535" in err
    assert not out.exists() and not list(tmp_path.glob("bad.zarr.*"))
    # the first frame: found before anything is written
    _set_attr(frames[0], "nodata", None)
    assert _prepare(pattern, str(out)) == 2
    assert frames[0].name in capsys.readouterr().err.replace("\n", "")
    assert not out.exists() and not list(tmp_path.glob("bad.zarr.*"))
    # the fix the message names: the code on the command line reads what the declared code reads
    assert _prepare(pattern, str(out), "--nodata", "65535") == 0
    for f in (frames[0], frames[4]):
        _set_attr(f, "nodata", 65535)
    good = tmp_path / "good.zarr"
    assert _prepare(pattern, str(good)) == 0
    a, b = xr.open_zarr(out, consolidated=False), xr.open_zarr(good, consolidated=False)
    assert np.isnan(a["precip_rate"].values).any()
    np.testing.assert_array_equal(a["precip_rate"].values, b["precip_rate"].values)


def test_nodata_option_needs_an_odim_format(
    tmp_path: Path, frames: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from sciadapt.cli import main

    out = str(tmp_path / "s.zarr")
    rc = main(["data", "prepare", "--format", "knmi_hdf5", str(frames[0]), out, "--nodata", "0", "--no-progress"])
    assert rc == 2 and "--nodata is for ODIM files" in capsys.readouterr().err.replace("\n", " ")
    assert not Path(out).exists()


def test_missing_undetect_reads_the_same_values(tmp_path: Path, frames: list[Path]) -> None:
    """``undetect`` absent: pysteps takes raw 0 as "no rain", which decodes to ``offset`` (0 mm/h) anyway."""
    from pysteps.io import get_method

    read = get_method("odim_hdf5", "importer")
    before = read(str(frames[1]))[0]
    _set_attr(frames[1], "undetect", None)
    after = read(str(frames[1]))[0]
    np.testing.assert_array_equal(before, after)
    assert _prepare(str(frames[1]), str(frames[2]), str(tmp_path / "u.zarr")) == 0
