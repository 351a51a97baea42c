"""Multivariate time series from one CSV/parquet file, windowed for long-horizon forecasting.

The split and scaling rules follow the published long-horizon protocol (Informer/Autoformer
"ETT" and "custom" loaders): contiguous train/val/test blocks, each later block starting
``context_length`` rows early so its first window forecasts the block's first row, and a
z-score per channel fitted on the train rows only.

A batch is ``{"x": (B, ctx, C_in), "y": (B, horizon, C_target), "mask": (B, horizon, C_target),
"meta": {"start": (B,)}}``: ``x`` holds the target channels first, then the exogenous
(past-observed) covariates; ``y`` holds the targets only. All values are scaled.
"""

from __future__ import annotations

import importlib.resources
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from sciadapt.config import check_arguments
from sciadapt.datamodules import solar_formats as solar
from sciadapt.datamodules.sampling import EpochShuffleSampler, apply_resume
from sciadapt.errors import ConfigError, DataError, ShapeError
from sciadapt.registry import DATAMODULES, suggest
from sciadapt.spec import FromData, Ge, Gt, Le

# ETT-small borders in hours: 12 months train, 4 months val, 4 months test (30-day months).
_ETT_HOURLY_ROWS = (12 * 30 * 24, 4 * 30 * 24, 4 * 30 * 24)
_DEFAULT_RATIOS = (0.7, 0.1, 0.2)
_PKG_PREFIX = "pkg://"
_NAN_FIX = "set data.nan_policy=mask (train around the gaps) or data.nan_policy=interpolate (fill them)"


def resolve_path(path: str) -> Path:
    """Turn a config path into a file path; ``pkg://name`` means the bundled ``resources/data/name``.

    Args:
        path: A filesystem path (``~`` allowed) or ``pkg://<file>`` for bundled data.

    Returns:
        The path to read. Its existence is checked when it is read.
    """
    if path.startswith(_PKG_PREFIX):
        root = Path(str(importlib.resources.files("sciadapt"))) / "resources" / "data"
        return root / path[len(_PKG_PREFIX) :]
    return Path(path).expanduser()


def _describe(path: str) -> str:
    """Name a file for messages: as the user wrote it, plus where ``pkg://`` points."""
    resolved = resolve_path(path)
    return path if str(resolved) == path else f"{path} ({resolved})"


def _bundled_files() -> list[str]:
    root = resolve_path(_PKG_PREFIX)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.name != "README.md" and not p.name.startswith("_"))


# leading bytes of binary formats users hand us under a text name
_MAGIC = {
    b"PAR1": "a parquet file: rename it to .parquet",
    b"PK\x03\x04": "a zip archive: unpack it, or name it .csv.zip",
    b"\x1f\x8b": "gzip-compressed: name it .csv.gz",
    b"\x89HDF": "an HDF5/netCDF-4 file: gridded data is read with data.name=gridded",
    b"CDF\x01": "a netCDF-3 file: gridded data is read with data.name=gridded",
    b"CDF\x02": "a netCDF-3 file: gridded data is read with data.name=gridded",
    b"\x80\x02": "a Python pickle (sciadapt never unpickles data files): save it as CSV or parquet",
    b"\x80\x03": "a Python pickle (sciadapt never unpickles data files): save it as CSV or parquet",
    b"\x80\x04": "a Python pickle (sciadapt never unpickles data files): save it as CSV or parquet",
    b"\x80\x05": "a Python pickle (sciadapt never unpickles data files): save it as CSV or parquet",
}


