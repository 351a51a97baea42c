"""The seeded panel generator (tests/data/panel/make.py): many series of mixed lengths and starts,
known-future covariates continued by make_future, and a GluonTS JSON-lines copy FileDataset reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.data.panel.make import (
    main,
    make_future,
    make_panel,
    n_windows,
    one_long_series,
    static_frame,
    write_gluonts_jsonl,
)


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return make_panel(n_series=60, min_len=100, max_len=800, seed=3, n_known=2)


def test_seeded_and_reproducible(panel: pd.DataFrame) -> None:
    again = make_panel(n_series=60, min_len=100, max_len=800, seed=3, n_known=2)
    pd.testing.assert_frame_equal(panel, again)
    other = make_panel(n_series=60, min_len=100, max_len=800, seed=4, n_known=2)
    assert not panel["y"].head(100).equals(other["y"].head(100))


def test_layout_lengths_and_starts_are_mixed(panel: pd.DataFrame) -> None:
    assert list(panel.columns) == ["unique_id", "ds", "y", "promo", "price", "store_type", "size"]
    sizes = panel.groupby("unique_id", observed=True).size()
    assert len(sizes) == 60 and sizes.index[0] == "s0000"
    assert sizes.min() >= 100 and sizes.max() <= 800 and sizes.nunique() > 40
    starts = panel.groupby("unique_id", observed=True)["ds"].min()
    assert starts.nunique() > 50 and starts.max() - starts.min() > pd.Timedelta(days=100)
    for _, g in panel.groupby("unique_id", observed=True):  # regular hourly steps, sorted
        assert (g["ds"].diff().dropna() == pd.Timedelta(hours=1)).all()
    means = panel.groupby("unique_id", observed=True)["y"].mean().abs()
    assert means.max() / means.min() > 100  # scales differ by orders of magnitude
    assert set(np.unique(panel["promo"])) == {0, 1}


def test_default_panel_is_issue_sized() -> None:
    df = make_panel()  # the issue's panel: >= 1,000 series, 200..3000 steps each
    sizes = df.groupby("unique_id", observed=True).size()
    assert len(sizes) == 1200 and sizes.min() >= 200 and sizes.max() <= 3000
    assert (sizes < 500).sum() > 200 and (sizes > 2000).sum() > 100  # log-uniform: many short, some long
    assert n_windows(df, 168, 24) > 0


def test_static_constant_and_gaps() -> None:
    df = make_panel(n_series=200, min_len=100, max_len=400, seed=0)
    assert "price" not in df.columns  # n_known=1: promo only
    per = df.groupby("unique_id", observed=True)[["store_type", "size"]].nunique()
    assert (per == 1).all().all()
    assert set(df["store_type"].cat.categories) == {"a", "b", "c"}
    with_gaps = df["y"].isna().groupby(df["unique_id"]).any()
    assert with_gaps.sum() == 10  # 5 % of 200
    tails = df.groupby("unique_id", observed=True).tail(24)
    assert not tails["y"].isna().any()  # gaps stay out of the last horizon steps
    stat = static_frame(df)
    assert len(stat) == 200 and stat["store_type"].isin([0, 1, 2]).all()


def test_future_continues_the_known_covariates(panel: pd.DataFrame) -> None:
    future = make_future(panel, horizon=24)
    assert list(future.columns) == ["unique_id", "ds", "promo", "price"]
    assert len(future) == 60 * 24
    last = panel.groupby("unique_id", observed=True)["ds"].max()
    first = future.groupby("unique_id")["ds"].min()
    assert ((first - last.loc[first.index]) == pd.Timedelta(hours=1)).all()
    # the covariates are a function of (seed, id, step): cutting 24 steps and continuing reproduces them
    head = panel[panel.groupby("unique_id", observed=True).cumcount(ascending=False).to_numpy() >= 24]
    cont = make_future(head, horizon=24, seed=3)
    tail = panel.groupby("unique_id", observed=True).tail(24).reset_index(drop=True)
    pd.testing.assert_frame_equal(cont, tail[["unique_id", "ds", "promo", "price"]], check_dtype=False)


@pytest.mark.filterwarnings("ignore:Using `json`-module")
def test_gluonts_jsonl_reads_back(panel: pd.DataFrame, tmp_path: Path) -> None:
    from gluonts.dataset.common import FileDataset

    path = write_gluonts_jsonl(panel, tmp_path / "panel.jsonl", horizon=24)
    entries = list(FileDataset(path, freq="h"))
    sizes = panel.groupby("unique_id", observed=True).size()
    assert len(entries) == 60
    for entry in entries:
        n = sizes[entry["item_id"]]
        g = panel[panel["unique_id"] == entry["item_id"]]
        assert entry["target"].shape == (n,)
        assert entry["start"] == pd.Period(g["ds"].iloc[0], freq="h")
        np.testing.assert_allclose(entry["target"], g["y"].to_numpy(), rtol=1e-6)  # NaN where NaN
        assert entry["feat_dynamic_real"].shape == (2, n + 24)
        assert entry["feat_static_cat"].tolist() == [g["store_type"].cat.codes.iloc[0]]
        assert entry["feat_static_real"][0] == pytest.approx(g["size"].iloc[0])
    assert any(np.isnan(e["target"]).any() for e in entries)


def test_one_long_series_window_count() -> None:
    df = one_long_series(n_windows=500, context=96, horizon=24)
    assert df["unique_id"].nunique() == 1 and len(df) == 500 + 96 + 24 - 1
    assert n_windows(df, 96, 24) == 500
    assert not df["y"].isna().any()


def test_cli_writes_all_files(tmp_path: Path) -> None:
    main([str(tmp_path), "--series", "12", "--seed", "1"])
    for name in ("panel.csv", "panel.parquet", "future.csv", "panel.jsonl"):
        assert (tmp_path / name).stat().st_size > 0
    back = pd.read_parquet(tmp_path / "panel.parquet")
    assert back["unique_id"].nunique() == 12
    assert len(pd.read_csv(tmp_path / "future.csv")) == 12 * 24
