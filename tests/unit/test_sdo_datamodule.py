"""The ``sdo`` datamodule: FITS/JPEG 2000 solar image series into ``B C T H W`` samples.

Synthetic series come from tests/data/sdo/make.py (seeded, real header keys); the real sunpy test
files in ../shared/data/solar/sunpy are read by the tests marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("astropy", reason="the sdo datamodule reads FITS with astropy: pip install 'sciadapt[solar]'")

from astropy.io import fits  # noqa: E402

from sciadapt.config import argument_problems  # noqa: E402
from sciadapt.datamodules import sdo  # noqa: E402
from sciadapt.errors import ConfigError, DataError  # noqa: E402
from sciadapt.registry import DATAMODULES  # noqa: E402
from tests.conftest import REPO, SHARED_DATA  # noqa: E402
from tests.data.sdo import make  # noqa: E402

SUNPY_FILES = SHARED_DATA / "solar" / "sunpy"
T0 = int(np.datetime64(make.START, "s").astype(np.int64))


def build(folder: Path, **kw: Any) -> sdo.SdoDataModule:
    cfg: dict[str, Any] = {"path": str(folder), "channels": make.patterns(), "num_workers": 0, "batch_size": 4}
    cfg.update(kw)
    dm = DATAMODULES.build("sdo", **cfg)
    assert isinstance(dm, sdo.SdoDataModule)
    return dm


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sdo")
    make.write_series(folder, n_frames=20, size=24, seed=0)
    return folder


def edit_header(path: Path, **keys: Any) -> None:
    """Set (value) or delete (None) header keys of a written FITS file."""
    with fits.open(path, mode="update") as hdul:
        for k, v in keys.items():
            if v is None:
                del hdul[0].header[k]
            else:
                hdul[0].header[k] = v


# ------------------------------------------------------------------------------------- samples
def test_samples_are_c_t_h_w_with_hours_to_the_last_input(series: Path) -> None:
    dm = build(series, image_size=16, time_steps=[-2, -1, 0], lead=2, split_ratios=[0.4, 0.3, 0.3])
    dm.setup("fit")
    facts = dm.facts()
    assert json.loads(json.dumps(facts)) == facts
    assert facts["channel_names"] == facts["bands"] == ["aia171", "aia193", "hmi"]
    assert facts["channels"] == facts["in_chans"] == 3
    assert facts["wavelengths"] == [171.0, 193.0, 6173.0]
    assert (facts["num_frames"], facts["image_size"], facts["lead"], facts["lead_hours"]) == (3, 16, 2, 2.0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (4, 3, 3, 16, 16) and batch["x"].dtype == torch.float32
    assert batch["y"].shape == batch["mask"].shape == (4, 3, 16, 16)
    assert torch.isfinite(batch["x"]).all() and torch.isfinite(batch["y"]).all()
    # hours from each input frame to the last one, from the headers' times (seconds of jitter)
    deltas = batch["time_delta_input"]
    assert deltas.shape == (4, 3)
    assert torch.allclose(deltas, torch.tensor([2.0, 1.0, 0.0]).expand(4, 3), atol=0.02)
    assert (deltas[:, -1] == 0).all()
    assert torch.allclose(batch["meta"]["lead_hours"], torch.full((4,), 2.0), atol=0.02)
    assert "20 complete frames" in dm.describe() and "samples train" in dm.describe()


def test_exposure_is_divided_out_and_hmi_turned_north_up(series: Path) -> None:
    """With no scaling, no limb and the native size, x is the generator's north-up truth in DN/s and gauss,
    whatever each frame's EXPTIME (every seventh frame has a short one)."""
    dm = build(series, scaling="none", normalise="none", limb="off", time_steps=[0])
    ds = dm.dataset("train")
    seen_short = False
    for i in range(len(ds)):
        sample = ds[i]
        hours = (int(sample["meta"]["time"]) - T0) / 3600
        seen_short |= round(hours) % 7 == 3
        for c, name in enumerate(dm.channel_names):
            truth = make.sun(name, 24, hours, seed=0)
            got = sample["x"][c, 0].numpy()
            ok = np.isfinite(truth)
            np.testing.assert_allclose(got[ok], truth[ok], rtol=1e-5, atol=1e-3, err_msg=f"{name} at {hours} h")
            assert (got[~ok] == 0).all()
            assert (sample["mask"][c].numpy().astype(bool) == np.isfinite(make.sun(name, 24, hours + 1))).all()
    assert seen_short


