"""The panel datamodule: separate series, per-series splits and scaling, windows that never cross series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sciadapt.datamodules.panel import PanelDataModule, seasonality_of
from sciadapt.errors import DataError
from tests.data.panel.make import make_future, make_panel


@pytest.fixture(scope="module")
def panel_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    df = make_panel(n_series=40, min_len=60, max_len=400, seed=3, horizon=12)
    path = tmp_path_factory.mktemp("panel") / "panel.csv"
    df.to_csv(path, index=False)
    return path


def _dm(path: Path, **kw: object) -> PanelDataModule:
    args: dict[str, object] = {"context_length": 48, "horizon": 12, "batch_size": 16, "eval_batch_size": 64}
    args.update(kw)
    return PanelDataModule(str(path), **args)  # type: ignore[arg-type]


def test_windows_stay_inside_their_series(panel_csv: Path) -> None:
    dm = _dm(panel_csv)
    dm.setup()
    df = pd.read_csv(panel_csv)
    lengths = df.groupby("unique_id", sort=False).size()
    kept = [sid for sid in dm.panel.ids if lengths[sid] >= 60]
    assert dm.series_ids == kept and len(dm.dropped) == 0
    for split in ("train", "val", "test"):
        ds = dm.dataset(split)
        lo = dm._offsets[ds.series]
        hi = dm._offsets[ds.series + 1]
        assert (ds.starts >= lo).all() and (ds.starts + 48 + 12 <= hi).all()
    # split "last": one test window per series, ending at the series' end; one validation window before it
    test = dm.dataset("test")
    assert len(test) == len(kept) and (test.starts + 60 == dm._offsets[1:]).all()
    # a validation window needs a full context before the last 2 x horizon steps
    assert len(dm.dataset("val")) == sum(lengths[sid] >= 48 + 24 for sid in kept)
    # train windows end before each series' validation part
    train = dm.dataset("train")
    assert (train.starts + 60 <= dm._offsets[train.series + 1] - 24).all()


def test_batches_are_scaled_per_series_and_carry_ids(panel_csv: Path) -> None:
    dm = _dm(panel_csv, known_columns=["promo"], static_columns=["store_type", "size"])
    batch = next(iter(dm.test_dataloader()))
    e = dm.n_exog
    assert dm.exog_names[0] == "promo" and e == 1 + 4  # promo + gluonts' hourly calendar features
    assert batch["x"].shape[1:] == (48, 1 + e) and batch["y"].shape[1:] == (12, 1)
    assert batch["future_exog"].shape[1:] == (12, e)
    assert batch["meta"]["static"].shape[1] == 4  # store_type one-hot (3) + size
    # the target of a series' first test window, unscaled, is its last 12 observations
    j = int(batch["meta"]["series"][0])
    mean, std = dm.series_scale(np.array([j]))
    sid = dm.series_ids[j]
    df = pd.read_csv(panel_csv)
    truth = df[df["unique_id"] == sid]["y"].to_numpy()[-12:]
    np.testing.assert_allclose(batch["y"][0, :, 0].numpy() * std[0] + mean[0], truth, rtol=1e-4, atol=1e-4)
    assert dm.facts() == {"context_length": 48, "horizon": 12, "n_exog": e, "n_targets": 1, "seasonality": 24}


def test_short_series_are_dropped_or_refused(panel_csv: Path) -> None:
    dm = _dm(panel_csv, context_length=200)
    dm.setup()
    assert dm.dropped and all(sid not in dm.series_ids for sid in dm.dropped)
    with pytest.raises(DataError, match="shorter than context_length \\+ horizon = 212.*short_series=drop"):
        _dm(panel_csv, context_length=200, short_series="error").setup()


def test_ratio_split_and_fewshot(panel_csv: Path) -> None:
    dm = _dm(panel_csv, split="ratio")
    full = dm.n_windows("train")
    assert dm.eval_stride == 1 and dm.n_windows("test") > len(dm.series_ids)
    few = _dm(panel_csv, split="ratio", fewshot_fraction=0.1)
    assert few.n_windows("train") == round(full * 0.1)


def test_predict_inputs_need_known_covariates_ahead(panel_csv: Path, tmp_path: Path) -> None:
    df = pd.read_csv(panel_csv, parse_dates=["ds"])
    dm = _dm(panel_csv, known_columns=["promo"])
    dm.setup()
    with pytest.raises(DataError, match="known-future covariate.*'promo'.*forecast period"):
        dm.predict_inputs(str(panel_csv))
    future = make_future(make_panel(n_series=40, min_len=60, max_len=400, seed=3, horizon=12), 12, seed=3)
    both = pd.concat([df, future[["unique_id", "ds", "promo"]]]).sort_values(["unique_id", "ds"])
    path = tmp_path / "with_future.csv"
    both.to_csv(path, index=False)
    inputs = dm.predict_inputs(str(path))
    assert inputs["x"].shape[1:] == (48, 1 + dm.n_exog) and inputs["future_exog"].shape[1] == 12
    first = inputs["ids"][0]
    last = df[df.unique_id == first]["ds"].max()
    assert inputs["future"][0][0] == last + pd.Timedelta(hours=1)


@pytest.mark.parametrize(
    ("freq", "season"), [("h", 24), ("15min", 96), ("D", 7), ("W-SUN", 52), ("MS", 12), ("2h", 12)]
)
def test_seasonality_of(freq: str, season: int) -> None:
    assert seasonality_of(freq) == season
