"""Panels of many series: the ``data: {name: panel}`` schema (long tables, gluonts datasets).

A forecasting user's data is a panel: thousands of series in the long layout (``unique_id, ds, y``,
as neuralforecast, statsforecast and gluonts take it), of different lengths and start dates, with
static and known-future covariates. Each series stays a series here (never a channel):

- **Storage.** Every series' rows (target, then known covariates, then calendar features) are
  concatenated into one float32 array; a window is a row index into it (``int64``), so memory is
  the data plus 8 bytes per window, whatever the window count, and a window never crosses two
  series (its rows are checked against the series' bounds when the index is built).
- **Splits per series.** ``split="last"`` (neuralforecast's ``cross_validation``): the last
  ``horizon x test_windows`` steps of each series are its test part (forecast origins ``horizon``
  apart), the ``horizon x val_windows`` before them validate, the rest trains. ``split="ratio"``:
  the LTSF rule per series (``split_ratios`` of each series' length, contexts reaching back over the
  boundary as the single-table protocol does).
- **Scaling per series.** Each series' target and known covariates are z-scored with that series'
  train-part mean and std (``scale="series"``); calendar features are gluonts' (values in
  ``[-0.5, 0.5]``) and stay as they are. Forecasts and scores are mapped back per series.
- **Covariates.** ``known_columns`` (known over the forecast period: a promotion, a price, a weather
  forecast) and ``calendar`` features from the timestamp (gluonts' ``time_features_from_frequency_str``
  by default) ride in ``x`` after the target, and over the horizon in ``future_exog`` for backbones
  that fuse known-future inputs (TTM). Static covariates are read per series and travel in each
  batch's ``meta["static"]`` (none of the bundled backbones consumes them yet).

Series shorter than ``context_length + horizon`` are dropped with a logged count
(``short_series=drop``) or refused (``error``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from sciadapt.config import check_arguments
from sciadapt.datamodules.panel_readers import Panel, read_panel
from sciadapt.datamodules.sampling import ShardedEpochSampler, apply_resume
from sciadapt.errors import ConfigError, DataError
from sciadapt.registry import DATAMODULES
from sciadapt.spec import Ge, Gt, Le

log = logging.getLogger(__name__)

#: seasonal period per pandas frequency base (the seasonal-naive baseline and MASE)
_SEASON = {"min": 1440, "h": 24, "D": 7, "B": 5, "W": 52, "M": 12, "MS": 12, "ME": 12, "Q": 4, "QS": 4, "QE": 4}


def seasonality_of(freq: str) -> int:
    """The seasonal period of a pandas frequency: a day of minutes/hours, a week of days, a year of
    weeks/months/quarters (``15min`` -> 96, ``h`` -> 24, ``D`` -> 7); 1 when there is none."""
    offset = pd.tseries.frequencies.to_offset(freq)
    name = offset.name.split("-")[0]
    n = max(int(offset.n), 1)
    if name in ("min", "T"):
        return max(1440 // n, 1)
    if name == "h":
        return max(24 // n, 1)
    return _SEASON.get(name, 1) if n == 1 else 1


def calendar_features(freq: str, names: Sequence[str] | None) -> list[Any]:
    """gluonts' time features for ``freq`` (``names`` None) or the named ones."""
    from gluonts import time_feature as tf

    if names is None:
        return list(tf.time_features_from_frequency_str(freq))
    out = []
    for name in names:
        fn = getattr(tf, name, None)
        if fn is None or not callable(fn):
            raise ConfigError(
                f"data.calendar: {name!r} is not a gluonts time feature; use e.g. hour_of_day, day_of_week, "
                "day_of_month, day_of_year, month_of_year, week_of_year, minute_of_hour"
            )
        out.append(fn)
    return out


