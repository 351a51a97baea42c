"""Seeded generator of a forecasting panel: many series of mixed lengths and start dates.

The layout is neuralforecast's long frame: one row per (``unique_id``, ``ds``) with the target ``y``,
the known-future covariates (``promo``, a 0/1 flag that multiplies ``y`` while on, and optionally
``price``, a real that drops during a promotion and moves ``y`` through a price elasticity) and the
static covariates (``store_type`` in a/b/c, ``size``), constant per series. Each series starts at its
own date within one year and has its own length, log-uniform between ``min_len`` and ``max_len``;
``y`` is level + trend + daily and weekly seasonality (phase from the calendar) + AR(1) noise, on a
scale that differs by series over four orders of magnitude, with a few NaN gaps in ~5 % of series.

The known covariates are a pure function of (``seed``, ``unique_id``, step), so ``make_future``
continues them past the end of any panel (or subset of one) made with the same seed: it is
neuralforecast's ``futr_df``. ``write_gluonts_jsonl`` writes the same panel as GluonTS JSON lines
(``feat_dynamic_real`` spans target + horizon), readable by ``gluonts.dataset.common.FileDataset``.
``one_long_series`` is one series with a given number of stride-1 windows, to compare the data cost
of a panel against one long series with as many windows.

Run as a script to write ``panel.csv``, ``panel.parquet``, ``future.csv`` and ``panel.jsonl``::

    python tests/data/panel/make.py /tmp/panel [--series 1200] [--seed 0] [--horizon 24]
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

BASE = "2023-01-01"  # every series starts within the year after this date
STORE_TYPES = ("a", "b", "c")
PROMO_BLOCK = 24  # steps per promotion block: a block is on or off as a whole
KNOWN = ("promo", "price")  # known-future covariates, in the order n_known takes them
STATIC = ("store_type", "size")
_DAY_NS = 86_400 * 10**9


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _uniform(seed: int, stream: int, key: np.ndarray, step: np.ndarray | int = 0) -> np.ndarray:
    """Counter-based uniforms in [0, 1): a pure function of (seed, stream, key, step), broadcast."""
    x = _mix(np.asarray(seed, dtype=np.uint64) ^ _mix(np.asarray(stream, dtype=np.uint64)))
    x = _mix(x ^ np.asarray(key, dtype=np.uint64))
    x = _mix(x ^ np.asarray(step, dtype=np.uint64))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _id_keys(ids: np.ndarray) -> np.ndarray:
    """A stable integer key per series id (its CRC-32), so covariates follow the id, not its position."""
    return np.array([zlib.crc32(str(u).encode()) for u in ids], dtype=np.uint64)


def _known(seed: int, keys: np.ndarray, step: np.ndarray) -> dict[str, np.ndarray]:
    """Known-future covariates of series ``keys`` (one per row) at within-series ``step``: promo 0/1 in
    blocks of PROMO_BLOCK steps (each series on 5-20 % of blocks), price around a per-series base, 20 %
    lower during a promotion, with a slow monthly-ish swing."""
    rate = 0.05 + 0.15 * _uniform(seed, 1, keys)
    promo = (_uniform(seed, 2, keys, step // PROMO_BLOCK) < rate).astype(np.int64)
    base = 1.0 + 9.0 * _uniform(seed, 3, keys)
    phase = 2 * np.pi * _uniform(seed, 4, keys)
    price = base * (1 + 0.1 * np.sin(2 * np.pi * step / 720 + phase)) * (1 - 0.2 * promo)
    return {"promo": promo, "price": np.round(price, 4)}


def _effects(seed: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-series promotion lift (y x (1 + lift) while on), price base and price elasticity."""
    lift = 0.2 + 0.8 * _uniform(seed, 5, keys)
    base = 1.0 + 9.0 * _uniform(seed, 3, keys)
    elasticity = 0.5 + 1.0 * _uniform(seed, 6, keys)
    return lift, base, elasticity


def _ids(n: int) -> list[str]:
    width = max(4, len(str(n - 1)))
    return [f"s{i:0{width}d}" for i in range(n)]


