"""Read panels of many time series into one canonical in-memory :class:`Panel`.

Two layouts, the ones forecasting users keep their panels in:

- ``long`` (neuralforecast / statsforecast): one CSV or parquet row per (series id, timestamp), with the
  target, per-row known-future covariates and per-series static covariates as columns.
- ``gluonts``: JSON lines or arrow files (or a folder of them) with one series per line/row: ``start``,
  ``target``, ``item_id``, ``feat_static_real``, ``feat_static_cat`` and ``feat_dynamic_real``. They are read
  with gluonts' own loaders and its ``ProcessDataEntry`` (what ``gluonts.dataset.common.FileDataset``
  composes), one file at a time so that a message can name the file and the line.

Every series of a panel lies on a regular grid of one pandas frequency; steps missing from the file are NaN
in the target. Known covariates may run past a series' last observed target: that stretch is the series'
forecast period.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

from sciadapt.datamodules.solar_formats import compose_timestamps
from sciadapt.datamodules.timeseries import (
    _describe,
    _missing_column_error,
    _row_ref,
    _to_numeric,
    read_table,
    resolve_path,
)
from sciadapt.errors import DataError

PanelFormat = Literal["auto", "long", "gluonts"]

_LONG_SUFFIXES = (".parquet", ".pq")
_GLUONTS_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".arrow", ".feather")
# a grid this many times larger than the file's rows is a wrong frequency, not gaps
_MAX_GRID_BLOWUP = 50
_SHOW = 3  # offending items a message lists


@dataclass
class Panel:
    """Many univariate series on one frequency, each with its own start and length.

    Attributes:
        ids: Series ids, in first-appearance order (long) or file order (gluonts).
        starts: The first timestamp of each series (its first row, observed or not).
        freq: The pandas offset alias shared by every series (``"h"``, ``"D"``, ``"15min"``, ``"W-SUN"``...).
        target: Per series a ``(T_i,)`` float32 array, NaN where missing (gaps in the grid included); it
            ends at the series' last observed value.
        known: Per series a ``(T_i + extra_i, K)`` float32 array of known-future covariates; the
            ``extra_i`` rows past the target's end are the series' forecast period.
        known_names: The K covariate names.
        static: ``(n_series, S)`` float32 static covariates; categorical columns are one-hot encoded.
        static_names: The S names; a one-hot column is named ``"column=value"``.
        source: The file (or folder), for messages.
    """

    ids: list[str]
    starts: list[pd.Timestamp]
    freq: str
    target: list[np.ndarray]
    known: list[np.ndarray]
    known_names: list[str]
    static: np.ndarray
    static_names: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.ids)

    def timestamps(self, i: int) -> pd.DatetimeIndex:
        """The timestamps of series ``i``'s target (``known[i]`` continues the same grid)."""
        return pd.date_range(self.starts[i], periods=len(self.target[i]), freq=self.freq)


