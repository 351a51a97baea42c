"""Solar-resource files read with the field's own readers (``pvlib.iotools``), and the solar physics the
time-series datamodule adds to them: solar position, clear-sky irradiance and the clear-sky index.

Formats (``data.format``): ``csv`` (any table; ``data.timestamp_parts`` may compose the timestamp from
``Year, Month, Day, Hour, Minute`` columns), ``psm3`` / ``psm4`` (NSRDB SAM CSV: two metadata rows, then
the columns), ``tmy3``, ``surfrad`` (NOAA daily ``.dat``), ``midc`` (NREL MIDC) and ``srml`` (University
of Oregon SRML ``.tsv``). The field formats are read by pvlib and keep pvlib's column names (``ghi``,
``dni``, ``dhi``, ``temp_air``, ``wind_speed`` ...). A file's metadata (latitude, longitude, altitude, time
zone) locates the site; ``data.latitude / longitude / altitude / timezone`` supply what a file lacks and
override what it states.

With a site, the columns :data:`DERIVED` may be named in ``data.exog_columns`` (clear-sky irradiance,
zenith, and their values ``horizon`` steps ahead, known in advance from astronomy), and
``data.target_transform=clear_sky_index`` turns irradiance targets into the clear-sky index
``k = ghi / ghi_clear`` (clipped to ``[0, K_MAX]``), observed on daytime steps only (zenith below
:data:`DAYTIME_ZENITH`); night steps carry the last daytime ``k`` and are masked.

Clear-sky irradiance is pvlib's Ineichen-Perez model with the climatological Linke turbidity that pvlib
ships (``LinkeTurbidities.h5``, read offline); without it, pvlib's Simplified Solis model (no turbidity
table) is used and the run's description says so.

Before any of it is used, the file is checked against the sun: GHI that does not follow the clear-sky
curve (a longitude or latitude of the wrong sign, a clock in another zone) is an error that says which
key to change; so are timestamps without a time zone (the error says which zone the clock looks like).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sciadapt.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMATS = ("csv", "psm3", "psm4", "tmy3", "surfrad", "midc", "srml")
#: steps with a solar zenith angle below this are "daytime": the clear-sky index is defined and scored there
DAYTIME_ZENITH = 85.0
#: the clear-sky index is clipped to [0, K_MAX] (cloud enhancement rarely exceeds it)
K_MAX = 1.5
#: columns computed from the site and the timestamps; ``<name>_ahead`` is the value ``horizon`` steps later
DERIVED_BASE = ("ghi_clear", "dni_clear", "dhi_clear", "solar_zenith", "cos_zenith")
DERIVED = DERIVED_BASE + tuple(f"{name}_ahead" for name in DERIVED_BASE)
#: the irradiance components a clear-sky index exists for (a target's name before the first ``_``/space)
COMPONENTS = ("ghi", "dni", "dhi")
#: where each format labels an averaging interval: the solar position is taken at the interval's middle
DEFAULT_TIME_LABEL = {"tmy3": "end", "srml": "start"}
_PART_KEYS = ("year", "month", "day", "hour", "minute", "second")
# columns of the field formats that only spell the timestamp (dropped once it is composed)
_STAMP_COLUMNS = {
    "psm3": ("Year", "Month", "Day", "Hour", "Minute"),
    "psm4": ("Year", "Month", "Day", "Hour", "Minute"),
    "tmy3": ("Date (MM/DD/YYYY)", "Time (HH:MM)"),
    "surfrad": ("year", "jday", "month", "day", "hour", "minute", "dt"),
    "midc": ("DATE (MM/DD/YYYY)",),
    "srml": (),
}
# a correlation of GHI with the clear-sky GHI below this means the site or the clock is wrong (real
# sites, cloudy ones included, are above 0.8 at half-hourly or hourly resolution)
_MIN_CORRELATION = 0.6
_PSM_REQUIRED = {"Latitude": "latitude", "Longitude": "longitude", "Time Zone": "timezone"}


def _pvlib() -> Any:
    try:
        import pvlib
    except ImportError as err:
        raise ConfigError(
            "solar data (data.format other than csv, data.target_transform or clear-sky columns) is read with "
            "pvlib, which is not installed. Fix: pip install 'sciadapt[solar]' (or pip install pvlib)"
        ) from err
    return pvlib


def parse_timezone(text: str) -> dt.tzinfo | str:
    """A time zone from config text: ``UTC``, a fixed offset (``-07:00``, ``UTC-7``, ``+05:30``) or an IANA
    name (``America/Denver``, ``Etc/GMT+7``).

    Raises:
        ConfigError: For text that is none of these.
    """
    s = str(text).strip()
    if s.upper() in ("UTC", "Z", "GMT"):
        return "UTC"
    m = re.fullmatch(r"(?:UTC|GMT)?\s*([+-])\s*(\d{1,2})(?::?(\d{2}))?", s, flags=re.IGNORECASE)
    if m:
        sign = -1 if m.group(1) == "-" else 1
        hours, minutes = int(m.group(2)), int(m.group(3) or 0)
        if hours > 14 or minutes >= 60:
            raise ConfigError(f"data.timezone: offset {s!r} is out of range (-12:00 .. +14:00)")
        return dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(s)
    except Exception:
        raise ConfigError(
            f"data.timezone: {s!r} is not a time zone; give an offset from UTC of the file's clock "
            "(e.g. -07:00 for US Mountain Standard Time, UTC for UTC) or an IANA name (e.g. Etc/GMT+7)"
        ) from None


def _offset_text(hours: float) -> str:
    sign = "-" if hours < 0 else "+"
    h = abs(hours)
    return f"{sign}{int(h):02d}:{int(round((h - int(h)) * 60)):02d}"


@dataclass(frozen=True)
class SolarOptions:
    """The solar keys of a ``data:`` section (see :class:`~sciadapt.datamodules.timeseries.TimeSeriesDataModule`)."""

    format: str = "csv"
    timestamp_parts: list[str] | None = None
    latitude: float | None = None
    longitude: float | None = None
    altitude: float | None = None
    timezone: str | None = None
    time_label: str | None = None
    target_transform: str = "none"

    def problems(self) -> list[str]:
        """What is wrong with the keys on their own (no file read)."""
        out = []
        if self.timestamp_parts is not None:
            parts = list(self.timestamp_parts)
            if not 3 <= len(parts) <= 6:
                out.append(
                    f"data.timestamp_parts: expected 3 to 6 columns in the order year, month, day[, hour[, minute"
                    f"[, second]]], got {parts}"
                )
            if self.format != "csv":
                out.append(
                    f"data.timestamp_parts: data.format={self.format} reads its timestamps itself; remove "
                    "data.timestamp_parts (it composes the timestamp of a plain csv)"
                )
        if self.latitude is not None and not -90.0 <= self.latitude <= 90.0:
            out.append(f"data.latitude: must be between -90 and 90 (degrees north), got {self.latitude}")
        if self.longitude is not None and not -180.0 <= self.longitude <= 180.0:
            out.append(
                f"data.longitude: must be between -180 and 180 (degrees east, west negative), got {self.longitude}"
            )
        if self.timezone is not None:
            try:
                parse_timezone(self.timezone)
            except ConfigError as err:
                out.extend(err.problems)
        return out

    @property
    def label(self) -> str:
        """Where the file's timestamps sit in each averaging interval: ``instant``, ``start`` or ``end``."""
        return self.time_label or DEFAULT_TIME_LABEL.get(self.format, "instant")

    def reads_itself(self, requested: list[str]) -> bool:
        """The file needs this module (a field format, composed timestamps, or solar physics)."""
        return self.format != "csv" or self.timestamp_parts is not None or self.physics(requested)

    def physics(self, requested: list[str]) -> bool:
        """Solar position and clear-sky irradiance are needed."""
        return self.target_transform != "none" or any(c in DERIVED for c in requested)


