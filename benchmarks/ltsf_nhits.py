"""N-HiTS on ETTh1 and ETTm2 (standard long-horizon protocol): the shipped pipelines, baselines and peers.

    python benchmarks/ltsf_nhits.py --data-dir ../shared/data                 # 8 cells, ~30 min on 2 CPU cores
    python benchmarks/ltsf_nhits.py --data-dir ../shared/data --peers         # + neuralforecast in a side venv
    python benchmarks/ltsf_nhits.py --data-dir ../shared/data --quick         # smoke check, ~1 minute
    python benchmarks/ltsf_nhits.py --datasets ETTh1 --horizons 96 336 --seed 2 --out results.json

Every cell runs the bundled pipelines exactly as a user gets them, ``sciadapt fit nhits_ltsf`` and
``sciadapt fit linear_ltsf``, with only the data chosen (``data.path``, ``data.split``, ``data.horizon``),
the seed and a temporary ``run_dir``. No hyperparameter is set here: what the table measures is what the
pipelines ship. ``--quick`` alone shortens training (30 steps) and says so.

Rows of each cell, all on the same test windows (stride 1, z-scored with train statistics, MSE/MAE over
every window, step and channel):

* seasonal-naive: the last day repeated (the pipeline's first baseline; the intervals are against it);
* least-squares: one linear map from the 512-step context to the horizon, fitted in closed form on the
  train windows (``evaluation.baselines: least_squares``);
* NLinear: the ``linear_ltsf`` pipeline (a trained linear map, last value removed and re-added);
* N-HiTS: the ``nhits_ltsf`` pipeline;
* with ``--peers``: neuralforecast's ``NHITS`` in a side virtual environment (``benchmarks/peers``), once
  with its documented defaults and once with our settings, on the same windows; ours / theirs ratios.

Each model row carries a 95 % paired moving-block bootstrap interval of its difference to seasonal-naive
(from the run's ``summary.json``); ``≈`` marks an interval that covers zero.

Published anchors (what "published" and the bar mean): ETTh1 MSE .378/.427/.458/.561 (H = 96/192/336/720),
the NHITS-MSE column of neuralforecast's ``experiments/long_horizon/README.md``; ETTm2 .176/.245/.295/.401,
Table 1 of Challu et al., "N-HiTS", AAAI 2023 (arXiv:2201.12886). The issue's bar is within 5 % of them
or better. The ETTh1 anchor was z-scored with train + validation statistics and refitted on train +
validation after a 20-trial search, so it is not on quite our scale (per channel, (train std / train+val
std)^2 averages 0.92 on ETTh1); the ETTm2 anchor uses our protocol.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

# On a CPU shared with other jobs, OpenMP worker threads that spin while they wait make every small
# op crawl. Passive waiting costs nothing when the cores are free. It must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from sciadapt.config import load_config  # noqa: E402
from sciadapt.stages.runner import PipelineRunner  # noqa: E402

HORIZONS = (96, 192, 336, 720)

# (file under --data-dir, data.split)
DATASETS: dict[str, tuple[str, str]] = {
    "ETTh1": ("ett/ETTh1.csv", "ett_hourly"),
    "ETTm2": ("ett/ETTm2.csv.gz", "ett_minutely"),
}

# published N-HiTS (MSE, MAE) per horizon; sources in the module docstring
ANCHORS: dict[str, dict[int, tuple[float, float]]] = {
    "ETTh1": {96: (0.378, 0.393), 192: (0.427, 0.436), 336: (0.458, 0.484), 720: (0.561, 0.501)},
    "ETTm2": {96: (0.176, 0.255), 192: (0.245, 0.305), 336: (0.295, 0.346), 720: (0.401, 0.413)},
}
BAR = 1.05  # the target: within 5 % of the published MSE, or better

QUICK_STEPS = 30


def run_pipeline(
    pipeline: str, data_dir: Path, dataset: str, horizon: int, seed: int, quick: bool, keep: Path | None
) -> tuple[dict[str, Any], float]:
    """One bundled pipeline on one cell as a user runs it; returns its ``summary.json`` and wall seconds."""
    file, split = DATASETS[dataset]
    with tempfile.TemporaryDirectory(prefix="ltsf_") as tmp:
        root = keep / f"{pipeline}_{dataset}_{horizon}" if keep is not None else Path(tmp)
        overrides = [
            f"seed={seed}",
            f"run_dir={root}",
            f"data.path={data_dir / file}",
            f"data.split={split}",
            f"data.horizon={horizon}",
            "trainer.enable_progress_bar=false",
        ]
        if quick:
            overrides += [f"stages.train.max_steps={QUICK_STEPS}", f"stages.train.limit_train_batches={QUICK_STEPS}"]
        cfg = load_config(pipeline, overrides)
        start = time.perf_counter()
        summary = PipelineRunner.create(cfg).run()
        return summary, time.perf_counter() - start


def _row(summary: dict[str, Any], model: str) -> dict[str, Any]:
    rows = summary["evaluation"]["rows"]
    found = [r for r in rows if r["model"] == model or r.get("stage") == model]
    if not found:
        raise KeyError(f"no row {model!r} in {[r['model'] for r in rows]}")
    return found[0]


def _interval(row: dict[str, Any], metric: str) -> dict[str, Any] | None:
    value = (row.get("intervals") or {}).get(metric)
    return value if isinstance(value, dict) else None


def _entry(
    row: dict[str, Any], seconds: float | None = None, steps: int | None = None, fit_seconds: float | None = None
) -> dict[str, Any]:
    return {
        "fit_seconds": fit_seconds,
        "mse": float(row["mse"]),
        "mae": float(row["mae"]),
        "mse_interval": _interval(row, "mse"),
        "mae_interval": _interval(row, "mae"),
        "seconds": None if seconds is None else round(seconds, 1),
        "steps": steps,
    }


def run_cell(args: argparse.Namespace, dataset: str, horizon: int) -> dict[str, Any]:
    """Every row of one (dataset, horizon) cell."""
    nhits, nhits_s = run_pipeline("nhits_ltsf", args.data_dir, dataset, horizon, args.seed, args.quick, args.runs_dir)
    linear, linear_s = run_pipeline(
        "linear_ltsf", args.data_dir, dataset, horizon, args.seed, args.quick, args.runs_dir
    )
    cell: dict[str, Any] = {
        "dataset": dataset,
        "horizon": horizon,
        "test_windows": nhits["evaluation"].get("data"),
        "seasonal_naive": _entry(_row(nhits, "seasonal-naive")),
        "least_squares": _entry(_row(nhits, "least-squares")),
        "nlinear": _entry(
            _row(linear, "train"),
            linear_s,
            int(linear["stages"]["train"]["steps"]),
            linear["stages"]["train"]["fit_seconds"],
        ),
        "nhits": _entry(
            _row(nhits, "train"),
            nhits_s,
            int(nhits["stages"]["train"]["steps"]),
            nhits["stages"]["train"]["fit_seconds"],
        ),
        "published": {"mse": ANCHORS[dataset][horizon][0], "mae": ANCHORS[dataset][horizon][1]},
    }
    if args.peers:
        from peers.nf import run_neuralforecast  # benchmarks/peers: side virtual environment

        file, split = DATASETS[dataset]
        for setting in ("defaults", "ours"):
            cell[f"nf_{setting}"] = run_neuralforecast(
                args.data_dir / file,
                split,
                horizon,
                context_length=512,
                setting=setting,
                seed=args.seed,
                max_steps=QUICK_STEPS if args.quick else None,
            )
    return cell


def _fmt(entry: dict[str, Any] | None, metric: str = "mse") -> str:
    if entry is None:
        return "-"
    text = f"{entry[metric]:.3f}"
    interval = entry.get(f"{metric}_interval")
    if interval:
        mark = "≈" if interval.get("covers_zero") else " "
        text += f" [{interval['low']:+.3f},{interval['high']:+.3f}]{mark}"
    return text


def format_table(cells: list[dict[str, Any]], metric: str) -> str:
    """One row per cell; model columns show the metric and the 95 % interval of the difference to
    seasonal-naive; ``*`` marks an N-HiTS value more than 5 % above the published one."""
    peers = any("nf_defaults" in c for c in cells)
    cols = ["seasonal-naive", "least-squares", "NLinear", "N-HiTS (ours)", "published", "ours/pub"]
    if peers:
        cols += ["nf defaults", "nf our settings", "ours/nf-def", "ours/nf-ours"]
    widths = [10, 24, 24, 24, 10, 9] + ([12, 16, 12, 13] if peers else [])
    head = f"{'dataset':<8}{'H':>5} " + "".join(f"{c:>{w}}" for c, w in zip(cols, widths, strict=True))
    lines = [head, "-" * len(head)]
    for c in cells:
        ours = c["nhits"][metric]
        pub = c["published"][metric]
        ratio = ours / pub
        values = [
            f"{c['seasonal_naive'][metric]:.3f}",
            _fmt(c["least_squares"], metric),
            _fmt(c["nlinear"], metric),
            _fmt(c["nhits"], metric),
            f"{pub:.3f}",
            f"{ratio:.3f}{'*' if ratio > BAR else ' '}",
        ]
        if peers:
            d, o = c.get("nf_defaults"), c.get("nf_ours")
            values += [
                f"{d[metric]:.3f}" if d else "-",
                f"{o[metric]:.3f}" if o else "-",
                f"{ours / d[metric]:.3f}" if d else "-",
                f"{ours / o[metric]:.3f}" if o else "-",
            ]
        lines.append(
            f"{c['dataset']:<8}{c['horizon']:>5} " + "".join(f"{v:>{w}}" for v, w in zip(values, widths, strict=True))
        )
    return "\n".join(lines)


def format_times(cells: list[dict[str, Any]]) -> str:
    peers = any("nf_defaults" in c for c in cells)
    head = f"{'dataset':<8}{'H':>5}{'N-HiTS s':>10}{'fit s':>8}{'steps':>7}{'NLinear s':>11}"
    if peers:
        head += f"{'nf-def fit s':>13}{'steps':>7}{'nf-ours fit s':>14}{'steps':>7}{'fit ours/nf-ours':>18}"
    lines = [head, "-" * len(head)]
    for c in cells:
        fit = c["nhits"].get("fit_seconds") or float("nan")
        line = (
            f"{c['dataset']:<8}{c['horizon']:>5}{c['nhits']['seconds']:>10.1f}{fit:>8.1f}{c['nhits']['steps']:>7}"
            f"{c['nlinear']['seconds']:>11.1f}"
        )
        if peers:
            d, o = c.get("nf_defaults") or {}, c.get("nf_ours") or {}
            ts = o.get("train_seconds")
            line += f"{d.get('train_seconds', float('nan')):>13.1f}{d.get('steps', '-')!s:>7}"
            line += f"{ts or float('nan'):>14.1f}{o.get('steps', '-')!s:>7}"
            line += f"{fit / ts:>18.2f}" if ts else f"{'-':>18}"
        lines.append(line)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"), help="folder holding ett/")
    p.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    p.add_argument("--horizons", nargs="+", type=int, choices=HORIZONS, default=list(HORIZONS))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--peers", action="store_true", help="also run neuralforecast NHITS in its side venv")
    p.add_argument("--out", type=Path, default=None, help="also write every cell as JSON")
    p.add_argument("--quick", action="store_true", help=f"smoke check: horizon 96, {QUICK_STEPS} steps")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--runs-dir", type=Path, default=None, help="keep every run directory under this folder")
    p.add_argument("--verbose", action="store_true", help="keep the library's and Lightning's log output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if not args.verbose:
        for name in ("sciadapt", "lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")
    missing = [DATASETS[d][0] for d in args.datasets if not (args.data_dir / DATASETS[d][0]).is_file()]
    if missing:
        print(f"error: {', '.join(missing)} not found under --data-dir {args.data_dir}", file=sys.stderr)
        return 2
    horizons = [96] if args.quick else args.horizons
    print(
        "shipped pipelines nhits_ltsf and linear_ltsf, data chosen only"
        + (f" (--quick: {QUICK_STEPS} steps)" if args.quick else "")
        + f"; seed {args.seed}, {args.threads} threads",
        flush=True,
    )
    cells = []
    total = time.perf_counter()
    for dataset in args.datasets:
        for horizon in horizons:
            cell = run_cell(args, dataset, horizon)
            cells.append(cell)
            print(
                f"  done {dataset} H={horizon}: N-HiTS MSE {cell['nhits']['mse']:.3f} (published "
                f"{cell['published']['mse']:.3f}), least-squares {cell['least_squares']['mse']:.3f}, "
                f"NLinear {cell['nlinear']['mse']:.3f}, seasonal-naive {cell['seasonal_naive']['mse']:.3f}, "
                f"{cell['nhits']['seconds']:.0f} s",
                flush=True,
            )
    total_seconds = time.perf_counter() - total
    for metric in ("mse", "mae"):
        print(f"\n{metric.upper()} on the scaled test windows; [95 % interval of the difference to seasonal-naive]")
        print(format_table(cells, metric))
    print(
        "\nseconds per cell on CPU (shared machine): N-HiTS s = the whole run (train, test, baselines), fit s = training"
    )
    print(format_times(cells))
    passed = [c for c in cells if c["nhits"]["mse"] <= BAR * c["published"]["mse"]]
    beats_ls = [c for c in cells if c["nhits"]["mse"] < c["least_squares"]["mse"]]
    beats_naive = [c for c in cells if c["nhits"]["mse"] < c["seasonal_naive"]["mse"]]
    print(
        f"\nbar (MSE within 5 % of published): {len(passed)}/{len(cells)} cells; N-HiTS beats least-squares in "
        f"{len(beats_ls)}/{len(cells)}, seasonal-naive in {len(beats_naive)}/{len(cells)}; "
        f"* = more than 5 % above published; ≈ = interval covers zero; total {total_seconds:.0f} s"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"seed": args.seed, "quick": args.quick, "cells": cells, "total_seconds": round(total_seconds, 1)}
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