def read_panel(
    path: str,
    *,
    format: PanelFormat = "auto",
    id_column: str = "unique_id",
    time_column: str = "ds",
    target_column: str = "y",
    static_columns: list[str] | None = None,
    known_columns: list[str] | None = None,
    timestamp_parts: list[str] | None = None,
    freq: str | None = None,
    encoding: str = "utf-8",
) -> Panel:
    """Read a panel of time series from a long table or a gluonts dataset.

    Args:
        path: A ``.csv`` (``.csv.gz``...) or ``.parquet`` long table; a gluonts ``.json``/``.jsonl``
            (``.gz``), ``.arrow``/``.feather`` file, or a folder of them. ``pkg://name`` means bundled data.
        format: ``long``, ``gluonts`` or ``auto`` (by suffix; a folder is gluonts; a parquet file with
            ``start`` and ``target`` columns is gluonts).
        id_column: Long tables: the series id column.
        time_column: Long tables: the timestamp column (composed from ``timestamp_parts`` when given).
        target_column: Long tables: the value column.
        static_columns: Long tables: columns constant within a series (numeric kept, others one-hot).
        known_columns: Long tables: numeric covariates known in advance, one value per row.
        timestamp_parts: Long tables: compose ``time_column`` from these columns (year, month, day[, hour[,
            minute[, second]]]), as NSRDB files spell time.
        freq: The pandas frequency of the panel. Long tables infer it when omitted; gluonts needs it unless
            the starts are pandas Periods, the arrow schema metadata or a ``metadata.json`` beside the data
            (or one folder up, the gluonts repository layout) has ``freq``.
        encoding: Text encoding of a CSV.

    Returns:
        The panel.

    Raises:
        DataError: A missing or unreadable file, missing columns or fields, NaN ids, duplicate (id,
            timestamp) pairs, unparseable timestamps or starts, mixed frequencies, a static column that
            varies within a series, a 2-D target, or an empty panel.
    """
    file = resolve_path(path)
    source = _describe(path)
    if not file.exists():
        raise DataError(f"data file {source} does not exist; check data.path")
    kind = _pick_format(file, source, format, time_column)
    if kind == "gluonts":
        return _read_gluonts(file, source, freq)
    if file.is_dir():
        raise DataError(
            f"{source} is a folder; a long table is one .csv or .parquet file. Fix: point data.path at the file "
            "(or use data.format=gluonts for a folder of gluonts .json/.arrow files)"
        )
    return _read_long(
        file,
        source,
        id_column=id_column,
        time_column=time_column,
        target_column=target_column,
        static_columns=list(static_columns or []),
        known_columns=list(known_columns or []),
        timestamp_parts=None if timestamp_parts is None else list(timestamp_parts),
        freq=freq,
        encoding=encoding,
    )


# --------------------------------------------------------------------------------------------- format


def _has_suffix(file: Path, suffixes: tuple[str, ...]) -> bool:
    name = file.name.lower()
    return any(name.endswith(s) for s in suffixes)


def _pick_format(file: Path, source: str, format: str, time_column: str) -> str:
    if format not in ("auto", "long", "gluonts"):
        raise DataError(f"{source}: data.format must be auto, long or gluonts, got {format!r}")
    if format != "auto":
        return format
    if file.is_dir() or _has_suffix(file, _GLUONTS_SUFFIXES):
        return "gluonts"
    if _has_suffix(file, _LONG_SUFFIXES):
        try:
            import pyarrow.parquet as pq

            names = set(pq.read_schema(file).names)
        except Exception:  # a corrupt parquet file is reported by the long reader
            return "long"
        return "gluonts" if {"start", "target"} <= names and time_column not in names else "long"
    return "long"  # read_table names the formats it knows


# ------------------------------------------------------------------------------------------------ long


