"""Tests of the windowed time-series datamodule (``sciadapt.datamodules.timeseries``)."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sciadapt.datamodules import timeseries as ts
from sciadapt.datamodules.timeseries import TimeSeriesDataModule
from sciadapt.errors import ConfigError, DataError, ShapeError
from sciadapt.registry import DATAMODULES

ETTH1 = Path(__file__).parents[3] / "shared/data/ett/ETTh1.csv"


def make_frame(n: int, freq: str = "h", columns: tuple[str, ...] = ("a", "b", "c"), seed: int = 0) -> pd.DataFrame:
    """A seeded wide frame: daily sine + trend + noise per channel, so splits differ in level."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    data = {"date": pd.date_range("2020-01-01", periods=n, freq=freq)}
    for k, col in enumerate(columns):
        data[col] = 10.0 * (k + 1) + np.sin(2 * np.pi * t / 24 + k) + 0.01 * (k + 1) * t + rng.normal(0.0, 0.1, n)
    return pd.DataFrame(data)


def write_csv(tmp_path: Path, frame: pd.DataFrame, name: str = "data.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def build(path: Path | str, **kw: object) -> TimeSeriesDataModule:
    return DATAMODULES.build("timeseries", path=str(path), **kw)


def first_batch(loader: torch.utils.data.DataLoader) -> dict:
    return next(iter(loader))


# ---------------------------------------------------------------------------------------- schema


def test_builder_signature_is_a_plain_schema() -> None:
    sig = inspect.signature(TimeSeriesDataModule)
    kinds = {p.kind for p in sig.parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds
    for p in sig.parameters.values():
        assert not isinstance(p.default, list | dict | set), p.name
    assert "timeseries" in DATAMODULES.list()


# ---------------------------------------------------------------------------------------- splits


def test_ett_hourly_borders_and_window_counts(tmp_path: Path) -> None:
    path = write_csv(tmp_path, make_frame(17420, columns=("a", "b")))
    ctx, h = 96, 24
    dm = build(path, split="ett_hourly", context_length=ctx, horizon=h)
    dm.setup()
    assert dm.split_bounds == {
        "train": (0, 8640),
        "val": (8640 - ctx, 8640 + 2880),
        "test": (11520 - ctx, 11520 + 2880),
    }
    assert len(dm.dataset("train")) == 8640 - ctx - h + 1
    assert len(dm.dataset("val")) == 2880 - h + 1
    assert len(dm.dataset("test")) == 2880 - h + 1
    # The first test window forecasts the first test row.
    assert dm.dataset("test")[0]["meta"]["start"] + ctx == 11520


def test_ett_minutely_is_four_times_hourly(tmp_path: Path) -> None:
    frame = make_frame(4 * 14400, freq="15min", columns=("a",))
    path = tmp_path / "m.parquet"
    frame.to_parquet(path)
    dm = build(path, split="ett_minutely", context_length=96, horizon=48, eval_stride=4)
    assert dm.split_bounds["test"] == (4 * 11520 - 96, 4 * 14400)
    assert dm.n_windows("test") == len(range(0, 4 * 2880 - 48 + 1, 4))
    assert dm.freq == "15min" and dm.seasonality == 96


def test_ett_split_needs_enough_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path, make_frame(1000))
    with pytest.raises(DataError, match="data.split=ratio"):
        build(path, split="ett_hourly").setup()


def test_ratio_split_follows_the_autoformer_rule(tmp_path: Path) -> None:
    n, ctx, h = 1000, 48, 12
    path = write_csv(tmp_path, make_frame(n))
    dm = build(path, context_length=ctx, horizon=h, stride=5, split_ratios=[0.7, 0.1, 0.2])
    n_train, n_test = int(n * 0.7), int(n * 0.2)
    n_val = n - n_train - n_test
    assert dm.split_bounds == {
        "train": (0, n_train),
        "val": (n_train - ctx, n_train + n_val),
        "test": (n - n_test - ctx, n),
    }
    assert dm.n_windows("train") == len(range(0, n_train - ctx - h + 1, 5))
    assert dm.n_windows("test") == n_test - h + 1


def test_rows_split_uses_explicit_counts(tmp_path: Path) -> None:
    path = write_csv(tmp_path, make_frame(1000))
    dm = build(path, split="rows", split_rows=[500, 100, 150], context_length=32, horizon=8)
    assert dm.split_bounds == {"train": (0, 500), "val": (468, 600), "test": (568, 750)}
    assert dm.n_windows("val") == 100 - 8 + 1
    with pytest.raises(DataError, match="data.split_rows"):
        build(path, split="rows", split_rows=[900, 100, 100]).setup()


def test_split_too_short_names_split_and_fix(tmp_path: Path) -> None:
    path = write_csv(tmp_path, make_frame(300))
    # ratio: 210 train, 30 val, 60 test rows; a horizon of 40 fits train but not val.
    with pytest.raises(DataError) as err:
        build(path, context_length=96, horizon=40).setup()
    msg = str(err.value)
    assert "val split has 30 rows" in msg and "horizon = 40" in msg
    assert "data.context_length" in msg and "data.horizon" in msg and str(path) in msg
    with pytest.raises(DataError, match="train split has 210 rows"):
        build(path, context_length=200, horizon=24).setup()


# ---------------------------------------------------------------------------------------- batches


def test_batch_layout_and_loaders(tmp_path: Path) -> None:
    path = write_csv(tmp_path, make_frame(600))
    dm = build(path, context_length=24, horizon=6, batch_size=8, eval_batch_size=16)
    dm.setup()
    batch = first_batch(dm.train_dataloader())
    assert batch["x"].shape == (8, 24, 3) and batch["x"].dtype == torch.float32
    assert batch["y"].shape == (8, 6, 3) and batch["y"].dtype == torch.float32
    assert batch["mask"].shape == (8, 6, 3) and bool((batch["mask"] == 1).all())
    assert batch["meta"]["start"].dtype == torch.int64 and batch["meta"]["start"].shape == (8,)
    assert batch["x_mask"].shape == (8, 24, 3) and bool((batch["x_mask"] == 1).all())  # nothing missing
    val = first_batch(dm.val_dataloader())
    starts = val["meta"]["start"]
    assert val["x"].shape[0] == 16 and bool((starts.diff() == 1).all())
    assert dm.val_dataloader().drop_last is False
    many = build(path, context_length=24, horizon=6, num_workers=2)
    assert many.train_dataloader().persistent_workers is True
    assert dm.train_dataloader().persistent_workers is False


def test_windows_are_views_of_one_array(tmp_path: Path) -> None:
    path = write_csv(tmp_path, make_frame(400))
    dm = build(path, context_length=24, horizon=6)
    ds = dm.dataset("train")
    item = ds[3]
    assert np.shares_memory(item["x"].numpy(), ds.values)
    # y of a window continues its x: row s+ctx of the same array.
    np.testing.assert_array_equal(item["y"][0].numpy(), ds.values[3 + 24, :3])


def test_setup_is_idempotent_and_reads_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_csv(tmp_path, make_frame(400))
    calls = []
    real = ts.read_table

    def counting(*args: object, **kw: object) -> pd.DataFrame:
        calls.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(ts, "read_table", counting)
    dm = build(path, context_length=24, horizon=6)
    assert dm.n_input_channels == 3
    dm.setup("fit")
    train = dm.dataset("train")
    dm.setup("test")
    assert dm.dataset("train") is train and len(calls) == 1


# ---------------------------------------------------------------------------------------- scaling


def test_scaler_uses_train_rows_only(tmp_path: Path) -> None:
    frame = make_frame(1000)
    path = write_csv(tmp_path, frame)
    dm = build(path, context_length=24, horizon=6)
    dm.setup()
    n_train = dm.split_bounds["train"][1]
    values = dm.dataset("train").values
    np.testing.assert_allclose(values[:n_train].mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(values[:n_train].std(axis=0), 1.0, atol=1e-4)
    # The trend moves later rows away from the train level, so whole-series stats would differ.
    assert values[n_train:].mean() > 1.0
    state = dm.scaler_state()
    np.testing.assert_allclose(state["mean"], frame[["a", "b", "c"]].iloc[:n_train].mean().to_numpy())
    np.testing.assert_allclose(state["std"], frame[["a", "b", "c"]].iloc[:n_train].std(ddof=0).to_numpy())


def test_constant_channel_is_not_divided_by_zero(tmp_path: Path) -> None:
    frame = make_frame(300)
    frame["c"] = 5.0
    dm = build(write_csv(tmp_path, frame), context_length=24, horizon=6)
    dm.setup()
    assert dm.scaler_state()["std"][2] == 1.0
    assert np.isfinite(dm.dataset("train").values).all()


def test_scale_false_keeps_raw_values(tmp_path: Path) -> None:
    frame = make_frame(300)
    dm = build(write_csv(tmp_path, frame), context_length=24, horizon=6, scale=False)
    np.testing.assert_allclose(dm.dataset("train").values[:5], frame[["a", "b", "c"]].iloc[:5], rtol=1e-6)


def test_inverse_transform_round_trips(tmp_path: Path) -> None:
    frame = make_frame(500)
    dm = build(
        write_csv(tmp_path, frame),
        target_columns=["a", "b"],
        exog_columns=["c"],
        horizon=6,
        context_length=24,
    )
    batch = first_batch(dm.test_dataloader())
    start = int(batch["meta"]["start"][0])
    want = frame[["a", "b"]].iloc[start + 24 : start + 30].to_numpy()

    back_t = dm.inverse_transform(batch["y"])
    assert isinstance(back_t, torch.Tensor) and back_t.dtype == torch.float32
    np.testing.assert_allclose(back_t[0].numpy(), want, rtol=1e-5)

    back_np = dm.inverse_transform(batch["y"].numpy())
    assert isinstance(back_np, np.ndarray) and back_np.dtype == np.float32
    np.testing.assert_allclose(back_np[0], want, rtol=1e-5)

    quant = batch["y"].unsqueeze(-1).repeat(1, 1, 1, 3)  # (B, L, C, Q)
    back_q = dm.inverse_transform(quant, quantile_axis=True)
    for q in range(3):
        np.testing.assert_allclose(back_q[0, :, :, q].numpy(), want, rtol=1e-5)

    with pytest.raises(ShapeError, match="C=2"):
        dm.inverse_transform(torch.zeros(2, 6, 3))


def test_scaler_state_is_json_and_reloads(tmp_path: Path) -> None:
    import json

    path = write_csv(tmp_path, make_frame(500))
    dm = build(path, target_columns=["b"], exog_columns=["a"], context_length=24, horizon=6)
    state = json.loads(json.dumps(dm.scaler_state()))
    assert state["columns"] == ["b", "a"] and state["freq"] == "h" and state["timestamp_column"] == "date"
    fresh = build(path, target_columns=["b"], exog_columns=["a"], context_length=24, horizon=6)
    fresh.load_scaler_state(state)
    np.testing.assert_allclose(fresh.inverse_transform(np.zeros((1, 1))), np.array([[state["mean"][0]]]), rtol=1e-12)
    other = build(path, target_columns=["c"], context_length=24, horizon=6)
    with pytest.raises(DataError, match="data.target_columns"):
        other.load_scaler_state(state)


# ---------------------------------------------------------------------------------------- layouts


def test_long_layout_pivots_to_the_wide_tensors(tmp_path: Path) -> None:
    frame = make_frame(400)
    wide_path = write_csv(tmp_path, frame, "wide.csv")
    long = frame.melt(id_vars="date", var_name="series", value_name="reading")
    # Row order of a long file carries no meaning; shuffle it to prove the pivot sorts by time.
    long = long.sample(frac=1.0, random_state=0)
    long_path = write_csv(tmp_path, long, "long.csv")
    kw = {"context_length": 24, "horizon": 6}
    wide = build(wide_path, **kw)
    lng = build(long_path, layout="long", id_column="series", value_column="reading", **kw)
    assert lng.target_columns == wide.target_columns == ["a", "b", "c"]
    for loader in ("train_dataloader", "test_dataloader"):
        if loader == "train_dataloader":
            torch.manual_seed(0)
        wb = first_batch(getattr(wide, loader)())
        if loader == "train_dataloader":
            torch.manual_seed(0)
        lb = first_batch(getattr(lng, loader)())
        for key in ("x", "y", "mask"):
            torch.testing.assert_close(wb[key], lb[key])
    assert lng.timestamps.equals(wide.timestamps)


def test_long_layout_exog_ids_and_duplicates(tmp_path: Path) -> None:
    frame = make_frame(300)
    long = frame.melt(id_vars="date", var_name="id", value_name="value")
    dm = build(write_csv(tmp_path, long, "l.csv"), layout="long", exog_columns=["a"], context_length=24, horizon=6)
    assert dm.target_columns == ["b", "c"] and dm.exog_columns == ["a"]
    dup = pd.concat([long, long.iloc[[5]]])
    with pytest.raises(DataError, match="more than once"):
        build(write_csv(tmp_path, dup, "d.csv"), layout="long").setup()
    with pytest.raises(DataError, match="data.id_column"):
        build(write_csv(tmp_path, long, "l.csv"), layout="long", id_column="series").setup()


def test_exog_columns_follow_targets_in_x_and_are_not_in_y(tmp_path: Path) -> None:
    frame = make_frame(400, columns=("a", "b", "c", "d"))
    dm = build(
        write_csv(tmp_path, frame),
        target_columns=["c", "a"],
        exog_columns=["d"],
        context_length=24,
        horizon=6,
    )
    assert dm.n_targets == 2 and dm.n_exog == 1 and dm.n_input_channels == 3
    batch = first_batch(dm.val_dataloader())
    assert batch["x"].shape[-1] == 3 and batch["y"].shape[-1] == 2
    start = int(batch["meta"]["start"][0])
    state = dm.scaler_state()
    assert state["columns"] == ["c", "a", "d"]
    raw = frame[["c", "a", "d"]].iloc[start : start + 24].to_numpy()
    scaled = (raw - np.array(state["mean"])) / np.array(state["std"])
    np.testing.assert_allclose(batch["x"][0].numpy(), scaled, rtol=1e-4, atol=1e-5)


def test_parquet_gives_the_same_tensors_as_csv(tmp_path: Path) -> None:
    frame = make_frame(300)
    csv = write_csv(tmp_path, frame)
    pq = tmp_path / "data.parquet"
    frame.to_parquet(pq)
    a, b = build(csv, context_length=24, horizon=6), build(pq, context_length=24, horizon=6)
    np.testing.assert_allclose(a.dataset("train").values, b.dataset("train").values, rtol=1e-6)
    assert b.freq == "h"


def test_gzipped_csv_and_skiprows(tmp_path: Path) -> None:
    frame = make_frame(300)
    path = tmp_path / "data.csv.gz"
    text = "station metadata line\n" + frame.to_csv(index=False)
    import gzip

    path.write_bytes(gzip.compress(text.encode()))
    dm = build(path, skiprows=1, context_length=24, horizon=6)
    assert dm.target_columns == ["a", "b", "c"] and len(dm.timestamps) == 300


def test_bundled_pkg_data(tmp_path: Path) -> None:
    dm = build("pkg://tmy3_sand_point_ak.csv.gz", target_columns=["ghi"], exog_columns=["temp_air"])
    assert len(dm.timestamps) == 8760 and dm.freq == "h" and dm.seasonality == 24
    assert dm.timestamps[0] == pd.Timestamp("2001-01-01 01:00")
    with pytest.raises(DataError, match="tmy3_greensboro_nc.csv.gz"):
        build("pkg://nope.csv").setup()


# ---------------------------------------------------------------------------------------- bad input


def test_missing_target_column_lists_columns_and_suggests(tmp_path: Path) -> None:
    frame = make_frame(200, columns=("temp", "load"))
    path = write_csv(tmp_path, frame)
    with pytest.raises(DataError) as err:
        build(path, target_columns=["tmep"]).setup()
    msg = str(err.value)
    assert "'tmep'" in msg and "did you mean 'temp'" in msg and "data.target_columns" in msg
    assert "Available columns: date, temp, load" in msg and str(path) in msg


def test_missing_exog_and_timestamp_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path, make_frame(200))
    with pytest.raises(DataError, match=r"data.exog_columns.*'zz'|'zz'.*data.exog_columns"):
        build(path, exog_columns=["zz"]).setup()
    with pytest.raises(DataError) as err:
        build(path, timestamp_column="dates").setup()
    assert "data.timestamp_column" in str(err.value) and "did you mean 'date'" in str(err.value)


def test_non_monotonic_and_duplicate_timestamps(tmp_path: Path) -> None:
    frame = make_frame(200)
    swapped = frame.copy()
    swapped.loc[[5, 6], "date"] = swapped.loc[[6, 5], "date"].to_numpy()
    with pytest.raises(DataError) as err:
        build(write_csv(tmp_path, swapped, "s.csv")).setup()
    msg = str(err.value)
    assert "row 6 (file line 8)" in msg and "2020-01-01 05:00:00" in msg and "sort" in msg
    assert "data.timestamp_column" in msg
    dup = frame.copy()
    dup.loc[9, "date"] = dup.loc[8, "date"]
    with pytest.raises(DataError, match="row 9 .*duplicates"):
        build(write_csv(tmp_path, dup, "d.csv")).setup()


def test_non_numeric_target_column(tmp_path: Path) -> None:
    frame = make_frame(200)
    frame["a"] = frame["a"].astype(object)
    frame.loc[7, "a"] = "n/a?"
    with pytest.raises(DataError, match=r"'a'.*'n/a\?'.*row 7"):
        build(write_csv(tmp_path, frame), target_columns=["a", "b"]).setup()


def test_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "broken.csv.gz"
    bad.write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match="broken.csv.gz"):
        build(bad).setup()
    with pytest.raises(DataError, match="does not exist.*data.path"):
        build(tmp_path / "absent.csv").setup()
    odd = tmp_path / "table.xlsx"
    odd.write_bytes(b"x")
    with pytest.raises(DataError, match="unknown format"):
        build(odd).setup()
    latin = tmp_path / "latin.csv"
    latin.write_bytes("date,T (\xb0C)\n2020-01-01,1.0\n".encode("latin-1"))
    with pytest.raises(DataError, match="data.encoding=latin-1"):
        build(latin).setup()
    frame = build(latin, encoding="latin-1", target_columns=["T (°C)"])._read_frame(str(latin), None, [])
    assert list(frame.columns) == ["T (°C)"]


