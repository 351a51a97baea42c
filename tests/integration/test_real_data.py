"""Slow checks on the real datasets in ../shared/data (skipped when the folder is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sciadapt.cli import main
from tests.conftest import SHARED_DATA

ETTH1 = SHARED_DATA / "ett" / "ETTh1.csv"


@pytest.mark.slow
@pytest.mark.skipif(not ETTH1.exists(), reason=f"{ETTH1} not present (shared data folder absent)")
def test_nhits_ltsf_on_etth1_beats_seasonal_naive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "fit",
            "nhits_ltsf",
            f"data.path={ETTH1}",
            "stages.train.max_steps=150",
            "stages.train.limit_train_batches=50",
            "trainer.enable_progress_bar=false",
        ]
    )
    assert code == 0
    (summary,) = tmp_path.glob("runs/nhits_ltsf/*/summary.json")
    s = json.loads(summary.read_text())
    naive, least_squares, model = s["evaluation"]["rows"]
    assert (naive["model"], least_squares["model"], model["model"]) == ("seasonal-naive", "least-squares", "N-HiTS")
    assert model["mse"] < naive["mse"] and least_squares["mse"] < naive["mse"]
    assert s["stages"]["train"]["test"]["mse"] < 0.5  # published N-HiTS: 0.378 at horizon 96