@dataclass
class Site:
    """Where and on which clock a file was measured, and what each value came from."""

    latitude: float | None
    longitude: float | None
    altitude: float | None
    tz: Any  # the zone of the file's clock (tz-aware index), None when the file names none
    time_label: str
    origin: dict[str, str] = field(default_factory=dict)  # key -> "file" | "config" | "pvlib altitude map"
    clear_sky_model: str = ""

    def describe(self) -> str:
        if self.latitude is None or self.longitude is None:
            return "site unknown"
        alt = "" if self.altitude is None else f", {self.altitude:.0f} m"
        model = f"; clear sky: {self.clear_sky_model}" if self.clear_sky_model else ""
        return f"site {self.latitude:.4f} N {self.longitude:.4f} E{alt}; clock {self.tz}{model}"


# ---------------------------------------------------------------------------------------------- reading


def read_solar_table(
    file: Path,
    source: str,
    opts: SolarOptions,
    timestamp_column: str,
    requested: list[str],
    horizon: int,
    read_csv: Callable[[], pd.DataFrame],
) -> tuple[pd.DataFrame, Site]:
    """Read ``file`` in ``opts.format`` into a raw table whose ``timestamp_column`` holds its timestamps.

    Args:
        file: The file.
        source: How messages name it (the config's path).
        opts: The solar keys of the config.
        timestamp_column: The column the timestamps go into.
        requested: The target and exogenous columns the config names (derived columns among them are added).
        horizon: Forecast steps (the offset of the ``*_ahead`` columns).
        read_csv: Reads ``file`` as a plain CSV (the datamodule's reader, with its options).

    Returns:
        The table and the site.

    Raises:
        DataError: A file the format's reader cannot read, timestamps that cannot be composed or have no
            zone, metadata without the site, or GHI that does not follow the sun at that site.
        ConfigError: pvlib missing.
    """
    if opts.format == "csv":
        raw = read_csv()
        meta: dict[str, Any] = {}
        if opts.timestamp_parts is not None:
            if timestamp_column in raw.columns:
                raise DataError(
                    f"{source}: data.timestamp_parts composes the timestamp into data.timestamp_column "
                    f"{timestamp_column!r}, but the file already has that column. Fix: set data.timestamp_column to "
                    "a new name (e.g. data.timestamp_column=time)"
                )
            stamps = compose_timestamps(raw, list(opts.timestamp_parts), source)
            raw = raw.drop(columns=list(opts.timestamp_parts))
            raw = _drop_index_column(raw)
            raw.insert(0, timestamp_column, stamps)
    else:
        data, meta = _read_field_file(file, source, opts)
        drop = [c for c in _STAMP_COLUMNS[opts.format] if c in data.columns]
        raw = _drop_index_column(data.drop(columns=drop).reset_index(drop=True))
        if timestamp_column in raw.columns:
            raw = raw.drop(columns=[timestamp_column])
        raw.insert(0, timestamp_column, pd.DatetimeIndex(data.index))
    site = _site(meta, opts, source)
    if not opts.physics(requested):
        if opts.timezone is not None:
            raw[timestamp_column] = _localize(raw[timestamp_column], site.tz, source, opts.timezone is not None)
        return raw, site
    stamps = pd.DatetimeIndex(pd.to_datetime(raw[timestamp_column]))
    ghi = _ghi_column(list(raw.columns))
    if site.latitude is None or site.longitude is None:
        missing = [k for k, v in (("latitude", site.latitude), ("longitude", site.longitude)) if v is None]
        raise DataError(
            f"{source}: solar physics (clear-sky irradiance, solar position) needs the site, but the file "
            f"({_format_name(opts)}) states no {' and no '.join(missing)}. Fix: give "
            + " ".join(
                f"data.{k}=<{'degrees north' if k == 'latitude' else 'degrees east, west negative'}>" for k in missing
            )
        )
    if stamps.tz is None and site.tz is None:
        raise DataError(_naive_clock_message(source, stamps, raw, ghi, site))
    stamps = _localize(stamps, site.tz, source, opts.timezone is not None)
    if site.tz is None:
        site.tz, site.origin["timezone"] = stamps.tz, "file"
    raw[timestamp_column] = stamps
    if site.altitude is None:
        site.altitude = float(_pvlib().location.lookup_altitude(site.latitude, site.longitude))
        site.origin["altitude"] = "pvlib altitude map"
    physics = solar_physics(stamps, site, horizon)
    if ghi is not None:
        check_alignment(pd.to_numeric(raw[ghi], errors="coerce").to_numpy(dtype=float), stamps, site, source, physics)
    for name in requested:
        if name in DERIVED:
            raw[name] = physics[name]
    return raw, site