def test_limb_mask_zeroes_or_flags_pixels_off_the_disk(series: Path) -> None:
    cx, cy, r = make.geometry(24)
    v, u = np.mgrid[0:24, 0:24]
    disk = np.hypot(u - cx, v - cy) <= r
    masked = build(series, normalise="none", scaling="none").dataset("val")[0]
    for c in range(3):
        assert (masked["mask"][c].numpy()[~disk] == 0).all()
        assert (masked["x"][c, :, ~disk] == 0).all() and (masked["y"][c][~disk] == 0).all()
        assert masked["mask"][c].numpy()[disk].mean() > 0.97  # HMI's NaN limb pixels aside
    flagged = build(series, normalise="none", scaling="none", limb="flag").dataset("val")[0]
    assert (flagged["mask"][0].numpy()[~disk] == 0).all()
    assert (flagged["x"][0, -1].numpy()[~disk] > 0).all()  # AIA's corona stays in the input
    wider = build(series, normalise="none", limb_radius=1.2).dataset("val")[0]
    assert wider["mask"][0].sum() > masked["mask"][0].sum()


def test_resampling_keeps_geometry_and_leaves_out_missing_pixels() -> None:
    img = np.full((40, 40), 5.0, np.float32)
    img[:, :20] = np.nan
    out = sdo.resample(img, 10)
    assert out.shape == (10, 10)
    assert np.isnan(out[:, :4]).all() and np.allclose(out[:, 6:], 5.0)
    disk = sdo.Disk(cx=19.5, cy=9.5, rx=8.0, ry=8.0)
    small = sdo.disk_mask(disk, (40, 40), 20, 1.0)
    assert small[4, 9] and small[4, 10] and not small[4, 15] and small.sum() == pytest.approx(np.pi * 16, rel=0.15)


def test_splits_are_chronological_and_never_share_a_frame(series: Path) -> None:
    dm = build(series, split_ratios=[0.5, 0.25, 0.25])
    dm.setup()
    spans = {}
    for split in sdo.SPLITS:
        starts = dm.dataset(split).starts
        assert len(starts)
        spans[split] = (starts.min() - 1, starts.max() + 1)  # inputs at -1 and 0, target at +1
    assert spans["train"][1] < spans["val"][0] and spans["val"][1] < spans["test"][0]
    by_date = build(series, split="dates", split_dates={"val": "2011-02-15T12:00", "test": "2011-02-15T16:00"})
    by_date.setup()
    test_first = int(by_date.dataset("test").starts.min()) - 1
    assert test_first * 3600 == T0 + 16 * 3600
    assert int(by_date.dataset("train").starts.max()) + 1 < T0 // 3600 + 12


def test_gaps_and_off_grid_files_drop_the_samples_that_need_them(tmp_path: Path) -> None:
    make.write_series(tmp_path, n_frames=12, size=16, skip={"hmi": [5]})
    dm = build(tmp_path, split_ratios=[1.0, 0.0, 0.0])
    starts = set(dm.dataset("train").starts.tolist())
    slot = T0 // 3600
    assert not {slot + 4, slot + 5, slot + 6} & starts and {slot + 1, slot + 7} <= starts
    assert "11 complete frames" in dm.describe()
    tight = build(tmp_path, split_ratios=[1.0, 0.0, 0.0], tolerance_minutes=0.1)
    with pytest.raises(DataError, match="no train sample.*tolerance_minutes"):
        tight.setup()


