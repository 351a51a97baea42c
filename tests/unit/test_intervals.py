"""The comparison's intervals: known answers of the bootstrap on table metrics, the per-window scores
every task keeps agreeing with its table values, the JSON and the printed table, and one tiny run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console

from sciadapt.metrics.bootstrap import column_scores, default_block, metric_interval, paired_interval
from sciadapt.metrics.dense import (
    confusion_per_sample,
    regression_scores,
    regression_sums,
    regression_window_scores,
    segmentation_scores,
    segmentation_window_scores,
)
from sciadapt.metrics.forecasting import forecast_metrics, forecast_window_scores
from sciadapt.stages.evaluate import COVERS_ZERO, intervals, print_comparison
from sciadapt.tasks.rollout import score_rollout
from tests.conftest import make_series_csv


# -- known answers ---------------------------------------------------------------------------------
def test_a_constant_difference_gives_a_zero_width_interval_and_an_identical_row_covers_zero() -> None:
    rng = np.random.default_rng(0)
    ref = rng.gamma(2.0, 0.5, 300)  # per-window MSE of the reference
    rows: list[dict[str, Any]] = [{"model": "seasonal-naive"}, {"model": "better"}, {"model": "same"}]
    windows = [{"mse": column_scores(ref)}, {"mse": column_scores(ref - 0.125)}, {"mse": column_scores(ref.copy())}]
    info = intervals(rows, windows, ["mse", "crps"], seed=0)
    better, same = rows[1]["intervals"]["mse"], rows[2]["intervals"]["mse"]
    assert better["diff"] == pytest.approx(-0.125) and better["low"] == pytest.approx(-0.125)
    assert better["high"] == pytest.approx(-0.125) and not better["covers_zero"]
    assert same == {"diff": 0.0, "low": 0.0, "high": 0.0, "covers_zero": True}
    assert "intervals" not in rows[0]
    assert info == {
        "method": "paired moving-block bootstrap",
        "reference": "seasonal-naive",
        "level": 0.95,
        "resamples": 2000,
        "block": default_block(300),
        "windows": 300,
        "unit": "test windows",
        "seed": 0,
        "metrics": ["mse"],
        "without": ["crps"],  # the reference keeps no per-window scores of it
    }
    json.dumps({"rows": rows, "interval": info}, allow_nan=False)  # plain JSON: no arrays, no numpy scalars


def test_a_zero_mean_alternating_difference_gives_the_symmetric_rademacher_interval() -> None:
    """d = s (+1, -1, +1, ...), n = 400: blocks of 7 (odd) each sum to +s or -s with probability 1/2
    (as many even as odd starts), and so does the cut last block of 1, so a replicate's mean is
    s * S / n with S = 2 B - 58, B binomial(58, 1/2): the interval is the quantiles of that law, about
    +-1.96 s sqrt(58) / n, symmetric about 0 up to one step 2 s / n of its lattice."""
    n, s = 400, 0.5
    d = s * (-1.0) ** np.arange(n)
    b = np.random.default_rng(1).gamma(2.0, 1.0, n)
    iv = metric_interval(column_scores(b + d), column_scores(b), replicates=8000, seed=3)
    assert iv.block == 7 and math.ceil(n / iv.block) == 58
    assert iv.diff == pytest.approx(0.0, abs=1e-12) and iv.covers_zero
    cdf = np.cumsum([math.comb(58, j) for j in range(59)]) / 2.0**58
    step = 2 * s / n
    upper = s * (2 * int(np.searchsorted(cdf, 0.975)) - 58) / n  # the law's 97.5 % quantile
    assert abs(iv.high - upper) <= step + 1e-12 and abs(iv.low + upper) <= step + 1e-12
    assert abs(iv.high + iv.low) <= step + 1e-12
    assert (iv.high - iv.low) / 2 == pytest.approx(1.96 * s * math.sqrt(58) / n, rel=0.15)


def test_a_metric_that_is_not_a_mean_is_recomputed_on_each_replicate() -> None:
    """RMSE over (lead, variable) columns: a row whose per-window MSE is k^2 times the reference's in
    every window has k times its RMSE in every replicate, so its difference interval is (k - 1) times
    the interval of the reference's RMSE itself (the same draws)."""
    rng = np.random.default_rng(2)
    mse = rng.gamma(2.0, 1.0, (120, 3, 4))  # (initial times, leads, variables)
    mse[5, 1, 2] = np.nan  # an unobserved (time, lead, variable) weighs nothing
    ref = column_scores(mse, root=True)
    worse = column_scores(4.0 * mse, root=True)
    nothing = column_scores(np.zeros_like(mse), root=True)
    own = metric_interval(ref, nothing, seed=7)
    iv = metric_interval(worse, ref, seed=7)
    assert ref.value() == pytest.approx(np.nanmean(np.sqrt(np.nanmean(mse, axis=0))))
    assert (iv.diff, iv.low, iv.high) == pytest.approx((own.diff, own.low, own.high))
    assert not iv.covers_zero


