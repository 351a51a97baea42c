"""Peak memory of autoregressive rollout training: 1, 4 and 12 steps, with and without checkpointing.

One training step (forward over ``k`` rollout steps, area-weighted MSE, backward, AdamW) of the
GraphCast-style backbone through :class:`sciadapt.tasks.rollout.RolloutTask`, each configuration in
a fresh subprocess (``ru_maxrss`` is a per-process high-water mark); the peak is reported above the
RSS right after the model and batch are built, so it counts activations, gradients and optimiser state.
With ``rollout.checkpoint`` every step is recomputed in backward, so only the per-step input states
are kept: the target is 12 steps <= 1.2x the 1-step peak with no environment variable set (sciadapt
fixes glibc's mmap threshold when a rollout task is built, see sciadapt/_process.py; ``SCIADAPT_MALLOC=default`` turns
that off for a comparison). Without checkpointing, activations grow with ``k``.

    python benchmarks/rollout_memory.py                      # global 3-degree grid, graphcast_small-like
    python benchmarks/rollout_memory.py --grid uk --latent 128 --layers 6
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from sciadapt.registry import BACKBONES, HEADS
    from sciadapt.spec import RolloutSpec, StageSpec
    from sciadapt.tasks.rollout import RolloutTask

    torch.manual_seed(0)
    torch.set_num_threads(spec["threads"])
    if spec["grid"] == "uk":
        lat = list(np.linspace(61.0, 53.0, 33))
        lon = list(np.linspace(-10.0, 2.0, 49))
    else:
        lat = list(np.linspace(90.0, -90.0, 61))
        lon = list(np.arange(0.0, 360.0, 3.0))
    c, f, s, n_in, k = spec["channels"], 4, 3, 2, spec["steps"]
    backbone = BACKBONES.build(
        "graphcast",
        lat=lat,
        lon=lon,
        n_channels=c,
        n_forcings=f,
        n_static=s,
        n_input=n_in,
        mesh_refinement=spec["refinement"],
        latent_size=spec["latent"],
        processor_layers=spec["layers"],
        activation_checkpointing=spec["checkpoint"],
    )
    head = HEADS.build("grid", in_features=c)
    task = RolloutTask(backbone, head, [f"v{i}" for i in range(c)], [0.5] * c, list(np.cos(np.deg2rad(lat))), n_in)
    task.stage = StageSpec(rollout=RolloutSpec(steps=k, checkpoint=spec["checkpoint"]))
    task.rollout_steps = k
    task.train()
    h, w = len(lat), len(lon)
    batch = {
        "x": torch.randn(spec["batch"], n_in, c, h, w),
        "y": torch.randn(spec["batch"], k, c, h, w),
        "forcings": torch.randn(spec["batch"], n_in + k, f, h, w),
        "static": torch.randn(1, s, h, w),
    }
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-4)
    base = _rss_mb()
    t0 = time.perf_counter()
    loss, _ = task._loss(batch)  # type: ignore[arg-type]
    loss.backward()
    opt.step()
    seconds = time.perf_counter() - t0
    return {
        **spec,
        "peak_mb": _peak_mb() - base,
        "seconds": seconds,
        "params": sum(p.numel() for p in task.parameters()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", choices=["global", "uk"], default="global")
    ap.add_argument("--steps", default="1,4,12")
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--latent", type=int, default=128)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--refinement", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return 0
    rows = []
    for checkpoint in (True, False):
        for k in [int(v) for v in args.steps.split(",")]:
            spec = {
                "grid": args.grid,
                "steps": k,
                "checkpoint": checkpoint,
                "channels": args.channels,
                "latent": args.latent,
                "layers": args.layers,
                "refinement": args.refinement,
                "batch": args.batch,
                "threads": args.threads,
            }
            out = subprocess.run(
                [sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True, check=True
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"  checkpoint={checkpoint!s:5} steps={k:3d} peak {r['peak_mb']:8.1f} MB  {r['seconds']:6.2f} s",
                flush=True,
            )
    lines = [
        f"rollout training step, {args.grid} grid, {args.channels} channels, latent {args.latent}, "
        f"{args.layers} processor layers, refinement {args.refinement}, batch {args.batch}, CPU",
        f"{'steps':>5} {'ckpt peak MB':>13} {'x 1-step':>9} {'no-ckpt peak MB':>16} {'x 1-step':>9} {'ckpt s':>7}",
    ]
    ck = {r["steps"]: r for r in rows if r["checkpoint"]}
    nock = {r["steps"]: r for r in rows if not r["checkpoint"]}
    first = min(ck)
    for k in sorted(ck):
        lines.append(
            f"{k:5d} {ck[k]['peak_mb']:13.1f} {ck[k]['peak_mb'] / ck[first]['peak_mb']:9.2f} "
            f"{nock[k]['peak_mb']:16.1f} {nock[k]['peak_mb'] / nock[first]['peak_mb']:9.2f} {ck[k]['seconds']:7.2f}"
        )
    last = max(ck)
    ratio = ck[last]["peak_mb"] / ck[first]["peak_mb"]
    lines.append(
        f"{'PASS' if ratio <= 1.2 else 'FAIL'}  {last} checkpointed steps <= 1.2x the 1-step peak: {ratio:.2f}x"
    )
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