def _format_name(opts: SolarOptions) -> str:
    return "a plain csv" if opts.format == "csv" else f"data.format={opts.format}"


def _drop_index_column(frame: pd.DataFrame) -> pd.DataFrame:
    """A frame saved with its pandas index has a first column named ``Unnamed: 0`` (or nothing): drop it."""
    first = str(frame.columns[0]) if len(frame.columns) else ""
    if first == "" or first.startswith("Unnamed: 0"):
        return frame.drop(columns=[frame.columns[0]])
    return frame


def compose_timestamps(raw: pd.DataFrame, parts: list[str], source: str) -> pd.Series:
    """Timestamps from part columns in the order year, month, day[, hour[, minute[, second]]].

    Raises:
        DataError: A named column that is missing, or values that are no date.
    """
    missing = [p for p in parts if p not in raw.columns]
    if missing:
        raise DataError(
            f"{source}: data.timestamp_parts names column(s) {', '.join(map(repr, missing))} not in the file. "
            f"Available columns: {', '.join(map(str, raw.columns))}. Fix: list the year, month, day, hour, minute "
            "columns as the file names them"
        )
    table = pd.DataFrame({key: raw[col] for key, col in zip(_PART_KEYS, parts, strict=False)})
    try:
        stamps = pd.to_datetime(table)
    except (ValueError, TypeError, OverflowError) as err:
        raise DataError(
            f"{source}: cannot compose timestamps from data.timestamp_parts {parts}: {err}. Fix: check that the "
            "columns are year, month, day, hour, minute in that order and hold whole numbers"
        ) from err
    return pd.Series(stamps, index=raw.index)


