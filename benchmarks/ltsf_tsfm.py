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

With ``--peers`` it runs upstream beside ours in one invocation, on the SAME batches (ETTh1 test windows,
context 512, horizon 96, batch 64, written to a safetensors file): granite-tsfm's
``TinyTimeMixerForPrediction`` and momentfm's ``MOMENTPipeline`` (forecasting and embedding) in the
side venv ``benchmarks/peers/.venvs/tsfm`` (built on first use from ``benchmarks/peers/tsfm.txt``; see
``benchmarks/peers/envs.py``), and ours from the same checkpoint folders (the golden fixtures: the
official TTM r2 512-96 geometry, and momentfm's file layout with a tiny T5 encoder; seeded weights, no
real ones are reachable offline). It reports parity (max abs difference of every forecast/embedding,
of the MSE loss and of every parameter's gradient on one backward pass) and ours/theirs ratios of
inference windows/s and of fine-tune step time (Adam on the MSE, all parameters or only the head).
Timings alternate ours / theirs for ``--rounds`` rounds and keep each side's best, with the same torch
thread count; results go to ``benchmarks/results/ltsf_tsfm_peers.{txt,json}``::

    python benchmarks/ltsf_tsfm.py --peers                # ~3 min on 2 CPU cores, incl. the peer's start-up
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

# Idle OpenMP threads that spin make a shared CPU crawl; set before torch loads (the peer process gets it too).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data"
GOLDEN_R2 = HERE.parents[1] / "shared" / "golden" / "ttm" / "r2_512_96"
GOLDEN_MOMENT = HERE.parents[1] / "shared" / "golden" / "moment"
PEERS_RESULTS = HERE / "results" / "ltsf_tsfm_peers.txt"

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


# ---------------------------------------------------------------------------------------------
# --peers: upstream TTM / MOMENT (side venv) and ours on the same batches

# (name, kind, checkpoint folder, fine-tune modes, label)
PEER_MODELS: list[tuple[str, str, Path, tuple[str, ...], str]] = [
    ("ttm", "ttm", GOLDEN_R2, ("full", "head"), "TTM r2 512-96"),
    ("moment", "moment_forecast", GOLDEN_MOMENT / "forecasting", ("full", "head"), "MOMENT forecast (tiny T5)"),
    ("moment_embed", "moment_embed", GOLDEN_MOMENT / "embedding", (), "MOMENT embedding (tiny T5)"),
]


def _peer_batches(data_dir: Path, n_batches: int, batch: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The first ``n_batches`` test batches of ETTh1 (context 512, horizon 96), as our pipelines see them."""
    from sciadapt.config import build_datamodule, load_config

    etth1 = data_dir / DATASETS["ETTh1"][0]
    cfg = load_config("ttm_zeroshot", [f"data.path={etth1}", f"backbone.weights={GOLDEN_R2}"])
    dm = build_datamodule({**cfg.data, "eval_batch_size": batch})
    dm.setup()
    xs, ys = [], []
    for b in dm.test_dataloader():
        xs.append(b["x"].float().contiguous())
        ys.append(b["y"].float().contiguous())
        if len(xs) == n_batches:
            break
    return xs, ys


def _load_ours(kind: str, path: str) -> torch.nn.Module:
    """Our backbones from the same folders, built through the registry as the pipelines build them.

    MOMENT: ``gradient_checkpointing=True`` as momentfm enables it by default (ours defaults to off),
    so fine-tune steps compare like with like; dropout 0.1 as both default.
    """
    from sciadapt.registry import BACKBONES

    if kind == "ttm":
        return BACKBONES.build("ttm", weights=path, context_length=512, horizon=96)
    task = "forecasting" if kind == "moment_forecast" else "embedding"
    return BACKBONES.build(
        "moment_tiny", task=task, context_length=512, horizon=96, weights=path, gradient_checkpointing=True
    )


def _forward_ours(kind: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model.forward_features(x)  # (B, L, C, 1) forecasts or (B, C, D) embeddings
    return out if kind == "moment_embed" else out[..., 0]


def _peer_job(batches: Path, threads: int, repeats: int, steps: int, lr: float) -> dict[str, Any]:
    return {
        "batches": str(batches),
        "threads": threads,
        "repeats": repeats,
        "finetune_steps": steps,
        "lr": lr,
        "models": [
            {"name": n, "kind": k, "path": str(path), "finetune": list(modes)} for n, k, path, modes, _ in PEER_MODELS
        ],
    }


def _run_peer(python: Path, job: Path, out: Path, timeout: float) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    cmd = [str(python), str(HERE / "peers" / "tsfm_peer.py"), str(job), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not (out / "result.json").exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise RuntimeError(f"tsfm_peer.py failed (exit {proc.returncode}):\n  {' '.join(cmd)}\n{tail}")
    return json.loads((out / "result.json").read_text()), load_file(str(out / "outputs.safetensors"))


def _keep_best(best: dict[str, Any], res: dict[str, Any]) -> None:
    """Fold one round's result of a model into the best so far (fastest inference, fastest steps)."""
    if not best:
        best.update(json.loads(json.dumps(res)))
        return
    best["windows_per_s"] = max(best["windows_per_s"], res["windows_per_s"])
    best["cpu_seconds_per_window"] = min(best["cpu_seconds_per_window"], res["cpu_seconds_per_window"])
    for mode, ft in res.get("finetune", {}).items():
        for key in ("step_seconds", "step_cpu_seconds"):
            best["finetune"][mode][key] = min(best["finetune"][mode][key], ft[key])


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> tuple[float, float, int, list]:
    """max |a - b| and max |b| over the keys starting with ``prefix``; keys in only one side are listed."""
    ka = {k for k in a if k.startswith(prefix)}
    kb = {k for k in b if k.startswith(prefix)}
    diff = scale = 0.0
    for k in ka & kb:
        if a[k].shape != b[k].shape:
            return float("inf"), 0.0, len(ka & kb), [f"{k}: shape {tuple(a[k].shape)} vs {tuple(b[k].shape)}"]
        diff = max(diff, float((a[k].double() - b[k].double()).abs().max()))
        scale = max(scale, float(b[k].abs().max()))
    return diff, scale, len(ka & kb), sorted(ka ^ kb)


def _allocator() -> str:
    """What sciadapt did to glibc malloc in this process (see sciadapt._process)."""
    from sciadapt import _process

    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return f"MALLOC_MMAP_THRESHOLD_={os.environ['MALLOC_MMAP_THRESHOLD_']} (user)"
    if _process._done == "set":
        return "mmap threshold 128 KiB (--rollout-allocator: what a rollout task sets)"
    return "glibc default (sciadapt sets its 128 KiB mmap threshold only for rollout tasks)"


def peer_table(
    data_dir: Path, n_batches: int, rounds: int, steps: int, match_torch: bool, timeout: float
) -> tuple[str, dict[str, Any]]:
    """Ours and upstream on the same batches: parity, then ours/theirs speed ratios."""
    from safetensors.torch import save_file

    sys.path.insert(0, str(HERE))
    from peers.envs import caller_torch_version, describe, ensure_env
    from peers.tsfm_peer import run_model

    missing = [str(p) for _, _, p, _, _ in PEER_MODELS if not p.is_dir()]
    if missing or not (data_dir / DATASETS["ETTh1"][0]).is_file():
        raise FileNotFoundError(f"needs {', '.join(missing) or data_dir / DATASETS['ETTh1'][0]}")
    python = ensure_env("tsfm", caller_torch_version() if match_torch else None, verbose=True)
    threads, lr = torch.get_num_threads(), 1e-4
    xs, ys = _peer_batches(data_dir, n_batches, 64)
    ours_best: dict[str, dict[str, Any]] = {n: {} for n, *_ in PEER_MODELS}
    theirs_best: dict[str, dict[str, Any]] = {n: {} for n, *_ in PEER_MODELS}
    ours_tensors: dict[str, torch.Tensor] = {}
    theirs_tensors: dict[str, torch.Tensor] = {}
    peer_info: dict[str, Any] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ltsf_tsfm_peers_") as tmp:
        batches = Path(tmp) / "batches.safetensors"
        save_file({**{f"x.{i}": x for i, x in enumerate(xs)}, **{f"y.{i}": y for i, y in enumerate(ys)}}, str(batches))
        job = Path(tmp) / "job.json"
        job_spec = _peer_job(batches, threads, 3, steps, lr)
        job.write_text(json.dumps(job_spec))
        for r in range(rounds):
            torch.manual_seed(0)
            for spec in job_spec["models"]:
                res, ten = run_model(spec, xs, ys, job_spec, load=_load_ours, fwd=_forward_ours)
                _keep_best(ours_best[spec["name"]], res)
                if r == 0:
                    ours_tensors.update(ten)
            peer_info, ten = _run_peer(python, job, Path(tmp) / f"peer{r}", timeout)
            for res in peer_info["models"]:
                _keep_best(theirs_best[res["name"]], res)
            if r == 0:
                theirs_tensors = ten
    seconds = time.perf_counter() - start

    import sciadapt

    allocator = _allocator()
    v = peer_info["versions"]
    windows = sum(x.shape[0] for x in xs)
    lines = [
        f"ours (sciadapt {getattr(sciadapt, '__version__', '?')}, torch {torch.__version__}) vs upstream "
        f"(granite-tsfm {v['granite-tsfm']}, momentfm {v['momentfm']}, transformers {v['transformers']}, "
        f"torch {v['torch']}, side venv)",
        f"same {len(xs)} batches of 64 ETTh1 test windows (context 512, horizon 96, 7 channels, {windows} windows); "
        f"CPU, {threads} threads both sides; best of {rounds} alternating rounds; ours' allocator: {allocator}",
        "weights: golden fixtures (seeded, official file layouts): TTM r2 512-96 = the official geometry "
        "(805,280 params); MOMENT = momentfm's layout with a tiny T5 (d_model 64, 2 layers)",
        "",
        "parity (max |ours - theirs|; scale = max |theirs|): forward outputs on every batch; MSE loss and every "
        "parameter's gradient of one backward pass (eval mode)",
        f"{'model':28} {'outputs':>10} {'scale':>7} {'loss':>9} {'gradients':>10} {'grad scale':>10} {'params':>7}",
    ]
    parity: dict[str, Any] = {}
    for name, _kind, _path, _modes, label in PEER_MODELS:
        out = _max_diff(ours_tensors, theirs_tensors, f"{name}.out.")
        loss = _max_diff(ours_tensors, theirs_tensors, f"{name}.loss")
        grad = _max_diff(ours_tensors, theirs_tensors, f"{name}.grad.")
        parity[name] = {
            "outputs_max_abs_diff": out[0],
            "outputs_max_abs": out[1],
            "loss_abs_diff": loss[0] if loss[2] else None,
            "grads_max_abs_diff": grad[0] if grad[2] else None,
            "grads_max_abs": grad[1] if grad[2] else None,
            "grad_tensors_compared": grad[2],
            "unmatched": out[3] + loss[3] + grad[3],
        }
        g = f"{grad[0]:10.2e} {grad[1]:10.2e} {grad[2]:7d}" if grad[2] else f"{'-':>10} {'-':>10} {'-':>7}"
        ls = f"{loss[0]:9.2e}" if loss[2] else f"{'-':>9}"
        lines.append(f"{label:28} {out[0]:10.2e} {out[1]:7.2f} {ls} {g}")
        if parity[name]["unmatched"]:
            lines.append(f"  unmatched: {', '.join(parity[name]['unmatched'][:6])}")
    lines += [
        "",
        "speed: inference = windows/s (eval, no_grad; ratio ours/theirs, > 1 = ours faster); fine-tune = seconds "
        "per Adam step on one batch, MSE (ratio ours/theirs, < 1 = ours faster); full = every parameter, head = "
        "TTM backbone / MOMENT encoder + patch embedding frozen",
        "(cpu = the same ratio on process CPU seconds, all threads: steadier when other jobs share the cores; "
        "< 1 = ours cheaper)",
        f"{'model':28} {'what':14} {'trainable':>10} {'ours':>9} {'theirs':>9} {'ours/theirs':>11} {'cpu':>6}",
    ]
    speed: list[dict[str, Any]] = []
    for name, _kind, _path, modes, label in PEER_MODELS:
        o, t = ours_best[name], theirs_best[name]
        ratio = o["windows_per_s"] / t["windows_per_s"]
        cpu = o["cpu_seconds_per_window"] / t["cpu_seconds_per_window"]
        lines.append(
            f"{label:28} {'inference w/s':14} {'':>10} {o['windows_per_s']:9.1f} {t['windows_per_s']:9.1f} "
            f"{ratio:11.2f} {cpu:6.2f}"
        )
        speed.append(
            {
                "model": name,
                "what": "inference_windows_per_s",
                "ours": o["windows_per_s"],
                "theirs": t["windows_per_s"],
                "ratio": ratio,
                "cpu_ratio": cpu,
            }
        )
        for mode in modes:
            os_, ts = o["finetune"][mode]["step_seconds"], t["finetune"][mode]["step_seconds"]
            cpu = o["finetune"][mode]["step_cpu_seconds"] / t["finetune"][mode]["step_cpu_seconds"]
            tr = o["finetune"][mode]["trainable"]
            lines.append(
                f"{label:28} {'fine-tune ' + mode:14} {tr:10,} {os_:9.3f} {ts:9.3f} {os_ / ts:11.2f} {cpu:6.2f}"
            )
            speed.append(
                {
                    "model": name,
                    "what": f"finetune_{mode}_step_seconds",
                    "trainable": tr,
                    "trainable_theirs": t["finetune"][mode]["trainable"],
                    "ours": os_,
                    "theirs": ts,
                    "ratio": os_ / ts,
                    "cpu_ratio": cpu,
                }
            )
    lines.append(f"total {seconds:.0f} s (incl. {rounds} peer start-ups)")
    payload = {
        "setup": {
            "data": "ETTh1 test windows (ett_hourly split, z-scored with train statistics)",
            "batches": len(xs),
            "batch": 64,
            "context_length": 512,
            "horizon": 96,
            "threads": threads,
            "rounds": rounds,
            "finetune_steps": steps,
            "lr": lr,
            "ours_torch": torch.__version__,
            "ours_allocator": allocator,
            "peer_versions": v,
            "peer_env": describe("tsfm"),
            "seconds": round(seconds, 1),
        },
        "parity": parity,
        "speed": speed,
        "ours": ours_best,
        "theirs": theirs_best,
    }
    return "\n".join(lines), payload


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="official TTM r2 weights: a folder or hf://ibm-granite/granite-timeseries-ttm-r2")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    p.add_argument("--no-fewshot", action="store_true", help="zero-shot only")
    p.add_argument("--batches", type=int, default=20, help="timed batches for the throughput measurement")
    p.add_argument("--epochs", type=int, default=1, help="few-shot epochs for the cost measurement")
    p.add_argument("--out", type=Path, help="also write the table here")
    p.add_argument("--peers", action="store_true", help="upstream TTM/MOMENT beside ours (side venv); see above")
    p.add_argument("--peer-batches", type=int, default=4, help="batches of 64 windows for --peers")
    p.add_argument("--rounds", type=int, default=2, help="alternating ours/theirs timing rounds for --peers")
    p.add_argument("--finetune-steps", type=int, default=3, help="timed fine-tune steps per mode for --peers")
    p.add_argument(
        "--match-torch",
        action="store_true",
        help="build the peer venv with this interpreter's torch release instead of the pinned CPU build",
    )
    p.add_argument(
        "--rollout-allocator",
        action="store_true",
        help="run ours with the 128 KiB mmap threshold a rollout task sets (sciadapt._process), to see what "
        "that setting costs these models (benchmarks/results/ltsf_tsfm_peers.mmap128k.txt)",
    )
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.rollout_allocator:
        from sciadapt._process import tune_allocator

        tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    if args.peers:
        table, payload = peer_table(
            args.data_dir, args.peer_batches, args.rounds, args.finetune_steps, args.match_torch, timeout=600
        )
        print(table)
        out = args.out or PEERS_RESULTS
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")
        out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {out} and {out.with_suffix('.json').name}")
        return 0
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
