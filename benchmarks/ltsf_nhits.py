"""N-HiTS on ETTh1 and ETTm2 (standard long-horizon protocol), beside neuralforecast's published numbers.

    python benchmarks/ltsf_nhits.py --data-dir ../shared/data
    python benchmarks/ltsf_nhits.py --data-dir ../shared/data --quick          # smoke check, ~1 minute
    python benchmarks/ltsf_nhits.py --data-dir ../shared/data --datasets ETTh1 --horizons 96 336 \\
        --max-steps 600 --seed 2 --out results.json
    python benchmarks/ltsf_nhits.py --data-dir ../shared/data --candidate B    # one candidate everywhere

Every cell is one run of the bundled ``nhits_ltsf`` pipeline (``sciadapt.stages.runner.PipelineRunner``)
with command-line style overrides; nothing here trains or scores a model by itself. The ``timeseries``
datamodule implements the protocol: 12/4/4-month ETT borders (``ett_hourly``; ``ett_minutely`` is the
same x4), each channel z-scored with train-split statistics, test windows at stride 1, MSE/MAE over
every (window, step, channel) of the scaled test split, channels forecast independently.

Anchors (what "anchor" and "ratio" mean in the table)
-----------------------------------------------------
* ETTh1 MSE .378/.427/.458/.561 and MAE .393/.436/.484/.501 (H = 96/192/336/720): the NHITS-MSE and
  NHITS-MAE columns of neuralforecast's ``experiments/long_horizon/README.md`` (Nixtla/neuralforecast,
  README at commit 09d50a9c). The ``run_nhits.py`` beside it (commit 04cdc053) is an AutoNHITS search,
  run with 20 trials per the README: input 7H, Huber(0.5) training loss, MAE validation loss, lr
  log-uniform in [1e-5, 5e-3], 200 or 1000 steps, dropout 0.5, pooling [2,2,2] or [16,8,1], ratios
  [336,48,1], [84,12,1] or [1,1,1]; the best trial on validation is **refitted on train + validation**
  (``refit_with_val=True``) before the test forecast. Its data come from
  ``datasetsforecast.long_horizon2``, which z-scores with the statistics of the **train + validation**
  rows (``data_mat[:-test_size]``), not of the train rows alone. Both differ from the protocol here.
  The scaler alone moves the numbers: per channel, (train std / train+val std)^2 averages 0.92 on
  ETTh1 (computed from the file), so the anchor's ETTh1 errors sit on a scale roughly 8 % smaller in
  MSE (4 % in MAE) than ours.
* ETTm2 MSE .176/.245/.295/.401 and MAE .255/.305/.346/.413: the same README; they equal the N-HiTS
  row of Table 1 of Challu et al., "N-HiTS: Neural Hierarchical Interpolation for Time Series
  Forecasting", AAAI 2023 (arXiv:2201.12886). The paper normalises each set with the train mean and
  std, and its runs (cchallu/n-hits, ``nhits_multivariate.py``) use the same ETTm2 borders as ours
  (11,520 validation and 11,520 test rows of the first 57,600), picking hyperparameters with hyperopt
  on validation MAE.

Hyperparameters (all passed as overrides; the library's defaults are untouched)
-------------------------------------------------------------------------------
Fixed, from the paper's search space (cchallu/n-hits ``nhits_multivariate.py``; neuralforecast's
long-horizon tutorial searches a similar one): input length 5H, 3 stacks x 1 block, MLPs of 2 x 512 with
ReLU, max pooling, linear interpolation, MAE training and validation loss, Adam at lr 1e-3, at most
1,000 steps, about 256 univariate windows per step (here ``data.batch_size=37`` multivariate windows
x 7 channels = 259 series), no extra scaler on top of the train-split z-score, early stopping on the
validation MAE. ``feature_dim=1`` makes the backbone plain N-HiTS (one forecast curve per block; the
point head is then a learned scalar affine map that starts as the identity).

Searched: the paper tuned the pooling kernels and expressiveness ratios per dataset and horizon with
hyperopt on the validation split but does not publish the picks; the paper used no dropout, the
ETTh1 anchor's run dropout 0.5. ``CANDIDATES`` is our small 2 x 2 grid from those choices; ``VALIDATION_MAE``
records the best validation MAE of each candidate in each cell (seed 1, all other settings as here;
reproduce with ``--candidate X --out X.json`` and read the ``val MAE`` column), and each cell runs the
candidate with the lowest one. The test split chose nothing.

Deviations, for the CPU budget and the library's options: the paper validates every 50 steps with
early-stopping patience 10 and halves the lr three times (step decay); here validation runs every
``VAL_EVERY`` steps with patience ``PATIENCE``, the lr follows the pipeline's cosine schedule over
``max_steps``, and the stage ends on its best validation checkpoint (``restore_best``).

Known gaps (seed 1; ``benchmarks/results/ltsf_nhits.txt``): ETTh1 H=336 (MSE 1.11x) and H=720
(1.34x) and ETTm2 H=720 (1.08x) miss the 5 % target; the other cells are within it or better. On ETTh1
the 5H-input MLPs memorise the short train split (H=720 without dropout: train MAE 0.27, validation
0.83, test MSE 0.99, worse than seasonal-naive's 0.66); dropout 0.5 is the only searched setting that
helped much. The validation months of ETTh1 are much harder than the test months (naive-last MSE 2.6
vs 1.3 at H=720), so validation ranks candidates poorly for test, and the anchor's refit on train +
validation sees the four months just before the test split, which we do not.
"""