def _read_long(
    file: Path,
    source: str,
    *,
    id_column: str,
    time_column: str,
    target_column: str,
    static_columns: list[str],
    known_columns: list[str],
    timestamp_parts: list[str] | None,
    freq: str | None,
    encoding: str,
) -> Panel:
    raw = read_table(file, encoding, label=source)
    is_csv = not _has_suffix(file, _LONG_SUFFIXES)
    if timestamp_parts is not None:
        if time_column in raw.columns:
            raise DataError(
                f"{source}: data.timestamp_parts composes the timestamp into data.time_column {time_column!r}, "
                "but the file already has that column. Fix: set data.time_column to a new name (e.g. "
                "data.time_column=time) or drop data.timestamp_parts"
            )
        raw[time_column] = compose_timestamps(raw, timestamp_parts, source)
    available = [c for c in raw.columns if timestamp_parts is None or c != time_column]
    keys = {
        "data.id_column": [id_column],
        "data.time_column": [time_column],
        "data.target_column": [target_column],
        "data.static_columns": static_columns,
        "data.known_columns": known_columns,
    }
    for key, cols in keys.items():
        missing = [c for c in cols if c not in raw.columns]
        if missing:
            raise _missing_column_error(source, key, missing, available, f"set {key} to column(s) of the file")
    roles: dict[str, str] = {}
    for key, cols in keys.items():
        for col in cols:
            if col in roles:
                raise DataError(
                    f"{source}: column {col!r} is named by both {roles[col]} and {key}. Fix: give each column one role"
                )
            roles[col] = key

    # ids: a missing id cannot be attributed to a series
    id_values = raw[id_column]
    no_id = np.flatnonzero(id_values.isna().to_numpy())
    if no_id.size:
        rows = ", ".join(_row_ref(int(i), is_csv, 0) for i in no_id[:_SHOW])
        more = f" and {no_id.size - _SHOW} more" if no_id.size > _SHOW else ""
        raise DataError(
            f"{source}: column {id_column!r} (data.id_column) is empty in {no_id.size} row(s): {rows}{more}. "
            "Fix: fill in the series id of those rows or drop them"
        )
    codes, uniques = pd.factorize(id_values.astype(str).to_numpy())  # first-appearance order
    ids = [str(u) for u in uniques]
    stamps = _parse_times(raw[time_column], source, time_column, is_csv, timestamp_parts is not None)
    target_raw = _to_numeric(raw, [target_column], source, "data.target_column", is_csv)[target_column].to_numpy()
    known_raw = _to_numeric(raw, known_columns, source, "data.known_columns", is_csv).to_numpy(dtype=np.float64)

    # one stable sort by (series, time); every later step works on contiguous groups
    t = stamps.asi8
    order = _series_time_order(codes, t)
    codes_s = codes[order]
    t_s = t[order]
    stamps_s = stamps[order]
    bounds = np.searchsorted(codes_s, np.arange(len(ids) + 1))
    _check_duplicates(codes_s, t_s, order, ids, stamps_s, source, is_csv)

    offset = _parse_freq(freq, source) if freq is not None else _infer_long_freq(stamps_s, bounds, ids, source)
    pos = _grid_positions(stamps_s, t_s, codes_s, bounds, offset, ids, order, source, is_csv)

    y_s = target_raw[order].astype(np.float32)
    known_s = known_raw[order].astype(np.float32)
    n = len(ids)
    last_target = _last_position(codes_s, pos, ~np.isnan(y_s), n)
    empty = np.flatnonzero(last_target < 0)
    if empty.size:
        names = ", ".join(repr(ids[i]) for i in empty[:_SHOW])
        raise DataError(
            f"{source}: {empty.size} series have no observed {target_column!r} value: {names}. Fix: drop those "
            "series from the file (a series needs history to learn from)"
        )
    last_known = _last_position(codes_s, pos, ~np.isnan(known_s).all(axis=1), n)
    lengths = np.maximum(last_target, last_known) + 1
    starts_flat = np.concatenate([[0], np.cumsum(lengths)])
    keep = pos < lengths[codes_s]  # rows after the last target and known value carry nothing
    flat = starts_flat[codes_s[keep]] + pos[keep]
    total = int(starts_flat[-1])
    target_flat = np.full(total, np.nan, dtype=np.float32)
    target_flat[flat] = y_s[keep]
    known_flat = np.full((total, len(known_columns)), np.nan, dtype=np.float32)
    known_flat[flat] = known_s[keep]

    static, static_names = _long_static(raw, static_columns, order, codes_s, bounds, ids, source, is_csv)
    first_rows = bounds[:-1]
    return Panel(
        ids=ids,
        starts=[pd.Timestamp(s) for s in stamps_s[first_rows]],
        freq=offset.freqstr,
        target=[target_flat[starts_flat[i] : starts_flat[i] + last_target[i] + 1] for i in range(n)],
        known=[known_flat[starts_flat[i] : starts_flat[i + 1]] for i in range(n)],
        known_names=list(known_columns),
        static=static,
        static_names=static_names,
        source=source,
    )


