"""The data cost of a training epoch over a panel of many series against one long series with as many windows.

Issue 18's bar: on a panel of >= 1,000 generated series of mixed lengths (``tests/data/panel/make.py``,
seeded), a training epoch's data cost stays within 1.2x that of one long series with the same number of
windows, and memory stays bounded (windows are row indices, never materialised).

Both go through the shipped ``panel`` datamodule as a user gets it (``data: {name: panel}``, context 168,
horizon 24, batch 256, the generator's known covariate and gluonts' hourly calendar features): the panel
as neuralforecast's long CSV, the long series as a one-id CSV of the same layout. For reference the
single-table ``timeseries`` datamodule (the per-window ``WindowDataset``) reads the long series too.
Timed: reading and indexing (``setup``), then one pass over the shuffled train loader (no model), best of
``--repeat``; CPU time of this process beside the wall time.

    python benchmarks/panel_data_cost.py [--series 1200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sciadapt.datamodules.panel import PanelDataModule  # noqa: E402
from sciadapt.datamodules.timeseries import TimeSeriesDataModule  # noqa: E402
from tests.data.panel.make import make_panel, one_long_series  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CTX, H, BATCH = 168, 24, 256


def epoch(dm: Any, repeat: int) -> tuple[float, float, int]:
    """Best (wall, cpu) seconds of one pass over the train loader, and the windows seen."""
    best = (float("inf"), float("inf"))
    n = 0
    for r in range(repeat):
        dm.shuffle_seed = r
        w0, c0 = time.perf_counter(), time.process_time()
        n = 0
        for batch in dm.train_dataloader():
            n += len(batch["x"])
        best = min(best, (time.perf_counter() - w0, time.process_time() - c0))
    return best[0], best[1], n


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", type=int, default=1200)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "panel_data_cost")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="panel-cost-"))
    panel = make_panel(n_series=args.series, seed=args.seed, horizon=H)
    panel_csv = tmp / "panel.csv"
    panel.drop(columns=["store_type", "size"]).to_csv(panel_csv, index=False)
    common = {"context_length": CTX, "horizon": H, "batch_size": BATCH, "known_columns": ["promo"]}

    t0 = time.perf_counter()
    dm_panel = PanelDataModule(str(panel_csv), **common)  # type: ignore[arg-type]
    dm_panel.setup()
    setup_panel = time.perf_counter() - t0
    n_train = dm_panel.n_windows("train")
    # one series whose train split (everything before its last 2 x horizon steps) has as many windows
    long = one_long_series(n_train + 2 * H, CTX, H, seed=args.seed)
    long_csv = tmp / "long.csv"
    long.to_csv(long_csv, index=False)
    t0 = time.perf_counter()
    dm_long = PanelDataModule(str(long_csv), **common)  # type: ignore[arg-type]
    dm_long.setup()
    setup_long = time.perf_counter() - t0
    t0 = time.perf_counter()
    dm_table = TimeSeriesDataModule(
        str(long_csv),
        timestamp_column="ds",
        target_columns=["y"],
        exog_columns=["promo"],
        context_length=CTX,
        horizon=H,
        split="rows",
        split_rows=[len(long) - 2 * H, H, H],
        batch_size=BATCH,
    )
    dm_table.setup()
    setup_table = time.perf_counter() - t0

    rows = []
    for name, dm, setup_s in (
        ("panel", dm_panel, setup_panel),
        ("one long series", dm_long, setup_long),
        ("one long series, single-table datamodule", dm_table, setup_table),
    ):
        wall, cpu, n = epoch(dm, args.repeat)
        ds = dm.dataset("train")
        held = ds.values.nbytes + ds.observed.nbytes + ds.starts.nbytes + getattr(ds, "series", ds.starts).nbytes
        materialised = n * (CTX + H) * ds.values.shape[1] * 4
        rows.append(
            {
                "data": name,
                "series": len(dm.series_ids) if isinstance(dm, PanelDataModule) else 1,
                "train_windows": n,
                "setup_s": setup_s,
                "epoch_wall_s": wall,
                "epoch_cpu_s": cpu,
                "us_per_window": 1e6 * wall / max(n, 1),
                "held_mb": held / 2**20,
                "materialised_mb": materialised / 2**20,
            }
        )
    ratio_wall = rows[0]["epoch_wall_s"] / rows[1]["epoch_wall_s"]
    ratio_cpu = rows[0]["epoch_cpu_s"] / rows[1]["epoch_cpu_s"]
    lines = [
        f"panel of {rows[0]['series']:,} generated series (lengths {panel.groupby('unique_id').size().min()}-"
        f"{panel.groupby('unique_id').size().max()}, hourly, seed {args.seed}) vs one long series with the same "
        f"train windows; context {CTX}, horizon {H}, batch {BATCH}, 1 target + promo + 4 calendar features; "
        f"best of {args.repeat} epochs, {os.cpu_count()} CPU cores",
        "",
        "| data | series | train windows | setup s | epoch wall s | epoch CPU s | us/window | held MB | windows materialised MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['series']:,} | {r['train_windows']:,} | {r['setup_s']:.2f} | {r['epoch_wall_s']:.2f} | "
            f"{r['epoch_cpu_s']:.2f} | {r['us_per_window']:.1f} | {r['held_mb']:.1f} | {r['materialised_mb']:.0f} |"
        )
    lines += [
        "",
        f"epoch data cost, panel / one long series: wall {ratio_wall:.3f}, CPU {ratio_cpu:.3f} (bar <= 1.2: "
        + ("MET" if ratio_wall <= 1.2 else "NOT MET")
        + ")",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".txt").write_text(text + "\n")
    args.out.with_suffix(".json").write_text(
        json.dumps({"rows": rows, "ratio_wall": ratio_wall, "ratio_cpu": ratio_cpu}, indent=1)
    )
    return {"rows": rows, "ratio_wall": ratio_wall}


if __name__ == "__main__":
    main()
