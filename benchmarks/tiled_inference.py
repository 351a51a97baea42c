"""Scene-scale inference: sciadapt's out-of-core tiled prediction against a naive whole-scene read.

    python benchmarks/tiled_inference.py                      # 8,192^2 scene, 4 bands, 1 round
    python benchmarks/tiled_inference.py --size 4096 --rounds 3 --out results.json

Both methods run the same model (a small seeded CNN: 3x3 conv to 16 channels, ReLU, 1x1 conv to 3
classes) on the same tiles (``--chip`` with ``--overlap``, cosine-blended seams) of the same
generated uint16 GeoTIFF, and both end with the same COG copy, so their class maps are identical
(checked) and the difference is only how the scene moves through memory:

* ``ours``: :func:`sciadapt.predict.tiles.predict_scene`: windowed reads per batch of tiles, weighted
  sums in a buffer one tile tall, rows written to a tiled GeoTIFF as they finish.
* ``naive``: read the whole scene into memory, tile it there, blend into a scene-sized buffer,
  write the class map at once (what in-memory tiling tools do).

Each run is a fresh subprocess (the script re-invokes itself with ``--worker``), because peak
RSS is a per-process high-water mark. ``peak MB`` is that mark (``VmHWM``, i.e. ``ru_maxrss`` without
the parent's pages that Linux folds into a child's ``ru_maxrss`` at exec); ``over base MB`` subtracts
the RSS after imports and model construction (torch and lightning alone take ~1 GB of RSS), which is
the part that grows with the scene. Rounds alternate the order of the two methods; the table gives
medians and ours/naive ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
THREADS = 2
N_CLASSES = 3


def _peak_mb() -> float:
    """Peak RSS of this process image: ``VmHWM`` where Linux has it, else ``ru_maxrss``.

    ``ru_maxrss`` of a spawned child also counts its parent's pages (Linux folds the pre-exec
    memory into it); ``VmHWM`` starts afresh at exec.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _model(n_in: int) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(n_in, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, N_CLASSES, 1)).eval()

    def fn(x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W) -> (B, classes, H, W)
        return net(x.flatten(1, 2))

    return fn