@pytest.mark.parametrize("backbone", ["surya_tiny", "swin3d_tiny"])
def test_image_series_backbones_build_from_the_facts(series: Path, backbone: str) -> None:
    """Surya (with time_delta_input) and the 3-D Swin take in_chans / bands, num_frames and img_size from
    the data, and forecast the next frame in y's shape."""
    from sciadapt.config import call_builder
    from sciadapt.registry import BACKBONES

    if backbone not in BACKBONES.list():
        pytest.skip(f"no {backbone} backbone registered")
    dm = build(series, image_size=16, split_ratios=[0.6, 0.2, 0.2])
    batch = next(iter(dm.val_dataloader()))
    model = call_builder("backbone", {"name": backbone, "head": "forecast"}, dm.facts()).eval()
    extra = {"time_delta_input": batch["time_delta_input"]} if backbone == "surya_tiny" else {}
    with torch.no_grad():
        forecast = model.forward_features(batch["x"], **extra)[-1]
    assert forecast.shape == batch["y"].shape


# ------------------------------------------------------------------------------- statistics
def test_statistics_come_from_train_frames_and_round_trip(series: Path, tmp_path: Path) -> None:
    dm = build(series, image_size=16)
    state = json.loads(json.dumps(dm.scaler_state()))
    assert state["channel_names"] == ["aia171", "aia193", "hmi"] and state["scaling"] == "log"
    x = torch.cat([b["x"] for b in dm.train_dataloader()], dim=0)  # (N, C, T, H, W)
    on = torch.cat([b["mask"] for b in dm.train_dataloader()], dim=0).bool()
    for c in range(3):
        vals = x[:, c, -1][on[:, c]]
        assert abs(float(vals.mean())) < 0.25 and 0.7 < float(vals.std()) < 1.3
    # back to physical units: y on the disk is the exposure-normalised rate
    sample = dm.dataset("test")[0]
    hours = (int(sample["meta"]["time"]) - T0) / 3600 + 1
    phys = dm.physical(sample["y"])
    truth = sdo.resample(make.sun("aia171", 24, hours).astype(np.float32), 16)
    ok = sample["mask"][0].bool().numpy()
    np.testing.assert_allclose(phys[0].numpy()[ok], truth[ok], rtol=1e-3)

    make.write_series(tmp_path, n_frames=20, size=24, seed=3)
    other = build(tmp_path, image_size=16)
    assert other.scaler_state()["mean"] != state["mean"]
    other.load_scaler_state(state)
    assert json.loads(json.dumps(other.scaler_state())) == state
    renamed = build(tmp_path, image_size=16, channels={"aia171": "aia_171_*", "aia193": "aia_193_*"})
    with pytest.raises(DataError) as e:
        renamed.load_scaler_state(state)
    assert "['aia171', 'aia193', 'hmi']" in str(e.value) and "['aia171', 'aia193']" in str(e.value)
    with pytest.raises(DataError, match="data.scaling=log.*data.scaling=asinh"):
        build(tmp_path, image_size=16, scaling="asinh").load_scaler_state(state)


# ---------------------------------------------------------------------------------- bad input
def test_missing_header_keys_name_the_key_the_file_and_the_fix(tmp_path: Path) -> None:
    files = make.write_series(tmp_path, n_frames=6, size=16)
    bad = files["aia193"][2]
    edit_header(bad, EXPTIME=None)
    with pytest.raises(DataError) as e:
        build(tmp_path).setup()
    assert str(bad) in str(e.value) and "EXPTIME" in str(e.value) and "data.exposure=none" in str(e.value)
    assert e.value.exit_code == 2
    build(tmp_path, exposure="none", split_ratios=[1.0, 0.0, 0.0]).setup()

    edit_header(bad, EXPTIME=2.0, RSUN_OBS=None, R_SUN=None)
    with pytest.raises(DataError, match=r"aia_193.*RSUN_OBS.*data.limb=off"):
        build(tmp_path).setup()
    build(tmp_path, limb="off", split_ratios=[1.0, 0.0, 0.0]).setup()

    edit_header(bad, **{"DATE-OBS": None, "T_OBS": None})
    with pytest.raises(DataError, match=r"aia_193.*DATE-OBS, DATE_OBS, T_OBS.*Fix: add DATE-OBS"):
        build(tmp_path, limb="off").setup()
    edit_header(bad, **{"DATE-OBS": "yesterday"})
    with pytest.raises(DataError, match="DATE-OBS='yesterday'"):
        build(tmp_path, limb="off").setup()


