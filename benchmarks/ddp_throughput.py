"""Two-process CPU DDP (gloo) against one process: training throughput of the N-HiTS pipeline.

    python benchmarks/ddp_throughput.py --data ../shared/data/ett/ETTh1.csv
    python benchmarks/ddp_throughput.py --data ../shared/data/ett/ETTh1.csv --steps 200 --rounds 3

Each run is the bundled ``nhits_ltsf`` pipeline from the real CLI (``sciadapt fit``, a subprocess:
DDP re-launches the command for rank 1) with the same global batch: one process with batch
``2b`` against ``trainer.devices=2 trainer.strategy=ddp`` with ``b`` per rank, the same number of
optimizer steps, no validation or early stopping inside the timed stage. Throughput is training
samples per second of the stage's ``fit_seconds`` (``summary.json``), which includes Lightning's
start-up of the stage (for DDP: process launch and gloo rendezvous), so it is measured over a few
hundred steps. Runs alternate between the two setups (``--rounds``) and the median is reported.

On a machine with C cores, one process already uses them through intra-op threads; two
processes each get C/2 threads (``OMP_NUM_THREADS``), so on CPU DDP mostly shows its overhead
(gradient all-reduce over gloo, two data pipelines); its gain is on several GPUs or nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(data: str, steps: int, batch: int, devices: int, threads: int, tmp: Path) -> dict[str, float]:
    run_dir = tmp / f"d{devices}-{time.time_ns()}"
    args = [
        sys.executable,
        "-m",
        "sciadapt.cli",
        "fit",
        "nhits_ltsf",
        f"data.path={data}",
        f"run_dir={run_dir}",
        f"data.batch_size={batch}",
        f"stages.train.max_steps={steps}",
        f"stages.train.limit_train_batches={steps}",
        "stages.train.limit_val_batches=1",
        "stages.train.early_stopping=null",
        "stages.train.restore_best=false",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        "evaluation.baselines=[]",
    ]
    if devices > 1:
        args += [f"trainer.devices={devices}", "trainer.strategy=ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"run failed ({devices} device(s)):\n{done.stderr[-3000:]}")
    (summary_path,) = run_dir.glob("*/*/summary.json")
    stage = json.loads(summary_path.read_text())["stages"]["train"]
    samples = stage["steps"] * batch * devices
    return {"seconds": stage["fit_seconds"], "steps": stage["steps"], "samples_per_s": samples / stage["fit_seconds"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/ett/ETTh1.csv")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    ap.add_argument("--global-batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    results: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for devices in (1, 2) if r % 2 == 0 else (2, 1):
                res = run(
                    args.data,
                    args.steps,
                    args.global_batch // devices,
                    devices,
                    max(1, cores // devices),
                    Path(tmp),
                )
                results[devices].append(res)
                print(
                    f"round {r + 1}: {devices} process(es): {res['steps']} steps in {res['seconds']:.1f} s, "
                    f"{res['samples_per_s']:.0f} samples/s",
                    flush=True,
                )
    one = statistics.median(x["samples_per_s"] for x in results[1])
    two = statistics.median(x["samples_per_s"] for x in results[2])
    lines = [
        f"# python benchmarks/ddp_throughput.py --steps {args.steps} --global-batch {args.global_batch} "
        f"--rounds {args.rounds}   ({cores} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "| setup | samples/s (median) | vs one process |",
        "|---|---:|---:|",
        f"| 1 process, batch {args.global_batch}, {cores} threads | {one:.0f} | 1.00x |",
        f"| 2 DDP processes (gloo), batch {args.global_batch // 2} each, {max(1, cores // 2)} threads each "
        f"| {two:.0f} | {two / one:.2f}x |",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