from __future__ import annotations

import argparse
import csv
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
# op crawl (measured here: 1.3 s instead of 0.04 s per H=96 step with 2 threads and one busy core).
# Passive waiting costs nothing when the cores are free. It must be set before torch loads OpenMP.
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

# (MSE, MAE) per horizon; sources in the module docstring
ANCHORS: dict[str, dict[int, tuple[float, float]]] = {
    "ETTh1": {96: (0.378, 0.393), 192: (0.427, 0.436), 336: (0.458, 0.484), 720: (0.561, 0.501)},
    "ETTm2": {96: (0.176, 0.255), 192: (0.245, 0.305), 336: (0.295, 0.346), 720: (0.401, 0.413)},
}

# The searched settings. Pooling kernels and expressiveness ratios are entries of the paper's lists
# (pool [1,1,1] [2,2,2] [4,4,4] [8,8,8] [8,4,1] [16,8,1]; ratios [168,24,1] [24,12,1] [180,60,1]
# [60,8,1] [40,20,1]); dropout 0.5 is neuralforecast's ETTh1 setting.
CANDIDATES: dict[str, dict[str, Any]] = {
    "A": {"pool_kernel_sizes": [2, 2, 2], "downsample_freqs": [24, 12, 1], "dropout": 0.0},
    "B": {"pool_kernel_sizes": [2, 2, 2], "downsample_freqs": [24, 12, 1], "dropout": 0.5},
    "C": {"pool_kernel_sizes": [16, 8, 1], "downsample_freqs": [168, 24, 1], "dropout": 0.0},
    "D": {"pool_kernel_sizes": [16, 8, 1], "downsample_freqs": [168, 24, 1], "dropout": 0.5},
}

# Best validation MAE per cell and candidate (seed 1, at most 1,000 steps, every other setting as in
# this file), from `--candidate X` runs (A and B on 2 CPU threads, C and D on 1, so a rerun may differ
# in the last digit). Only these numbers choose a cell's candidate: ETTh1 B everywhere; ETTm2 A, A, D, B.
VALIDATION_MAE: dict[tuple[str, int], dict[str, float]] = {
    ("ETTh1", 96): {"A": 0.5656, "B": 0.5547, "C": 0.5806, "D": 0.5581},
    ("ETTh1", 192): {"A": 0.7070, "B": 0.6788, "C": 0.7071, "D": 0.6803},
    ("ETTh1", 336): {"A": 0.7783, "B": 0.7451, "C": 0.7650, "D": 0.7704},
    ("ETTh1", 720): {"A": 0.8263, "B": 0.7901, "C": 0.8134, "D": 0.7907},
    ("ETTm2", 96): {"A": 0.2309, "B": 0.2392, "C": 0.2341, "D": 0.2406},
    ("ETTm2", 192): {"A": 0.2760, "B": 0.2814, "C": 0.2834, "D": 0.2809},
    ("ETTm2", 336): {"A": 0.3224, "B": 0.3251, "C": 0.3267, "D": 0.3207},
    ("ETTm2", 720): {"A": 0.4165, "B": 0.3982, "C": 0.4161, "D": 0.4038},
}

DEFAULT_MAX_STEPS = 1000
VAL_EVERY = 100  # optimiser steps between validation passes (one "epoch" of the stage)
PATIENCE = 3  # validation passes without improvement before the stage stops
BATCH_WINDOWS = 37  # multivariate windows per step: 37 x 7 channels = 259 univariate series
LR = 1e-3

QUICK_HORIZONS = (96,)
QUICK_MAX_STEPS = 30  # and one validation pass


