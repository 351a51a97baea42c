"""Upstream TTM (granite-tsfm) and MOMENT (momentfm) on given batches; runs INSIDE the tsfm venv.

Started by ``benchmarks/ltsf_tsfm.py`` with the interpreter of ``benchmarks/peers/.venvs/tsfm``; imports
nothing from sciadapt. Input: a job file (JSON) naming the batch file and the models::

    {"batches": "batches.safetensors",        # x.0, x.1, ... (B, T, C) and y.0, ... (B, L, C), float32
     "threads": 2, "repeats": 3, "finetune_steps": 5, "lr": 1e-4,
     "models": [{"name": "ttm", "kind": "ttm", "path": ".../r2_512_96", "batch": 64,
                 "finetune": ["full", "head"]},
                {"name": "moment", "kind": "moment_forecast", "path": "...", "batch": 64, "finetune": ["full"]},
                {"name": "moment_embed", "kind": "moment_embed", "path": "...", "batch": 64}]}

For every model, with upstream's own loader and forward:

* ``ttm``: ``TinyTimeMixerForPrediction.from_pretrained(path)``; ``model(past_values=x)
  .prediction_outputs`` (B, L, C);
* ``moment_forecast``: ``MOMENTPipeline.from_pretrained(path); model.init()``; ``model(x_enc=x^T,
  input_mask=ones).forecast`` (B, C, L), written as (B, L, C);
* ``moment_embed``: the same with ``task_name`` from the file (``embedding``), ``reduction="none"``
  (B, C, P, D) averaged over the patches, i.e. per-channel embeddings (B, C, D).

Measured: inference windows/s (eval, ``no_grad``, one warm-up batch, then ``repeats`` passes over all
batches, the fastest pass counts) and process CPU seconds per window; fine-tune step seconds (and CPU seconds) (train mode, Adam, MSE to ``y``, zero_grad +
forward + backward + step on the first batch, one warm-up step, the median of ``finetune_steps``) for
``full`` (every parameter) and ``head`` (TTM: backbone frozen, as granite-tsfm's few-shot recipe; MOMENT:
patch embedding and encoder frozen, as momentfm's linear probing). For parity it also writes the
forward outputs of every batch, and the loss and every parameter's gradient of one MSE backward pass on
the first batch in eval mode (no dropout), keyed by upstream parameter name.

Writes ``<out>/outputs.safetensors`` and ``<out>/result.json`` (also printed as the last stdout line).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any


def load_model(kind: str, path: str) -> Any:
    if kind == "ttm":
        from tsfm_public.models.tinytimemixer import TinyTimeMixerForPrediction

        return TinyTimeMixerForPrediction.from_pretrained(path)
    from momentfm import MOMENTPipeline

    model = MOMENTPipeline.from_pretrained(path)
    model.init()
    return model


def forward(kind: str, model: Any, x: Any) -> Any:
    """Upstream's forward on ``x`` (B, T, C); returns (B, L, C) forecasts or (B, C, D) embeddings."""
    import torch

    if kind == "ttm":
        return model(past_values=x).prediction_outputs
    x_enc = x.transpose(1, 2).contiguous()  # (B, C, T)
    mask = torch.ones(x.shape[0], x.shape[1], dtype=x.dtype)
    if kind == "moment_forecast":
        return model(x_enc=x_enc, input_mask=mask).forecast.transpose(1, 2)
    return model(x_enc=x_enc, input_mask=mask, reduction="none").embeddings.mean(dim=2)


def frozen_prefixes(kind: str, mode: str) -> tuple[str, ...]:
    if mode == "full":
        return ()
    return ("backbone.",) if kind == "ttm" else ("patch_embedding.", "encoder.")