@pytest.mark.parametrize(
    ("key", "value", "hint"),
    [("layout", "wdie", "'wide'"), ("split", "ett_hourl", "'ett_hourly'"), ("nan_policy", "masks", "'mask'")],
)
def test_unknown_choice_is_a_config_error(tmp_path: Path, key: str, value: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(tmp_path / "x.csv", **{key: value})
    assert f"data.{key}" in str(err.value) and f"did you mean {hint}" in str(err.value)


def test_config_errors_are_collected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        build(
            tmp_path / "x.csv",
            context_length=0,
            split_ratios=[0.5, 0.1, 0.1],
            target_columns=["a"],
            exog_columns=["a"],
        )
    problems = err.value.problems
    assert any("data.context_length" in p for p in problems)
    assert any("data.split_ratios" in p and "sum to 1" in p for p in problems)
    assert any("data.exog_columns" in p for p in problems)
    with pytest.raises(ConfigError, match="data.split_rows"):
        build(tmp_path / "x.csv", split="rows")
    # a stage that switches `split` inherits the other rule's keys; they are ignored, not refused
    build(tmp_path / "x.csv", split="ratio", split_rows=[1, 1, 1])


# ---------------------------------------------------------------------------------------- NaNs


def frame_with_nans() -> pd.DataFrame:
    frame = make_frame(300)
    frame.loc[50, "b"] = np.nan
    frame.loc[[0, 280], "c"] = np.nan
    return frame


def test_nan_policy_error_names_columns_and_fix(tmp_path: Path) -> None:
    path = write_csv(tmp_path, frame_with_nans())
    with pytest.raises(DataError) as err:
        build(path, context_length=24, horizon=6).setup()
    msg = str(err.value)
    assert "'b' (1 NaN, first at 2020-01-03 02:00:00)" in msg
    assert "'c' (2 NaN, first at 2020-01-01 00:00:00)" in msg
    assert "data.nan_policy=mask" in msg and "interpolate" in msg and str(path) in msg


def test_nan_policy_mask_zero_fills_and_masks(tmp_path: Path) -> None:
    frame = frame_with_nans()
    dm = build(write_csv(tmp_path, frame), context_length=24, horizon=6, nan_policy="mask")
    ds = dm.dataset("train")
    item = ds[30]  # x rows 30..53 include row 50; y rows 54..59 do not
    assert item["x"][20, 1] == 0 and item["x_mask"][20, 1] == 0 and item["x_mask"].sum() == 24 * 3 - 1
    item = ds[45]  # y rows 69..74 do not include row 50; x rows 45..68 do
    assert item["mask"].min() == 1
    test_ds = dm.dataset("test")
    start = int(test_ds.starts[0])
    i = 280 - 24 - start  # the window whose first y row is row 280
    item = test_ds[i]
    assert item["y"][0, 2] == 0 and item["mask"][0, 2] == 0 and item["mask"].sum() == 6 * 3 - 1
    batch = first_batch(dm.train_dataloader())
    assert batch["x_mask"].shape == batch["x"].shape
    # Stats ignore the NaNs instead of turning NaN.
    assert np.isfinite(dm.scaler_state()["mean"]).all()


def test_nan_policy_interpolate_is_linear_in_time(tmp_path: Path) -> None:
    frame = frame_with_nans()
    dm = build(write_csv(tmp_path, frame), context_length=24, horizon=6, nan_policy="interpolate", scale=False)
    values = dm.dataset("train").values
    assert values[50, 1] == pytest.approx((frame.loc[49, "b"] + frame.loc[51, "b"]) / 2, rel=1e-5)
    assert values[0, 2] == pytest.approx(frame.loc[1, "c"], rel=1e-5)  # leading gap: nearest value
    assert np.isfinite(values).all()
    assert bool((dm.dataset("train")[0]["x_mask"] == 1).all())  # interpolated values count as observed


# ---------------------------------------------------------------------------------------- predict


def test_predict_inputs_from_own_file(tmp_path: Path) -> None:
    frame = make_frame(300, freq="15min")
    dm = build(write_csv(tmp_path, frame), context_length=24, horizon=8)
    out = dm.predict_inputs()
    assert out["x"].shape == (1, 24, 3) and out["x"].dtype == torch.float32
    last = frame["date"].iloc[-1]
    expected = pd.date_range(last + pd.Timedelta(minutes=15), periods=8, freq="15min")
    assert list(out["future_index"]) == list(expected)
    pd.testing.assert_frame_equal(
        out["history"].reset_index(drop=True), frame[["a", "b", "c"]].iloc[-24:].reset_index(drop=True)
    )
    assert out["history"].index[-1] == last
    np.testing.assert_allclose(dm.inverse_transform(out["x"][0]).numpy(), out["history"].to_numpy(), rtol=1e-5)


def test_predict_inputs_after_loading_state_without_training_file(tmp_path: Path) -> None:
    frame = make_frame(400)
    train_path = write_csv(tmp_path, frame.iloc[:300], "train.csv")
    kw = {"target_columns": ["a"], "exog_columns": ["b"], "context_length": 24, "horizon": 5}
    state = build(train_path, **kw).scaler_state()
    train_path.unlink()  # the fresh module must not need it
    new_path = write_csv(tmp_path, frame.iloc[300:], "new.csv")
    fresh = build(train_path, **kw)
    fresh.load_scaler_state(state)
    out = fresh.predict_inputs(str(new_path))
    assert out["x"].shape == (1, 24, 2)
    assert out["future_index"][0] == frame["date"].iloc[-1] + pd.Timedelta(hours=1)
    assert len(out["future_index"]) == 5
    raw = frame[["a", "b"]].iloc[-24:].to_numpy()
    np.testing.assert_allclose(
        out["x"][0].numpy(), (raw - state["mean"]) / np.array(state["std"]), rtol=1e-4, atol=1e-5
    )
    short = write_csv(tmp_path, frame.iloc[:10], "short.csv")
    with pytest.raises(DataError, match="context_length=24"):
        fresh.predict_inputs(str(short))
    missing = write_csv(tmp_path, frame.drop(columns=["b"]), "nob.csv")
    # a stored model's columns are not the user's to change at predict time: the message names the
    # column and the file to give, not a data.* key that predict cannot set
    with pytest.raises(DataError, match="lacks column\\(s\\) 'b' that the model was trained on") as err:
        fresh.predict_inputs(str(missing))
    assert "data.exog_columns" not in str(err.value) and "training columns" in str(err.value)


def test_predict_inputs_needs_a_frequency(tmp_path: Path) -> None:
    frame = make_frame(300)
    rng = np.random.default_rng(1)
    frame["date"] = pd.Timestamp("2020-01-01") + pd.to_timedelta(np.cumsum(rng.integers(1, 5, 300)), unit="h")
    dm = build(write_csv(tmp_path, frame), context_length=24, horizon=6)
    assert dm.freq is None and dm.seasonality == 1
    with pytest.raises(DataError, match="cannot infer the time step"):
        dm.predict_inputs()


# ---------------------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.skipif(not ETTH1.is_file(), reason=f"real data not found at {ETTH1} (../shared/data)")
def test_etth1_published_protocol() -> None:
    dm = build(ETTH1, split="ett_hourly", context_length=96, horizon=96)
    dm.setup()
    assert dm.n_input_channels == 7 and dm.target_columns[-1] == "OT"
    assert len(dm.dataset("test")) == 2785
    assert dm.freq == "h" and dm.seasonality == 24
    batch = first_batch(dm.test_dataloader())
    assert batch["x"].shape == (256, 96, 7) and batch["y"].shape == (256, 96, 7)
    np.testing.assert_allclose(dm.dataset("train").values[:8640].mean(axis=0), 0.0, atol=1e-4)


# ---------------------------------------------------------------- short histories, few-shot, exog


def test_min_context_left_pads_short_histories_with_a_mask(tmp_path: Path) -> None:
    # 60 rows cannot hold one 48+6 window per split without padding
    path = write_csv(tmp_path, make_frame(60))
    with pytest.raises(DataError, match="min_context"):
        build(path, context_length=48, horizon=6, split="rows", split_rows=[30, 15, 15]).setup()
    dm = build(path, context_length=48, horizon=6, split="rows", split_rows=[30, 15, 15], min_context=8, scale=False)
    train = dm.dataset("train")
    first = train[0]
    # the first window has exactly min_context real rows, the rest are zeros marked unobserved
    assert first["x"].shape == (48, 3)
    assert float(first["x_mask"][:40].sum()) == 0.0 and bool((first["x_mask"][40:] == 1).all())
    assert bool((first["x"][:40] == 0).all())
    frame = make_frame(60)
    np.testing.assert_allclose(first["x"][40:, 0].numpy(), frame["a"].to_numpy()[:8], rtol=1e-6)
    np.testing.assert_allclose(first["y"][:, 0].numpy(), frame["a"].to_numpy()[8:14], rtol=1e-6)
    report = dm.padding_report()
    assert report["train"]["padded"] == len(train) and report["train"]["min_real_context"] == 8
    # test contexts reach back into val and train: only those starting before row 0 are padded
    assert report["test"]["min_real_context"] == 45 and 0 < report["test"]["padded"] < report["test"]["windows"]
    assert "left-padded" in dm.describe()
    # predict from a history shorter than the context: padded too
    short = write_csv(tmp_path, make_frame(20), name="short.csv")
    inputs = dm.predict_inputs(str(short))
    assert inputs["padded_rows"] == 28 and float(inputs["x_mask"][0, :28].sum()) == 0.0


def test_min_context_out_of_range_is_a_config_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path, make_frame(200))
    with pytest.raises(ConfigError, match="min_context"):
        build(path, context_length=24, horizon=6, min_context=25)