def _read_field_file(file: Path, source: str, opts: SolarOptions) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``(data with a DatetimeIndex, metadata)`` from pvlib's reader of ``opts.format``."""
    if not file.is_file():
        raise DataError(f"data file {source} does not exist; check data.path")
    iotools = _pvlib().iotools
    fmt = opts.format
    try:
        if fmt in ("psm3", "psm4"):
            return _read_psm(file, source, opts)
        if fmt == "tmy3":
            # a TMY3 file strings together months of different years: pvlib moves them onto one year
            data, meta = iotools.read_tmy3(str(file), coerce_year=2001, map_variables=True, encoding="latin-1")
            return data, {
                "latitude": meta.get("latitude"),
                "longitude": meta.get("longitude"),
                "altitude": meta.get("altitude"),
            }
        if fmt == "surfrad":
            data, meta = iotools.read_surfrad(str(file))
            return data, {
                "latitude": meta.get("latitude"),
                "longitude": meta.get("longitude"),
                "altitude": meta.get("elevation"),
            }
        if fmt == "midc":
            from pvlib.iotools.midc import MIDC_VARIABLE_MAP

            names: dict[str, str] = {}
            for site_map in MIDC_VARIABLE_MAP.values():
                names.update(site_map)
            return iotools.read_midc(str(file), variable_map=names), {}
        data = iotools.read_srml(str(file))
        return data, {}
    except (DataError, ConfigError):
        raise
    except Exception as err:  # pvlib's readers raise what pandas and their parsers raise
        raise DataError(
            f"cannot read {source} as data.format={fmt}: {type(err).__name__}: {err}. Fix: check that the file is "
            f"a complete {fmt.upper()} file, or set data.format to its format ({', '.join(FORMATS)})"
        ) from err