class PanelWindows(Dataset):
    """Windows of a split, as row indices into one concatenated ``(N, C)`` array; batches are gathered whole.

    Args:
        values: Scaled rows of every series, target first, then known and calendar features; NaN set to 0.
        observed: ``(N,)`` 1 where the target was observed.
        starts: First context row of each window (global row index).
        series: Series index of each window.
        context_length / horizon: Rows in ``x`` / ``y``.
        static: ``(n_series, S)`` static covariates.
    """

    def __init__(
        self,
        values: np.ndarray,
        observed: np.ndarray,
        starts: np.ndarray,
        series: np.ndarray,
        context_length: int,
        horizon: int,
        static: np.ndarray,
    ) -> None:
        self.values = values
        self.observed = observed
        self.starts = starts
        self.series = series
        self.context_length = context_length
        self.horizon = horizon
        self.static = static
        self._offsets = np.arange(context_length + horizon, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitems__(self, positions: list[int]) -> dict[str, Any]:
        """A whole batch in one gather: ``x`` (B, ctx, C), ``y``/``mask`` (B, L, 1), ``x_mask``,
        ``future_exog`` (B, L, C-1) when there are covariates, ``meta`` (series, origin row, static)."""
        pos = np.asarray(positions, dtype=np.int64)
        rows = self.starts[pos][:, None] + self._offsets  # (B, ctx + L)
        block = self.values[rows]  # (B, ctx + L, C)
        seen = self.observed[rows]  # (B, ctx + L)
        ctx = self.context_length
        batch: dict[str, Any] = {
            "x": torch.from_numpy(block[:, :ctx]),
            "y": torch.from_numpy(block[:, ctx:, :1]),
            "mask": torch.from_numpy(seen[:, ctx:, None]),
            "x_mask": torch.from_numpy(np.concatenate([seen[:, :ctx, None], np.ones_like(block[:, :ctx, 1:])], axis=2)),
            "meta": {
                "series": torch.from_numpy(self.series[pos]),
                "origin": torch.from_numpy(self.starts[pos] + ctx),
                "static": torch.from_numpy(self.static[self.series[pos]]),
            },
        }
        if block.shape[2] > 1:
            batch["future_exog"] = torch.from_numpy(block[:, ctx:, 1:])
        return batch

    def __getitem__(self, i: int) -> dict[str, Any]:
        batch = self.__getitems__([i])
        item = {k: v[0] for k, v in batch.items() if k != "meta"}
        item["meta"] = {k: v[0] for k, v in batch["meta"].items()}
        return item


def _collate(data: Any) -> Any:
    return data if isinstance(data, dict) else torch.utils.data.default_collate(data)


class PanelDataModule(L.LightningDataModule):
    """Windows over a panel of many series, trained globally (the schema of ``data: {name: panel}``).

    Args:
        path: A long table (``.csv``, ``.csv.gz``, ``.parquet``: one row per series and timestamp, as
            neuralforecast takes it) or a gluonts dataset (JSON lines ``.json``/``.jsonl``/``.json.gz``,
            ``.arrow``, or a folder of them).
        format: ``"long"``, ``"gluonts"`` or ``"auto"`` (from the suffix).
        id_column / time_column / target_column: Long-table columns (neuralforecast's names by default).
        static_columns: Per-series constant columns (categorical ones one-hot encoded).
        known_columns: Covariates known over the forecast period (their rows may run past the target).
        calendar: gluonts time features of the timestamp (``hour_of_day``, ``day_of_week``, ...);
            None: gluonts' set for the frequency; ``[]``: none.
        timestamp_parts: Compose the timestamp from these columns (``[Year, Month, Day, Hour, Minute]``).
        freq: The panel's frequency (pandas alias); None: inferred (every series must agree).
        context_length: Input steps per window.
        horizon: Forecast steps per window.
        split: ``"last"`` (per series: the last ``horizon x test_windows`` steps test, the
            ``horizon x val_windows`` before them validate) or ``"ratio"`` (``split_ratios`` of each series).
        test_windows / val_windows: Forecast origins per series in the test / validation part (``last``).
        split_ratios: ``[train, val, test]`` fractions of each series (``ratio``); default ``[0.7, 0.1, 0.2]``.
        stride: Step between train windows of a series.
        eval_stride: Step between validation/test windows; default ``horizon`` (``last``) or 1 (``ratio``).
        short_series: A series shorter than ``context_length + horizon``: ``"drop"`` (logged count) or ``"error"``.
        fewshot_fraction: Keep this fraction of the train windows, drawn uniformly over the panel with
            ``fewshot_seed`` (TTM's few-shot recipe: 0.05); validation and test are untouched.
        scale: ``"series"`` (z-score each series with its own train-part statistics) or ``"none"``.
        batch_size / eval_batch_size: Windows per batch.
        num_workers: DataLoader worker processes.
        encoding: CSV text encoding.
        shuffle_seed: Seed of the per-epoch train order (the stage runner sets it per stage).
    """

    _argument_problems: list[str]

    @check_arguments("data")
    def __init__(
        self,
        path: str,
        format: Literal["auto", "long", "gluonts"] = "auto",
        id_column: str = "unique_id",
        time_column: str = "ds",
        target_column: str = "y",
        static_columns: list[str] | None = None,
        known_columns: list[str] | None = None,
        calendar: list[str] | None = None,
        timestamp_parts: list[str] | None = None,
        freq: str | None = None,
        context_length: Annotated[int, Ge(1)] = 512,
        horizon: Annotated[int, Ge(1)] = 96,
        split: Literal["last", "ratio"] = "last",
        test_windows: Annotated[int, Ge(1)] = 1,
        val_windows: Annotated[int, Ge(0)] = 1,
        split_ratios: list[float] | None = None,
        stride: Annotated[int, Ge(1)] = 1,
        eval_stride: Annotated[int, Ge(1)] | None = None,
        short_series: Literal["drop", "error"] = "drop",
        fewshot_fraction: Annotated[float, Gt(0), Le(1)] = 1.0,
        fewshot_seed: int = 0,
        scale: Literal["series", "none"] = "series",
        batch_size: Annotated[int, Ge(1)] = 32,
        eval_batch_size: Annotated[int, Ge(1)] = 256,
        num_workers: Annotated[int, Ge(0)] = 0,
        encoding: str = "utf-8",
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        self.path = str(Path(path).expanduser()) if "://" not in path else path
        self.format = format
        self.id_column, self.time_column, self.target_column = id_column, time_column, target_column
        self.static_columns = list(static_columns or [])
        self.known_columns = list(known_columns or [])
        self.calendar = None if calendar is None else list(calendar)
        self.timestamp_parts = None if timestamp_parts is None else list(timestamp_parts)
        self.freq_given = freq
        self.context_length, self.horizon = int(context_length), int(horizon)
        self.split = split
        self.test_windows, self.val_windows = int(test_windows), int(val_windows)
        self.split_ratios = list(split_ratios) if split_ratios is not None else [0.7, 0.1, 0.2]
        self.stride = int(stride)
        self.eval_stride = int(eval_stride) if eval_stride is not None else (self.horizon if split == "last" else 1)
        self.short_series = short_series
        self.fewshot_fraction = float(fewshot_fraction)
        self.fewshot_seed = int(fewshot_seed)
        self.scale = scale
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.encoding = encoding
        self.shuffle_seed = int(shuffle_seed)
        self.train_resume: tuple[int, int] | None = None
        problems = list(self._argument_problems)
        if split == "ratio":
            r = self.split_ratios
            if len(r) != 3 or any(v < 0 for v in r) or not math.isclose(sum(r), 1.0, abs_tol=1e-6) or r[0] <= 0:
                problems.append(f"data.split_ratios: expected [train, val, test] >= 0 summing to 1, got {r}")
        if problems:
            raise ConfigError(problems)
        self._panel: Panel | None = None
        self._kept: np.ndarray | None = None  # indices of the panel's series that are used
        self._datasets: dict[str, PanelWindows] | None = None
        self._mean: np.ndarray | None = None  # (n_series, 1 + K)
        self._std: np.ndarray | None = None
        self.dropped: list[str] = []
        self._saved_state: dict[str, Any] | None = None
        self._saved_scaler: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    # ------------------------------------------------------------------ reading
    def _read(self, path: str | None = None) -> Panel:
        return read_panel(
            path or self.path,
            format=self.format,
            id_column=self.id_column,
            time_column=self.time_column,
            target_column=self.target_column,
            static_columns=self.static_columns or None,
            known_columns=self.known_columns or None,
            timestamp_parts=self.timestamp_parts,
            freq=self.freq_given,
            encoding=self.encoding,
        )

    @property
    def panel(self) -> Panel:
        """The panel as read (series shorter than a window dropped, per ``short_series``)."""
        if self._panel is None:
            panel = self._read()
            need = self.context_length + self.horizon
            lengths = np.array([len(t) for t in panel.target])
            short = np.flatnonzero(lengths < need)
            if len(short) and self.short_series == "error":
                names = ", ".join(f"{panel.ids[i]!r} ({lengths[i]} steps)" for i in short[:5])
                raise DataError(
                    f"{panel.source}: {len(short)} series are shorter than context_length + horizon = {need}: "
                    f"{names}{' ...' if len(short) > 5 else ''}. Fix: data.short_series=drop (skip them, counted in "
                    "the log), or lower data.context_length"
                )
            if len(short) == len(lengths):
                raise DataError(
                    f"{panel.source}: every series is shorter than context_length + horizon = {need} (the longest "
                    f"has {lengths.max()} steps). Fix: lower data.context_length or data.horizon"
                )
            if len(short):
                self.dropped = [panel.ids[i] for i in short]
                log.warning(
                    "%s: %d of %d series are shorter than context_length + horizon = %d and were dropped "
                    "(data.short_series=drop): %s%s",
                    panel.source,
                    len(short),
                    len(lengths),
                    need,
                    ", ".join(self.dropped[:5]),
                    " ..." if len(short) > 5 else "",
                )
            self._kept = np.flatnonzero(lengths >= need)
            self._panel = panel
        return self._panel

    @property
    def series_ids(self) -> list[str]:
        """Ids of the series used, in order."""
        panel = self.panel
        assert self._kept is not None
        return [panel.ids[i] for i in self._kept]

    @property
    def freq(self) -> str:
        """The panel's frequency (pandas alias)."""
        return str(self.panel.freq)

    @property
    def seasonality(self) -> int:
        return seasonality_of(self.freq)

    @property
    def exog_names(self) -> list[str]:
        """Channels after the target: known covariates, then calendar features."""
        return [*self.panel.known_names, *(f.__name__ for f in calendar_features(self.freq, self.calendar))]

    @property
    def target_columns(self) -> list[str]:
        return [self.target_column]

    @property
    def exog_columns(self) -> list[str]:
        return self.exog_names

    @property
    def n_exog(self) -> int:
        return len(self.exog_names)

    # ------------------------------------------------------------------ splits
    def _bounds(self, n: int) -> tuple[int, int]:
        """``(val_start, test_start)`` rows of a series of ``n`` steps."""
        h = self.horizon
        if self.split == "last":
            test = n - h * self.test_windows
            return max(test - h * self.val_windows, 0), max(test, 0)
        r = self.split_ratios
        n_train = int(n * r[0])
        n_test = int(n * r[2])
        return n_train, n - n_test

    def _origins(self, n: int, lo: int, hi: int, step: int) -> np.ndarray:
        """Forecast origins ``o`` (first target row) of a series of ``n`` steps with ``lo <= o`` and
        ``o + horizon <= hi``, a full context before ``o`` and ``step`` apart, counted back from the last."""
        first = max(lo, self.context_length)
        last = hi - self.horizon
        if last < first:
            return np.zeros(0, dtype=np.int64)
        return np.arange(last, first - 1, -step, dtype=np.int64)[::-1].copy()

    def _features(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``(T, 1 + K + F)`` of series ``i`` in original units (NaN where missing) and the
        calendar features over them."""
        panel = self.panel
        n = len(panel.target[i])
        stamps = panel.timestamps(i)
        cal = calendar_features(self.freq, self.calendar)
        cols = [panel.target[i][:, None]]
        if panel.known_names:
            cols.append(panel.known[i][:n])
        if cal:
            cols.append(np.stack([np.asarray(f(stamps), dtype=np.float32) for f in cal], axis=1))
        return np.concatenate(cols, axis=1).astype(np.float32), stamps

    def setup(self, stage: str | None = None) -> None:
        """Concatenate the series, fit the per-series scaling, index the windows of every split."""
        if self._datasets is not None:
            return
        panel = self.panel
        assert self._kept is not None
        k = 1 + len(panel.known_names)
        blocks, observed = [], []
        offsets = [0]
        idx: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {s: ([], []) for s in ("train", "val", "test")}
        means, stds = [], []
        for j, i in enumerate(self._kept):
            rows, _ = self._features(int(i))
            n = len(rows)
            val_start, test_start = self._bounds(n)
            fit = rows[: max(val_start, 1)]
            if self.scale == "series":
                with np.errstate(invalid="ignore"):
                    mean = np.nan_to_num(np.nanmean(fit[:, :k], axis=0))
                    std = np.nan_to_num(np.nanstd(fit[:, :k], axis=0))
                std = np.where(std > 0, std, 1.0)
            else:
                mean, std = np.zeros(k), np.ones(k)
            means.append(mean)
            stds.append(std)
            rows[:, :k] = (rows[:, :k] - mean) / std
            seen = np.isfinite(rows[:, 0])
            blocks.append(np.nan_to_num(rows))
            observed.append(seen.astype(np.float32))
            base = offsets[-1]
            for split, (lo, hi, step) in {
                "train": (0, val_start, self.stride),
                "val": (val_start, test_start, self.eval_stride),
                "test": (test_start, n, self.eval_stride),
            }.items():
                o = self._origins(n, lo, hi, step)
                idx[split][0].append(base + o - self.context_length)
                idx[split][1].append(np.full(len(o), j, dtype=np.int64))
            offsets.append(base + n)
        values = np.concatenate(blocks).astype(np.float32)
        seen_all = np.concatenate(observed)
        static = (
            panel.static[self._kept].astype(np.float32)
            if panel.static.size
            else np.zeros((len(self._kept), 0), np.float32)
        )
        self._mean, self._std = np.asarray(means), np.asarray(stds)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        datasets = {}
        for split, (starts, series) in idx.items():
            datasets[split] = PanelWindows(
                values,
                seen_all,
                np.concatenate(starts) if starts else np.zeros(0, np.int64),
                np.concatenate(series) if series else np.zeros(0, np.int64),
                self.context_length,
                self.horizon,
                static,
            )
        if self.fewshot_fraction < 1.0:
            train = datasets["train"]
            n_keep = max(1, int(round(len(train) * self.fewshot_fraction)))
            keep = np.sort(np.random.default_rng(self.fewshot_seed).choice(len(train), n_keep, replace=False))
            train.starts, train.series = train.starts[keep], train.series[keep]
        if len(datasets["train"]) == 0:
            raise DataError(
                f"{panel.source}: no series has a train window (context_length {self.context_length} + horizon "
                f"{self.horizon} before its validation and test parts). Fix: lower data.context_length, "
                "data.test_windows or data.val_windows"
            )
        self._datasets = datasets

    def dataset(self, name: str) -> PanelWindows:
        self.setup()
        assert self._datasets is not None
        return self._datasets[name]

    def n_windows(self, name: str) -> int:
        return len(self.dataset(name))

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        ds = self.dataset(name)
        sampler = (
            apply_resume(ShardedEpochSampler(len(ds), seed=self.shuffle_seed, shuffle=True), self, batch_size)
            if shuffle
            else None
        )
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=_collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    # ------------------------------------------------------------------ facts and scaling
    def facts(self) -> dict[str, Any]:
        return {
            "context_length": self.context_length,
            "horizon": self.horizon,
            "n_exog": self.n_exog,
            "n_targets": 1,
            "seasonality": self.seasonality,
        }

    def describe(self) -> str:
        name = Path(self.path).name
        if self._datasets is None:
            return f"{name} (panel, {self.split} split)"
        n = {k: len(v) for k, v in self._datasets.items()}
        dropped = f"; {len(self.dropped)} short series dropped" if self.dropped else ""
        return (
            f"{name} (panel of {len(self.series_ids):,} series, freq {self.freq}, {self.split} split; "
            f"{self.n_exog} covariates; windows train {n['train']:,} / val {n['val']:,} / test {n['test']:,}; "
            f"context {self.context_length}, horizon {self.horizon}{dropped})"
        )

    def scaler_state(self) -> dict[str, Any]:
        """Each series' scaling (``scaler.json``): ids, then mean and std of target and known covariates
        (a loaded run's, after :meth:`load_scaler_state`)."""
        if self._saved_state is not None:
            return dict(self._saved_state)
        self.setup()
        assert self._mean is not None and self._std is not None
        return {
            "kind": "panel",
            "ids": self.series_ids,
            "columns": [self.target_column, *self.panel.known_names],
            "mean": self._mean.tolist(),
            "std": self._std.tolist(),
            "freq": self.freq,
        }

    def load_scaler_state(self, state: dict[str, Any]) -> None:
        """Scale with a run's per-series statistics (for ``predict``; series the run never saw are
        scaled by their own history)."""
        self._saved_state = dict(state)
        self._saved_scaler = {
            sid: (np.asarray(m, dtype=np.float64), np.asarray(s, dtype=np.float64))
            for sid, m, s in zip(state["ids"], state["mean"], state["std"], strict=True)
        }

    def predict_inputs(self, path: str | None = None) -> dict[str, Any]:
        """Model inputs for forecasting the ``horizon`` steps after each series' last observed target.

        Args:
            path: A panel laid out as the training one (default: the training file); its rows after a
                series' last target (target empty) give the known covariates of the forecast period.

        Returns:
            ``{"x": (n, ctx, C), "x_mask", "future_exog" (n, L, E) when there are covariates, "ids",
            "future": list of the L forecast timestamps per series, "history": list of (timestamps,
            target) of the last ``ctx`` steps, "mean"/"std": (n,) target scaling}``.

        Raises:
            DataError: A series with fewer than ``context_length`` steps, or a known covariate
                without values over the forecast period.
        """
        panel = self._read(path) if path is not None else self.panel
        saved = self._saved_scaler
        if saved is None:
            self.setup()
            saved = {sid: (self._mean[j], self._std[j]) for j, sid in enumerate(self.series_ids)}  # type: ignore[index]
        ctx, h = self.context_length, self.horizon
        cal = calendar_features(panel.freq, self.calendar)
        k = 1 + len(panel.known_names)
        xs, masks, futures, exog, ids, hist, means, stds = [], [], [], [], [], [], [], []
        short = []
        offset = pd.tseries.frequencies.to_offset(panel.freq)
        for i, sid in enumerate(panel.ids):
            target = panel.target[i]
            n = len(target)
            if n < ctx:
                short.append(f"{sid!r} ({n} steps)")
                continue
            stamps = panel.timestamps(i)
            future = pd.date_range(stamps[-1] + offset, periods=h, freq=offset)
            rows = [target[-ctx:, None]]
            fut_cols = []
            if panel.known_names:
                known = panel.known[i]
                ahead = known[n : n + h]
                if len(ahead) < h or not np.isfinite(ahead).all():
                    bad = [
                        name
                        for c, name in enumerate(panel.known_names)
                        if len(ahead) < h or not np.isfinite(ahead[:, c]).all()
                    ]
                    raise DataError(
                        f"{panel.source}: known-future covariate(s) {', '.join(map(repr, bad))} of series {sid!r} have "
                        f"no value for every step of the forecast period {future[0]}..{future[-1]} ({h} steps). "
                        "Fix: add those rows (timestamps after the last target, target left empty) with the "
                        "covariates' planned values, or drop the column from data.known_columns"
                    )
                rows.append(known[n - ctx : n])
                fut_cols.append(ahead)
            if cal:
                rows.append(np.stack([np.asarray(f(stamps[-ctx:]), dtype=np.float32) for f in cal], axis=1))
                fut_cols.append(np.stack([np.asarray(f(future), dtype=np.float32) for f in cal], axis=1))
            block = np.concatenate(rows, axis=1).astype(np.float64)
            if sid in saved:
                mean, std = saved[sid]
            else:  # a series the model never saw: scaled by its own history, as a new series would be
                with np.errstate(invalid="ignore"):
                    mean = np.nan_to_num(np.nanmean(block[:, :k], axis=0))
                    std = np.nan_to_num(np.nanstd(block[:, :k], axis=0))
                std = np.where(std > 0, std, 1.0)
            block[:, :k] = (block[:, :k] - mean) / std
            seen = np.isfinite(block[:, 0])
            xs.append(np.nan_to_num(block).astype(np.float32))
            masks.append(np.concatenate([seen[:, None], np.ones_like(block[:, 1:])], axis=1).astype(np.float32))
            if fut_cols:
                fut = np.concatenate(fut_cols, axis=1).astype(np.float64)
                if panel.known_names:
                    fut[:, : k - 1] = (fut[:, : k - 1] - mean[1:]) / std[1:]
                exog.append(fut.astype(np.float32))
            ids.append(sid)
            futures.append(future)
            hist.append((stamps[-ctx:], target[-ctx:]))
            means.append(float(mean[0]))
            stds.append(float(std[0]))
        if short:
            log.warning(
                "%s: %d series have fewer than context_length=%d steps and get no forecast: %s",
                panel.source,
                len(short),
                ctx,
                ", ".join(short[:5]),
            )
        if not ids:
            raise DataError(
                f"{panel.source}: no series has the context_length={ctx} steps the model needs. Fix: give longer histories"
            )
        out: dict[str, Any] = {
            "x": torch.from_numpy(np.stack(xs)),
            "x_mask": torch.from_numpy(np.stack(masks)),
            "ids": ids,
            "future": futures,
            "history": hist,
            "mean": np.asarray(means),
            "std": np.asarray(stds),
        }
        if exog:
            out["future_exog"] = torch.from_numpy(np.stack(exog))
        return out

    def series_scale(self, series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Target ``(mean, std)`` of each window's series, ``(B,)`` each."""
        self.setup()
        assert self._mean is not None and self._std is not None
        return self._mean[series, 0], self._std[series, 0]


# the class is the registered builder: its __init__ is the config schema of `data: {name: panel}`
DATAMODULES.register("panel")(PanelDataModule)
