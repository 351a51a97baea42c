"""Tiny Time Mixers on the long-horizon benchmarks: zero-shot and 5 % few-shot, or CPU cost.

With ``--weights`` (the official ``ibm-granite/granite-timeseries-ttm-r2`` 512-96 checkpoint, a local
folder or ``hf://ibm-granite/granite-timeseries-ttm-r2``; needs internet or a downloaded copy) it runs the
bundled ``ttm_zeroshot`` and ``ttm_fewshot`` pipelines on each dataset found under ``--data-dir`` and
prints test MSE/MAE beside IBM's published r2 zero-shot numbers (context 512, horizon 96)::

    python benchmarks/ltsf_tsfm.py --weights hf://ibm-granite/granite-timeseries-ttm-r2 --data-dir /data/ltsf

Published TTM-r2 zero-shot MSE, context 512, horizon 96 (granite-tsfm README / TTM paper table):
ETTh1 .363, ETTh2 .276, ETTm1 .338, ETTm2 .176, Weather .150.

Without ``--weights`` (no network here) it measures what can be measured offline, on ETTh1:

* forward throughput of our TTM in the official r2 512-96 geometry (loaded from the golden fixture
  ``shared/golden/ttm/r2_512_96``, the official file layout with seeded weights): windows/s at batch
  64, context 512, horizon 96, eval mode, beside our N-HiTS (``nhits`` defaults, context 512) on the
  same windows in the same process, as a reference point for what a CPU step costs;
* few-shot fine-tuning time per epoch: the ``ttm_fewshot`` pipeline (5 % of the train windows, frozen
  backbone) for one epoch.

Both print one table; nothing here runs in the test suite.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data"
GOLDEN_R2 = HERE.parents[1] / "shared" / "golden" / "ttm" / "r2_512_96"

# name -> (file under data-dir, data overrides)
DATASETS: dict[str, tuple[str, list[str]]] = {
    "ETTh1": ("ett/ETTh1.csv", ["data.split=ett_hourly"]),
    "ETTh2": ("ett/ETTh2.csv", ["data.split=ett_hourly"]),
    "ETTm1": ("ett/ETTm1.csv", ["data.split=ett_minutely"]),
    "ETTm2": ("ett/ETTm2.csv.gz", ["data.split=ett_minutely"]),
    "Weather": (
        "ltsf/weather.csv.gz",
        [
            "data.split=ratio",
            "data.split_ratios=[0.7,0.1,0.2]",
            "data.encoding=latin-1",
            "data.duplicate_timestamps=keep_first",  # the LTSF weather file repeats one timestamp
        ],
    ),
}
PUBLISHED_ZEROSHOT_MSE = {"ETTh1": 0.363, "ETTh2": 0.276, "ETTm1": 0.338, "ETTm2": 0.176, "Weather": 0.150}


def _fit(pipeline: str, overrides: list[str], runs: Path) -> dict[str, Any]:
    from sciadapt import api

    summary = api.fit(pipeline, [*overrides, f"run_dir={runs}", "trainer.enable_progress_bar=false"])
    return summary


def _row(summary: dict[str, Any], stage: str) -> dict[str, Any]:
    for row in summary["evaluation"]["rows"]:
        if row.get("stage") == stage:
            return row
    raise KeyError(stage)


def accuracy_table(weights: str, data_dir: Path, names: list[str], fewshot: bool) -> str:
    lines = [
        f"TTM r2 (context 512, horizon 96), weights {weights}",
        f"{'dataset':8} {'zero-shot MSE':>13} {'published':>9} {'ratio':>6} {'zs MAE':>7}"
        + (f" {'5% MSE':>7} {'5% MAE':>7}" if fewshot else ""),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            file, extra = DATASETS[name]
            path = data_dir / file
            if not path.is_file():
                lines.append(f"{name:8} (no {path})")
                continue
            common = [f"data.path={path}", f"backbone.weights={weights}", *extra]
            zs = _row(_fit("ttm_zeroshot", common, Path(tmp) / name / "zs"), "zeroshot")
            pub = PUBLISHED_ZEROSHOT_MSE[name]
            line = f"{name:8} {zs['mse']:13.3f} {pub:9.3f} {zs['mse'] / pub:6.3f} {zs['mae']:7.3f}"
            if fewshot:
                fs = _row(_fit("ttm_fewshot", common, Path(tmp) / name / "fs"), "fewshot")
                line += f" {fs['mse']:7.3f} {fs['mae']:7.3f}"
            lines.append(line)
    return "\n".join(lines)


def _throughput(model: torch.nn.Module, loader: Any, batches: int) -> tuple[float, int]:
    """Windows per second of ``model.forward_features`` over ``batches`` batches (after one warm-up)."""
    model.eval()
    it = iter(loader)
    with torch.no_grad():
        model.forward_features(next(it)["x"])
        n, t0 = 0, time.perf_counter()
        for _ in range(batches):
            x = next(it)["x"]
            model.forward_features(x)
            n += x.shape[0]
    return n / (time.perf_counter() - t0), n


def cost_table(data_dir: Path, batches: int, epochs: int) -> str:
    from sciadapt.config import build_datamodule, load_config
    from sciadapt.registry import BACKBONES

    etth1 = data_dir / DATASETS["ETTh1"][0]
    if not GOLDEN_R2.is_dir() or not etth1.is_file():
        return f"needs {GOLDEN_R2} and {etth1}"
    cfg = load_config("ttm_zeroshot", [f"data.path={etth1}", f"backbone.weights={GOLDEN_R2}"])
    dm = build_datamodule({**cfg.data, "eval_batch_size": 64})
    dm.setup()
    n_ch = dm.n_targets
    ttm = BACKBONES.build("ttm", weights=str(GOLDEN_R2), context_length=512, horizon=96, n_targets=n_ch)
    nhits = BACKBONES.build("nhits", context_length=512, horizon=96)
    ttm_rate, n = _throughput(ttm, dm.test_dataloader(), batches)
    nhits_rate, _ = _throughput(nhits, dm.test_dataloader(), batches)
    n_params = sum(p.numel() for p in ttm.parameters())
    lines = [
        f"CPU, {torch.get_num_threads()} threads; ETTh1 test windows ({n_ch} channels), batch 64, context 512, "
        f"horizon 96, {n} windows timed",
        f"{'model':34} {'params':>9} {'windows/s':>10} {'series/s':>9}",
        f"{'TTM r2 512-96 geometry (ours)':34} {n_params:9,} {ttm_rate:10.1f} {ttm_rate * n_ch:9.1f}",
        f"{'N-HiTS, context 512 (ours)':34} {sum(p.numel() for p in nhits.parameters()):9,} "
        f"{nhits_rate:10.1f} {nhits_rate * n_ch:9.1f}",
        f"TTM / N-HiTS throughput: {ttm_rate / nhits_rate:.2f}x",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        summary = _fit(
            "ttm_fewshot",
            [
                f"data.path={etth1}",
                f"backbone.weights={GOLDEN_R2}",
                f"stages.fewshot.max_epochs={epochs}",
                "stages.fewshot.restore_best=false",
                "evaluation.stages=[fewshot]",
                "evaluation.baselines=[]",
            ],
            Path(tmp),
        )
    st = summary["stages"]["fewshot"]
    fs = st.get("data", {}).get("train", {})
    lines.append(
        f"few-shot fine-tuning (ttm_fewshot, 5 % = {fs.get('windows', '?')} train windows, frozen backbone, "
        f"{st['trainable_params']:,} trainable): {st['fit_seconds'] / max(st['epochs'], 1):.2f} s/epoch "
        f"(train + validation, {st['epochs']} epoch(s), {st['steps']} steps)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="official TTM r2 weights: a folder or hf://ibm-granite/granite-timeseries-ttm-r2")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    p.add_argument("--no-fewshot", action="store_true", help="zero-shot only")
    p.add_argument("--batches", type=int, default=20, help="timed batches for the throughput measurement")
    p.add_argument("--epochs", type=int, default=1, help="few-shot epochs for the cost measurement")
    p.add_argument("--out", type=Path, help="also write the table here")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    if args.weights:
        table = accuracy_table(args.weights, args.data_dir, args.datasets, not args.no_fewshot)
    else:
        table = cost_table(args.data_dir, args.batches, args.epochs)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"table": table.splitlines()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