def test_a_plain_mean_is_the_paired_interval_and_the_seed_decides() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal(250), rng.standard_normal(250)
    one = metric_interval(column_scores(a), column_scores(b), seed=11)
    ref = paired_interval(a, b, seed=11)
    assert (one.diff, one.low, one.high, one.block, one.n) == pytest.approx(
        (ref.diff, ref.low, ref.high, ref.block, ref.n), rel=1e-12
    )
    assert metric_interval(column_scores(a), column_scores(b), seed=11) == one
    assert metric_interval(column_scores(a), column_scores(b), seed=12) != one


# -- every task's per-window scores give its table values --------------------------------------------
def test_forecast_window_scores_give_the_table_values() -> None:
    rng = np.random.default_rng(0)
    y = rng.standard_normal((40, 12, 3))
    p = y + 0.3 * rng.standard_normal(y.shape)
    past = rng.standard_normal((40, 48, 3))
    mask = (rng.random(y.shape) > 0.2).astype(float)
    mask[3] = 0  # a window without an observed target
    y[4, :, 1] = p[4, :, 1] = 0  # a series whose sMAPE is undefined
    for m in (None, mask):
        with pytest.warns(RuntimeWarning, match="undefined"):
            table = forecast_metrics(y, p, past, 24, mask=m)
        scores = forecast_window_scores(y, p, past, 24, m)
        assert set(scores) == {"mse", "mae", "mase", "smape"}
        for name, s in scores.items():
            assert s.n == 40 and s.value() == pytest.approx(table[name], rel=1e-12), name


class _Grid:
    """The datamodule surface score_rollout reads: identity units, a climatology, latitude weights."""

    area_weights = np.array([0.5, 1.0, 1.5])

    def denormalise(self, a: np.ndarray) -> np.ndarray:
        return a

    def climatology(self) -> np.ndarray:
        return np.full((2, 3, 4), 0.1)


def test_rollout_window_scores_give_the_table_values() -> None:
    rng = np.random.default_rng(1)
    y = rng.standard_normal((9, 3, 2, 3, 4)).astype(np.float32)  # (initial times, leads, C, H, W)
    pred = y + 0.5 * rng.standard_normal(y.shape).astype(np.float32)
    mask = (rng.random(y.shape) > 0.3).astype(np.float32)
    mask[2, 1, 0] = 0  # an (initial time, lead, variable) with nothing observed
    outs = {"y": torch.from_numpy(y), "mask": torch.from_numpy(mask)}
    table, scores = score_rollout(pred, outs, _Grid(), ["t2m", "z500"], 6.0)
    assert set(scores) == {"rmse", "bias", "acc"} and list(table["by_variable"]["t2m"]["rmse"]) == [6, 12, 18]
    for name, s in scores.items():
        assert s.n == 9 and s.value() == pytest.approx(table[name], rel=1e-12), name