def test_images_of_different_sizes_need_image_size(tmp_path: Path) -> None:
    files = make.write_series(tmp_path, n_frames=6, size=16, sizes={"hmi": 20})
    with pytest.raises(DataError) as e:
        build(tmp_path).setup()
    msg = str(e.value)
    assert str(files["aia171"][0]) in msg and str(files["hmi"][0]) in msg and "data.image_size" in msg
    dm = build(tmp_path, image_size=12, split_ratios=[1.0, 0.0, 0.0])
    assert next(iter(dm.train_dataloader()))["x"].shape[-2:] == (12, 12)


def test_a_wavelength_other_than_the_channel_name_says_is_refused(tmp_path: Path) -> None:
    make.write_series(tmp_path, n_frames=4, size=16, channels=("aia193",))
    with pytest.raises(DataError, match=r"aia_193_.*data.channels.aia171.*WAVELNTH=193"):
        build(tmp_path, channels={"aia171": "aia_193_*.fits"}).setup()
    with pytest.raises(DataError, match="matches no file"):
        build(tmp_path, channels={"aia193": "aia_193_*.fits", "hmi": "hmi_*.fits"}).setup()
    with pytest.raises(DataError, match="matches both data.channels.a"):
        build(tmp_path, channels={"a": "aia_193_*.fits", "b": "*.fits"}).setup()


def test_corrupt_and_unreadable_files_are_named(tmp_path: Path) -> None:
    files = make.write_series(tmp_path, n_frames=6, size=16)
    garbage = files["aia171"][1]
    garbage.write_bytes(b"not a FITS file at all " * 40)
    with pytest.raises(DataError, match=rf"{garbage}: not a readable FITS file.*download it again") as e:
        build(tmp_path).setup()
    assert e.value.exit_code == 2
    make.write_series(tmp_path, n_frames=6, size=16)
    cut = files["hmi"][3]
    cut.write_bytes(cut.read_bytes()[:3500])
    with pytest.raises(DataError, match=rf"{cut}: truncated FITS file"):
        build(tmp_path).setup()
    cut.unlink()
    (tmp_path / "hmi_m_notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a FITS .* or JPEG 2000"):
        build(tmp_path, channels={"hmi": "hmi_m_*"}).setup()


def test_a_rotated_image_is_refused_unless_north_up_is_off(tmp_path: Path) -> None:
    files = make.write_series(tmp_path, n_frames=5, size=16, channels=("aia171",))
    edit_header(files["aia171"][0], CROTA2=45.0)
    with pytest.raises(DataError, match="rotated by 45.00 degrees.*north_up=false"):
        build(tmp_path, channels={"aia171": "aia_*"}).setup()
    build(tmp_path, channels={"aia171": "aia_*"}, north_up=False, split_ratios=[1.0, 0.0, 0.0]).setup()


