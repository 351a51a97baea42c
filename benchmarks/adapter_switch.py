"""Switching LoRA adapters on one loaded base against reloading the base with each adapter.

    python benchmarks/adapter_switch.py                 # TTM at context 512 / horizon 96 and ttm_tiny
    python benchmarks/adapter_switch.py --repeats 30 --sizes base

What ``sciadapt predict --backbone ttm --weights W --adapter A1 --adapter A2 ...`` does per adapter
(*switch*: attach and fill the adapter from its folder with the base fingerprint checked, forecast,
take it off and restore the base) is timed against what a user without it does per adapter (*reload*:
read and build the base from its folder, read the data, load the adapter, forecast), both in this
process, alternating, median of ``--repeats``. The bases are built from scratch and saved locally
(``save_pretrained``), the adapters are LoRA (r=8) on TTM's default targets with random non-zero B,
saved as a run saves them; nothing is downloaded. As in ``predict``, the checksum of the targeted base
tensors (the base fingerprint an adapter is checked against) is computed once per target set and
reused while the base is unchanged; the first switch pays it, the median does not. Process start-up and imports, which a separate
``sciadapt predict`` per adapter would add on top, are not counted, so the ratio is a lower bound.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# as the CLI does before torch is imported: spinning OpenMP waits are 10-30x slower on a shared CPU
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from sciadapt.peft import core  # noqa: E402
from sciadapt.predict.adapters import applied  # noqa: E402
from sciadapt.predict.forecast import forecast_frame, zero_shot_task  # noqa: E402
from sciadapt.registry import BACKBONES, PEFT_METHODS  # noqa: E402

#: name -> (builder, keyword arguments, rows of data)
SIZES: dict[str, tuple[str, dict[str, Any], int]] = {
    "base": ("ttm", {"context_length": 512, "horizon": 96}, 1200),
    "tiny": ("ttm_tiny", {}, 300),
}


def write_series(path: Path, rows: int) -> Path:
    t = np.arange(rows)
    y = np.sin(2 * np.pi * t / 24) + 0.01 * t + np.random.default_rng(0).normal(0, 0.1, rows)
    pd.DataFrame({"date": pd.date_range("2024-01-01", periods=rows, freq="h"), "y0": y}).to_csv(path, index=False)
    return path


def make_adapter(weights: Path, data: Path, folder: Path, seed: int) -> Path:
    task, _, _ = zero_shot_task("ttm", str(weights), str(data), folder.parent / "unused.csv")
    core.attach(task, PEFT_METHODS.build("lora", r=8, alpha=16), "x")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in core.peft_layers(task).values():
            b = layer.lora_B["x"].weight
            b.copy_(torch.randn(b.shape, generator=gen) * 0.05)
    return core.save_adapter(task, folder, "x")


def measure(size: str, repeats: int, n_adapters: int, tmp: Path) -> dict[str, Any]:
    builder, kwargs, rows = SIZES[size]
    torch.manual_seed(0)
    model = BACKBONES.build(builder, **kwargs)
    weights = Path(model.save_pretrained(tmp / f"{size}_base"))
    data = write_series(tmp / f"{size}.csv", rows)
    folders = [make_adapter(weights, data, tmp / f"{size}_adapter{i}", i) for i in range(n_adapters)]
    out = tmp / "unused.csv"

    task, dm, inputs = zero_shot_task("ttm", str(weights), str(data), out)
    switch: list[float] = []
    reload: list[float] = []
    forecast: list[float] = []
    base_checked: dict[tuple[str, ...], str] = {}  # as predict keeps it: one base checksum per target set
    for r in range(repeats):
        folder = folders[r % n_adapters]
        t0 = time.perf_counter()
        live = applied(task, folder, "live", base_checked)
        live.__enter__()
        t1 = time.perf_counter()
        a, _ = forecast_frame(task, dm, inputs)
        t2 = time.perf_counter()
        live.__exit__(None, None, None)
        t3 = time.perf_counter()
        switch.append((t1 - t0) + (t3 - t2))
        forecast.append(t2 - t1)

        t0 = time.perf_counter()
        fresh, fdm, finputs = zero_shot_task("ttm", str(weights), str(data), out)
        core.load_adapter(fresh, folder, "live")
        reload.append(time.perf_counter() - t0)
        b, _ = forecast_frame(fresh, fdm, finputs)
        if not np.allclose(a.to_numpy(), b.to_numpy(), rtol=1e-5, atol=1e-5):
            raise SystemExit(f"{size}: the switched forecast differs from the reloaded one (adapter {folder})")
    sw, rl, fc = statistics.median(switch), statistics.median(reload), statistics.median(forecast)
    return {
        "size": size,
        "params": sum(p.numel() for p in model.parameters()),
        "base_bytes": sum(f.stat().st_size for f in weights.iterdir()),
        "adapter_bytes": (folders[0] / "adapter_model.safetensors").stat().st_size,
        "switch_ms": 1e3 * sw,
        "reload_ms": 1e3 * rl,
        "forecast_ms": 1e3 * fc,
        "ratio": rl / sw,
        "ratio_with_forecast": (rl + fc) / (sw + fc),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20, help="timed switches and reloads each (median)")
    p.add_argument("--adapters", type=int, default=3, help="adapters cycled through")
    p.add_argument("--sizes", default="base,tiny", help=f"comma-separated, of {', '.join(SIZES)}")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    with tempfile.TemporaryDirectory(prefix="adapter-switch-") as tmp:
        for size in args.sizes.split(","):
            rows.append(measure(size, args.repeats, args.adapters, Path(tmp)))
    print(f"adapter switch vs base reload, median of {args.repeats}, {args.adapters} LoRA r=8 adapters cycled, CPU")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {sys.version.split()[0]}")
    print()
    head = (
        f"{'model':<28} {'params':>9} {'base MB':>8} {'adapter kB':>10} {'switch ms':>10} {'reload ms':>10} "
        f"{'reload/switch':>14} {'forecast ms':>12} {'incl. forecast':>15}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        label = "ttm ctx 512 / h 96 (scratch)" if r["size"] == "base" else "ttm_tiny ctx 64 / h 16"
        print(
            f"{label:<28} {r['params']:>9,} {r['base_bytes'] / 1e6:>8.2f} {r['adapter_bytes'] / 1e3:>10.1f} "
            f"{r['switch_ms']:>10.1f} {r['reload_ms']:>10.1f} {r['ratio']:>13.1f}x {r['forecast_ms']:>12.1f} "
            f"{r['ratio_with_forecast']:>14.2f}x"
        )
    print()
    print("switch = attach + load the adapter (base fingerprint checked) + remove it and restore the base;")
    print("reload = read and build the base + read the data + load the adapter; forecast = one forward pass")
    print("and the CSV frame, the same in both (timed on the loaded base). 'incl. forecast' = (reload +")
    print("forecast) / (switch + forecast). Switched and reloaded forecasts are checked equal on every repeat.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