def test_dense_per_image_accumulators_give_the_table_values() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (6, 8, 8), generator=gen)
    y[0, 0] = 255  # ignored pixels
    pred = torch.randint(0, 3, (6, 8, 8), generator=gen)
    images = confusion_per_sample(pred, y, 3, ignore_index=255)
    assert images.shape == (6, 3, 3)
    table = segmentation_scores(images.sum(0), ["a", "b", "c"])
    for name, s in segmentation_window_scores(images.numpy(), ["a", "b", "c"]).items():
        assert s.value() == pytest.approx(table[name], rel=1e-12), name
    target = torch.randn(5, 2, 4, 4, generator=gen)
    guess = target + torch.randn(5, 2, 4, 4, generator=gen)
    sums = regression_sums(guess, target, per_sample=True)
    assert sums.shape == (5, 2, 5) and torch.allclose(sums.sum(0), regression_sums(guess, target))
    table = regression_scores(sums.sum(0), ["b", "h"])
    scores = regression_window_scores(sums.numpy(), ["b", "h"])
    assert set(scores) == set(table) - {"n_pixels"}
    for name, s in scores.items():
        assert s.value() == pytest.approx(table[name], rel=1e-12), name


def test_dense_tasks_keep_per_image_scores_in_test_and_baselines() -> None:
    import lightning.pytorch as pl

    from sciadapt.heads.regress import build_pixel_regression
    from sciadapt.heads.segment import build_conv_decoder
    from sciadapt.tasks.dense import PixelRegressionTask, SegmentationTask
    from tests.unit.test_dense_task import IMG, ChipsDM, TinyViT

    torch.manual_seed(0)
    backbone = TinyViT()
    head = build_conv_decoder(feature_info=backbone.feature_info, n_classes=2, img_size=IMG, ignore_index=255)
    seg = SegmentationTask(backbone, head, n_classes=2, ignore_index=255, class_names=["land", "water"])
    dm = ChipsDM()
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.test(seg, datamodule=dm, verbose=False)
    assert seg.test_window_scores["miou"].n == 12  # one per test image
    for name in ("miou", "mean_f1", "accuracy", "iou/water"):
        assert seg.test_window_scores[name].value() == pytest.approx(seg.test_results[name], rel=1e-12)
    row = seg.baseline("majority", dm)
    assert seg.test_window_scores["accuracy"].value() == pytest.approx(row["accuracy"], rel=1e-12)
    backbone = TinyViT()
    reg = PixelRegressionTask(backbone, build_pixel_regression(feature_info=backbone.feature_info, img_size=IMG))
    dm = ChipsDM(regression=True)
    trainer.test(reg, datamodule=dm, verbose=False)
    for name in ("rmse", "mae", "r2"):
        assert reg.test_window_scores[name].value() == pytest.approx(reg.test_results[name], rel=1e-9)
    row = reg.baseline("mean", dm)
    assert reg.test_window_scores["rmse"].n == 12
    assert reg.test_window_scores["rmse"].value() == pytest.approx(row["rmse"], rel=1e-12)


# -- the printed table ---------------------------------------------------------------------------
def _summary() -> dict[str, Any]:
    rows: list[dict[str, Any]] = [
        {"model": "seasonal-naive", "mse": 0.5, "mae": 0.6},
        {"model": "probe", "stage": "probe", "mse": 0.4, "mae": 0.59},
    ]
    rows[1]["intervals"] = {
        "mse": {"diff": -0.1, "low": -0.125, "high": -0.0751, "covers_zero": False},
        "mae": {"diff": -0.01, "low": -0.0302, "high": 0.011, "covers_zero": True},
    }
    interval = {
        "method": "paired moving-block bootstrap",
        "reference": "seasonal-naive",
        "level": 0.95,
        "resamples": 2000,
        "block": 6,
        "windows": 229,
        "unit": "test windows",
        "seed": 0,
        "metrics": ["mse", "mae"],
        "without": [],
    }
    return {
        "pipeline": "tiny",
        "evaluation": {"data": "x test split", "metrics": ["mse", "mae"], "rows": rows, "interval": interval},
    }