def test_settings_that_contradict_each_other_are_one_config_error(series: Path) -> None:
    with pytest.raises(ConfigError) as e:
        build(series, time_steps=[0, -1], tolerance_minutes=45.0, split="dates", split_ratios=[0.5, 0.5, 0.5])
    text = str(e.value)
    for needle in ("data.time_steps", "data.tolerance_minutes", "data.split_dates", "data.split_ratios"):
        assert needle in text, needle
    assert e.value.exit_code == 2
    with pytest.raises(ConfigError, match="data.limb"):
        build(series, limb="disk")
    with pytest.raises(ConfigError, match="data.split=ratio ignores it"):
        build(series, split_dates={"val": "2011-01-01", "test": "2011-02-01"})


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "data").glob("sdo*.yaml")), ids=lambda p: p.stem)
def test_bundled_configs_fit_the_schema(path: Path) -> None:
    import yaml

    cfg = yaml.safe_load(path.read_text())
    assert cfg.pop("name") == "sdo" and cfg.pop("path") == "???"
    assert argument_problems(sdo.SdoDataModule, cfg, "data") == []
    dm = sdo.SdoDataModule(path="unused", **cfg)  # the settings agree with each other
    if path.stem == "sdo_surya":  # the names and order the Surya backbone was trained on
        from sciadapt.backbones.surya import SDO_CHANNELS

        assert tuple(dm.channel_names) == SDO_CHANNELS


# -------------------------------------------------------------------------------- JPEG 2000
def test_helioviewer_jpeg2000_pixels_and_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = np.zeros((32, 32))
    img[:8] = 200.0  # the southern rows (row 0 is the bottom in FITS order)
    keys = make.header_for("aia171", 32, np.datetime64("2013-06-24T17:31:30.840"), 2.0)
    path = make.write_jp2(tmp_path / "2013_06_24__17_31_30_84__SDO_AIA_AIA_171.jp2", img, keys)
    header, shape, kind = sdo.read_header(path)
    assert (shape, kind, header["WAVELNTH"], header["CROTA2"]) == ((32, 32), "jp2", 171, 0.02)
    assert sdo.exposure_of(header, kind, path) is None  # display-scaled bytes stay as they are
    np.testing.assert_array_equal(sdo.read_pixels(path), img)
    disk = sdo.disk_of(header, shape, path)
    cx, cy, r = make.geometry(32)
    assert disk.cx == pytest.approx(cx, abs=0.01) and disk.cy == pytest.approx(cy, abs=0.01)
    assert disk.rx == pytest.approx(r)

    series = tmp_path / "mixed"
    make.write_series(series, n_frames=3, size=32, channels=("aia171",))
    make.write_jp2(series / "aia_171_helioviewer.jp2", img, keys)
    with pytest.raises(DataError, match="data.channels.aia171 mixes units"):
        build(series, channels={"aia171": "aia_171_*"}).setup()

    from PIL import features

    monkeypatch.setattr(features, "check", lambda name: False)
    with pytest.raises(DataError, match="without JPEG 2000.*pip install"):
        sdo.read_pixels(path)
    plain = tmp_path / "plain.jp2"
    plain.write_bytes(path.read_bytes()[: path.read_bytes().rfind(b"xml ") - 4])
    with pytest.raises(DataError, match="no XML box with a FITS header"):
        sdo.read_header(plain)


def test_rice_compressed_fits_as_jsoc_exports_it(tmp_path: Path) -> None:
    """The image and its keys in a compressed HDU after an empty primary one."""
    data = make.sun("aia171", 32, 0.0) * 2.0
    hdu = fits.CompImageHDU(data.astype(np.float32), compression_type="RICE_1", quantize_level=-0.01)
    for k, v in make.header_for("aia171", 32, np.datetime64("2011-02-15T00:00:09"), 2.0).items():
        hdu.header[k] = v
    path = tmp_path / "aia.lev1_euv_12s.2011-02-15T000009Z.171.image_lev1.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    header, shape, kind = sdo.read_header(path)
    assert (shape, kind, header["WAVELNTH"], sdo.exposure_of(header, kind, path)) == ((32, 32), "fits", 171, 2.0)
    np.testing.assert_allclose(sdo.read_pixels(path), data, atol=0.01)


