"""``sciadapt predict`` of a clear-sky-index run: the forecast comes back in W/m^2 at future timestamps.

A tiny ``solar_irradiance`` run on a generated NSRDB PSM3 file (a clear sky at Boulder dimmed by seeded
clouds, ending mid-afternoon so the horizon crosses sunset); skips without pvlib.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pvlib = pytest.importorskip("pvlib", reason="pvlib is not installed (pip install 'sciadapt[solar]')")

from sciadapt.cli import main  # noqa: E402
from tests.unit.test_solar import ALT, LAT, LON, clear_sky_day, write_psm3  # noqa: E402

HORIZON = 12  # half-hourly: 15:00 .. 20:30 local, across sunset


def _fit(tmp_path: Path, *overrides: str) -> Path:
    # 8 days and the morning of a ninth, half-hourly; the last row is 15:00 local standard time
    path = write_psm3(tmp_path / "psm3.csv", clear_sky_day(48 * 8 + 31))
    runs = tmp_path / "runs"
    code = main(
        [
            "fit",
            "solar_irradiance",
            f"data.path={path}",
            "data.context_length=24",
            f"data.horizon={HORIZON}",
            "data.exog_columns=[temp_air,cos_zenith_ahead,ghi_clear_ahead]",
            "backbone=nhits_tiny",
            "stages.train.max_epochs=1",
            "evaluation.baselines=[]",
            "trainer.enable_progress_bar=false",
            f"run_dir={runs}",
            *overrides,
        ]
    )
    assert code == 0
    (config,) = runs.glob("solar_irradiance/*/config.yaml")
    return config.parent


def test_predict_writes_irradiance_from_the_clear_sky_index(tmp_path: Path) -> None:
    run = _fit(tmp_path)
    out = tmp_path / "fc.csv"
    assert main(["predict", "--run", str(run), "--out", str(out)]) == 0
    assert out.with_suffix(".png").stat().st_size > 0
    frame = pd.read_csv(out)
    stamps = pd.DatetimeIndex(pd.to_datetime(frame["timestamp"]))
    # the future, on the file's clock (PSM3 "Time Zone: -7"): 15:30 onwards, every 30 minutes
    assert str(stamps.tz) == "UTC-07:00"
    assert stamps[0] == pd.Timestamp("2019-03-09 15:30", tz="Etc/GMT+7")
    assert (np.diff(stamps.asi8) == 30 * 60 * 10**9).all() and len(stamps) == HORIZON
    # the clear sky pvlib gives at those (instantaneous) timestamps at the site
    clear = pvlib.location.Location(LAT, LON, altitude=ALT).get_clearsky(stamps, model="ineichen")["ghi"].to_numpy()
    np.testing.assert_allclose(frame["ghi_clear"], clear, rtol=1e-5, atol=1e-3)
    ghi, k = frame["ghi"].to_numpy(), frame["ghi_clear_sky_index"].to_numpy()
    assert (ghi >= 0).all()
    np.testing.assert_allclose(ghi, np.clip(k, 0.0, 1.5) * clear, rtol=1e-5, atol=1e-3)
    night = clear <= 0
    assert night.any() and (~night).any()  # the horizon crosses sunset
    assert (ghi[night] == 0).all() and (ghi[~night] > 0).any()

    # --data: the forecast follows that file's last row (12:00 on 4 March); the site stays the run's
    other = write_psm3(tmp_path / "other.csv", clear_sky_day(48 * 3 + 25, seed=3))
    assert main(["predict", "--run", str(run), "--data", str(other), "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert frame["timestamp"].iloc[0] == "2019-03-04 12:30:00-07:00"
    assert (frame["ghi"] >= 0).all() and (frame["ghi_clear"].iloc[:8] > 0).all()
