"""Build the bundled quickstart data from two NREL TMY3 files.

Reads the TMY3 typical-meteorological-year files for Greensboro NC (station 723170) and
Sand Point AK (station 703165) and writes one small gzipped CSV per site to
``sciadapt/resources/data/``::

    date,ghi,dni,dhi,temp_air,relative_humidity,wind_speed,pressure

A TMY3 file stitches twelve months taken from different years, so its raw timestamps jump
back and forth in time. Every row is re-stamped onto the nominal year 2001 (the rule pvlib's
``read_tmy3(coerce_year=...)`` applies) while keeping the file's hour order; timestamps are
hour-ending local standard time, and ``24:00`` means 00:00 of the next day, so the last row
becomes 2002-01-01 00:00. The result is strictly monotonic and hourly, 8760 rows per site.

Usage::

    python scripts/make_quickstart_data.py [--src ../shared/data/solar] [--out sciadapt/resources/data]
"""

from __future__ import annotations

import argparse
import gzip
import io
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "data" / "solar"
DEFAULT_OUT = REPO / "sciadapt" / "resources" / "data"

# The nominal year every TMY3 row is moved onto; 2001 is not a leap year, like TMY3 itself.
NOMINAL_YEAR = 2001

SITES: dict[str, str] = {
    "723170TYA.CSV": "tmy3_greensboro_nc.csv.gz",
    "703165TY.csv": "tmy3_sand_point_ak.csv.gz",
}

# TMY3 header name -> bundled column name (units unchanged: W/m^2, degC, %, m/s, mbar).
COLUMNS: dict[str, str] = {
    "GHI (W/m^2)": "ghi",
    "DNI (W/m^2)": "dni",
    "DHI (W/m^2)": "dhi",
    "Dry-bulb (C)": "temp_air",
    "RHum (%)": "relative_humidity",
    "Wspd (m/s)": "wind_speed",
    "Pressure (mbar)": "pressure",
}

HOURS_PER_YEAR = 8760


def read_tmy3(path: Path) -> pd.DataFrame:
    """Read one TMY3 file into a frame indexed by re-stamped hour-ending timestamps.

    Args:
        path: A TMY3 CSV (line 1 site metadata, line 2 the header).

    Returns:
        A frame with the bundled column names, indexed by ``date`` on the nominal year.

    Raises:
        ValueError: If the re-stamped index is not strictly monotonic hourly with 8760 rows.
    """
    raw = pd.read_csv(path, skiprows=1)
    day = pd.to_datetime(raw["Date (MM/DD/YYYY)"], format="%m/%d/%Y")
    # Re-stamp the calendar day first, then add the hour: "24:00" on Dec 31 then rolls into
    # the next nominal year on its own, which is what coerce_year does for the last row.
    day = day.map(lambda d: d.replace(year=NOMINAL_YEAR))
    hour = raw["Time (HH:MM)"].str.split(":", expand=True).astype(int)
    stamp = day + pd.to_timedelta(hour[0], unit="h") + pd.to_timedelta(hour[1], unit="min")

    frame = raw[list(COLUMNS)].rename(columns=COLUMNS).astype(float).round(1)
    frame.index = pd.DatetimeIndex(stamp, name="date")

    steps = frame.index.to_series().diff().dropna()
    if len(frame) != HOURS_PER_YEAR or not (steps == pd.Timedelta(hours=1)).all():
        raise ValueError(
            f"{path}: expected {HOURS_PER_YEAR} strictly hourly rows after re-stamping, got "
            f"{len(frame)} rows with steps {sorted(set(steps))[:5]}"
        )
    return frame


def write_site(frame: pd.DataFrame, out: Path) -> int:
    """Write a site frame as a gzipped CSV and return its size in bytes.

    The gzip header's mtime is fixed at 0 so rerunning the script gives identical bytes.
    """
    # "%g" drops the ".0" of whole numbers (most irradiance values) to keep the files small;
    # every value is already rounded to 1 decimal and below 1e4, so it loses nothing.
    text = frame.to_csv(date_format="%Y-%m-%d %H:%M", float_format="%g", lineterminator="\n")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    out.write_bytes(buf.getvalue())
    return out.stat().st_size


def main() -> None:
    """Command-line entry point: convert both sites and print the file sizes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="folder holding the TMY3 files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    for src_name, out_name in SITES.items():
        frame = read_tmy3(args.src / src_name)
        size = write_site(frame, args.out / out_name)
        print(f"{out_name}: {len(frame)} rows, {frame.index[0]} .. {frame.index[-1]}, {size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