def run_model(
    spec: dict[str, Any],
    xs: list[Any],
    ys: list[Any],
    job: dict[str, Any],
    load: Any = None,
    fwd: Any = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Time and record one model. ``load(kind, path)`` and ``fwd(kind, model, x)`` default to upstream's;
    ``benchmarks/ltsf_tsfm.py`` passes sciadapt's, so both sides are measured by this same code."""
    import torch

    load = load or load_model
    fwd = fwd or forward

    kind, name = spec["kind"], spec["name"]
    batch = int(spec.get("batch", xs[0].shape[0]))
    xs = [x[:batch] for x in xs]
    ys = [y[:batch] for y in ys]
    t0 = time.perf_counter()
    model = load(kind, spec["path"])
    load_seconds = time.perf_counter() - t0
    tensors: dict[str, Any] = {}
    model.eval()
    with torch.no_grad():
        for i, x in enumerate(xs):
            tensors[f"{name}.out.{i}"] = fwd(kind, model, x).detach().contiguous()
        best = best_cpu = float("inf")
        for _ in range(int(job.get("repeats", 3))):
            start, cpu = time.perf_counter(), time.process_time()
            for x in xs:
                fwd(kind, model, x)
            best = min(best, time.perf_counter() - start)
            best_cpu = min(best_cpu, time.process_time() - cpu)
    windows = sum(x.shape[0] for x in xs)
    result: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "params": sum(p.numel() for p in model.parameters()),
        "load_seconds": round(load_seconds, 3),
        "batch": batch,
        "windows": windows,
        "windows_per_s": windows / best,
        # process CPU seconds (all threads) per window: steadier than wall time on a shared machine
        "cpu_seconds_per_window": best_cpu / windows,
    }
    if kind == "moment_embed":
        return result, tensors

    # gradients of one MSE backward pass, eval mode (dropout off), for parity; every parameter
    # trainable (momentfm freezes its encoder and patch embedding by default)
    for p in model.parameters():
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(fwd(kind, model, xs[0]), ys[0])
    loss.backward()
    tensors[f"{name}.loss"] = loss.detach().reshape(1)
    for pname, p in model.named_parameters():
        if p.grad is not None:
            tensors[f"{name}.grad.{pname}"] = p.grad.detach().contiguous()
    model.zero_grad(set_to_none=True)

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    steps = int(job.get("finetune_steps", 5))
    result["finetune"] = {}
    for mode in spec.get("finetune", ["full"]):
        model.load_state_dict(state)
        frozen = frozen_prefixes(kind, mode)
        for pname, p in model.named_parameters():
            p.requires_grad_(not pname.startswith(frozen))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=float(job.get("lr", 1e-4)))
        model.train()
        times, cpus = [], []
        for step in range(steps + 1):
            start, cpu = time.perf_counter(), time.process_time()
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(fwd(kind, model, xs[0]), ys[0])
            loss.backward()
            opt.step()
            if step:  # the first step is a warm-up (allocations, Adam state)
                times.append(time.perf_counter() - start)
                cpus.append(time.process_time() - cpu)
        result["finetune"][mode] = {
            "trainable": sum(p.numel() for p in params),
            "step_seconds": statistics.median(times),
            "step_cpu_seconds": statistics.median(cpus),
            "steps": steps,
        }
        for p in model.parameters():
            p.requires_grad_(True)
    return result, tensors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("job", type=Path, help="job file (JSON)")
    p.add_argument("--out", type=Path, required=True, help="folder for outputs.safetensors and result.json")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    import torch
    from safetensors.torch import load_file, save_file

    job = json.loads(args.job.read_text())
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    data = load_file(job["batches"])
    n = len([k for k in data if k.startswith("x.")])
    xs = [data[f"x.{i}"] for i in range(n)]
    ys = [data[f"y.{i}"] for i in range(n)]
    torch.manual_seed(0)
    results, tensors = [], {}
    for spec in job["models"]:
        res, ten = run_model(spec, xs, ys, job)
        results.append(res)
        tensors.update(ten)
    import momentfm
    import transformers
    import tsfm_public

    args.out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out / "outputs.safetensors"))
    payload = {
        "versions": {
            "granite-tsfm": getattr(tsfm_public, "__version__", "?"),
            "momentfm": _dist_version("momentfm", momentfm),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
        "threads": torch.get_num_threads(),
        "models": results,
    }
    text = json.dumps(payload)
    (args.out / "result.json").write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


def _dist_version(dist: str, module: Any) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return getattr(module, "__version__", "?")


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only; nothing may be downloaded
    raise SystemExit(main())
