"""Shared fixtures: tiny seeded series in real file formats, written per test."""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting make torch many times slower on a CPU shared with other
# work (the CLI sets the same); it must be set before torch is first imported, so here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest

from tests.data.timeseries.make import write_series_csv  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def make_series_csv(path: Path, n: int = 1200, seed: int = 0, channels: int = 2, exog: bool = True) -> Path:
    """Hourly series with a daily cycle, a trend and noise; `load` is exogenous."""
    return write_series_csv(path, n=n, seed=seed, channels=channels, exog=exog)


@pytest.fixture
def series_csv(tmp_path: Path) -> Path:
    return make_series_csv(tmp_path / "series.csv")


#: The head of a tiny two-channel N-HiTS pipeline on :func:`make_series_csv` data (``{name}``,
#: ``{run_dir}`` and ``{data}`` to fill); a test appends its own ``stages:`` (and ``evaluation:``).
TINY_SERIES_PIPELINE = """
name: {name}
seed: 0
run_dir: {run_dir}
backbone: {{name: nhits_tiny}}
head: {{name: point}}
data:
  name: timeseries
  path: {data}
  target_columns: [y0, y1]
  context_length: 48
  horizon: 12
  split: ratio
  batch_size: 32
trainer: {{accelerator: cpu, enable_progress_bar: false}}
"""


def tiny_pipeline(path: Path, data_path: Path, run_dir: Path, extra: str = "") -> Path:
    """A three-stage pipeline on the tiny N-HiTS: source -> probe -> finetune."""
    head = TINY_SERIES_PIPELINE.format(name="tiny", run_dir=run_dir, data=data_path)
    path.write_text(
        head
        + f"""stages:
  - name: source
    max_epochs: 2
    limit_train_batches: 8
    optim: {{lr: 3.0e-3}}
  - name: probe
    frozen: [backbone]
    max_epochs: 3
    limit_train_batches: 8
  - name: finetune
    max_epochs: 2
    limit_train_batches: 8
    optim: {{lr: 1.0e-3}}
    schedule: {{name: cosine, warmup_steps: 2}}
{extra}
"""
    )
    return path