def _series_time_order(codes: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The row order sorted by (series, time), stable; most files already are, which costs one pass."""
    if len(t) > 1:
        dc, dt = np.diff(codes), np.diff(t)
        if bool(np.all((dc > 0) | ((dc == 0) & (dt >= 0)))):
            return np.arange(len(t))
    return np.lexsort((t, codes))


def _last_position(codes_s: np.ndarray, pos: np.ndarray, flags: np.ndarray, n: int) -> np.ndarray:
    """Per series the largest grid position of a flagged row (rows sorted by series then time), else -1."""
    c, p = codes_s[flags], pos[flags]
    last = np.searchsorted(c, np.arange(n), side="right") - 1  # the last flagged row of each series
    ok = (last >= 0) & (c[np.maximum(last, 0)] == np.arange(n)) if c.size else np.zeros(n, bool)
    return np.where(ok, p[np.maximum(last, 0)] if c.size else -1, -1).astype(np.int64)


def _parse_times(values: pd.Series, source: str, column: str, is_csv: bool, composed: bool) -> pd.DatetimeIndex:
    """The timestamps in nanoseconds; an unparseable or empty cell is an error naming its row."""
    key = "data.timestamp_parts" if composed else "data.time_column"
    try:
        try:
            stamps = pd.DatetimeIndex(pd.to_datetime(values))
        except ValueError:  # pandas fixes the format from the first cell; panels glued from sources vary
            stamps = pd.DatetimeIndex(pd.to_datetime(values, format="ISO8601"))
    except (ValueError, TypeError, OverflowError) as err:
        coerced = pd.to_datetime(values, errors="coerce", format="mixed")
        bad = np.flatnonzero((coerced.isna() & values.notna()).to_numpy())
        cells = ", ".join(f"{values.iloc[i]!r} at {_row_ref(int(i), is_csv, 0)}" for i in bad[:_SHOW])
        reason = str(err).splitlines()[0].split(" You might want")[0].rstrip(".")
        where = f". Unparseable cells: {cells}." if cells else "."
        raise DataError(
            f"{source}: cannot parse column {column!r} ({key}) as timestamps: {reason}{where} Fix: write the "
            "timestamps in one format (e.g. 2020-01-31 13:00:00), give every one the same UTC offset, or "
            "point data.time_column at the date/time column"
        ) from err
    if stamps.hasnans:
        bad = np.flatnonzero(stamps.isna())
        rows = ", ".join(_row_ref(int(i), is_csv, 0) for i in bad[:_SHOW])
        raise DataError(
            f"{source}: column {column!r} ({key}) has {bad.size} empty timestamp(s): {rows}. Fix: fill in or "
            "drop those rows"
        )
    return stamps.as_unit("ns")


def _check_duplicates(
    codes_s: np.ndarray,
    t_s: np.ndarray,
    order: np.ndarray,
    ids: list[str],
    stamps_s: pd.DatetimeIndex,
    source: str,
    is_csv: bool,
) -> None:
    dup = np.flatnonzero((np.diff(codes_s) == 0) & (np.diff(t_s) == 0))
    if dup.size == 0:
        return
    shown = []
    for k in dup[:_SHOW]:
        a, b = sorted((int(order[k]), int(order[k + 1])))
        shown.append(f"id {ids[codes_s[k]]!r} at {stamps_s[k]} ({_row_ref(a, is_csv, 0)} and {_row_ref(b, is_csv, 0)})")
    more = f" and {dup.size - _SHOW} more" if dup.size > _SHOW else ""
    raise DataError(
        f"{source}: {dup.size} duplicate (id, timestamp) pair(s): {'; '.join(shown)}{more}. Fix: drop the "
        "duplicate rows (or aggregate them) so each series has one row per timestamp"
    )


def _parse_freq(freq: str, source: str) -> pd.DateOffset:
    try:
        return to_offset(freq)
    except (ValueError, TypeError) as err:
        raise DataError(
            f"{source}: data.freq={freq!r} is not a pandas frequency ({err}). Fix: use an offset alias such "
            "as h, D, 15min, W-SUN, MS"
        ) from err


def _infer_long_freq(stamps_s: pd.DatetimeIndex, bounds: np.ndarray, ids: list[str], source: str) -> pd.DateOffset:
    """One frequency for all series: pandas' per series (3+ points), else the commonest step."""
    found: list[tuple[pd.DateOffset, str]] = []  # distinct offsets, each with the first series that has it
    sizes = np.diff(bounds)
    for i in np.flatnonzero(sizes >= 3):
        inferred = pd.infer_freq(stamps_s[bounds[i] : bounds[i + 1]])
        if inferred is None:
            continue  # gaps: checked against the panel's grid below
        off = to_offset(inferred)
        if not any(off == o for o, _ in found):
            found.append((off, ids[i]))
            if len(found) == 2:
                (a, ia), (b, ib) = found
                raise DataError(
                    f"{source}: mixed frequencies: series {ia!r} has frequency {a.freqstr} but series {ib!r} has "
                    f"{b.freqstr}. Fix: give data.freq (series then lie on its grid, gaps as NaN) or split the "
                    "panel into one file per frequency"
                )
    if found:
        return found[0][0]
    # no series is regular: take the commonest step if every step is a whole number of it
    t = stamps_s.asi8
    same = np.repeat(np.arange(len(ids)), sizes)
    inner = np.flatnonzero(np.diff(same) == 0)
    steps = t[inner + 1] - t[inner]
    if steps.size:
        step = Counter(steps.tolist()).most_common(1)[0][0]
        if step > 0 and not (steps % step).any():
            return to_offset(pd.Timedelta(int(step), unit="ns"))
    raise DataError(
        f"{source}: cannot infer the panel's frequency: no series has 3 or more regularly spaced timestamps. "
        "Fix: give data.freq (e.g. data.freq=h)"
    )


def _grid_positions(
    stamps_s: pd.DatetimeIndex,
    t_s: np.ndarray,
    codes_s: np.ndarray,
    bounds: np.ndarray,
    offset: pd.DateOffset,
    ids: list[str],
    order: np.ndarray,
    source: str,
    is_csv: bool,
) -> np.ndarray:
    """Each sorted row's step on its series' grid (start + k * freq); an off-grid row is an error."""
    n = len(ids)
    fixed = isinstance(offset, pd.offsets.Tick) and (stamps_s.tz is None or offset.nanos < 86_400 * 10**9)
    if fixed:  # whole-panel arithmetic for fixed steps
        step = int(offset.nanos)
        delta = t_s - t_s[bounds[:-1]][codes_s]
        off_grid = np.flatnonzero(delta % step)
        pos: np.ndarray = delta // step
    else:  # calendar frequencies (months, weeks...): one date_range per series
        pos = np.empty(len(t_s), dtype=np.int64)  # filled per series
        off_grid = np.empty(0, dtype=np.int64)
        for i in range(n):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            grid = pd.date_range(stamps_s[lo], stamps_s[hi - 1], freq=offset).as_unit("ns").asi8
            p = np.minimum(np.searchsorted(grid, t_s[lo:hi]), max(len(grid) - 1, 0))
            bad = np.flatnonzero(grid[p] != t_s[lo:hi]) if len(grid) else np.arange(hi - lo)
            if bad.size:
                off_grid = bad + lo
                break
            pos[lo:hi] = p
    if off_grid.size:
        k = int(off_grid[0])
        sid = ids[codes_s[k]]
        raise DataError(
            f"{source}: series {sid!r} has timestamp {stamps_s[k]} ({_row_ref(int(order[k]), is_csv, 0)}) that is "
            f"not on its grid of frequency {offset.freqstr} starting at {stamps_s[bounds[codes_s[k]]]}"
            f"{f' ({off_grid.size} such rows)' if fixed else ''}. Fix: give data.freq matching the data, or "
            "correct or drop the off-grid rows (a series of another frequency belongs in a panel of its own)"
        )
    cells = int((pos[bounds[1:] - 1] + 1).sum())
    if cells > _MAX_GRID_BLOWUP * len(t_s) and cells > 10_000_000:
        raise DataError(
            f"{source}: frequency {offset.freqstr} spreads the file's {len(t_s)} rows over {cells} steps. "
            "Fix: give data.freq matching the data's spacing"
        )
    return pos


def _long_static(
    raw: pd.DataFrame,
    columns: list[str],
    order: np.ndarray,
    codes_s: np.ndarray,
    bounds: np.ndarray,
    ids: list[str],
    source: str,
    is_csv: bool,
) -> tuple[np.ndarray, list[str]]:
    """Static covariates from the first row of each series, after checking they never vary within one."""
    blocks: list[np.ndarray] = []
    names: list[str] = []
    first_of_row = bounds[:-1][codes_s]
    for col in columns:
        series = raw[col]
        values = series.to_numpy()[order]
        first = values[first_of_row]
        missing = pd.isna(values)
        same = (missing & pd.isna(first)) | (~missing & (values == first))
        varies = np.flatnonzero(~same)
        if varies.size:
            k = int(varies[0])
            j = int(bounds[codes_s[k]])
            a, b = sorted((int(order[j]), int(order[k])))
            raise DataError(
                f"{source}: static column {col!r} (data.static_columns) varies within series "
                f"{ids[codes_s[k]]!r}: {values[j]!r} and {values[k]!r} ({_row_ref(a, is_csv, 0)} and "
                f"{_row_ref(b, is_csv, 0)}). Fix: make it constant per series, or move it to data.known_columns "
                "if it changes over time"
            )
        per_series = values[bounds[:-1]]
        if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            blocks.append(per_series.astype(np.float32)[:, None])
            names.append(col)
        else:  # categorical: one-hot, a missing value is all zeros
            onehot, cats = _one_hot(pd.Series(per_series).where(pd.notna(per_series), None).map(_cat_label))
            blocks.append(onehot)
            names.extend(f"{col}={c}" for c in cats)
    static = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(ids), 0), dtype=np.float32)
    return static.astype(np.float32), names