def naive_predict(
    model_fn: Any, image: str, out: Path, chip: int, overlap: int, mean: list[float], std: list[float], batch: int
) -> int:
    """Whole-scene read, in-memory tiling and blending, one write; returns the tile count."""
    import rasterio
    import torch

    from sciadapt.predict.tiles import cog_copy, edge_ramp, tile_starts

    with rasterio.open(image) as src:
        img = src.read().astype(np.float32)  # (C, H, W): the whole scene
        nodata = src.nodata
        geo = {"crs": src.crs, "transform": src.transform}
    C, H, W = img.shape
    ok = ~(img == nodata).any(axis=0) if nodata is not None else np.ones((H, W), bool)
    img = (img - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
    img[:, ~ok] = 0.0
    step = chip - overlap
    tiles = [(y, c) for y in tile_starts(H, chip, step) for c in tile_starts(W, chip, step)]
    acc = np.zeros((N_CLASSES, H, W), np.float32)
    wsum = np.zeros((H, W), np.float32)
    for b0 in range(0, len(tiles), batch):
        part = tiles[b0 : b0 + batch]
        x = np.zeros((len(part), C, 1, chip, chip), np.float32)
        for i, (y, c) in enumerate(part):
            th, tw = min(chip, H - y), min(chip, W - c)
            x[i, :, 0, :th, :tw] = img[:, y : y + th, c : c + tw]
        with torch.inference_mode():
            pred = model_fn(torch.from_numpy(x)).float().numpy()
        for i, (y, c) in enumerate(part):
            th, tw = min(chip, H - y), min(chip, W - c)
            w = edge_ramp(th, overlap, "cosine", y > 0, y + th < H)[:, None] * edge_ramp(
                tw, overlap, "cosine", c > 0, c + tw < W
            )
            acc[:, y : y + th, c : c + tw] += pred[i, :, :th, :tw] * w
            wsum[y : y + th, c : c + tw] += w
    np.divide(acc, wsum[None], out=acc)
    cls = acc.argmax(axis=0).astype(np.uint8)
    cls[~ok] = 255
    tmp = out.with_name(f".{out.name}.tiled.tmp.tif")
    profile = dict(driver="GTiff", height=H, width=W, count=1, dtype="uint8", nodata=255, tiled=True)
    profile.update(blockxsize=512, blockysize=512, compress="DEFLATE", BIGTIFF="IF_SAFER", **geo)
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(cls[None])
    try:
        cog_copy(tmp, out, 512, "DEFLATE", "NEAREST")
    finally:
        tmp.unlink(missing_ok=True)
    return len(tiles)


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(THREADS)
    from sciadapt.predict.tiles import predict_scene

    mean, std = [3000.0] * args.bands, [1000.0] * args.bands
    model_fn = _model(args.bands)
    base = _peak_mb()
    t0 = time.perf_counter()
    if args.worker == "ours":
        rep = predict_scene(
            model_fn,
            args.scene,
            args.out_tif,
            chip_size=args.chip,
            overlap=args.overlap,
            mean=mean,
            std=std,
            batch_size=args.batch,
            n_outputs=N_CLASSES,
        )
        tiles = rep["tiles"]
    else:
        tiles = naive_predict(model_fn, args.scene, Path(args.out_tif), args.chip, args.overlap, mean, std, args.batch)
    seconds = time.perf_counter() - t0
    print(json.dumps({"tiles": tiles, "seconds": seconds, "peak_mb": _peak_mb(), "base_mb": base}))


def _run(method: str, scene: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", method, "--scene", str(scene), "--out-tif", str(out)]
    cmd += [
        "--bands",
        str(args.bands),
        "--chip",
        str(args.chip),
        "--overlap",
        str(args.overlap),
        "--batch",
        str(args.batch),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _same_output(a: Path, b: Path) -> float:
    """Fraction of pixels where the two class maps agree (read block row by block row)."""
    import rasterio
    from rasterio.windows import Window

    agree = total = 0
    with rasterio.open(a) as ra, rasterio.open(b) as rb:
        for r in range(0, ra.height, 512):
            h = min(512, ra.height - r)
            win = Window(0, r, ra.width, h)
            agree += int((ra.read(1, window=win) == rb.read(1, window=win)).sum())
            total += h * ra.width
    return agree / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=8192, help="scene height and width in pixels")
    p.add_argument("--bands", type=int, default=4)
    p.add_argument("--chip", type=int, default=256)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", type=str, default=None, help="also write the results as JSON here")
    p.add_argument("--worker", choices=["ours", "naive"], help=argparse.SUPPRESS)
    p.add_argument("--scene", help=argparse.SUPPRESS)
    p.add_argument("--out-tif", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    spec = importlib.util.spec_from_file_location("raster_make", REPO / "tests/data/raster/make.py")
    assert spec is not None and spec.loader is not None
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    with tempfile.TemporaryDirectory(prefix="tiled_bench_") as tmp:
        folder = Path(tmp)
        scene = folder / "scene.tif"
        t0 = time.perf_counter()
        make.write_large_scene(scene, size=args.size, n_bands=args.bands)
        print(f"scene {args.size} x {args.size} x {args.bands} uint16 written in {time.perf_counter() - t0:.1f} s")
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "naive": []}
        for r in range(args.rounds):
            order = ["ours", "naive"] if r % 2 == 0 else ["naive", "ours"]
            for method in order:
                runs[method].append(_run(method, scene, folder / f"{method}.tif", args))
        agree = _same_output(folder / "ours.tif", folder / "naive.tif")

    def med(method: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[method])

    rows = []
    for method in ("ours", "naive"):
        tiles = runs[method][0]["tiles"]
        rows.append(
            {
                "method": method,
                "tiles": tiles,
                "seconds": med(method, "seconds"),
                "tiles_per_s": tiles / med(method, "seconds"),
                "peak_mb": med(method, "peak_mb"),
                "over_base_mb": statistics.median(x["peak_mb"] - x["base_mb"] for x in runs[method]),
            }
        )
    ours, naive = rows
    print(
        f"\nscene {args.size}^2 x {args.bands} bands, chip {args.chip}, overlap {args.overlap}, batch {args.batch}, "
        f"{args.rounds} round(s), {THREADS} threads; class maps agree on {100 * agree:.4f} % of pixels\n"
    )
    print(f"{'method':<8} {'tiles':>7} {'seconds':>9} {'tiles/s':>9} {'peak MB':>9} {'over base MB':>13}")
    for row in rows:
        print(
            f"{row['method']:<8} {row['tiles']:>7} {row['seconds']:>9.2f} {row['tiles_per_s']:>9.1f} "
            f"{row['peak_mb']:>9.0f} {row['over_base_mb']:>13.0f}"
        )
    ratios = {
        "tiles_per_s": ours["tiles_per_s"] / naive["tiles_per_s"],
        "peak_mb": ours["peak_mb"] / naive["peak_mb"],
        "over_base_mb": ours["over_base_mb"] / max(naive["over_base_mb"], 1e-9),
    }
    print(
        f"{'ours/naive':<8} {'':>7} {'':>9} {ratios['tiles_per_s']:>9.2f} {ratios['peak_mb']:>9.2f} "
        f"{ratios['over_base_mb']:>13.2f}"
    )
    if args.out:
        Path(args.out).write_text(
            json.dumps({"args": vars(args), "rows": rows, "ratios": ratios, "agree": agree}, indent=2)
        )


if __name__ == "__main__":
    main()
