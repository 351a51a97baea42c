"""Panels end to end from the CLI: global N-HiTS and few-shot TTM over a ragged generated panel (long CSV
and gluonts JSON lines), per-series baselines, and `predict` writing a long-format forecast per series."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sciadapt.cli import main
from tests.data.panel.make import make_future, make_panel, write_gluonts_jsonl

N_SERIES, H = 30, 12
SMALL = [
    "backbone=nhits_tiny",
    "data.context_length=48",
    f"data.horizon={H}",
    "data.batch_size=64",
    "stages.train.max_steps=20",
    "stages.train.limit_train_batches=10",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("panel")
    df = make_panel(n_series=N_SERIES, min_len=40, max_len=300, seed=5, horizon=H)
    future = make_future(df, H, seed=5)
    out = {"csv": root / "panel.csv", "future": root / "with_future.csv", "jsonl": root / "panel.jsonl"}
    df.to_csv(out["csv"], index=False)
    pd.concat([df, future]).to_csv(out["future"], index=False)
    write_gluonts_jsonl(df, out["jsonl"], horizon=H, seed=5)
    return out


def _fit(tmp_path: Path, pipeline: str, *overrides: str) -> Path:
    assert main(["fit", pipeline, f"run_dir={tmp_path / 'runs'}", *overrides]) == 0
    (run,) = sorted((tmp_path / "runs" / pipeline).glob("*"))
    return run


def test_global_nhits_over_a_ragged_panel_predicts_per_series(tmp_path: Path, files: dict[str, Path]) -> None:
    run = _fit(tmp_path, "nhits_panel", f"data.path={files['csv']}", "data.known_columns=[promo]", *SMALL)
    summary = json.loads((run / "summary.json").read_text())
    rows = {r["model"]: r for r in summary["evaluation"]["rows"]}
    assert {"seasonal-naive", "naive", "N-HiTS (global)"} <= set(rows)
    scaler = json.loads((run / "scaler.json").read_text())
    assert scaler["kind"] == "panel" and len(scaler["ids"]) == len(scaler["mean"])
    # the series shorter than context + horizon (48 + 12) were dropped, the rest kept with their ids
    lengths = pd.read_csv(files["csv"]).groupby("unique_id").size()
    assert sorted(scaler["ids"]) == sorted(lengths[lengths >= 60].index) and len(scaler["ids"]) < N_SERIES
    out = tmp_path / "forecast.csv"
    assert main(["predict", "--run", str(run), "--data", str(files["future"]), "--out", str(out)]) == 0
    fc = pd.read_csv(out, parse_dates=["ds"])
    assert list(fc.columns) == ["unique_id", "ds", "y_hat"]
    assert fc.groupby("unique_id").size().eq(H).all() and set(fc.unique_id) == set(scaler["ids"])
    last = pd.read_csv(files["csv"], parse_dates=["ds"]).groupby("unique_id")["ds"].max()
    first = fc.groupby("unique_id")["ds"].min()
    assert (first == last[first.index] + pd.Timedelta(hours=1)).all()
    assert out.with_suffix(".png").stat().st_size > 1000
    # without the forecast period's covariates: one clear line, exit 2, no forecast written
    bad = tmp_path / "bad.csv"
    assert main(["predict", "--run", str(run), "--data", str(files["csv"]), "--out", str(bad)]) == 2
    assert not bad.exists()


def test_gluonts_json_lines_train_the_same_pipeline(tmp_path: Path, files: dict[str, Path]) -> None:
    run = _fit(tmp_path, "nhits_panel", f"data.path={files['jsonl']}", "data.freq=h", *SMALL)
    rows = json.loads((run / "summary.json").read_text())["evaluation"]["rows"]
    assert len(rows) == 3 and all(r["mae"] > 0 for r in rows)


def test_ttm_few_shot_over_a_panel(tmp_path: Path, files: dict[str, Path]) -> None:
    run = _fit(
        tmp_path,
        "ttm_panel_fewshot",
        "backbone=ttm_tiny",
        "stages.zeroshot.init_from=scratch",
        f"data.path={files['csv']}",
        "data.context_length=64",
        f"data.horizon={H}",
        "data.fewshot_fraction=0.2",
        "stages.fewshot.max_epochs=1",
        "trainer.enable_progress_bar=false",
    )
    rows = {r["model"] for r in json.loads((run / "summary.json").read_text())["evaluation"]["rows"]}
    assert {"TTM zero-shot", "TTM 5 % few-shot"} <= rows