def _read_psm(file: Path, source: str, opts: SolarOptions) -> tuple[pd.DataFrame, dict[str, Any]]:
    """An NSRDB PSM3/PSM4 SAM CSV by pvlib; metadata the file lacks comes from the config, and a file saved
    without its two metadata rows (only ``Year, Month, Day, Hour, Minute, ...`` columns) is read too."""
    read, names = _psm_reader()
    text = file.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    rows = list(csv.reader(lines[:3]))
    if not rows:
        raise DataError(f"data file {source} is empty; check data.path")
    if {"Year", "Month", "Day", "Hour"} <= {c.strip() for c in rows[0]}:
        # no metadata rows: the file is the data table alone (e.g. saved back from pandas)
        frame = _drop_index_column(pd.read_csv(io.StringIO(text)))
        parts = [p for p in ("Year", "Month", "Day", "Hour", "Minute") if p in frame.columns]
        index = pd.DatetimeIndex(compose_timestamps(frame, parts, source))
        frame.index = index
        return frame.rename(columns=names), {"psm_metadata": False}
    if len(rows) < 3:
        raise DataError(
            f"{source}: an NSRDB PSM file has two metadata rows and a header row; this one has {len(rows)} lines"
        )
    fields, values = [c.strip() for c in rows[0]], [c.strip() for c in rows[1]]
    meta = dict(zip(fields, values, strict=False))
    given: dict[str, Any] = {}
    for key, name in _PSM_REQUIRED.items():
        value = meta.get(key, "")
        try:
            given[name] = float(value)
        except ValueError:
            given[name] = None
    try:
        given["altitude"] = float(meta.get("Elevation", ""))
    except ValueError:
        given["altitude"] = None
    # pvlib reads the numbers of these fields: fill the ones the file lacks (the config's values, or a
    # placeholder the site then replaces), so its reader runs; the Site records what is real
    fill = {"Latitude": "0", "Longitude": "0", "Time Zone": "0", "Elevation": "0", "Local Time Zone": "0"}
    for key, placeholder in fill.items():
        if key == "Local Time Zone" and meta.get("Time Zone"):
            placeholder = meta["Time Zone"]
        if key not in meta or not _is_number(meta[key]):
            meta[key] = placeholder
    head = io.StringIO()
    writer = csv.writer(head, lineterminator="\n")
    writer.writerow(list(meta))
    writer.writerow(list(meta.values()))
    buffer = io.StringIO(head.getvalue() + "".join(lines[2:]))
    data, _ = read(buffer, map_variables=True)
    if given["timezone"] is None:
        data.index = data.index.tz_localize(None)  # the zone was a placeholder: the clock's zone is unknown
    return data, {**given, "psm_metadata": True}


def _psm_reader() -> tuple[Callable[..., Any], dict[str, str]]:
    """pvlib's SAM CSV reader and its column names: ``read_nsrdb_psm4`` (pvlib >= 0.13, PSM3 files too),
    else the older ``read_psm3``."""
    iotools = _pvlib().iotools
    if hasattr(iotools, "read_nsrdb_psm4"):
        from pvlib.iotools.psm4 import VARIABLE_MAP
    else:  # pragma: no cover - pvlib < 0.13
        from pvlib.iotools.psm3 import VARIABLE_MAP

        return iotools.read_psm3, dict(VARIABLE_MAP)
    return iotools.read_nsrdb_psm4, dict(VARIABLE_MAP)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _site(meta: dict[str, Any], opts: SolarOptions, source: str) -> Site:
    origin: dict[str, str] = {}
    values: dict[str, float | None] = {}
    for key in ("latitude", "longitude", "altitude"):
        cfg = getattr(opts, key)
        found = meta.get(key)
        if cfg is not None:
            values[key], origin[key] = float(cfg), "config"
        elif found is not None and not (isinstance(found, float) and math.isnan(found)):
            values[key], origin[key] = float(found), "file"
        else:
            values[key] = None
    tz: Any = None
    if opts.timezone is not None:
        tz, origin["timezone"] = parse_timezone(opts.timezone), "config"
    elif meta.get("timezone") is not None:
        tz, origin["timezone"] = dt.timezone(dt.timedelta(hours=float(meta["timezone"]))), "file"
    return Site(values["latitude"], values["longitude"], values["altitude"], tz, opts.label, origin)


def _localize(stamps: Any, tz: Any, source: str, override: bool) -> pd.DatetimeIndex:
    """``stamps`` on the clock of ``tz``: naive ones are localised; with ``override`` (data.timezone given)
    a file's own zone is replaced (its clock times are read as ``tz``)."""
    index = pd.DatetimeIndex(pd.to_datetime(stamps))
    if tz is None:
        return index
    if index.tz is not None:
        if not override:
            return index
        index = index.tz_localize(None)
    try:
        return index.tz_localize(tz)
    except Exception as err:  # pytz/zoneinfo: nonexistent or ambiguous local times (a DST change)
        raise DataError(
            f"{source}: cannot put the timestamps on data.timezone={tz}: {err}. Solar data is usually in local "
            "standard time, which has no daylight-saving change. Fix: give the fixed offset of the file's clock, "
            "e.g. data.timezone=-07:00, instead of a zone with daylight-saving time"
        ) from err