def _printed(summary: dict[str, Any]) -> str:
    console = Console(record=True, width=120)
    print_comparison(summary, console)
    return console.export_text()


def test_the_table_shows_the_intervals_marks_the_ones_covering_zero_and_explains() -> None:
    text = _printed(_summary())
    assert "Δ -0.1" in text and "[-0.125, -0.0751]" in text
    assert f"{COVERS_ZERO} Δ -0.01" in text and "[-0.0302, 0.011]" in text
    assert text.count(COVERS_ZERO) == 2  # the marked cell and the footnote's key
    assert (
        "Δ: difference to seasonal-naive [95 % interval: paired moving-block bootstrap over the 229 test windows"
        in text
    )


def test_a_summary_written_before_intervals_prints_as_before() -> None:
    old = _summary()
    del old["evaluation"]["interval"]
    del old["evaluation"]["rows"][1]["intervals"]
    text = _printed(old)
    assert "0.4000" in text and "Δ" not in text and COVERS_ZERO not in text


# -- end to end ------------------------------------------------------------------------------------
def test_a_tiny_fit_stores_and_prints_intervals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sciadapt.cli import main

    csv = make_series_csv(tmp_path / "series.csv", n=700)
    pipe = tmp_path / "p.yaml"
    pipe.write_text(
        f"""
name: tiny
seed: 0
run_dir: {tmp_path / "runs"}
backbone: {{name: nhits_tiny}}
head: {{name: point}}
data: {{name: timeseries, path: {csv}, target_columns: [y0, y1], context_length: 48, horizon: 12,
        split: ratio, batch_size: 32}}
trainer: {{accelerator: cpu, enable_progress_bar: false}}
stages:
  - {{name: source, max_epochs: 1, limit_train_batches: 2}}
evaluation:
  # the repeated baseline is the reference itself: a difference of exactly 0, its interval [0, 0]
  baselines: [seasonal_naive, naive, seasonal_naive]
  metrics: [mse, mae]
"""
    )
    assert main(["fit", str(pipe)]) == 0
    out = capsys.readouterr().out
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    ev = json.loads((run / "summary.json").read_text())["evaluation"]
    assert ev["interval"]["reference"] == "seasonal-naive" and ev["interval"]["metrics"] == ["mse", "mae"]
    first, naive, again, source = ev["rows"]
    assert "intervals" not in first
    assert again["intervals"]["mse"] == {"diff": 0.0, "low": 0.0, "high": 0.0, "covers_zero": True}
    # a daily cycle: repeating the last value is clearly worse than repeating the last day
    assert naive["intervals"]["mse"]["low"] > 0 and not naive["intervals"]["mse"]["covers_zero"]
    assert set(source["intervals"]) == {"mse", "mae"}
    assert f"{COVERS_ZERO} Δ +0" in out and "paired moving-block bootstrap" in out
    # resumed in a fresh runner (no per-window scores kept from the stage's test): the same numbers
    assert main(["fit", "--resume", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["evaluation"] == ev


def test_a_wide_table_is_not_cropped_in_a_log_file() -> None:
    """Off a terminal (a SLURM log) rich would crop a wide table at 80 columns and drop metrics."""
    import io

    buf = io.StringIO()
    console = Console(file=buf)  # not a terminal: 80 columns
    metrics = ["rmse", "mae", "mbe", "nrmse", "skill", "mase", "smape", "crps"]
    rows = [
        {"model": "smart-persistence (a long label)", **{m: 1.0 for m in metrics}},
        {"model": "ours", **dict.fromkeys(metrics, 2.0)},
    ]
    print_comparison({"pipeline": "p", "evaluation": {"rows": rows, "metrics": metrics, "data": "d test"}}, console)
    text = buf.getvalue()
    assert "CRPS" in text and max(len(line) for line in text.splitlines()) > 80
    assert console.width == 80  # the console is left as it was