def chosen_candidate(dataset: str, horizon: int) -> str:
    """The candidate with the lowest recorded validation MAE for this cell."""
    scores = VALIDATION_MAE[(dataset, horizon)]
    return min(scores, key=scores.__getitem__)


def cell_overrides(
    data_dir: Path,
    dataset: str,
    horizon: int,
    candidate: str,
    max_steps: int,
    val_every: int,
    seed: int,
    run_dir: str,
) -> list[str]:
    """The ``key=value`` overrides of the ``nhits_ltsf`` pipeline for one (dataset, horizon) cell."""
    file, split = DATASETS[dataset]
    c = CANDIDATES[candidate]
    return [
        f"seed={seed}",
        f"run_dir={run_dir}",
        f"data.path={data_dir / file}",
        f"data.split={split}",
        f"data.horizon={horizon}",
        f"data.context_length={5 * horizon}",
        f"data.batch_size={BATCH_WINDOWS}",
        "backbone.feature_dim=1",
        f"backbone.pool_kernel_sizes={c['pool_kernel_sizes']}",
        f"backbone.downsample_freqs={c['downsample_freqs']}",
        f"backbone.dropout={c['dropout']}",
        "backbone.n_blocks=[1,1,1]",
        "backbone.mlp_units=[512,512]",
        "backbone.pooling=max",
        "backbone.interpolation=linear",
        "head.loss=mae",
        f"stages.train.max_steps={max_steps}",
        f"stages.train.limit_train_batches={val_every}",
        "stages.train.optim.name=adam",
        f"stages.train.optim.lr={LR}",
        f"stages.train.early_stopping.patience={PATIENCE}",
        "stages.train.restore_best=true",
        # the comparison at the end of the run tests the restored weights once; no second test pass
        "stages.train.evaluate=false",
        "evaluation.baselines=[]",
        "evaluation.metrics=[mse,mae]",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
    ]