def _cat_label(value: Any) -> str | None:
    return None if value is None else str(value)


def _one_hot(labels: pd.Series) -> tuple[np.ndarray, list[str]]:
    cats = sorted({v for v in labels if v is not None})
    codes = pd.Categorical(labels, categories=cats).codes
    out = np.zeros((len(labels), len(cats)), dtype=np.float32)
    rows = np.flatnonzero(codes >= 0)
    out[rows, codes[rows]] = 1.0
    return out, [str(c) for c in cats]


# --------------------------------------------------------------------------------------------- gluonts


@dataclass
class _Entry:
    where: str  # "file: line 3" / "file: row 2"
    data: dict[str, Any]


def _gluonts_files(path: Path, source: str) -> list[Path]:
    if path.is_file():
        if not _has_suffix(path, (*_GLUONTS_SUFFIXES, ".parquet")):
            raise DataError(
                f"{source}: a gluonts dataset is .json, .jsonl, .json.gz, .arrow, .feather or .parquet, not "
                f"{''.join(path.suffixes) or '(no suffix)'}. Fix: set data.format=long for a long table"
            )
        return [path]
    files = sorted(
        p
        for p in [*path.glob("*"), *path.glob("*/*")]
        if p.is_file()
        and not p.name.startswith(".")
        and p.name != "metadata.json"
        and _has_suffix(p, (*_GLUONTS_SUFFIXES, ".parquet"))
    )
    if not files:
        present = sorted(p.name for p in path.iterdir())[:10]
        raise DataError(
            f"{source}: the folder holds no gluonts data file (.json, .jsonl, .json.gz, .arrow, .feather); it has: "
            f"{', '.join(present) or 'nothing'}. Fix: point data.path at the folder of the dataset's files"
        )
    return files