def _generate(
    ids: list[str],
    lengths: np.ndarray,
    offsets: np.ndarray,
    freq: str,
    rng: np.random.Generator,
    seed: int,
    horizon: int,
    n_known: int,
    with_static: bool,
    gaps: bool,
) -> pd.DataFrame:
    """The long frame of series ``ids`` of ``lengths`` starting ``offsets`` steps after BASE."""
    if not 0 <= n_known <= len(KNOWN):
        raise ValueError(f"n_known must be 0..{len(KNOWN)} (known covariates: {', '.join(KNOWN)}), got {n_known}")
    n, max_len = len(ids), int(lengths.max())
    grid = pd.date_range(BASE, periods=int(offsets.max()) + 1, freq=freq)
    ds = np.concatenate(
        [pd.date_range(grid[o], periods=m, freq=freq).values for o, m in zip(offsets, lengths, strict=True)]
    )
    sid = np.repeat(np.arange(n), lengths)
    step = np.arange(len(sid)) - np.repeat(np.cumsum(lengths) - lengths, lengths)

    # per-series parameters (one draw each, in a fixed order)
    scale = 10 ** rng.uniform(-1.0, 3.0, n)
    store = rng.integers(0, len(STORE_TYPES), n)
    size = np.round(50.0 * scale**0.3 * np.exp(0.15 * rng.standard_normal(n)), 3)
    growth = rng.uniform(-0.3, 0.5, n)
    amp_d = rng.uniform(0.5, 3.0, n)
    amp_w = np.array([2.0, 1.0, 0.2])[store] * rng.uniform(0.5, 1.0, n)
    phase_d, phase_w = rng.uniform(0, 2 * np.pi, (2, n))
    phi = rng.uniform(0.3, 0.95, n)
    sigma = rng.uniform(0.2, 0.6, n)

    # AR(1) noise on a padded (series, step) grid, one column at a time, then flattened in series order
    eps = rng.standard_normal((n, max_len)) * sigma[:, None]
    ar = np.empty_like(eps)
    ar[:, 0] = eps[:, 0] / np.sqrt(1 - phi**2)  # start in the stationary distribution
    for t in range(1, max_len):
        ar[:, t] = phi * ar[:, t - 1] + eps[:, t]
    noise = ar[np.arange(max_len)[None, :] < lengths[:, None]]

    ns = ds.astype("datetime64[ns]").astype(np.int64)
    day = (ns % _DAY_NS) / _DAY_NS  # fraction of the (UTC) day
    week = ((ns // _DAY_NS + 3) % 7 + day) / 7  # fraction of the week, Monday 0 (1970-01-01 was a Thursday)
    y = (
        10.0 * (1 + growth[sid] * step / lengths[sid])
        + amp_d[sid] * np.sin(2 * np.pi * day + phase_d[sid])
        + amp_w[sid] * np.sin(2 * np.pi * week + phase_w[sid])
        + noise
    )
    keys = _id_keys(np.asarray(ids))
    known = _known(seed, keys[sid], step)
    lift, base, elasticity = _effects(seed, keys)
    y = y * (1 + lift[sid] * known["promo"])
    if n_known >= 2:
        y = y * (known["price"] / (base[sid] * (1 - 0.2 * known["promo"]))) ** -elasticity[sid]
    y = y * scale[sid]

    if gaps:  # 1-3 NaN gaps of 1-24 steps in ~5 % of series, never in the last `horizon` steps
        starts = np.cumsum(lengths) - lengths
        for i in rng.choice(n, size=round(0.05 * n), replace=False):
            for _ in range(rng.integers(1, 4)):
                width = int(rng.integers(1, min(24, lengths[i] // 20) + 1))
                at = int(rng.integers(0, max(1, lengths[i] - horizon - width)))
                y[starts[i] + at : starts[i] + at + width] = np.nan

    frame: dict[str, object] = {"unique_id": np.asarray(ids, dtype=object)[sid], "ds": ds, "y": y}
    for name in KNOWN[:n_known]:
        frame[name] = known[name]
    if with_static:
        frame["store_type"] = pd.Categorical.from_codes(store[sid], categories=list(STORE_TYPES))
        frame["size"] = size[sid]
    df = pd.DataFrame(frame)
    df.attrs.update(freq=freq, seed=seed, horizon=horizon)
    return df


def make_panel(
    n_series: int = 1200,
    freq: str = "h",
    min_len: int = 200,
    max_len: int = 3000,
    seed: int = 0,
    horizon: int = 24,
    n_known: int = 1,
    with_static: bool = True,
) -> pd.DataFrame:
    """A panel of ``n_series`` series in neuralforecast's long layout (``unique_id``, ``ds``, ``y``, the
    first ``n_known`` of ``promo``, ``price``, and with ``with_static`` ``store_type``, ``size``), sorted by
    id then time. Lengths are log-uniform in [min_len, max_len]; starts are uniform over one year of
    ``freq`` steps after BASE. NaN gaps stay out of each series' last ``horizon`` steps. ``attrs`` keep
    ``freq``, ``seed`` and ``horizon`` for ``make_future`` and ``write_gluonts_jsonl``."""
    if not 1 <= n_series:
        raise ValueError(f"n_series must be at least 1, got {n_series}")
    if not horizon < min_len <= max_len:
        raise ValueError(f"need horizon < min_len <= max_len, got horizon={horizon}, {min_len=}, {max_len=}")
    rng = np.random.default_rng(seed)
    lengths = np.floor(np.exp(rng.uniform(np.log(min_len), np.log(max_len + 1), n_series))).astype(np.int64)
    lengths = np.clip(lengths, min_len, max_len)
    year = pd.Timestamp(BASE) + pd.DateOffset(years=1)
    steps_in_year = len(pd.date_range(BASE, year, freq=freq, inclusive="left"))
    offsets = rng.integers(0, max(1, steps_in_year), n_series)
    return _generate(_ids(n_series), lengths, offsets, freq, rng, seed, horizon, n_known, with_static, gaps=True)


def one_long_series(
    n_windows: int, context: int, horizon: int, freq: str = "h", seed: int = 0, n_known: int = 1
) -> pd.DataFrame:
    """One series (id ``long``, same layout and generator as ``make_panel``, no gaps) with exactly
    ``n_windows`` stride-1 (context, horizon) windows: length ``n_windows + context + horizon - 1``."""
    if n_windows < 1 or context < 1 or horizon < 1:
        raise ValueError(f"n_windows, context and horizon must be at least 1, got {n_windows}, {context}, {horizon}")
    length = n_windows + context + horizon - 1
    rng = np.random.default_rng(seed)
    lengths, offsets = np.array([length]), np.array([0])
    return _generate(["long"], lengths, offsets, freq, rng, seed, horizon, n_known, with_static=True, gaps=False)


def n_windows(df: pd.DataFrame, context: int, horizon: int) -> int:
    """Stride-1 (context, horizon) windows over all series of ``df`` (series shorter than one window give none)."""
    lengths = df.groupby("unique_id", sort=False, observed=True).size().to_numpy()
    return int(np.clip(lengths - context - horizon + 1, 0, None).sum())


def _freq_of(df: pd.DataFrame, freq: str | None) -> str:
    if freq is not None:
        return freq
    if "freq" in df.attrs:
        return str(df.attrs["freq"])
    first = df["ds"][df["unique_id"] == df["unique_id"].iloc[0]]
    inferred = pd.infer_freq(pd.DatetimeIndex(first))
    if inferred is None:
        raise ValueError("cannot infer the frequency of the panel: pass freq='h' (or the panel's own)")
    return inferred


def make_future(
    panel_df: pd.DataFrame, horizon: int = 24, seed: int | None = None, freq: str | None = None
) -> pd.DataFrame:
    """neuralforecast's ``futr_df``: the next ``horizon`` timestamps of every series of ``panel_df`` with
    its known covariates (continued exactly: they depend only on seed, id and step) and no ``y``.
    ``seed`` and ``freq`` default to the panel's ``attrs`` (then 0 and the inferred frequency)."""
    seed = int(panel_df.attrs.get("seed", 0)) if seed is None else seed
    freq = _freq_of(panel_df, freq)
    known = [c for c in KNOWN if c in panel_df.columns]
    last = panel_df.groupby("unique_id", sort=False, observed=True).agg(ds=("ds", "max"), n=("ds", "size"))
    ids = last.index.to_numpy()
    offset = pd.tseries.frequencies.to_offset(freq)
    ds = np.concatenate([pd.date_range(t + offset, periods=horizon, freq=freq).values for t in last["ds"]])
    sid = np.repeat(np.arange(len(ids)), horizon)
    step = last["n"].to_numpy()[sid] + np.tile(np.arange(horizon), len(ids))
    values = _known(seed, _id_keys(ids)[sid], step)
    frame: dict[str, object] = {"unique_id": ids[sid], "ds": ds}
    for name in known:
        frame[name] = values[name]
    return pd.DataFrame(frame)


def static_frame(panel_df: pd.DataFrame) -> pd.DataFrame:
    """neuralforecast's ``static_df``: one row per series, ``store_type`` as its integer code, ``size``."""
    first = panel_df.groupby("unique_id", sort=False, observed=True)[list(STATIC)].first().reset_index()
    first["store_type"] = pd.Categorical(first["store_type"], categories=list(STORE_TYPES)).codes.astype(np.int64)
    return first


def write_gluonts_jsonl(
    df: pd.DataFrame, path: str | Path, horizon: int = 24, seed: int | None = None, freq: str | None = None
) -> Path:
    """Write ``df`` as GluonTS JSON lines, one series a line: ``start`` (a timestamp string that
    ``FileDataset(path, freq=...)`` parses), ``target`` (NaN as "NaN", as GluonTS writes it),
    ``item_id``, and where the panel has them ``feat_static_cat`` [store_type code],
    ``feat_static_real`` [size] and ``feat_dynamic_real`` (one row per known covariate, spanning
    target + ``horizon``: the future part from ``make_future``)."""
    path = Path(path)
    known = [c for c in KNOWN if c in df.columns]
    future = make_future(df, horizon, seed=seed, freq=freq) if known else None
    fut_groups = dict(iter(future.groupby("unique_id", sort=False))) if future is not None else {}
    with path.open("w") as f:
        for uid, g in df.groupby("unique_id", sort=False, observed=True):
            y = g["y"].to_numpy(dtype=np.float64)
            entry: dict[str, object] = {
                "start": str(pd.Timestamp(g["ds"].iloc[0])),
                "target": ["NaN" if v != v else v for v in y.tolist()],
                "item_id": str(uid),
            }
            if "store_type" in g.columns:
                code = pd.Categorical(g["store_type"].iloc[:1], categories=list(STORE_TYPES)).codes[0]
                entry["feat_static_cat"] = [int(code)]
            if "size" in g.columns:
                entry["feat_static_real"] = [float(g["size"].iloc[0])]
            if known:
                fut = fut_groups[uid]
                entry["feat_dynamic_real"] = [
                    np.concatenate([g[c].to_numpy(np.float64), fut[c].to_numpy(np.float64)]).tolist() for c in known
                ]
            f.write(json.dumps(entry) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--series", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--horizon", type=int, default=24)
    parser.add_argument("--known", type=int, default=2, help="known-future covariates: 1 promo, 2 promo + price")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    df = make_panel(n_series=args.series, seed=args.seed, horizon=args.horizon, n_known=args.known)
    df.to_csv(args.out_dir / "panel.csv", index=False)
    df.to_parquet(args.out_dir / "panel.parquet", index=False)
    make_future(df, args.horizon).to_csv(args.out_dir / "future.csv", index=False)
    write_gluonts_jsonl(df, args.out_dir / "panel.jsonl", args.horizon)
    print(f"wrote {df['unique_id'].nunique()} series, {len(df)} rows to {args.out_dir}")


def contract_config(folder: Path, seed: int = 0) -> dict[str, Any]:
    """The ``data:`` keys (less ``name``) of a small panel datamodule on a fresh panel in ``folder``:
    what the contract tests in tests/unit/test_contracts.py build every registered datamodule from."""
    path = folder / "panel.csv"
    make_panel(n_series=12, min_len=80, max_len=200, seed=seed, horizon=12).to_csv(path, index=False)
    return {"path": str(path), "known_columns": ["promo"], "context_length": 48, "horizon": 12, "batch_size": 8}


if __name__ == "__main__":
    main()