def _ghi_column(columns: list[str]) -> str | None:
    for c in columns:
        if component(c) == "ghi" and c not in DERIVED:
            return c
    return None


def component(column: str) -> str | None:
    """The irradiance component a column holds (``ghi`` for ``ghi``, ``GHI``, ``ghi_0``), or None."""
    name = re.split(r"[_\s(]", str(column).strip().lower(), maxsplit=1)[0]
    return name if name in COMPONENTS else None


# ---------------------------------------------------------------------------------------------- physics


def solar_physics(stamps: pd.DatetimeIndex, site: Site, horizon: int = 0) -> dict[str, np.ndarray]:
    """Solar zenith and clear-sky irradiance at every timestamp (the middle of its interval), and with
    ``horizon > 0`` the same ``horizon`` steps ahead: ``{name: (T,) float64}`` for the names of :data:`DERIVED`."""
    step = _step(stamps)
    shift = {"instant": 0.0, "start": 0.5, "end": -0.5}[site.time_label]
    times = stamps + step * shift
    out = _clear_sky(times, site)
    if horizon > 0:
        ahead = _clear_sky(times + step * horizon, site)
        out.update({f"{k}_ahead": v for k, v in ahead.items()})
    return out


def _step(stamps: pd.DatetimeIndex) -> pd.Timedelta:
    if len(stamps) < 2:
        return pd.Timedelta(0)
    return pd.Timedelta(np.median(np.diff(stamps.asi8)), unit="ns")


def _clear_sky(times: pd.DatetimeIndex, site: Site) -> dict[str, np.ndarray]:
    pvlib = _pvlib()
    assert site.latitude is not None and site.longitude is not None
    utc = times.tz_convert("UTC")
    location = pvlib.location.Location(site.latitude, site.longitude, tz="UTC", altitude=site.altitude or 0.0)
    position = location.get_solarposition(utc)
    try:
        clear = location.get_clearsky(utc, model="ineichen", solar_position=position)
        site.clear_sky_model = "Ineichen-Perez, climatological Linke turbidity (pvlib)"
    except (OSError, ImportError, KeyError) as err:  # the turbidity table cannot be read here
        log.warning("Linke turbidity table unreadable (%s): clear-sky irradiance from Simplified Solis", err)
        clear = location.get_clearsky(utc, model="simplified_solis", solar_position=position)
        site.clear_sky_model = "Simplified Solis (pvlib; Linke turbidity table unreadable)"
    zenith = position["zenith"].to_numpy(dtype=float)
    return {
        "ghi_clear": np.nan_to_num(clear["ghi"].to_numpy(dtype=float)).clip(min=0.0),
        "dni_clear": np.nan_to_num(clear["dni"].to_numpy(dtype=float)).clip(min=0.0),
        "dhi_clear": np.nan_to_num(clear["dhi"].to_numpy(dtype=float)).clip(min=0.0),
        "solar_zenith": zenith,
        "cos_zenith": np.cos(np.radians(zenith)).clip(min=0.0),
    }


def _clock_hours(stamps: pd.DatetimeIndex) -> np.ndarray:
    return np.asarray(stamps.hour + stamps.minute / 60.0 + stamps.second / 3600.0, dtype=float)


def _peak_clock(values: np.ndarray, hours: np.ndarray) -> float | None:
    """The clock time (hours) around which ``values`` peak: their circular weighted mean time of day."""
    ok = np.isfinite(values) & (values > 0)
    if ok.sum() < 3:
        return None
    angle = 2 * np.pi * hours[ok] / 24.0
    c, s = float((values[ok] * np.cos(angle)).sum()), float((values[ok] * np.sin(angle)).sum())
    return (math.atan2(s, c) * 24.0 / (2 * np.pi)) % 24.0