@pytest.mark.parametrize("location", ["first", "last", "uniform"])
def test_fewshot_keeps_a_fraction_of_train_windows_only(tmp_path: Path, location: str) -> None:
    path = write_csv(tmp_path, make_frame(1000))
    full = build(path, context_length=24, horizon=6)
    few = build(path, context_length=24, horizon=6, fewshot_fraction=0.1, fewshot_location=location, fewshot_seed=3)
    all_starts = [full.dataset("train")[i]["meta"]["start"] for i in range(len(full.dataset("train")))]
    starts = [few.dataset("train")[i]["meta"]["start"] for i in range(len(few.dataset("train")))]
    assert len(starts) == int(len(all_starts) * 0.1)
    assert len(few.dataset("val")) == len(full.dataset("val")) and len(few.dataset("test")) == len(full.dataset("test"))
    if location == "first":
        assert starts == all_starts[: len(starts)]
    elif location == "last":
        assert starts == all_starts[-len(starts) :]
    else:
        assert starts == sorted(starts) and set(starts) <= set(all_starts)
        assert starts != all_starts[: len(starts)] and starts != all_starts[-len(starts) :]
        again = build(
            path, context_length=24, horizon=6, fewshot_fraction=0.1, fewshot_location=location, fewshot_seed=3
        )
        assert [again.dataset("train")[i]["meta"]["start"] for i in range(len(starts))] == starts  # seeded
    assert "few-shot" in few.describe()


