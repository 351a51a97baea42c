"""Solar irradiance data and scores: the field's formats read by pvlib, the site and clock checks, the
clear-sky index, date splits, and the W/m^2 scores of the ``solar_forecasting`` task.

Files are tiny and generated in ``tmp_path`` (a clear sky with seeded clouds at a real site); the real files
of ``../shared/data/solar`` are read where present. Everything skips when pvlib is not installed.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

pvlib = pytest.importorskip("pvlib", reason="pvlib is not installed (pip install 'sciadapt[solar]')")

from sciadapt.datamodules import solar_formats as solar  # noqa: E402
from sciadapt.errors import ConfigError, DataError  # noqa: E402
from sciadapt.metrics.solar import irradiance_metrics, slot_climatology, to_irradiance  # noqa: E402
from sciadapt.registry import DATAMODULES  # noqa: E402

SHARED = Path(__file__).parents[3] / "shared/data/solar"
PSM3_2017 = SHARED / "test_psm3_2017.csv"
# the site of that file (pvlib's tests/iotools/test_psm3.py), which it was saved without
PSM3_SITE = {"latitude": 40.5137, "longitude": -108.5449, "timezone": "-07:00"}
# Boulder, Colorado: local standard time UTC-07:00
LAT, LON, ALT = 40.0, -105.25, 1650.0


def clear_sky_day(
    periods: int, freq: str = "30min", tz: str = "Etc/GMT+7", lat: float = LAT, lon: float = LON, seed: int = 0
) -> pd.DataFrame:
    """``periods`` local-time rows from 2019-03-01: ``ghi/dni/dhi`` (a clear sky dimmed by seeded clouds)
    and ``temp_air``, indexed by tz-aware timestamps."""
    index = pd.date_range("2019-03-01", periods=periods, freq=freq, tz=tz)
    loc = pvlib.location.Location(lat, lon, altitude=ALT)
    clear = loc.get_clearsky(index, model="ineichen")
    rng = np.random.default_rng(seed)
    cloud = np.clip(0.75 + 0.25 * np.sin(np.arange(periods) / 7.0) + rng.normal(0.0, 0.05, periods), 0.1, 1.0)
    return pd.DataFrame(
        {
            "ghi": (clear["ghi"] * cloud).round(1),
            "dni": (clear["dni"] * cloud).round(1),
            "dhi": clear["dhi"].round(1),
            "temp_air": (5 + 5 * np.sin(np.arange(periods) / 48 * 2 * np.pi)).round(1),
        },
        index=index,
    )


def write_psm3(path: Path, frame: pd.DataFrame, meta: dict[str, str] | None = None) -> Path:
    """An NSRDB PSM3 SAM CSV: two metadata rows, the header row, the data."""
    fields = (
        meta
        if meta is not None
        else {
            "Source": "NSRDB",
            "Location ID": "1",
            "City": "-",
            "State": "-",
            "Country": "-",
            "Latitude": str(LAT),
            "Longitude": str(LON),
            "Time Zone": "-7",
            "Elevation": str(int(ALT)),
            "Local Time Zone": "-7",
        }
    )
    idx = pd.DatetimeIndex(frame.index)
    body = pd.DataFrame(
        {
            "Year": idx.year,
            "Month": idx.month,
            "Day": idx.day,
            "Hour": idx.hour,
            "Minute": idx.minute,
            "GHI": frame["ghi"].to_numpy(),
            "DNI": frame["dni"].to_numpy(),
            "DHI": frame["dhi"].to_numpy(),
            "Temperature": frame["temp_air"].to_numpy(),
        }
    )
    text = ",".join(fields) + "\n" + ",".join(fields.values()) + "\n" + body.to_csv(index=False)
    path.write_text(text)
    return path


def build(path: Path | str, **kw: Any) -> Any:
    cfg: dict[str, Any] = {
        "context_length": 48,
        "horizon": 6,
        "target_columns": ["ghi"],
        "split": "ratio",
        "batch_size": 8,
        "eval_batch_size": 16,
    }
    cfg.update(kw)
    return DATAMODULES.build("timeseries", path=str(path), **cfg)


# ---------------------------------------------------------------------------------------------- config keys


def test_timezones_from_config_text() -> None:
    assert solar.parse_timezone("UTC") == "UTC"
    assert solar.parse_timezone("-07:00") == dt.timezone(dt.timedelta(hours=-7))
    assert solar.parse_timezone("UTC+5:30") == dt.timezone(dt.timedelta(hours=5, minutes=30))
    assert str(solar.parse_timezone("Etc/GMT+7")) == "Etc/GMT+7"
    with pytest.raises(ConfigError, match="data.timezone: 'Mars/Olympus' is not a time zone"):
        solar.parse_timezone("Mars/Olympus")


def test_bad_solar_keys_are_config_errors_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        build(tmp_path / "x.csv", latitude=95.0, timezone="nowhere", split="dates", split_dates=["2019-03-05"])
    text = str(ei.value)
    assert "data.latitude: must be between -90 and 90" in text
    assert "data.timezone: 'nowhere'" in text
    assert "data.split_dates: data.split=dates needs [val_start, test_start]" in text
    with pytest.raises(ConfigError, match="data.timestamp_parts: data.format=psm3 reads its timestamps itself"):
        build(tmp_path / "x.csv", format="psm3", timestamp_parts=["Year", "Month", "Day"])


# ---------------------------------------------------------------------------------------------- formats


def test_psm3_metadata_gives_the_site_and_the_clock(tmp_path: Path) -> None:
    path = write_psm3(tmp_path / "psm3.csv", clear_sky_day(48 * 6))
    dm = build(path, format="psm3", exog_columns=["temp_air", "cos_zenith_ahead"], target_transform="clear_sky_index")
    dm.setup()
    assert dm.site.latitude == LAT and dm.site.longitude == LON and dm.site.altitude == ALT
    assert dm.site.origin == {"latitude": "file", "longitude": "file", "altitude": "file", "timezone": "file"}
    assert str(dm.timestamps.tz) == "Etc/GMT+7" and dm.timestamps[0].hour == 0
    assert "Ineichen" in dm.site.clear_sky_model and "site 40.0000 N" in dm.describe()
    assert dm.facts()["target_transform"] == "clear_sky_index"
    batches = list(dm.test_dataloader())
    batch = batches[0]
    assert batch["meta"]["clear_sky"].shape == batch["y"].shape == batch["meta"]["irradiance"].shape
    # the target is the clear-sky index (unscaled): near the cloud factor by day, masked at night
    y, mask = (torch.cat([b[k] for b in batches]) for k in ("y", "mask"))
    clear = torch.cat([b["meta"]["clear_sky"] for b in batches])
    assert torch.all((y >= 0) & (y <= solar.K_MAX))
    assert torch.all(mask[clear == 0] == 0) and mask.sum() > 0
    assert dm.scaler_state()["mean"][0] == 0.0 and dm.scaler_state()["std"][0] == 1.0


def test_config_overrides_the_file_metadata(tmp_path: Path) -> None:
    path = write_psm3(tmp_path / "psm3.csv", clear_sky_day(48 * 4))
    dm = build(path, format="psm3", latitude=40.01, altitude=1700.0, target_transform="clear_sky_index")
    dm.setup()
    assert (dm.site.latitude, dm.site.altitude) == (40.01, 1700.0)
    assert dm.site.origin["latitude"] == "config" and dm.site.origin["longitude"] == "file"


def test_psm3_without_latitude_asks_for_it(tmp_path: Path) -> None:
    meta = {"Source": "NSRDB", "Location ID": "1", "Time Zone": "-7", "Elevation": "1650", "Local Time Zone": "-7"}
    path = write_psm3(tmp_path / "no_site.csv", clear_sky_day(48 * 4), meta)
    with pytest.raises(DataError) as ei:
        build(path, format="psm3", target_transform="clear_sky_index").setup()
    text = str(ei.value)
    assert str(path) in text and "states no latitude and no longitude" in text
    assert "data.latitude=<degrees north> data.longitude=<degrees east, west negative>" in text
    # the config supplies what the file lacks
    dm = build(path, format="psm3", latitude=LAT, longitude=LON, target_transform="clear_sky_index")
    dm.setup()
    assert dm.site.origin["latitude"] == "config" and dm.n_windows("test") > 0


def test_a_longitude_with_the_wrong_sign_is_caught_by_the_sun(tmp_path: Path) -> None:
    path = write_psm3(tmp_path / "psm3.csv", clear_sky_day(48 * 6))
    with pytest.raises(DataError) as ei:
        build(path, format="psm3", longitude=105.25, target_transform="clear_sky_index").setup()
    text = str(ei.value)
    assert str(path) in text and "GHI does not follow the clear-sky GHI" in text
    assert "night" in text and "the longitude sign looks wrong" in text and "set data.longitude=-105.25" in text


def test_local_timestamps_without_a_zone_say_which_zone_they_look_like(tmp_path: Path) -> None:
    frame = clear_sky_day(48 * 4).tz_localize(None).rename_axis("date").reset_index()
    path = tmp_path / "naive.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError) as ei:
        build(path, latitude=LAT, longitude=LON, target_transform="clear_sky_index").setup()
    text = str(ei.value)
    assert str(path) in text and "carry no time zone" in text
    assert "local standard time UTC-07:00" in text and "data.timezone=-07:00" in text
    # a clock on UTC is recognised as UTC
    utc = clear_sky_day(48 * 4).tz_convert("UTC").tz_localize(None).rename_axis("date").reset_index()
    utc.to_csv(path, index=False)
    with pytest.raises(DataError, match="looks to use UTC. Fix: set data.timezone=UTC"):
        build(path, latitude=LAT, longitude=LON, target_transform="clear_sky_index").setup()
    # plain csv data without solar physics needs no zone
    build(path, exog_columns=["temp_air"]).setup()


def test_timestamp_parts_compose_the_timestamp_of_a_csv(tmp_path: Path) -> None:
    path = write_psm3(tmp_path / "psm3.csv", clear_sky_day(48 * 3))
    table = tmp_path / "table.csv"
    table.write_text("".join(path.read_text().splitlines(keepends=True)[2:]))  # the rows without the metadata
    dm = build(
        table,
        timestamp_parts=["Year", "Month", "Day", "Hour", "Minute"],
        timezone="-07:00",
        target_columns=["GHI"],
        exog_columns=["Temperature"],
    )
    dm.setup()
    assert dm.target_columns == ["GHI"] and dm.freq == "30min" and str(dm.timestamps.tz) == "UTC-07:00"
    with pytest.raises(DataError, match=r"data.timestamp_parts names column\(s\) 'Yr' not in the file"):
        build(table, timestamp_parts=["Yr", "Month", "Day"], target_columns=["GHI"]).setup()


def test_split_dates(tmp_path: Path) -> None:
    path = write_psm3(tmp_path / "psm3.csv", clear_sky_day(48 * 10))
    dm = build(path, format="psm3", split="dates", split_dates=["2019-03-07", "2019-03-09"])
    n_train, n_val_end, _ = (b for _, b in (dm.split_bounds[k] for k in ("train", "val", "test")))
    assert dm.timestamps[n_train] == pd.Timestamp("2019-03-07", tz=dm.timestamps.tz)
    assert dm.timestamps[n_val_end] == pd.Timestamp("2019-03-09", tz=dm.timestamps.tz)
    with pytest.raises(DataError, match="leave .* the file runs from 2019-03-01"):
        _ = build(path, format="psm3", split="dates", split_dates=["2020-01-01", "2020-02-01"]).split_bounds


def test_tmy3_from_pvlib_package_data() -> None:
    path = Path(pvlib.__file__).parent / "data" / "723170TYA.CSV"
    dm = build(
        path,
        format="tmy3",
        target_columns=["ghi"],
        exog_columns=["temp_air", "ghi_clear"],
        target_transform="clear_sky_index",
        context_length=48,
        horizon=12,
    )
    dm.setup()
    assert dm.site.latitude == 36.1 and dm.site.longitude == -79.95 and dm.site.time_label == "end"
    assert dm.freq == "h" and len(dm.timestamps) == 8760


def _surfrad_text(frame: pd.DataFrame) -> str:
    idx = pd.DatetimeIndex(frame.index).tz_convert("UTC")
    lines = ["Boulder\n", f"   {LAT:.2f}  {LON:.2f}  {int(ALT)} m version 1\n"]
    for i, t in enumerate(idx):
        row = [t.year, t.dayofyear, t.month, t.day, t.hour, t.minute, t.hour + t.minute / 60, 90.0]
        row += [frame["ghi"].iloc[i], 0, 0, 0, frame["dni"].iloc[i], 0, frame["dhi"].iloc[i], 0]
        row += [0, 0] * 11 + [frame["temp_air"].iloc[i], 0, 50, 0, 2, 0, 180, 0, 840, 0]
        lines.append(" ".join(str(v) for v in row) + "\n")
    return "".join(lines)


def test_surfrad_midc_and_srml_files(tmp_path: Path) -> None:
    frame = clear_sky_day(48 * 3)
    dat = tmp_path / "bon19060.dat"
    dat.write_text(_surfrad_text(frame))
    dm = build(dat, format="surfrad", exog_columns=["temp_air"], target_transform="clear_sky_index")
    dm.setup()
    assert dm.site.latitude == LAT and str(dm.timestamps.tz) == "UTC" and dm.n_windows("test") > 0

    idx = pd.DatetimeIndex(frame.index)
    midc = pd.DataFrame(
        {
            "DATE (MM/DD/YYYY)": idx.strftime("%m/%d/%Y"),
            "MST": idx.strftime("%H:%M"),
            "Global CMP22 (vent/cor) [W/m^2]": frame["ghi"].to_numpy(),
            "Tower Dry Bulb Temp [deg C]": frame["temp_air"].to_numpy(),
        }
    )
    midc_path = tmp_path / "bms.csv"
    midc.to_csv(midc_path, index=False)
    with pytest.raises(DataError, match="states no latitude and no longitude"):
        build(midc_path, format="midc", target_transform="clear_sky_index").setup()
    dm = build(
        midc_path,
        format="midc",
        latitude=LAT,
        longitude=LON,
        exog_columns=["temp_air"],
        target_transform="clear_sky_index",
    )
    dm.setup()
    assert str(dm.timestamps.tz) in ("MST", "UTC-07:00") and dm.n_windows("test") > 0

    # SRML: Pacific standard time, hour labels 1..2400 ending each interval
    pst = clear_sky_day(24 * 4, freq="h", tz="Etc/GMT+8", lat=44.05, lon=-123.07)  # an hourly (PH) file
    end = pd.DatetimeIndex(pst.index) + pd.Timedelta("1h")
    midnight = (end.hour == 0) & (end.minute == 0)
    hhmm = np.where(midnight, 2400, end.hour * 100 + end.minute)
    doy = np.where(midnight, end.dayofyear - 1, end.dayofyear)
    rows = ["94255\t2019\t1000\t0\t9300\t0"] + [
        f"{d}\t{h}\t{g}\t11\t{t}\t11" for d, h, g, t in zip(doy, hhmm, pst["ghi"], pst["temp_air"], strict=True)
    ]
    srml = tmp_path / "EUPO1903.txt"
    srml.write_text("\n".join(rows) + "\n")
    dm = build(
        srml,
        format="srml",
        latitude=44.05,
        longitude=-123.07,
        target_columns=["ghi_0"],
        exog_columns=["temp_air_0"],
        target_transform="clear_sky_index",
        context_length=24,
    )
    dm.setup()
    assert dm.site.time_label == "start" and str(dm.timestamps.tz) == "Etc/GMT+8"


def test_an_unreadable_file_names_the_format(tmp_path: Path) -> None:
    path = tmp_path / "junk.dat"
    path.write_text("not a surfrad file\n1 2\n")
    with pytest.raises(DataError, match=r"cannot read .*junk.dat as data.format=surfrad"):
        build(path, format="surfrad").setup()


def test_a_target_that_is_no_irradiance_is_refused(tmp_path: Path) -> None:
    path = write_psm3(tmp_path / "psm3.csv", clear_sky_day(48 * 4))
    with pytest.raises(ConfigError, match=r"target\(s\) 'temp_air' .* are no irradiance component"):
        build(path, format="psm3", target_columns=["temp_air"], target_transform="clear_sky_index").setup()


@pytest.mark.skipif(not PSM3_2017.is_file(), reason=f"{PSM3_2017} is absent")
def test_the_real_psm3_2017_file() -> None:
    with pytest.raises(DataError, match=r"states no latitude and no longitude.*data.latitude="):
        build(PSM3_2017, format="psm3", target_transform="clear_sky_index").setup()
    dm = build(
        PSM3_2017,
        format="psm3",
        **PSM3_SITE,
        exog_columns=["temp_air", "cos_zenith_ahead"],
        target_transform="clear_sky_index",
        split="dates",
        split_dates=["2017-10-01", "2017-11-01"],
        context_length=96,
        horizon=12,
    )
    dm.setup()
    assert dm.freq == "30min" and len(dm.timestamps) == 17520
    assert dm.timestamps[dm.split_bounds["train"][1]] == pd.Timestamp("2017-10-01", tz=dm.timestamps.tz)
    # the wrong sign of its longitude is caught
    with pytest.raises(DataError, match="set data.longitude=-108.545"):
        build(
            PSM3_2017, format="psm3", **{**PSM3_SITE, "longitude": 108.5449}, target_transform="clear_sky_index"
        ).setup()


# ---------------------------------------------------------------------------------------------- scores


def test_irradiance_is_never_negative_and_zero_at_night() -> None:
    k = np.array([[[-0.3], [0.5], [2.0], [0.8]]])
    clear = np.array([[[500.0], [400.0], [300.0], [0.0]]])
    assert to_irradiance(k, clear, 1.5).ravel().tolist() == [0.0, 200.0, 450.0, 0.0]


def test_irradiance_metrics_and_their_window_scores() -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 800, (50, 4, 1))
    pred = truth + rng.normal(5, 30, truth.shape)
    ref = truth + rng.normal(0, 60, truth.shape)
    mask = (rng.uniform(size=truth.shape) > 0.3).astype(float)
    result, scores = irradiance_metrics(truth, pred, ref, mask)
    m = mask > 0
    err = (pred - truth)[m]
    assert result["rmse"] == pytest.approx(np.sqrt((err**2).mean()))
    assert result["mbe"] == pytest.approx(err.mean()) and result["mae"] == pytest.approx(np.abs(err).mean())
    per_lead = []
    for lead in range(4):
        ml = m[:, lead, 0]
        e, r = (pred - truth)[:, lead, 0][ml], (ref - truth)[:, lead, 0][ml]
        per_lead.append(1 - np.sqrt((e**2).mean()) / np.sqrt((r**2).mean()))
    assert result["per_step"]["skill"] == pytest.approx(per_lead)
    assert result["skill"] == pytest.approx(np.mean(per_lead)) and 0.3 < result["skill"] < 0.7
    for name in ("rmse", "mae", "mbe", "skill"):
        assert scores[name].value() == pytest.approx(result[name]), name
    # the reference against itself has no skill
    same, _ = irradiance_metrics(truth, ref, ref, mask)
    assert same["skill"] == pytest.approx(0.0)


def test_slot_climatology() -> None:
    values = np.array([[0.5], [0.7], [0.9], [0.3]])
    observed = np.array([[1], [1], [0], [1]])
    table = slot_climatology(values, observed, np.array([0, 0, 1, 2]), 4)
    assert table.ravel().tolist() == pytest.approx([0.6, 0.5, 0.3, 0.5])  # unobserved slots: the overall mean


# ---------------------------------------------------------------------------------------------- the task


def _solar_task(dm: Any) -> Any:
    from sciadapt.config import call_builder

    facts = dm.facts()
    backbone = call_builder("backbone", {"name": "nhits_tiny"}, facts)
    from sciadapt.config import head_facts

    head = call_builder("head", {"name": "point"}, head_facts(backbone, facts))
    return call_builder("task", {"name": "solar_forecasting"}, facts, backbone=backbone, head=head)


def test_the_solar_task_needs_clear_sky_index_data(tmp_path: Path) -> None:
    path = write_psm3(tmp_path / "psm3.csv", clear_sky_day(48 * 4))
    dm = build(path, format="psm3")
    with pytest.raises(ConfigError, match="set data.target_transform=clear_sky_index"):
        _solar_task(dm)


def test_solar_baselines_and_model_scores(tmp_path: Path) -> None:
    path = write_psm3(tmp_path / "psm3.csv", clear_sky_day(48 * 8))
    dm = build(path, format="psm3", exog_columns=["cos_zenith_ahead"], target_transform="clear_sky_index")
    dm.setup()
    task = _solar_task(dm)
    rows = {name: task.baseline(name, dm) for name in task.BASELINES}
    assert rows["smart_persistence"]["skill"] == pytest.approx(0.0)
    for name, row in rows.items():
        assert {"rmse", "mae", "mbe", "skill", "per_step"} <= set(row), name
        assert np.isfinite(row["rmse"]) and len(row["per_step"]["skill"]) == 6, name
    assert set(task.test_window_scores) == {"rmse", "mae", "mbe", "skill"}
    # the model's test: forecasts scored in W/m^2 like the baselines
    import lightning.pytorch as pl

    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(task, datamodule=dm, verbose=False)
    assert task.test_results["n_daytime"] == rows["smart_persistence"]["n_daytime"] > 0
    assert re.fullmatch(r"\d+\.\d+", f"{task.test_results['rmse']:.3f}")


def test_bad_solar_input_exits_2_and_writes_no_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The three mistakes through ``sciadapt fit``: each message names the file and the fix, nothing is written."""
    from sciadapt.cli import main

    meta = {"Source": "NSRDB", "Location ID": "1", "Time Zone": "-7", "Elevation": "1650", "Local Time Zone": "-7"}
    no_site = write_psm3(tmp_path / "no_site.csv", clear_sky_day(48 * 8), meta)
    good = write_psm3(tmp_path / "good.csv", clear_sky_day(48 * 8))
    naive = tmp_path / "naive.csv"
    clear_sky_day(48 * 8).tz_localize(None).rename_axis("date").reset_index().to_csv(naive, index=False)
    small = ["data.context_length=24", "data.horizon=4", "data.exog_columns=[temp_air]", "backbone=nhits_tiny"]
    cases = [
        ([f"data.path={no_site}"], "data.latitude=<degrees north>"),
        ([f"data.path={good}", "data.longitude=105.25"], "set data.longitude=-105.25"),
        (
            [f"data.path={naive}", "data.format=csv", f"data.latitude={LAT}", f"data.longitude={LON}"],
            "data.timezone=-07:00",
        ),
    ]
    for overrides, fix in cases:
        runs = tmp_path / "runs"
        code = main(["fit", "solar_irradiance", *overrides, *small, f"run_dir={runs}"])
        err = capsys.readouterr()
        text = err.out + err.err
        assert code == 2, text
        assert fix in " ".join(text.split()), text
        assert not runs.exists() or not any(runs.rglob("config.yaml")), sorted(runs.rglob("*"))