def _load_entries(file: Path, label: str) -> tuple[list[_Entry], str | None]:
    """The raw entries of one gluonts file, and the ``freq`` its arrow metadata records."""
    from gluonts.dataset import arrow, jsonl
    from gluonts.exceptions import GluonTSDataError

    is_json = _has_suffix(file, (".json", ".jsonl", ".json.gz", ".jsonl.gz"))
    try:
        if is_json:
            if file.stat().st_size == 0:  # gluonts' line index fails on an empty file
                return [], None
            entries = [_Entry(f"{label}: line {i + 1}", d) for i, d in enumerate(jsonl.JsonLinesFile(file))]
            return entries, None
        table = arrow.File.infer(file)
        meta = table.metadata()
        freq = meta.get("freq") if isinstance(meta, dict) else None
        entries = [_Entry(f"{label}: row {i}", dict(d)) for i, d in enumerate(table)]
        return entries, None if freq is None else str(freq)
    except GluonTSDataError as err:
        line = str(err).split(",")[0].rsplit(" ", 1)[-1]
        where = f" line {int(line) + 1}" if line.isdigit() else ""
        raise DataError(
            f"{label}:{where} is not valid JSON ({err}). Fix: repair that line; a gluonts JSON lines file holds "
            "one JSON object per line"
        ) from err
    except Exception as err:  # gzip, JSON and arrow readers raise many types on corrupt input
        raise DataError(
            f"cannot read gluonts data file {label}: {type(err).__name__}: {err}. Fix: check that the file is "
            "complete (not truncated by a copy) and in the format its suffix names"
        ) from err


