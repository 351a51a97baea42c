"""Seeded tiny series for the time-series datamodule (wide CSV: a timestamp column, targets, one exogenous column)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def write_series_csv(path: Path, n: int = 1200, seed: int = 0, channels: int = 2, exog: bool = True) -> Path:
    """Hourly series with a daily cycle, a trend and noise; ``load`` is exogenous."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    frame: dict[str, Any] = {"date": pd.date_range("2021-01-01", periods=n, freq="h")}
    for c in range(channels):
        frame[f"y{c}"] = np.sin(2 * np.pi * t / 24 + c) * (1 + 0.3 * c) + 0.001 * t + 0.1 * rng.standard_normal(n)
    if exog:
        frame["load"] = np.cos(2 * np.pi * t / 24) + 0.05 * rng.standard_normal(n)
    pd.DataFrame(frame).to_csv(path, index=False)
    return path


def contract_config(folder: Path, seed: int = 0) -> dict[str, Any]:
    """The ``data:`` keys (less ``name``) of a small datamodule on fresh data in ``folder``: what the
    contract tests in tests/unit/test_contracts.py build every registered datamodule from."""
    path = write_series_csv(folder / "series.csv", n=400, seed=seed)
    return {"path": str(path), "exog_columns": ["load"], "context_length": 48, "horizon": 12, "batch_size": 8}


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "series.csv")
    print(f"wrote {write_series_csv(out)}")