def _binary_kind(path: Path) -> str | None:
    """What a file with a text suffix really is, when its first bytes say it is not text."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    if b"\x00" in head:  # text in any single-byte encoding (or UTF-8) has no NUL bytes
        return "binary, not text: save it as a CSV text file or as parquet"
    return None


def read_table(
    path: Path, encoding: str = "utf-8", skiprows: int = 0, label: str | None = None, na_values: list[str] | None = None
) -> pd.DataFrame:
    """Read a ``.csv`` (optionally compressed, e.g. ``.csv.gz``) or ``.parquet`` file.

    Args:
        path: The file.
        encoding: Text encoding of a CSV.
        skiprows: Lines to skip before a CSV's header line.
        label: How messages name the file (e.g. the ``pkg://`` path as configured); default ``path``.
        na_values: Extra CSV cell values that mean "missing" (pandas' defaults, e.g. ``NA``, ``n/a``, stay).

    Returns:
        The file's table with string column names.

    Raises:
        DataError: If the file is missing, of an unknown format, undecodable or corrupt.
    """
    name = label or str(path)
    if not path.is_file():
        hint = ""
        if path.parent == resolve_path(_PKG_PREFIX):
            hint = f" Bundled files (pkg://<name>): {', '.join(_bundled_files()) or 'none'}."
        raise DataError(f"data file {name} does not exist; check data.path.{hint}")
    suffixes = [s.lower() for s in path.suffixes]
    try:
        if suffixes and suffixes[-1] in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif ".csv" in suffixes or ".txt" in suffixes or ".tsv" in suffixes:
            # sep=None would sniff the delimiter, but it forces the slow python engine on
            # every file; tab-separated files are recognised by their suffix instead.
            sep = "\t" if ".tsv" in suffixes else ","
            compressed = suffixes[-1] not in (".csv", ".txt", ".tsv")
            kind = None if compressed else _binary_kind(path)
            if kind is not None:
                raise DataError(f"data file {name} is not a CSV text file: it is {kind}")
            frame = pd.read_csv(
                path, sep=sep, encoding=encoding, skiprows=skiprows, compression="infer", na_values=na_values
            )
        else:
            raise DataError(
                f"data file {name}: unknown format {''.join(path.suffixes) or '(no suffix)'}; "
                "use .csv, .csv.gz (or another pandas compression suffix) or .parquet"
            )
    except DataError:
        raise
    except UnicodeDecodeError as err:
        raise DataError(
            f"data file {name} is not valid {encoding} text ({err.reason} at byte {err.start}); "
            "set data.encoding to the file's encoding, e.g. data.encoding=latin-1"
        ) from err
    except pd.errors.ParserError as err:
        fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
        if fields is None:
            raise DataError(f"cannot parse data file {name} as CSV: {err}") from err
        want, line, saw = fields.groups()
        raise DataError(
            f"data file {name}: line {line} has {saw} fields but the rows before it have {want}. Fix: remove the "
            "stray delimiter(s) on that line, quote the text cell that holds them, or repair a row cut short"
        ) from err
    except Exception as err:  # pandas/pyarrow/gzip raise a zoo of types for corrupt input
        raise DataError(
            f"cannot read data file {name}: {type(err).__name__}: {err}. Fix: check that the file is complete "
            "(not truncated by a copy) and in the format its suffix names"
        ) from err
    frame.columns = [str(c) for c in frame.columns]
    if frame.empty:
        raise DataError(f"data file {name} has no data rows; check data.path and data.skiprows")
    return frame


def _missing_column_error(source: str, key: str, missing: list[str], available: list[str], fix: str) -> DataError:
    hints = "".join(f" '{m}':{hint}" for m in missing if (hint := suggest(m, available)))
    names = ", ".join(repr(m) for m in missing)
    return DataError(
        f"{source}: {key} names column(s) {names} not found in the file.{hints} "
        f"Available columns: {', '.join(available)}. Fix: {fix}"
    )


def _row_ref(i: int, source_is_csv: bool, skiprows: int) -> str:
    """Describe data row ``i`` (0-based) so a user can find it in an editor."""
    if source_is_csv:
        # 1-based file line: skipped lines, then the header line, then the data rows.
        return f"row {i} (file line {skiprows + i + 2})"
    return f"row {i}"


def _parse_timestamps(values: pd.Series, source: str, column: str) -> pd.DatetimeIndex:
    try:
        stamps = pd.DatetimeIndex(pd.to_datetime(values))
    except (ValueError, TypeError, OverflowError) as err:
        raise DataError(
            f"{source}: cannot parse column '{column}' (data.timestamp_column) as timestamps: {err}. "
            "Fix: point data.timestamp_column at the date/time column or clean its values"
        ) from err
    if stamps.hasnans:
        first = int(np.flatnonzero(stamps.isna())[0])
        raise DataError(
            f"{source}: column '{column}' (data.timestamp_column) has {int(stamps.isna().sum())} empty "
            f"timestamp(s), the first at row {first}. Fix: remove or fill those rows"
        )
    return stamps


def _check_monotonic(stamps: pd.DatetimeIndex, source: str, column: str, is_csv: bool, skiprows: int) -> None:
    if len(stamps) < 2:
        return
    steps = np.diff(stamps.asi8)
    bad = np.flatnonzero(steps <= 0)
    if bad.size == 0:
        return
    i = int(bad[0]) + 1
    what = "duplicates" if steps[bad[0]] == 0 else "goes back in time from"
    raise DataError(
        f"{source}: timestamps in '{column}' (data.timestamp_column) must be strictly increasing, but "
        f"{_row_ref(i, is_csv, skiprows)} at {stamps[i]} {what} the previous row ({stamps[i - 1]}). "
        "Fix: sort the file by time and drop duplicate rows (or set data.duplicate_timestamps=keep_first)"
    )


def _to_numeric(
    frame: pd.DataFrame, columns: list[str], source: str, key: str, is_csv: bool = False, skiprows: int = 0
) -> pd.DataFrame:
    """The columns as float64; a cell that is not a number is an error naming it, never a silent NaN.

    Infinite values become NaN, so ``nan_policy`` judges them like any missing value.
    """
    out = {}
    for col in columns:
        series = frame[col]
        if series.dtype == bool or not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_object_dtype(series)):
            raise DataError(
                f"{source}: column '{col}' ({key}) has dtype {series.dtype}, not numbers. "
                f"Fix: remove '{col}' from {key}"
            )
        numeric = pd.to_numeric(series, errors="coerce")
        bad = numeric.isna() & series.notna()
        if bad.any():
            rows = np.flatnonzero(bad.to_numpy())
            cells = ", ".join(f"{series.iloc[i]!r} at {_row_ref(int(i), is_csv, skiprows)}" for i in rows[:3])
            more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
            values = sorted({str(v) for v in series.iloc[rows]})[:3]
            raise DataError(
                f"{source}: column '{col}' ({key}) holds {len(rows)} cell(s) that are not numbers: {cells}{more}. "
                f"Fix: correct those cells, declare them missing with data.na_values={values} "
                f"(then data.nan_policy decides), or leave '{col}' out of {key}"
            )
        values_f = numeric.astype("float64")
        out[col] = values_f.where(np.isfinite(values_f.to_numpy()))  # +-inf -> NaN
    return pd.DataFrame(out, index=frame.index)


def _looks_numeric(series: pd.Series) -> bool:
    """A column meant to hold numbers: numeric, or text whose non-empty cells mostly parse as numbers
    (one stray ``n/a?`` must not silently drop a channel; it is reported by :func:`_to_numeric`)."""
    if series.dtype == bool:
        return False
    if pd.api.types.is_numeric_dtype(series):
        return True
    if not pd.api.types.is_object_dtype(series):
        return False
    present = series.dropna()
    if present.empty:
        return False
    parsed = pd.to_numeric(present, errors="coerce").notna()
    return bool(parsed.mean() >= 0.5)


def _split_date_problems(dates: list[str] | None) -> list[str]:
    if dates is None or not 2 <= len(dates) <= 3:
        return [
            f"data.split_dates: data.split=dates needs [val_start, test_start] or [val_start, test_start, test_end] "
            f"(quote them in YAML: '2017-10-01'), got {dates}"
        ]
    try:
        stamps = [pd.Timestamp(d) for d in dates]
    except (ValueError, TypeError) as err:
        return [f"data.split_dates: {dates} are not dates: {err}"]
    if any(b <= a for a, b in zip(stamps, stamps[1:], strict=False)):
        return [f"data.split_dates: must increase, got {dates}"]
    return []


def _freq_of(index: pd.DatetimeIndex) -> str | None:
    if len(index) < 3:
        return None
    try:
        freq: str | None = pd.infer_freq(index)
        return freq
    except (TypeError, ValueError):
        return None


class WindowDataset(Dataset):
    """Sliding windows over a pre-scaled ``(T, C_in)`` float32 array.

    Each item is built from views into the shared array, so no sample copies the series.

    Args:
        values: Scaled values, targets first then exogenous channels; NaNs already set to 0.
        observed: 1 where the value in ``values`` was observed, 0 where it was missing.
        starts: Row index of every window's first context row.
        context_length: Rows in ``x``.
        horizon: Rows in ``y``.
        n_targets: How many leading channels are forecast targets.
        with_x_mask: Also return ``x_mask`` (the ``observed`` rows of ``x``; 0 on missing values
            and on left padding).
        with_future_exog: Also return ``future_exog`` (the exogenous channels over the horizon),
            for backbones that fuse known-future covariates (TTM's forecast channel mixing).
        horizon_meta: ``{name: (T, K) array}`` whose horizon rows each item carries in ``meta[name]``
            (e.g. the clear-sky irradiance a clear-sky-index forecast is scored with).
    """

    def __init__(
        self,
        values: np.ndarray,
        observed: np.ndarray,
        starts: np.ndarray,
        context_length: int,
        horizon: int,
        n_targets: int,
        with_x_mask: bool = False,
        with_future_exog: bool = False,
        horizon_meta: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.values = values
        self.horizon_meta = horizon_meta or {}
        self.observed = observed
        self.starts = starts
        self.context_length = context_length
        self.horizon = horizon
        self.n_targets = n_targets
        self.with_x_mask = with_x_mask
        self.with_future_exog = with_future_exog and values.shape[1] > n_targets

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = int(self.starts[i])
        mid, end = s + self.context_length, s + self.context_length + self.horizon
        item: dict[str, Any] = {
            "x": torch.from_numpy(self.values[s:mid]),  # (ctx, C_in)
            "y": torch.from_numpy(self.values[mid:end, : self.n_targets]),  # (horizon, C_target)
            "mask": torch.from_numpy(self.observed[mid:end, : self.n_targets]),
            "meta": {"start": s, **{k: torch.from_numpy(v[mid:end]) for k, v in self.horizon_meta.items()}},
        }
        if self.with_x_mask:
            item["x_mask"] = torch.from_numpy(self.observed[s:mid])
        if self.with_future_exog:
            item["future_exog"] = torch.from_numpy(self.values[mid:end, self.n_targets :])  # (horizon, C_exog)
        return item


class TimeSeriesDataModule(L.LightningDataModule):
    """Windowed multivariate forecasting data from one CSV/parquet file.

    The config schema of ``data:`` for forecasting: choices and bounds are in the signature (the
    config layer checks them); the constructor checks the settings that depend on each other.
    The file is read once, lazily: properties such as :attr:`n_input_channels` load it on first
    use, and :meth:`setup` is idempotent. After :meth:`load_scaler_state` the module can serve
    :meth:`predict_inputs` without ever reading the training file.

    Args:
        path: ``.csv``, ``.csv.gz`` or ``.parquet`` file; ``pkg://<name>`` reads bundled data from
            ``sciadapt/resources/data/<name>``.
        layout: ``"wide"``, one column per channel; or ``"long"``, rows of (id, timestamp, value)
            pivoted so that each id becomes a channel.
        timestamp_column: Column holding the timestamps.
        target_columns: Channels to forecast; None means every numeric non-exog column (wide) or
            every non-exog id (long).
        exog_columns: Past-observed covariates, fed in ``x`` after the targets and not predicted.
        id_column: Series id column (long layout).
        value_column: Value column (long layout).
        context_length: Input rows per window.
        horizon: Forecast rows per window.
        stride: Step between train windows.
        eval_stride: Step between validation/test windows.
        split: ``"ett_hourly"`` (8640/2880/2880 rows), ``"ett_minutely"`` (the same x4), ``"ratio"``
            (Autoformer rule with ``split_ratios``), ``"rows"`` (``split_rows`` counts) or ``"dates"``
            (``split_dates``).
        split_ratios: ``[train, val, test]`` fractions summing to 1; default ``[0.7, 0.1, 0.2]``.
        split_rows: ``[n_train, n_val, n_test]`` for ``split="rows"``.
        scale: Z-score each channel with train-split mean/std; False keeps raw values.
        nan_policy: ``"error"``, ``"mask"`` (zero-fill, add ``x_mask`` and zero ``mask``) or
            ``"interpolate"`` (linear in time, edges filled from the nearest value).
        batch_size: Train batch size.
        eval_batch_size: Validation/test batch size.
        num_workers: DataLoader worker processes.
        encoding: CSV text encoding (``latin-1`` for the Jena weather file).
        na_values: Extra CSV cell values that mean "missing" (e.g. ``["-999", "n/a?"]``), on top of
            pandas' defaults (empty, ``NA``, ``NaN``, ``n/a`` ...); ``nan_policy`` then decides.
        skiprows: Lines to skip before the CSV header.
        duplicate_timestamps: ``"error"``, or ``"keep_first"`` / ``"keep_last"`` to drop repeated
            timestamps (the LTSF Weather file repeats one); the count dropped is logged and recorded.
        min_context: Allow windows whose context holds only this many real rows: the rest is
            left-padded with zeros and masked (``x_mask`` 0), so series shorter than
            ``context_length`` still train and forecast. None: full contexts only. Longer histories
            are always truncated to the last ``context_length`` rows. The run records how many
            windows were padded.
        fewshot_fraction: Keep this fraction of the train windows (TTM's few-shot recipe uses 0.05);
            validation and test are untouched.
        fewshot_location: Which train windows: ``"first"``, ``"last"`` (upstream default) or
            ``"uniform"`` (a random subset drawn with ``fewshot_seed``).
        fewshot_seed: Seed of the ``"uniform"`` draw.
        split_dates: ``[val_start, test_start]`` (or ``[..., test_end]``) dates for ``split="dates"``: train
            before the first, validation up to the second, test from it (to the third or the end).
        format: How to read ``path``: ``"csv"`` (or parquet), or a solar-resource format read by
            ``pvlib.iotools`` (``psm3``, ``psm4``, ``tmy3``, ``surfrad``, ``midc``, ``srml``), whose metadata
            gives the site (:mod:`sciadapt.datamodules.solar_formats`).
        timestamp_parts: Compose the timestamp of a csv from these columns (year, month, day[, hour[, minute
            [, second]]]), e.g. ``[Year, Month, Day, Hour, Minute]`` of an NSRDB table.
        latitude: Site latitude in degrees north; supplies or overrides the file's.
        longitude: Site longitude in degrees east (west negative); supplies or overrides the file's.
        altitude: Site altitude in metres; default: the file's, else pvlib's altitude map.
        timezone: The zone of the file's clock (``-07:00``, ``UTC``, ``Etc/GMT+7``); supplies or overrides the
            file's. Solar physics refuses timestamps without one.
        time_label: Where a timestamp sits in its averaging interval (``instant``, ``start``, ``end``), for
            the solar position; default per format (TMY3 ``end``, SRML ``start``, others ``instant``).
        target_transform: ``"clear_sky_index"``: forecast irradiance targets as ``k = ghi / ghi_clear``
            (unscaled, observed on daytime steps only), with each window's clear-sky and measured irradiance
            over the horizon in ``meta`` (for scoring in W/m^2).
    """

    # set by @check_arguments on every instance before __init__ runs
    _argument_problems: list[str]

    @check_arguments("data")
    def __init__(
        self,
        path: str,
        layout: Literal["wide", "long"] = "wide",
        timestamp_column: str = "date",
        target_columns: list[str] | None = None,
        exog_columns: list[str] | None = None,
        id_column: str = "id",
        value_column: str = "value",
        context_length: Annotated[int, Ge(1), FromData] = 96,
        horizon: Annotated[int, Ge(1), FromData] = 24,
        stride: Annotated[int, Ge(1)] = 1,
        eval_stride: Annotated[int, Ge(1)] = 1,
        split: Literal["ett_hourly", "ett_minutely", "ratio", "rows", "dates"] = "ratio",
        split_ratios: list[float] | None = None,
        split_rows: list[int] | None = None,
        scale: bool = True,
        nan_policy: Literal["error", "mask", "interpolate"] = "error",
        batch_size: Annotated[int, Ge(1)] = 32,
        eval_batch_size: Annotated[int, Ge(1)] = 256,
        num_workers: Annotated[int, Ge(0)] = 0,
        encoding: str = "utf-8",
        na_values: list[str] | None = None,
        skiprows: Annotated[int, Ge(0)] = 0,
        duplicate_timestamps: Literal["error", "keep_first", "keep_last"] = "error",
        min_context: Annotated[int | None, Ge(1)] = None,
        fewshot_fraction: Annotated[float, Gt(0), Le(1)] = 1.0,
        fewshot_location: Literal["first", "last", "uniform"] = "last",
        fewshot_seed: int = 0,
        split_dates: list[str] | None = None,
        format: Literal["csv", "psm3", "psm4", "tmy3", "surfrad", "midc", "srml"] = "csv",
        timestamp_parts: list[str] | None = None,
        latitude: float | None = None,
        longitude: float | None = None,
        altitude: float | None = None,
        timezone: str | None = None,
        time_label: Literal["instant", "start", "end"] | None = None,
        target_transform: Literal["none", "clear_sky_index"] = "none",
    ) -> None:
        super().__init__()
        self.path = str(path)
        self.layout = layout
        self.timestamp_column = timestamp_column
        self.requested_targets = list(target_columns) if target_columns is not None else None
        self.requested_exog = list(exog_columns) if exog_columns is not None else []
        self.id_column = id_column
        self.value_column = value_column
        self.context_length = int(context_length)
        self.horizon = int(horizon)
        self.stride = int(stride)
        self.eval_stride = int(eval_stride)
        self.split = split
        self.split_ratios = list(split_ratios) if split_ratios is not None else list(_DEFAULT_RATIOS)
        self.split_rows = list(split_rows) if split_rows is not None else None
        self.scale = bool(scale)
        self.nan_policy = nan_policy
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.encoding = encoding
        self.na_values = list(na_values) if na_values is not None else None
        self.skiprows = int(skiprows)
        self.duplicate_timestamps = duplicate_timestamps
        self.min_context = int(min_context) if min_context is not None else None
        self.fewshot_fraction = float(fewshot_fraction)
        self.fewshot_location = fewshot_location
        self.fewshot_seed = int(fewshot_seed)
        self.dropped_duplicates = 0
        self.split_dates = [str(d) for d in split_dates] if split_dates is not None else None
        self.solar = solar.SolarOptions(
            format, timestamp_parts, latitude, longitude, altitude, timezone, time_label, target_transform
        )
        self.site: solar.Site | None = None  # the site of the last file read with solar physics
        self._validate(split_ratios_given=split_ratios is not None)

        # Filled by _load() (training file) or load_scaler_state() (a stored run).
        self._frame: pd.DataFrame | None = None
        self._targets: list[str] | None = None
        self._exog: list[str] | None = None
        self._freq: str | None = None
        self._mean: np.ndarray | None = None
        self._std: np.ndarray | None = None
        self._bounds: dict[str, tuple[int, int]] | None = None
        self._datasets: dict[str, WindowDataset] | None = None
        self.shuffle_seed = 0  # set per stage by the stage runner
        # (epoch, batches done) of a run preempted mid-epoch, for the next train sampler
        self.train_resume: tuple[int, int] | None = None
        self._from_run = False  # the columns are a trained model's (load_scaler_state), not the config's

    # ------------------------------------------------------------------ config checks
    def _validate(self, split_ratios_given: bool) -> None:
        problems: list[str] = list(self._argument_problems)  # the signature's own checks come first
        if self.min_context is not None and self.min_context > self.context_length:
            problems.append(
                f"data.min_context: must be between 1 and context_length ({self.context_length}), got "
                f"{self.min_context} (null: every window has a full context, no padding)"
            )
        targets = self.requested_targets or []
        for key, cols in (("target_columns", targets), ("exog_columns", self.requested_exog)):
            dupes = sorted({c for c in cols if cols.count(c) > 1})
            if dupes:
                problems.append(f"data.{key}: lists {', '.join(map(repr, dupes))} more than once")
            if self.layout == "wide" and self.timestamp_column in cols:
                problems.append(f"data.{key}: contains the timestamp column {self.timestamp_column!r}; remove it")
        if self.requested_targets is not None and not self.requested_targets:
            problems.append("data.target_columns: is empty; list at least one column or leave it null")
        both = sorted(set(targets) & set(self.requested_exog))
        if both:
            problems.append(
                f"data.exog_columns: {', '.join(map(repr, both))} also in data.target_columns; a column is "
                "either forecast (target) or only observed (exog), remove it from one list"
            )
        # split_ratios / split_rows of another split rule are ignored, not refused: a stage that
        # overrides `split` inherits the pipeline's other data keys (see stages[i].data).
        if self.split == "ratio":
            r = self.split_ratios
            if len(r) != 3 or any(not isinstance(v, int | float) or v <= 0 for v in r):
                problems.append(f"data.split_ratios: expected three positive numbers [train, val, test], got {r}")
            elif not math.isclose(sum(r), 1.0, abs_tol=1e-6):
                # The Autoformer rule derives val as the remainder, so ratios that do not sum to 1
                # would be silently reinterpreted; refuse instead.
                problems.append(f"data.split_ratios: must sum to 1, got {r} (sum {sum(r):g})")
        if self.split == "rows":
            rows = self.split_rows
            if rows is None or len(rows) != 3 or any(not isinstance(v, int) or v < 1 for v in rows):
                problems.append(
                    f"data.split_rows: data.split=rows needs three positive row counts [n_train, n_val, "
                    f"n_test], got {rows}"
                )
        if self.split == "dates":
            problems.extend(_split_date_problems(self.split_dates))
        problems.extend(self.solar.problems())
        if problems:
            raise ConfigError(problems)

    def facts(self) -> dict[str, Any]:
        """What the backbone, head and task must agree with (passed to builders by parameter name)."""
        return {
            "context_length": self.context_length,
            "horizon": self.horizon,
            "n_exog": self.n_exog,
            "n_targets": self.n_targets,
            "seasonality": self.seasonality,
            # only with a transform, so the facts (and checkpoints' data signatures) of other data stay as they were
            **({"target_transform": self.solar.target_transform} if self.solar.target_transform != "none" else {}),
        }

    def describe(self) -> str:
        """One line for logs and tables: file, split rule, windows."""
        name = self.path.split("/")[-1]
        if self._datasets is None:
            return f"{name} ({self.split} split)"
        n = {k: len(v) for k, v in self._datasets.items()}
        extra = ""
        if self.fewshot_fraction < 1.0:
            extra += f"; few-shot {self.fewshot_fraction:g} of train windows ({self.fewshot_location})"
        if self.pad_rows:
            rep = self.padding_report()
            padded = sum(rep[k]["padded"] for k in ("train", "val", "test"))
            extra += f"; {padded:,} windows left-padded (min_context {self.min_context})"
        if self.dropped_duplicates:
            extra += f"; {self.dropped_duplicates} duplicate timestamps dropped ({self.duplicate_timestamps})"
        if self.site is not None and self.site.latitude is not None:
            extra += f"; {self.site.describe()}"
        return (
            f"{name} ({self.split} split; {self.n_targets} targets, {self.n_exog} exog; "
            f"windows train {n['train']:,} / val {n['val']:,} / test {n['test']:,}; "
            f"context {self.context_length}, horizon {self.horizon}{extra})"
        )

    # ------------------------------------------------------------------ reading
    @property
    def source(self) -> str:
        """The data file as written in the config, with its resolved path for ``pkg://`` files."""
        return _describe(self.path)

    def _read_frame(self, path: str, targets: list[str] | None, exog: list[str]) -> pd.DataFrame:
        """Read ``path`` into a float frame indexed by timestamp: target columns, then exog columns.

        ``targets=None`` selects every numeric non-exog column (wide) or every non-exog id (long).
        """
        file = resolve_path(path)
        source = _describe(path)
        requested = [*(targets or []), *exog]
        if self.solar.reads_itself(requested):
            raw, self.site = solar.read_solar_table(
                file,
                source,
                self.solar,
                self.timestamp_column,
                requested,
                self.horizon,
                lambda: read_table(file, self.encoding, self.skiprows, label=source, na_values=self.na_values),
            )
        else:
            raw = read_table(file, self.encoding, self.skiprows, label=source, na_values=self.na_values)
        available = list(raw.columns)
        is_csv = file.suffix.lower() not in (".parquet", ".pq")

        if self.timestamp_column not in available:
            raise _missing_column_error(
                source,
                "data.timestamp_column",
                [self.timestamp_column],
                available,
                "set data.timestamp_column to the date/time column",
            )

        if self.layout == "long":
            need = {"data.id_column": self.id_column, "data.value_column": self.value_column}
            for key, col in need.items():
                if col not in available:
                    raise _missing_column_error(source, key, [col], available, f"set {key} to the right column")
            stamps = _parse_timestamps(raw[self.timestamp_column], source, self.timestamp_column)
            ids = raw[self.id_column].astype(str)
            values = _to_numeric(raw, [self.value_column], source, "data.value_column", is_csv, self.skiprows)[
                self.value_column
            ]
            long = pd.DataFrame({"id": ids.to_numpy(), "t": stamps, "v": values.to_numpy()})
            dup = long.duplicated(["id", "t"]).to_numpy()
            if dup.any():
                i = int(np.flatnonzero(dup)[0])
                raise DataError(
                    f"{source}: id {long['id'].iloc[i]!r} has timestamp {long['t'].iloc[i]} more than once "
                    f"({_row_ref(i, is_csv, self.skiprows)}). Fix: drop duplicate (id, timestamp) rows"
                )
            # Rows of a long file need not be time-ordered; the pivot sorts by timestamp, and ids
            # missing at some timestamps become NaN, which nan_policy then handles.
            wide = long.pivot(index="t", columns="id", values="v")
            wide.index = pd.DatetimeIndex(wide.index, name=self.timestamp_column)
            wide.columns = [str(c) for c in wide.columns]
            channels = list(wide.columns)
            unknown_exog = [c for c in exog if c not in channels]
            if unknown_exog:
                raise _missing_column_error(
                    source,
                    "data.exog_columns",
                    unknown_exog,
                    channels,
                    "list ids that occur in data.id_column",
                )
            if targets is None:
                targets = [c for c in channels if c not in exog]
            missing = [c for c in targets if c not in channels]
            if missing:
                raise _missing_column_error(
                    source, "data.target_columns", missing, channels, "list ids that occur in data.id_column"
                )
            frame = wide[targets + exog].astype("float64")
        else:
            missing = [c for c in [*(targets or []), *exog] if c not in available]
            if missing and self._from_run:
                hints = "".join(f" '{m}':{hint}" for m in missing if (hint := suggest(m, available)))
                raise DataError(
                    f"{source} lacks column(s) {', '.join(map(repr, missing))} that the model was trained on "
                    f"(targets {targets}, exog {exog}).{hints} The file has: {', '.join(available)}. "
                    "Fix: give a file with the training columns (rename its headers to match)"
                )
            missing_exog = [c for c in exog if c not in available]
            if missing_exog:
                raise _missing_column_error(
                    source, "data.exog_columns", missing_exog, available, "use existing column names"
                )
            if targets is None:
                skip = {self.timestamp_column, *exog}
                targets = [c for c in available if c not in skip and _looks_numeric(raw[c])]
                if not targets:
                    raise DataError(
                        f"{source}: no numeric column besides the timestamp and exog columns. Available "
                        f"columns: {', '.join(available)}. Fix: set data.target_columns"
                    )
            missing = [c for c in targets if c not in available]
            if missing:
                raise _missing_column_error(
                    source, "data.target_columns", missing, available, "use existing column names"
                )
            stamps = _parse_timestamps(raw[self.timestamp_column], source, self.timestamp_column)
            if self.duplicate_timestamps != "error":
                keep = "first" if self.duplicate_timestamps == "keep_first" else "last"
                dup = stamps.duplicated(keep=keep)
                if dup.any():
                    self.dropped_duplicates = int(dup.sum())
                    raw = raw.loc[~dup].reset_index(drop=True)
                    stamps = stamps[~dup]
            _check_monotonic(stamps, source, self.timestamp_column, is_csv, self.skiprows)
            frame = pd.concat(
                [
                    _to_numeric(raw, targets, source, "data.target_columns", is_csv, self.skiprows),
                    _to_numeric(raw, exog, source, "data.exog_columns", is_csv, self.skiprows),
                ],
                axis=1,
            )
            frame.index = pd.DatetimeIndex(stamps, name=self.timestamp_column)
        return frame

    def _load(self) -> pd.DataFrame:
        """Read the training file once and resolve the channel lists and frequency."""
        if self._frame is None:
            targets = self._targets if self._targets is not None else self.requested_targets
            exog = self._exog if self._exog is not None else self.requested_exog
            frame = self._read_frame(self.path, targets, exog)
            self._frame = frame
            self._targets = list(frame.columns[: len(frame.columns) - len(exog)])
            self._exog = list(exog)
            if self._mean is None:
                # A loaded scaler state already fixed the frequency of the data the model saw.
                self._freq = _freq_of(pd.DatetimeIndex(frame.index))
        return self._frame

    def _ensure_columns(self) -> None:
        if self._targets is None:
            self._load()

    # ------------------------------------------------------------------ properties
    @property
    def target_columns(self) -> list[str]:
        """Forecast channels, in the order of the last axis of ``y``."""
        self._ensure_columns()
        assert self._targets is not None
        return list(self._targets)

    @property
    def exog_columns(self) -> list[str]:
        """Past-observed covariate channels, after the targets in ``x``."""
        self._ensure_columns()
        assert self._exog is not None
        return list(self._exog)

    @property
    def n_targets(self) -> int:
        """Number of forecast channels (last axis of ``y``)."""
        return len(self.target_columns)

    @property
    def n_exog(self) -> int:
        """Number of covariate channels."""
        return len(self.exog_columns)

    @property
    def n_input_channels(self) -> int:
        """Channels in ``x``: targets plus covariates."""
        return self.n_targets + self.n_exog

    @property
    def freq(self) -> str | None:
        """Pandas offset alias of the rows (e.g. ``"h"``, ``"15min"``), None when irregular."""
        self._ensure_columns()
        return self._freq

    @property
    def seasonality(self) -> int:
        """Season length in rows for the frequency (24 for hourly), 1 when unknown (used by MASE)."""
        freq = self.freq
        if freq is None:
            return 1
        from gluonts.time_feature import get_seasonality

        try:
            return int(get_seasonality(freq))
        except (ValueError, KeyError, AttributeError):
            return 1

    @property
    def timestamps(self) -> pd.DatetimeIndex:
        """Timestamps of every row of the training file."""
        return pd.DatetimeIndex(self._load().index)

    @property
    def split_bounds(self) -> dict[str, tuple[int, int]]:
        """Row range ``[start, stop)`` of each split, val/test including their context lead-in."""
        if self._bounds is None:
            self._bounds = self._compute_bounds(len(self._load()))
        return dict(self._bounds)

    # ------------------------------------------------------------------ splits
    def _compute_bounds(self, n: int) -> dict[str, tuple[int, int]]:
        ctx = self.context_length
        if self.split in ("ett_hourly", "ett_minutely"):
            per_hour = 1 if self.split == "ett_hourly" else 4
            n_train, n_val, n_test = (r * per_hour for r in _ETT_HOURLY_ROWS)
            need = n_train + n_val + n_test
            if n < need:
                raise DataError(
                    f"{self.source}: data.split={self.split} uses the fixed ETT borders (first {need} rows) "
                    f"but the file has {n} rows. Fix: use data.split=ratio or data.split=rows"
                )
        elif self.split == "ratio":
            r = self.split_ratios
            n_train, n_test = int(n * r[0]), int(n * r[2])
            n_val = n - n_train - n_test
        elif self.split == "dates":
            n_train, n_val, n_test = self._date_rows(n)
        else:
            assert self.split_rows is not None
            n_train, n_val, n_test = self.split_rows
            if n_train + n_val + n_test > n:
                raise DataError(
                    f"{self.source}: data.split_rows {self.split_rows} needs {n_train + n_val + n_test} rows "
                    f"but the file has {n}. Fix: lower data.split_rows"
                )
        pad = self.pad_rows
        bounds = {
            "train": (-pad, n_train),
            "val": (n_train - ctx, n_train + n_val),
            "test": (n_train + n_val - ctx, n_train + n_val + n_test),
        }
        need_rows = ctx + self.horizon
        real_ctx = ctx - pad
        # Train is checked first: a context longer than the train split would also push the val
        # start below row 0, and "train too short" is the message that explains it.
        for name, (a, b) in bounds.items():
            if a < -pad or b - a < need_rows:
                if name == "train":
                    wanted = f"one window needs {'min_context' if pad else 'context_length'} + horizon = "
                    wanted += f"{real_ctx + self.horizon} rows"
                    have = b
                else:
                    wanted = (
                        f"it needs at least horizon = {self.horizon} rows of its own (its windows take "
                        f"their context_length = {ctx} input rows from the rows before it)"
                    )
                    have = b - a - ctx
                pad_hint = "" if pad else ", or set data.min_context to left-pad short contexts with a mask"
                raise DataError(
                    f"{self.source}: the {name} split has {have} rows but {wanted}. Fix: lower "
                    f"data.context_length ({ctx}) or data.horizon ({self.horizon}), or give the {name} "
                    f"split more rows (data.split / data.split_ratios / data.split_rows){pad_hint}"
                )
        return bounds

    def _date_rows(self, n: int) -> tuple[int, int, int]:
        """Rows before ``split_dates[0]`` (train), up to ``split_dates[1]`` (val), then to the end or
        ``split_dates[2]`` (test), in the zone of the timestamps."""
        assert self.split_dates is not None
        index = pd.DatetimeIndex(self._load().index)
        cuts = []
        for d in self.split_dates:
            t = pd.Timestamp(d)
            if index.tz is not None and t.tz is None:
                t = t.tz_localize(index.tz)
            elif index.tz is None and t.tz is not None:
                raise DataError(
                    f"{self.source}: data.split_dates {d!r} has a time zone but the timestamps have none. "
                    "Fix: give the dates without a zone"
                )
            cuts.append(int(index.searchsorted(t)))
        end = cuts[2] if len(cuts) > 2 else n
        n_train, n_val, n_test = cuts[0], cuts[1] - cuts[0], end - cuts[1]
        if min(n_train, n_val, n_test) < 1:
            raise DataError(
                f"{self.source}: data.split_dates {self.split_dates} leave {n_train} train, {n_val} validation and "
                f"{n_test} test rows; the file runs from {index[0]} to {index[-1]}. Fix: choose dates inside it"
            )
        return n_train, n_val, n_test

    def _clear_sky_index(self, frame: pd.DataFrame) -> solar.ClearSkyIndex | None:
        """``data.target_transform=clear_sky_index``: the targets of ``frame`` as clear-sky index."""
        if self.solar.target_transform == "none":
            return None
        assert self.site is not None  # the read that produced frame set it
        return solar.clear_sky_index(frame, self.target_columns, self.site, self.source)

    @property
    def pad_rows(self) -> int:
        """Zero rows put before the series so windows may start with only ``min_context`` real rows."""
        return 0 if self.min_context is None else self.context_length - self.min_context

    def _starts(self, name: str) -> np.ndarray:
        """First context row of every window of split ``name``, in padded-array coordinates."""
        a, b = self.split_bounds[name]
        stride = self.stride if name == "train" else self.eval_stride
        starts = np.arange(max(a, -self.pad_rows), b - self.context_length - self.horizon + 1, stride, dtype=np.int64)
        if name == "train" and self.fewshot_fraction < 1.0:
            starts = self._fewshot(starts)
        return starts + self.pad_rows

    def _fewshot(self, starts: np.ndarray) -> np.ndarray:
        """The few-shot subset of the train windows (``fewshot_fraction`` at ``fewshot_location``)."""
        n = max(1, int(len(starts) * self.fewshot_fraction))
        if self.fewshot_location == "first":
            return starts[:n]
        if self.fewshot_location == "last":
            return starts[-n:]
        rng = np.random.default_rng(self.fewshot_seed)
        return np.sort(rng.choice(starts, size=n, replace=False))

    def padding_report(self) -> dict[str, Any]:
        """Which windows were left-padded (short history) per split; the run records it."""
        ctx, pad = self.context_length, self.pad_rows
        report: dict[str, Any] = {"context_length": ctx, "min_context": self.min_context}
        for name in ("train", "val", "test"):
            starts = self._starts(name)
            short = starts < pad
            report[name] = {
                "windows": int(len(starts)),
                "padded": int(short.sum()),
                "min_real_context": int(ctx - (pad - starts[short]).max()) if short.any() else ctx,
            }
        if self.fewshot_fraction < 1.0:
            report["fewshot"] = {"fraction": self.fewshot_fraction, "location": self.fewshot_location}
        if self.dropped_duplicates:
            report["dropped_duplicate_timestamps"] = self.dropped_duplicates
        return report

    def n_windows(self, name: str) -> int:
        """Number of windows in split ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
        return len(self._starts(name))

    # ------------------------------------------------------------------ NaNs and scaling
    def _handle_nans(self, frame: pd.DataFrame, source: str) -> pd.DataFrame:
        """Apply ``nan_policy``; with "mask" the NaNs stay and become the observed-mask later."""
        counts = frame.isna().sum()
        if not counts.any():
            return frame
        if self.nan_policy == "error":
            bad = counts[counts > 0]
            parts = []
            for col, cnt in bad.items():
                first = frame.index[np.flatnonzero(frame[col].isna().to_numpy())[0]]
                parts.append(f"'{col}' ({int(cnt)} NaN, first at {first})")
            raise DataError(
                f"{source}: missing values (empty, NaN or infinite cells) in column(s) {', '.join(parts)}. "
                f"Fix: {_NAN_FIX}, or fill the file"
            )
        if self.nan_policy == "interpolate":
            method = "time" if isinstance(frame.index, pd.DatetimeIndex) else "linear"
            frame = frame.interpolate(method=method, limit_direction="both").ffill().bfill()
        empty = [c for c in frame.columns if frame[c].isna().all()]
        if empty:
            raise DataError(
                f"{source}: column(s) {', '.join(map(repr, empty))} have no values at all; "
                "remove them from data.target_columns / data.exog_columns"
            )
        return frame

    def _fit_scaler(self, frame: pd.DataFrame) -> None:
        n_train = self.split_bounds["train"][1]
        train = frame.to_numpy(dtype=np.float64)[:n_train]
        if not self.scale:
            self._mean = np.zeros(train.shape[1])
            self._std = np.ones(train.shape[1])
            return
        observed = ~np.isnan(train)
        unseen = [c for c, ok in zip(frame.columns, observed.any(axis=0), strict=True) if not ok]
        if unseen:
            raise DataError(
                f"{self.source}: column(s) {', '.join(map(repr, unseen))} have no observed value in the "
                f"train split (rows 0..{n_train}), so they cannot be scaled. Fix: remove them from "
                "data.target_columns / data.exog_columns or change data.split"
            )
        mean = np.nanmean(train, axis=0)
        std = np.nanstd(train, axis=0, ddof=0)
        # A constant channel would divide by zero; scaling it by 1 keeps it a (shifted) constant.
        std[~(std > 0)] = 1.0
        self._mean, self._std = mean, std

    def _scaled(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Scale with the stored stats; returns (values with NaN -> 0, observed mask), both float32."""
        assert self._mean is not None and self._std is not None
        raw = frame.to_numpy(dtype=np.float64)
        observed = ~np.isnan(raw)
        values = np.where(observed, (raw - self._mean) / self._std, 0.0).astype(np.float32)
        return values, observed.astype(np.float32)

    # ------------------------------------------------------------------ lightning hooks
    def setup(self, stage: str | None = None) -> None:
        """Read, check, split and scale the file; later calls return at once."""
        if self._datasets is not None:
            return
        frame = self._handle_nans(self._load(), self.source)
        csi = self._clear_sky_index(frame)
        if csi is not None:
            frame = csi.frame
        if self._mean is None:
            self._fit_scaler(frame)
            if csi is not None:  # the clear-sky index is dimensionless: kept as it is, so scores read it directly
                assert self._mean is not None and self._std is not None
                self._mean[: self.n_targets], self._std[: self.n_targets] = 0.0, 1.0
        values, observed = self._scaled(frame)
        meta: dict[str, np.ndarray] = {}
        if csi is not None:
            observed[:, : self.n_targets] *= csi.observed  # night and missing steps are not scored
            meta = {"clear_sky": csi.clear_sky, "irradiance": csi.irradiance}
        if self.pad_rows:
            # (pad + T, C_in): zeros the model sees as "not observed" through x_mask
            values = np.concatenate([np.zeros((self.pad_rows, values.shape[1]), np.float32), values])
            observed = np.concatenate([np.zeros((self.pad_rows, observed.shape[1]), np.float32), observed])
            meta = {k: np.concatenate([np.zeros((self.pad_rows, v.shape[1]), np.float32), v]) for k, v in meta.items()}
        self._datasets = {
            name: WindowDataset(
                values,
                observed,
                self._starts(name),
                self.context_length,
                self.horizon,
                len(self.target_columns),
                with_x_mask=True,
                with_future_exog=True,
                horizon_meta=meta,
            )
            for name in ("train", "val", "test")
        }

    def dataset(self, name: str) -> WindowDataset:
        """The window dataset of split ``name`` (runs :meth:`setup` when needed)."""
        self.setup()
        assert self._datasets is not None
        return self._datasets[name]

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        ds = self.dataset(name)
        # the order is a function of (shuffle_seed, epoch) only, so resumed runs replay it exactly
        sampler = (
            apply_resume(EpochShuffleSampler(len(ds), seed=self.shuffle_seed), self, batch_size) if shuffle else None
        )
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled train windows at ``stride``."""
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation windows at ``eval_stride``, in time order."""
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test windows at ``eval_stride``, in time order."""
        return self._loader("test", self.eval_batch_size, shuffle=False)

    # ------------------------------------------------------------------ scaler state
    def scaler_state(self) -> dict[str, Any]:
        """The fitted scaler and channel layout as a JSON-serialisable dict."""
        if self._mean is None:
            self.setup()
        assert self._mean is not None and self._std is not None
        return {
            "columns": self.target_columns + self.exog_columns,
            "mean": [float(v) for v in self._mean],
            "std": [float(v) for v in self._std],
            "target_columns": self.target_columns,
            "exog_columns": self.exog_columns,
            "timestamp_column": self.timestamp_column,
            "freq": self._freq,
        }

    def load_scaler_state(self, state: dict[str, Any]) -> None:
        """Use a stored scaler (from :meth:`scaler_state`) instead of fitting one.

        Args:
            state: The dict :meth:`scaler_state` returned, e.g. read back from a run directory.

        Raises:
            DataError: If the state is malformed or its channels contradict this module's config.
        """
        keys = ("columns", "mean", "std", "target_columns", "exog_columns", "timestamp_column", "freq")
        missing = [k for k in keys if k not in state]
        if missing:
            raise DataError(f"scaler state lacks key(s) {', '.join(missing)}; it was not written by scaler_state()")
        targets, exog = list(state["target_columns"]), list(state["exog_columns"])
        n = len(targets) + len(exog)
        if list(state["columns"]) != targets + exog or len(state["mean"]) != n or len(state["std"]) != n:
            raise DataError("scaler state is inconsistent: columns/mean/std lengths differ")
        if self.requested_targets is not None and self.requested_targets != targets:
            raise DataError(
                f"scaler state was fitted on targets {targets} but data.target_columns is "
                f"{self.requested_targets}. Fix: use the run's data config"
            )
        if self.requested_exog != exog:
            raise DataError(
                f"scaler state was fitted with exog {exog} but data.exog_columns is {self.requested_exog}. "
                "Fix: use the run's data config"
            )
        if state["timestamp_column"] != self.timestamp_column:
            raise DataError(
                f"scaler state uses timestamp column {state['timestamp_column']!r} but "
                f"data.timestamp_column is {self.timestamp_column!r}. Fix: use the run's data config"
            )
        if self._frame is not None and list(self._frame.columns) != targets + exog:
            # The frame was read with auto-selected columns that differ from the stored ones.
            self._frame, self._bounds = None, None
        self._targets, self._exog = targets, exog
        self._from_run = True
        self._mean = np.asarray(state["mean"], dtype=np.float64)
        self._std = np.asarray(state["std"], dtype=np.float64)
        self._freq = state["freq"]
        # Windows built with the previous stats are stale; rebuild on next use.
        self._datasets = None

    def inverse_transform(self, arr: np.ndarray | torch.Tensor, quantile_axis: bool = False) -> Any:
        """Map scaled target values back to original units.

        Args:
            arr: Scaled values whose channel axis holds the target channels: the last axis, e.g.
                ``(B, L, C)``; or the second last with ``quantile_axis=True``, e.g. ``(B, L, C, Q)``.
            quantile_axis: The last axis holds quantiles (or samples) of each channel.

        Returns:
            An array of the same type, shape, dtype (and device, for tensors).

        Raises:
            ShapeError: If the channel axis does not have ``n_targets`` entries.
        """
        if self._mean is None:
            self.setup()
        assert self._mean is not None and self._std is not None
        n = self.n_targets
        axis = -2 if quantile_axis else -1
        if arr.ndim < -axis or arr.shape[axis] != n:
            layout = "(..., C, Q)" if quantile_axis else "(..., C)"
            raise ShapeError(f"inverse_transform: expected {layout} with C={n}, got {tuple(arr.shape)}")
        mean, std = self._mean[:n], self._std[:n]
        if quantile_axis:
            mean, std = mean[:, None], std[:, None]  # (C, 1) broadcasts over Q
        if isinstance(arr, torch.Tensor):
            if not arr.is_floating_point():
                arr = arr.double()
            t_mean = torch.as_tensor(mean, dtype=arr.dtype, device=arr.device)
            t_std = torch.as_tensor(std, dtype=arr.dtype, device=arr.device)
            return arr * t_std + t_mean
        arr = np.asarray(arr)
        out = arr * std + mean  # float64
        # Keep float32 predictions float32; integer input has no dtype worth keeping.
        return out.astype(arr.dtype, copy=False) if np.issubdtype(arr.dtype, np.floating) else out

    # ------------------------------------------------------------------ inference
    def predict_inputs(self, path: str | None = None) -> dict[str, Any]:
        """Model input for forecasting the ``horizon`` steps after the end of a file.

        Args:
            path: A CSV/parquet with the same columns as the training file; default: the training
                file itself.

        Returns:
            ``{"x": (1, ctx, C_in) float32 scaled, "history": last ctx target rows in original
            units indexed by timestamp, "future_index": the next horizon timestamps}``, plus
            ``"x_mask"`` (1, ctx, C_in; 0 on missing and left-padded rows) and ``"padded_rows"``. With
            ``target_transform=clear_sky_index`` the targets in ``x`` are the clear-sky index (as in
            training) and ``"clear_sky"`` ``(L, C)`` holds each target's clear-sky irradiance (W/m^2) at
            the forecast timestamps, which turns the forecast back into irradiance.

        Raises:
            DataError: Missing columns, bad timestamps or NaNs (per ``nan_policy``), fewer rows than
                ``context_length``, or a frequency that cannot be inferred.
        """
        if self._mean is None and not self.scale:
            # nothing to fit (zero-shot from pretrained weights): identity scaling, no split needed
            self._load()
            n = len(self.target_columns) + len(self.exog_columns)
            self._mean, self._std = np.zeros(n), np.ones(n)
        if self._mean is None:
            self.setup()
        source_path = self.path if path is None else str(path)
        frame = self._read_frame(source_path, self.target_columns, self.exog_columns)
        source = source_path
        ctx = self.context_length
        need = ctx - self.pad_rows
        if len(frame) < need:
            raise DataError(
                f"{source}: has {len(frame)} rows but the model needs the last "
                + (f"min_context={need}" if self.pad_rows else f"context_length={ctx}")
                + ". Fix: provide a longer history"
                + ("" if self.pad_rows else " or set data.min_context to left-pad it with a mask")
            )
        # Interpolation may use rows before the window; the other policies only judge the window.
        if self.nan_policy == "interpolate":
            tail = self._handle_nans(frame, source).iloc[-ctx:]
        else:
            tail = self._handle_nans(frame.iloc[-ctx:], source)
        csi = self._clear_sky_index(tail)  # a clear-sky-index run sees k, masked at night, as in training
        values, observed = self._scaled(tail if csi is None else csi.frame)
        if csi is not None:
            observed[:, : self.n_targets] *= csi.observed
        short = ctx - len(tail)
        if short > 0:
            values = np.concatenate([np.zeros((short, values.shape[1]), np.float32), values])
            observed = np.concatenate([np.zeros((short, observed.shape[1]), np.float32), observed])

        index = pd.DatetimeIndex(frame.index)
        freq = _freq_of(index)
        if freq is not None and self._freq is not None and freq != self._freq:
            raise DataError(
                f"{source}: rows are spaced {freq!r} but the model was trained on {self._freq!r} data. "
                "Fix: resample the file to the training frequency"
            )
        freq = freq or self._freq
        if freq is None:
            raise DataError(
                f"{source}: cannot infer the time step from '{self.timestamp_column}' (irregular or too few "
                "rows), so the forecast timestamps are unknown. Fix: make the rows regularly spaced"
            )
        offset = pd.tseries.frequencies.to_offset(freq)
        future = pd.date_range(index[-1] + offset, periods=self.horizon, freq=offset)
        future.name = self.timestamp_column

        out: dict[str, Any] = {
            "x": torch.from_numpy(values).unsqueeze(0),  # (1, ctx, C_in)
            "history": frame.iloc[-ctx:][self.target_columns].copy(),
            "future_index": future,
            "x_mask": torch.from_numpy(observed).unsqueeze(0),  # (1, ctx, C_in)
            "padded_rows": max(short, 0),
        }
        if csi is not None:
            assert self.site is not None
            # the last known stamp leads the future ones, so the interval step is known for any horizon
            clear = solar.clear_sky_of(index[-1:].append(future), self.target_columns, self.site)
            out["clear_sky"] = clear[1:]  # (L, C) W/m^2 at the forecast timestamps
        return out


# the class is the registered builder: its __init__ is the config schema of `data: {name: timeseries}`
DATAMODULES.register("timeseries")(TimeSeriesDataModule)