def _metadata_freq(path: Path) -> str | None:
    """``freq`` of a gluonts repository ``metadata.json`` beside the data or one folder up."""
    import json

    folder = path if path.is_dir() else path.parent
    for candidate in (folder / "metadata.json", folder.parent / "metadata.json"):
        if candidate.is_file():
            try:
                meta = json.loads(candidate.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(meta, dict) and isinstance(meta.get("freq"), str):
                return str(meta["freq"])
    return None


def _read_gluonts(path: Path, source: str, freq: str | None) -> Panel:
    from gluonts.dataset.common import ProcessDataEntry

    files = _gluonts_files(path, source)
    entries: list[_Entry] = []
    meta_freqs: list[str] = []
    for f in files:
        label = source if f == path else f"{source}/{f.relative_to(path)}"
        got, meta_freq = _load_entries(f, label)
        entries.extend(got)
        if meta_freq is not None:
            meta_freqs.append(meta_freq)
    if not entries:
        raise DataError(f"{source}: the gluonts dataset holds no series. Fix: check data.path")

    for e in entries:
        missing = [k for k in ("start", "target") if k not in e.data]
        if missing:
            raise DataError(
                f"{e.where}: the entry lacks field(s) {', '.join(missing)}; it has: {', '.join(map(str, e.data))}. "
                "Fix: every gluonts entry needs 'start' and 'target'"
            )
    freq = freq or _gluonts_freq(entries, meta_freqs, path, source)
    try:  # gluonts turns starts into pandas Periods, which know fewer aliases than offsets (M, not MS or ME)
        pfreq = pd.Period("2000-01-01", freq).freqstr
    except (ValueError, TypeError, AttributeError) as err:
        raise DataError(
            f"{source}: frequency {freq!r} is not a pandas period frequency, which gluonts needs ({err}). Fix: "
            "give data.freq as a period alias such as h, D, W, M, Q, Y, 15min"
        ) from err
    process = ProcessDataEntry(pfreq, one_dim_target=True)

    ids: list[str] = []
    starts: list[pd.Period] = []
    target: list[np.ndarray] = []
    known: list[np.ndarray] = []
    dyn_widths: list[int | None] = []
    real: list[np.ndarray | None] = []
    cat: list[np.ndarray | None] = []
    for i, e in enumerate(entries):
        data = dict(e.data)
        item = data.get("item_id")
        ids.append(str(i) if item is None else str(item))
        ndim = np.ndim(data["target"])
        if ndim != 1:
            raise DataError(
                f"{e.where} (series {ids[-1]!r}): the target is {ndim}-D (shape {np.shape(data['target'])}); a "
                "panel holds univariate series. Fix: write one entry per variable (its own item_id), or move "
                "the other variables to feat_dynamic_real"
            )
        if isinstance(data["start"], pd.Period) and data["start"].freqstr != pfreq:
            raise DataError(
                f"{source}: mixed frequencies: series {ids[0]!r} has frequency {pfreq} but series "
                f"{ids[-1]!r} ({e.where}) has {data['start'].freqstr}. Fix: give data.freq or split the panel"
            )
        try:
            start = pd.Period(data["start"], pfreq)
        except (ValueError, TypeError, OverflowError) as err:
            raise DataError(
                f"{e.where} (series {ids[-1]!r}): start {data['start']!r} does not parse as a time ({err}). "
                'Fix: write it as a date/time such as "2020-01-31 13:00:00"'
            ) from err
        try:
            data = process(data)
        except Exception as err:  # gluonts raises GluonTSDataError, numpy ValueError on ragged fields
            raise DataError(
                f"{e.where} (series {ids[-1]!r}): {err}. Fix: check the entry's fields (target a list of numbers, "
                "feat_dynamic_real a list of lists, feat_static_* lists)"
            ) from err
        starts.append(start)
        y = np.asarray(data["target"], dtype=np.float32)
        if y.size == 0:
            raise DataError(f"{e.where} (series {ids[-1]!r}): the target is empty. Fix: drop that entry")
        target.append(y)
        dyn = data.get("feat_dynamic_real")
        dyn_widths.append(None if dyn is None else int(dyn.shape[0]))
        if dyn is not None and dyn.shape[1] < len(y):
            raise DataError(
                f"{e.where} (series {ids[-1]!r}): feat_dynamic_real has {dyn.shape[1]} steps but the target has "
                f"{len(y)}. Fix: give the covariates for every target step (and the forecast steps after it)"
            )
        known.append(np.empty((len(y), 0), np.float32) if dyn is None else np.ascontiguousarray(dyn.T, np.float32))
        real.append(data.get("feat_static_real"))
        cat.append(data.get("feat_static_cat"))

    seen: dict[str, int] = {}
    for i, sid in enumerate(ids):
        if sid in seen:
            raise DataError(
                f"{source}: item_id {sid!r} occurs twice ({entries[seen[sid]].where} and {entries[i].where}). Fix: "
                "give every series its own item_id"
            )
        seen[sid] = i
    n_known = _same_width("feat_dynamic_real", dyn_widths, ids, entries)
    static_blocks: list[np.ndarray] = []
    static_names: list[str] = []
    n_real = _same_width("feat_static_real", [None if r is None else len(r) for r in real], ids, entries)
    if n_real:
        static_blocks.append(np.stack([np.asarray(r, np.float32) for r in real if r is not None]))
        static_names.extend(f"feat_static_real_{j}" for j in range(n_real))
    n_cat = _same_width("feat_static_cat", [None if c is None else len(c) for c in cat], ids, entries)
    if n_cat:
        table = np.stack([np.asarray(c, np.int64) for c in cat if c is not None])
        for j in range(n_cat):
            onehot, cats = _one_hot(pd.Series([str(v) for v in table[:, j]], dtype=object))
            static_blocks.append(onehot)
            static_names.extend(f"feat_static_cat_{j}={c}" for c in cats)
    n = len(ids)
    static = np.concatenate(static_blocks, axis=1) if static_blocks else np.zeros((n, 0), np.float32)
    # a Period is an interval: the grid runs through the start of each (monthly -> MS, weekly W-SUN -> W-MON)
    grid = pd.period_range(starts[0], periods=4).to_timestamp()
    return Panel(
        ids=ids,
        starts=[p.to_timestamp() for p in starts],
        freq=str(grid.freqstr or pd.infer_freq(grid)),
        target=target,
        known=known,
        known_names=[f"feat_dynamic_real_{j}" for j in range(n_known)],
        static=static.astype(np.float32),
        static_names=static_names,
        source=source,
    )


def _same_width(field: str, widths: list[int | None], ids: list[str], entries: list[_Entry]) -> int:
    """The field's common length over series (0 when no series has it); any mismatch is an error."""
    present = [(i, w) for i, w in enumerate(widths) if w is not None]
    if not present:
        return 0
    i0, w0 = present[0]
    for i, w in enumerate(widths):
        if w != w0:
            what = "lacks it" if w is None else f"has {w}"
            raise DataError(
                f"{entries[i].where} (series {ids[i]!r}): {field} {what}, but series {ids[i0]!r} "
                f"({entries[i0].where}) has {w0} value(s). Fix: give every series the same {field} fields"
            )
    return w0


def _gluonts_freq(entries: list[_Entry], meta_freqs: list[str], path: Path, source: str) -> str:
    start = entries[0].data["start"]
    if isinstance(start, pd.Period):
        return str(start.freqstr)
    if meta_freqs:
        return meta_freqs[0]
    from_meta = _metadata_freq(path)
    if from_meta is not None:
        return from_meta
    raise DataError(
        f"{entries[0].where}: start {start!r} is a timestamp, not a pandas Period with a frequency, and no "
        "metadata names the frequency, so the series' spacing is unknown. Fix: give data.freq (e.g. data.freq=h)"
    )