def best_validation(run_dir: Path) -> float | None:
    """The lowest ``val/loss`` (validation MAE) that ``metrics.csv`` recorded, if any."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    with path.open(newline="") as f:
        values = [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss") not in (None, "")]
    return min(values) if values else None


def run_cell(
    data_dir: Path,
    dataset: str,
    horizon: int,
    candidate: str,
    max_steps: int,
    val_every: int,
    seed: int,
    extra: list[str],
    runs_dir: Path | None = None,
) -> dict[str, Any]:
    """Train and test one cell through the library; returns the table row.

    The run directory is temporary unless ``runs_dir`` is given (then it is kept for inspection).
    """
    with tempfile.TemporaryDirectory(prefix="ltsf_nhits_") as tmp:
        root = str(runs_dir / f"{dataset}_{horizon}") if runs_dir is not None else tmp
        overrides = cell_overrides(data_dir, dataset, horizon, candidate, max_steps, val_every, seed, root)
        cfg = load_config("nhits_ltsf", overrides + extra)
        start = time.perf_counter()
        runner = PipelineRunner.create(cfg)
        summary = runner.run()
        seconds = time.perf_counter() - start
        val_mae = best_validation(runner.run_dir)
    final = summary["final"]
    anchor_mse, anchor_mae = ANCHORS[dataset][horizon]
    return {
        "dataset": dataset,
        "horizon": horizon,
        "candidate": candidate,
        "mse": float(final["mse"]),
        "mae": float(final["mae"]),
        "anchor_mse": anchor_mse,
        "mse_ratio": float(final["mse"]) / anchor_mse,
        "anchor_mae": anchor_mae,
        "mae_ratio": float(final["mae"]) / anchor_mae,
        "val_mae": val_mae,
        "steps": int(summary["stages"]["train"]["steps"]),
        "seconds": round(seconds, 1),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """One fixed-width table; ``*`` marks a ratio more than 5 % above its anchor."""

    def ratio(r: float) -> str:
        return f"{r:.3f}{'*' if r > 1.05 else ' '}"

    head = (
        f"{'dataset':<8}{'H':>5}{'cfg':>4}{'MSE':>8}{'MAE':>8}{'anchor MSE':>12}{'MSE ratio':>11}"
        f"{'anchor MAE':>12}{'MAE ratio':>11}{'val MAE':>9}{'steps':>7}{'seconds':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        val = f"{r['val_mae']:.3f}" if r["val_mae"] is not None else "-"
        lines.append(
            f"{r['dataset']:<8}{r['horizon']:>5}{r['candidate']:>4}{r['mse']:>8.3f}{r['mae']:>8.3f}"
            f"{r['anchor_mse']:>12.3f}{ratio(r['mse_ratio']):>11}{r['anchor_mae']:>12.3f}"
            f"{ratio(r['mae_ratio']):>11}{val:>9}{r['steps']:>7}{r['seconds']:>9.1f}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data-dir", type=Path, default=Path("../shared/data"), help="folder holding ett/ (default ../shared/data)"
    )
    p.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    p.add_argument("--horizons", nargs="+", type=int, choices=HORIZONS, default=list(HORIZONS))
    p.add_argument(
        "--max-steps", type=int, default=None, help=f"optimiser steps per cell (default {DEFAULT_MAX_STEPS})"
    )
    p.add_argument("--val-every", type=int, default=None, help=f"steps between validation passes (default {VAL_EVERY})")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="also write the table (and the settings) as JSON")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke check: horizon 96 only, {QUICK_MAX_STEPS} steps, one validation pass",
    )
    p.add_argument(
        "--candidate",
        choices=sorted(CANDIDATES),
        default=None,
        help="run this candidate in every cell instead of the validation-selected one (the search)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra pipeline override for every cell (e.g. stages.train.optim.lr=5e-4); repeatable",
    )
    p.add_argument("--runs-dir", type=Path, default=None, help="keep every run directory under this folder")
    p.add_argument("--verbose", action="store_true", help="keep the library's and Lightning's log output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.verbose:
        for name in ("sciadapt", "lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")
    missing = [DATASETS[d][0] for d in args.datasets if not (args.data_dir / DATASETS[d][0]).is_file()]
    if missing:
        print(f"error: {', '.join(missing)} not found under --data-dir {args.data_dir}", file=sys.stderr)
        return 2
    horizons = list(QUICK_HORIZONS) if args.quick else args.horizons
    max_steps = args.max_steps or (QUICK_MAX_STEPS if args.quick else DEFAULT_MAX_STEPS)
    val_every = args.val_every or (max_steps if args.quick else VAL_EVERY)
    cells = [(d, h, args.candidate or chosen_candidate(d, h)) for d in args.datasets for h in horizons]

    print(
        f"N-HiTS (sciadapt nhits_ltsf): input 5H, MAE loss, Adam lr {LR}, {BATCH_WINDOWS} windows x 7 channels "
        f"per step, <= {max_steps} steps, validation every {val_every} steps, patience {PATIENCE}, "
        f"seed {args.seed}, {args.threads} threads",
        flush=True,
    )
    for key, c in CANDIDATES.items():
        print(
            f"  candidate {key}: pool {c['pool_kernel_sizes']}, ratios {c['downsample_freqs']}, dropout {c['dropout']}",
            flush=True,
        )
    how = f"forced by --candidate {args.candidate}" if args.candidate else "lowest recorded validation MAE"
    print(f"  candidate per cell: {how}", flush=True)
    if args.extra:
        print(f"  extra overrides: {' '.join(args.extra)}", flush=True)

    rows: list[dict[str, Any]] = []
    total = time.perf_counter()
    for name, horizon, candidate in cells:
        row = run_cell(
            args.data_dir, name, horizon, candidate, max_steps, val_every, args.seed, args.extra, args.runs_dir
        )
        rows.append(row)
        print(
            f"  done {name} H={horizon} ({candidate}): MSE {row['mse']:.3f} (anchor {row['anchor_mse']:.3f}), "
            f"MAE {row['mae']:.3f}, val MAE {row['val_mae']:.4f}, {row['steps']} steps, {row['seconds']:.0f} s",
            flush=True,
        )
    total_seconds = time.perf_counter() - total

    print()
    print("N-HiTS, standard long-horizon protocol: ours (sciadapt) vs neuralforecast's published results")
    print(format_table(rows))
    print(
        "ratio = ours / anchor (* = more than 5 % worse); cfg = candidate (see --help / the docstring); "
        "val MAE = best validation MAE (the early-stopping and selection criterion);\n"
        f"seconds = wall time per cell on CPU ({args.threads} threads, shared machine); total {total_seconds:.0f} s"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {
            "max_steps": max_steps,
            "val_every": val_every,
            "patience": PATIENCE,
            "batch_windows": BATCH_WINDOWS,
            "lr": LR,
            "seed": args.seed,
            "threads": args.threads,
            "candidates": CANDIDATES,
            "selection": how,
            "extra_overrides": args.extra,
        }
        payload = {"settings": settings, "rows": rows, "total_seconds": round(total_seconds, 1)}
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