def test_fewshot_bad_values_are_config_errors(tmp_path: Path) -> None:
    path = write_csv(tmp_path, make_frame(200))
    with pytest.raises(ConfigError) as err:
        build(path, fewshot_fraction=0.0, fewshot_location="random")
    assert "fewshot_fraction" in str(err.value) and "fewshot_location" in str(err.value)


def test_duplicate_timestamps_refused_or_dropped(tmp_path: Path) -> None:
    frame = make_frame(300)
    frame = pd.concat([frame.iloc[:100], frame.iloc[99:100].assign(a=-1.0), frame.iloc[100:]], ignore_index=True)
    path = write_csv(tmp_path, frame)
    with pytest.raises(DataError, match="duplicate_timestamps=keep_first"):
        build(path, context_length=24, horizon=6).setup()
    first = build(path, context_length=24, horizon=6, duplicate_timestamps="keep_first", scale=False)
    first.setup()
    assert first.dropped_duplicates == 1 and -1.0 not in first.dataset("train").values[:, 0]
    last = build(path, context_length=24, horizon=6, duplicate_timestamps="keep_last", scale=False)
    assert -1.0 in last.dataset("train").values[:, 0]
    assert "duplicate" in first.describe()


def test_future_exog_rides_with_the_batch(tmp_path: Path) -> None:
    path = write_csv(tmp_path, make_frame(300))
    dm = build(path, context_length=24, horizon=6, target_columns=["a"], exog_columns=["b", "c"], scale=False)
    item = dm.dataset("train")[5]
    assert item["future_exog"].shape == (6, 2)
    np.testing.assert_allclose(item["future_exog"].numpy(), make_frame(300)[["b", "c"]].to_numpy()[5 + 24 : 5 + 30])
    no_exog = build(path, context_length=24, horizon=6, scale=False)
    assert "future_exog" not in no_exog.dataset("train")[0]