def test_jsoc_tai_times_are_utc() -> None:
    where = Path("x.fits")
    assert sdo.parse_time("2014.03.01_00:01:25_TAI", "T_OBS", where) == sdo.parse_time(
        "2014-03-01T00:00:50", "DATE-OBS", where
    )  # TAI - UTC = 35 s in 2014
    assert sdo.parse_time("2011-02-15T00:00:01.34Z", "T_OBS", where) % 1000 == 340
    old_style = {"DATE-OBS": "2004-03-01", "TIME-OBS": "00:00:10.515"}
    assert sdo._time_of(old_style, where) == sdo.parse_time("2004-03-01T00:00:10.515", "DATE-OBS", where)
    with pytest.raises(DataError, match="2011-02-30"):
        sdo.parse_time("2011-02-30T00:00:00", "DATE-OBS", where)


# ------------------------------------------------------------------------- real sunpy files
REAL = {
    # file: (shape, kind, exposure seconds, turned north-up, disk radius in pixels)
    "aia_171_level1.fits": ((128, 128), "fits", 2.000191, False, 971.812597 / 19.183648),
    "efz20040301.000010_s.fits": ((128, 128), "fits", 13.0, False, 372.27),
    "resampled_hmi.fits": ((100, 100), "fits", None, True, 968.660583 / 20.65575936),
    "2013_06_24__17_31_30_84__SDO_AIA_AIA_193.jp2": ((410, 410), "jp2", None, False, 944.30828 / 0.6 * 410 / 4096),
    "2023_01_31__03_39_23_200__SDO_HMI_HMI_continuum.jp2": ((512, 512), "jp2", None, False, 973.96844 / 4.8),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL))
def test_real_sunpy_files(name: str, tmp_path: Path) -> None:
    path = SUNPY_FILES / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared/data/solar/sunpy)")
    shape, kind, exposure, flip, radius = REAL[name]
    dm = build(tmp_path, channels={"c": "*"})
    frame = dm._frame_of(path)
    assert (frame.shape, frame.exposure, frame.flip) == (shape, exposure, flip)
    assert frame.disk is not None and frame.disk.rx == pytest.approx(radius, rel=1e-6)
    pixels = sdo.read_pixels(path)
    assert pixels.shape == shape
    inside = sdo.disk_mask(frame.disk, shape, shape[0], 1.0)
    if name == "resampled_hmi.fits":  # HMI leaves the sky NaN: every pixel on the disk is finite
        assert np.isfinite(pixels[inside[::-1, ::-1]]).all()
    if "HMI_continuum" in name:  # a sharp limb: the disk is bright, the sky black
        assert pixels[inside].min() > 20 and np.median(pixels[~inside]) == 0
    reader = sdo.FrameReader(64, "mask", 1.0, 0)
    img, disk = reader.read(frame)
    assert img.shape == (64, 64) and disk is not None


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in REAL if n.endswith(".fits")])
def test_disk_geometry_agrees_with_sunpy(name: str) -> None:
    path = SUNPY_FILES / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared/data/solar/sunpy)")
    sunpy_map = pytest.importorskip("sunpy.map", reason="pip install 'sciadapt[solar]'")
    units = pytest.importorskip("astropy.units")
    from astropy.coordinates import SkyCoord

    m = sunpy_map.Map(path)
    centre = m.world_to_pixel(SkyCoord(0 * units.arcsec, 0 * units.arcsec, frame=m.coordinate_frame))
    header, shape, _ = sdo.read_header(path)
    disk = sdo.disk_of(header, shape, path)
    assert disk.cx == pytest.approx(float(centre.x.value), abs=0.01)
    assert disk.cy == pytest.approx(float(centre.y.value), abs=0.01)
    assert disk.rx == pytest.approx(float((m.rsun_obs / m.scale[0]).to_value("pix")), rel=1e-4)
    assert m.exposure_time is None or sdo.exposure_of(header, "fits", path) == pytest.approx(m.exposure_time.value)