def _hhmm(hours: float) -> str:
    h = hours % 24.0
    minutes = int(round(h * 60)) % (24 * 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _naive_clock_message(source: str, stamps: pd.DatetimeIndex, raw: pd.DataFrame, ghi: str | None, site: Site) -> str:
    head = (
        f"{source}: the timestamps carry no time zone and the file states none, so the sun's position at "
        "each row is unknown."
    )
    fix = (
        "Fix: give data.timezone as the offset of the file's clock (e.g. data.timezone=-07:00 for US Mountain "
        "Standard Time, data.timezone=UTC for UTC)"
    )
    if ghi is None or site.longitude is None:
        return f"{head} {fix}"
    values = pd.to_numeric(raw[ghi], errors="coerce").to_numpy(dtype=float)
    shift = {"instant": 0.0, "start": 0.5, "end": -0.5}[site.time_label] * _step(stamps).total_seconds() / 3600.0
    peak = _peak_clock(values, _clock_hours(stamps) + shift)
    if peak is None:
        return f"{head} {fix}"
    # solar noon is at about 12:00 - longitude / 15 h UTC (the equation of time moves it by under 17 min)
    # the peak sits within about an hour of noon on the zone's clock (the site is off the zone's meridian, and
    # the equation of time), so whole hours: half-hour zones are rare and the offset then says "about"
    offset = float(round(((peak - (12.0 - site.longitude / 15.0) + 12.0) % 24.0) - 12.0))
    if offset == 0:
        which = "UTC"
        zone = "UTC"
    else:
        which = f"local standard time UTC{_offset_text(offset)}"
        zone = _offset_text(offset)
    return (
        f"{head} Its {ghi} peaks at about {_hhmm(peak)} on the file's clock, which at longitude "
        f"{site.longitude:g} is solar noon on {which}: the file looks to use {which}. Fix: set data.timezone={zone} "
        "if that is the file's clock (or give the zone its documentation states)"
    )


def check_alignment(
    ghi: np.ndarray, stamps: pd.DatetimeIndex, site: Site, source: str, physics: dict[str, np.ndarray]
) -> None:
    """GHI must follow the clear-sky GHI of the site: a weak correlation means a wrong site or clock.

    Raises:
        DataError: Naming the key to change when the longitude or latitude with the other sign, or another
            clock offset, fits the data.
    """
    clear = physics["ghi_clear"]
    ok = np.isfinite(ghi)
    if ok.sum() < 24 or np.nanmax(ghi[ok]) <= 0:
        return
    r = _corr(ghi[ok], clear[ok])
    if r >= _MIN_CORRELATION:
        return
    assert site.latitude is not None and site.longitude is not None
    hours = _clock_hours(stamps.tz_convert(stamps.tz))
    shift = {"instant": 0.0, "start": 0.5, "end": -0.5}[site.time_label] * _step(stamps).total_seconds() / 3600.0
    peak_file, peak_sun = _peak_clock(ghi, hours + shift), _peak_clock(clear, hours + shift)
    where = (
        f"{source}: GHI does not follow the clear-sky GHI computed for latitude {site.latitude:g}, longitude "
        f"{site.longitude:g} on the clock {site.tz} (correlation {r:.2f}; real sites, cloudy ones included, are "
        "above 0.8)."
    )
    if peak_file is not None and peak_sun is not None:
        where += (
            f" The file's GHI peaks at about {_hhmm(peak_file)}, but the sun there is highest at about "
            f"{_hhmm(peak_sun)}, {'night' if _is_night(peak_file, peak_sun) else 'another time of day'} for the file."
        )
    tries: list[tuple[float, str, str]] = []
    if site.longitude != 0:
        other = Site(site.latitude, -site.longitude, site.altitude, site.tz, site.time_label)
        tries.append(
            (
                _corr(ghi[ok], _clear_sky(_mid(stamps, site), other)["ghi_clear"][ok]),
                f"the longitude sign looks wrong (east is positive, west negative): set data.longitude={-site.longitude:g}",
                "longitude",
            )
        )
    if site.latitude != 0:
        other = Site(-site.latitude, site.longitude, site.altitude, site.tz, site.time_label)
        tries.append(
            (
                _corr(ghi[ok], _clear_sky(_mid(stamps, site), other)["ghi_clear"][ok]),
                f"the latitude sign looks wrong (north is positive, south negative): set data.latitude={-site.latitude:g}",
                "latitude",
            )
        )
    best = max(tries, default=None)
    if best is not None and best[0] >= _MIN_CORRELATION:
        origin = site.origin.get(best[2], "file")
        said = "data." + best[2] if origin == "config" else f"the file's {best[2]} (data.{best[2]} overrides it)"
        raise DataError(f"{where} With the other sign of {said} the correlation is {best[0]:.2f}: {best[1]}")
    if peak_file is not None and peak_sun is not None:
        off = ((peak_file - peak_sun + 12.0) % 24.0) - 12.0
        off = round(off * 2) / 2
        if abs(off) >= 1:
            raise DataError(
                f"{where} The file's clock looks {abs(off):g} h {'ahead of' if off > 0 else 'behind'} the zone "
                f"{site.tz}: check the time zone (data.timezone) and the longitude (data.longitude)"
            )
    raise DataError(
        f"{where} Fix: check data.latitude, data.longitude and data.timezone (or the file's metadata), and that "
        "the GHI column holds global horizontal irradiance in W/m^2"
    )


def _mid(stamps: pd.DatetimeIndex, site: Site) -> pd.DatetimeIndex:
    shift = {"instant": 0.0, "start": 0.5, "end": -0.5}[site.time_label]
    return stamps + _step(stamps) * shift


def _is_night(peak_file: float, peak_sun: float) -> bool:
    return abs(((peak_file - peak_sun + 12.0) % 24.0) - 12.0) > 6.0


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------------------------------------- clear-sky index


@dataclass
class ClearSkyIndex:
    """Targets as clear-sky index, with what the forecast needs to go back to W/m^2.

    ``frame``: the input frame with each target replaced by its clear-sky index (night and missing steps
    carry the last daytime value, 1 before the first); ``observed`` ``(T, C)``: 1 on daytime steps with an
    observed target; ``clear_sky`` and ``irradiance`` ``(T, C)`` float32: the clear-sky and the measured
    irradiance of each target (0 where missing).
    """

    frame: pd.DataFrame
    observed: np.ndarray
    clear_sky: np.ndarray
    irradiance: np.ndarray


def check_transform_targets(targets: list[str], source: str) -> list[str]:
    """The component of every target; raises ConfigError for a target that is no irradiance."""
    comps = [component(t) for t in targets]
    bad = [t for t, c in zip(targets, comps, strict=True) if c is None or t in DERIVED]
    if bad:
        raise ConfigError(
            f"data.target_transform=clear_sky_index: target(s) {', '.join(map(repr, bad))} of {source} are no "
            f"irradiance component ({', '.join(COMPONENTS)}); forecast them in another run, or move them to "
            "data.exog_columns"
        )
    return [c for c in comps if c is not None]


def clear_sky_of(stamps: pd.DatetimeIndex, targets: list[str], site: Site) -> np.ndarray:
    """The clear-sky irradiance ``(T, C)`` W/m^2 of each irradiance target at ``stamps`` (tz-aware, at least
    two, regularly spaced: each is placed in its interval by ``site.time_label`` as the data's are), e.g.
    future timestamps a clear-sky-index forecast is turned back into irradiance at."""
    comps = check_transform_targets(targets, "the forecast")
    physics = solar_physics(stamps, site)
    return np.stack([physics[f"{comp}_clear"] for comp in comps], axis=1)


def clear_sky_index(frame: pd.DataFrame, targets: list[str], site: Site, source: str) -> ClearSkyIndex:
    """The clear-sky index of the ``targets`` of ``frame`` (indexed by tz-aware timestamps)."""
    comps = check_transform_targets(targets, source)
    physics = solar_physics(pd.DatetimeIndex(frame.index), site)
    day = physics["solar_zenith"] < DAYTIME_ZENITH
    out = frame.copy()
    n = len(frame)
    observed = np.zeros((n, len(targets)), np.float32)
    clear_sky = np.zeros((n, len(targets)), np.float32)
    irradiance = np.zeros((n, len(targets)), np.float32)
    for j, (col, comp) in enumerate(zip(targets, comps, strict=True)):
        measured = frame[col].to_numpy(dtype=float)
        clear = physics[f"{comp}_clear"]
        ok = day & np.isfinite(measured) & (clear > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.where(ok, np.clip(measured / np.where(clear > 0, clear, 1.0), 0.0, K_MAX), np.nan)
        out[col] = pd.Series(k, index=frame.index).ffill().fillna(1.0).to_numpy()
        observed[:, j] = ok
        clear_sky[:, j] = clear
        irradiance[:, j] = np.nan_to_num(measured)
    return ClearSkyIndex(out, observed, clear_sky, irradiance)
