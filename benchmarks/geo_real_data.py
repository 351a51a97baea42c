"""Real data for the geospatial pipelines: flood water against NDWI, land cover against the majority class.

    python benchmarks/geo_real_data.py                  # both tables (about 3 + 2 minutes on 2 CPU cores)
    python benchmarks/geo_real_data.py --only flood     # one of them
    python benchmarks/geo_real_data.py --epochs 5       # a quick look (fewer epochs per candidate)

Data (``../shared/data/geo``; the script stops with a message when it is absent):

* (a) ``sen1floods11/``: one hand-labelled Sen1Floods11 chip (Spain_7370579, 512 x 512 px, Sentinel-2
  L1C). ``configs/data/sen1floods11.yaml`` splits it: train on the left half (top 60 %), validate on
  the rest of the left half, test on the right half. Six bands (BLUE, GREEN, RED, NIR_NARROW = B8A,
  SWIR_1, SWIR_2).
* (b) ``eolearn-s2/``: eo-learn's example EOPatch (101 x 100 px, five Sentinel-2 dates) with its LULC
  land-cover labels (``configs/data/eolearn_s2.yaml``: train left half, validate top 40 % of the
  right half, test the rest).

No pretrained weights can be fetched here, so every model is trained from scratch on CPU. A few
small architectures are candidates; each is one ``init_from: scratch`` stage (with its own
``backbone:`` and ``head:``) of one generated pipeline, so all of them and the baselines are scored by
the runner's own comparison on the same test pixels. **The model of record is chosen by validation
mIoU alone** (of the weights each stage restores: its lowest-validation-loss epoch); the other
candidates' test rows are printed for transparency, never used to choose. Baselines: NDWI
``(GREEN - NIR) / (GREEN + NIR) > 0`` (no training) and the training split's majority class,
computed by the same confusion-matrix code (``SegmentationTask.baseline``).

Both tables are printed and written to ``benchmarks/results/geo_real_data.txt``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
GEO = REPO.parent / "shared" / "data" / "geo"
RESULTS = REPO / "benchmarks" / "results" / "geo_real_data.txt"

STAGE = """
  - name: {name}
    init_from: scratch
    backbone: {backbone}
    head: {head}
    max_epochs: {epochs}
    optim: {{name: adamw, lr: {lr}, weight_decay: 1.0e-4}}
    schedule: {{name: cosine, warmup_steps: 10}}
    early_stopping: {{monitor: val/loss, patience: {patience}}}
    restore_best: true
"""

PIPELINE = """name: {name}
description: "{description}"
defaults:
  - data: {data}
  - trainer: cpu
seed: 0
run_dir: {run_dir}
data: {{images: "{images}", masks: "{masks}"}}
backbone: {first_backbone}
head: {first_head}
task: {{name: segmentation}}
trainer: {{enable_progress_bar: false}}
stages:{stages}
evaluation:
  labels: {labels}
  baselines: {baselines}
  metrics: {metrics}
"""

# (stage name, label, backbone, head, lr)
FLOOD_CANDIDATES = [
    (
        "resnet18_unet",
        "ResNet-18 U-Net (scratch)",
        "{name: timm, model_name: resnet18, pretrained: false}",
        "{name: unet, channels: 128}",
        1e-3,
    ),
    (
        "test_resnet_unet",
        "tiny ResNet U-Net (scratch)",
        "{name: timm_tiny, model_name: test_resnet}",
        "{name: unet, channels: 64}",
        2e-3,
    ),
    (
        "prithvi_tiny_upernet",
        "tiny Prithvi + UPerNet (scratch)",
        "{name: prithvi_tiny}",
        "{name: upernet, channels: 64}",
        1e-3,
    ),
]
LANDCOVER_CANDIDATES = [
    (
        "prithvi_tl_upernet",
        "tiny Prithvi-TL + UPerNet (scratch)",
        "{name: prithvi_tiny, temporal_location: true}",
        "{name: upernet, channels: 64}",
        1e-3,
    ),
    (
        "prithvi_tl_unet",
        "tiny Prithvi-TL + U-Net (scratch)",
        "{name: prithvi_tiny, temporal_location: true}",
        "{name: unet, channels: 64}",
        1e-3,
    ),
    (
        "prithvi_upernet",
        "tiny Prithvi + UPerNet (scratch, no TL)",
        "{name: prithvi_tiny}",
        "{name: upernet, channels: 64}",
        1e-3,
    ),
]


def write_pipeline(
    folder: Path,
    name: str,
    description: str,
    data: str,
    images: Path,
    masks: Path,
    candidates: list[tuple[str, str, str, str, float]],
    epochs: int,
    patience: int,
    baselines: list[str],
    metrics: list[str],
) -> Path:
    stages = "".join(
        STAGE.format(name=n, backbone=bb, head=hd, epochs=epochs, lr=lr, patience=patience)
        for n, _label, bb, hd, lr in candidates
    )
    labels = "{" + ", ".join(f'{n}: "{label}"' for n, label, *_ in candidates) + "}"
    text = PIPELINE.format(
        name=name,
        description=description,
        data=data,
        run_dir=folder / "runs",
        images=images,
        masks=masks,
        first_backbone=candidates[0][2],
        first_head=candidates[0][3],
        stages=stages,
        labels=labels,
        baselines="[" + ", ".join(baselines) + "]",
        metrics="[" + ", ".join(metrics) + "]",
    )
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def validation_choice(run: Path, stages: list[str]) -> dict[str, dict[str, float]]:
    """Per stage: the validation scores of the epoch whose weights the stage restored (lowest val/loss)."""
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for stage in stages:
        epochs = [r for r in rows if r["stage"] == stage and r.get("val/loss")]
        best = min(epochs, key=lambda r: float(r["val/loss"]))
        out[stage] = {
            "val_miou": float(best["val/miou"]),
            "val_loss": float(best["val/loss"]),
            "epoch": int(best["epoch"]),
            "epochs_run": len(epochs),
        }
    return out


def run_table(
    title: str,
    name: str,
    data: str,
    images: Path,
    masks: Path,
    candidates: list[tuple[str, str, str, str, float]],
    epochs: int,
    patience: int,
    baselines: list[str],
    metrics: list[str],
    folder: Path,
) -> tuple[str, dict[str, Any]]:
    from sciadapt.cli import main

    pipe = write_pipeline(folder, name, title, data, images, masks, candidates, epochs, patience, baselines, metrics)
    command = f"sciadapt fit {pipe.name}"
    t0 = time.perf_counter()
    code = main(["fit", str(pipe)])
    seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"{name}: sciadapt fit exited with {code}")
    (run,) = (folder / "runs" / name).glob("*/summary.json")
    summary = json.loads(run.read_text())
    stages = [c[0] for c in candidates]
    val = validation_choice(run.parent, stages)
    chosen = max(stages, key=lambda s: val[s]["val_miou"])
    return render(title, summary, val, chosen, metrics, pipe, command, seconds), {
        "summary": summary,
        "validation": val,
        "chosen": chosen,
        "seconds": seconds,
        "pipeline": pipe.read_text(),
    }


def render(
    title: str,
    summary: dict[str, Any],
    val: dict[str, dict[str, float]],
    chosen: str,
    metrics: list[str],
    pipe: Path,
    command: str,
    seconds: float,
) -> str:
    rows = summary["evaluation"]["rows"]
    width = max(len(r["model"]) for r in rows) + 14
    head = f"{'model':<{width}} {'params':>7} {'val mIoU':>9} {'epochs':>7} " + " ".join(f"{m:>10}" for m in metrics)
    lines = [title, "", head, "-" * len(head)]
    for r in rows:
        stage = r.get("stage")
        label = r["model"] + (" [selected]" if stage == chosen else "")
        if stage is None:
            label = {"ndwi": "NDWI > 0 (no training)", "majority": "majority class"}.get(r["model"], r["model"])
        v = val.get(stage or "", {})
        vm = f"{v['val_miou']:.4f}" if v else "-"
        ep = f"{v['epoch'] + 1}/{v['epochs_run']}" if v else "-"
        cells = " ".join(f"{r[m]:>10.4f}" if isinstance(r.get(m), float) else f"{'-':>10}" for m in metrics)
        n = summary["stages"].get(stage or "", {}).get("total_params")
        params = f"{n / 1e6:.2f}M" if n else "-"
        lines.append(f"{label:<{width}} {params:>7} {vm:>9} {ep:>7} {cells}")
    test_px = rows[0].get("n_pixels")
    lines += [
        "",
        f"test pixels: {int(test_px):,} labelled; selection by validation mIoU only (epochs: restored/run)",
        f"fit + evaluation: {seconds:.0f} s on this machine; command: {command}  (pipeline {pipe.name} below)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("flood", "landcover"), help="run one table")
    parser.add_argument("--epochs", type=int, default=None, help="max epochs per candidate (default 20 / 40)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the tables are written")
    parser.add_argument("--keep", type=Path, help="keep the generated pipelines and runs in this folder")
    args = parser.parse_args(argv)

    flood = GEO / "sen1floods11"
    eolearn = GEO / "eolearn-s2"
    missing = [p for p in (flood, eolearn) if not p.is_dir()]
    if missing:
        print(f"data absent: {', '.join(map(str, missing))} (../shared/data/geo)", file=sys.stderr)
        return 1
    folder = args.keep or Path(tempfile.mkdtemp(prefix="geo_real_data_"))
    folder.mkdir(parents=True, exist_ok=True)
    tables, record, pipelines = [], {}, []
    if args.only in (None, "flood"):
        text, rec = run_table(
            "(a) Sen1Floods11 Spain_7370579: water segmentation, test = right half of the chip",
            "geo_flood",
            "sen1floods11",
            flood / "*_S2Hand.tif",
            flood / "*_LabelHand.tif",
            FLOOD_CANDIDATES,
            args.epochs or 20,
            6,
            ["ndwi", "majority"],
            ["iou/water", "f1/water", "miou", "accuracy"],
            folder,
        )
        tables.append(text)
        record["flood"] = rec
        pipelines.append(rec["pipeline"])
    if args.only in (None, "landcover"):
        text, rec = run_table(
            "(b) eo-learn Sentinel-2 patch (5 dates): land cover, test = bottom 60 % of the right half",
            "geo_landcover",
            "eolearn_s2",
            eolearn / "REFERENCE_SCENES.npy",
            eolearn / "LULC.npy",
            LANDCOVER_CANDIDATES,
            args.epochs or 40,
            8,
            ["majority"],
            ["miou", "mean_f1", "accuracy", "iou/forest"],
            folder,
        )
        tables.append(text)
        record["landcover"] = rec
        pipelines.append(rec["pipeline"])
    report = "\n\n".join(tables)
    print("\n" + report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # the generated files name a temporary run folder; shown as `runs` (the CLI default)
    shown = [text.replace(str(folder / "runs"), "runs") for text in pipelines]
    body = report + "\n\n# generated pipelines (`sciadapt fit <name>.yaml` runs one)\n\n" + "\n".join(shown)
    args.out.write_text(
        f"$ python benchmarks/geo_real_data.py {' '.join(argv or sys.argv[1:])}".rstrip() + "\n\n" + body
    )
    args.out.with_suffix(".json").write_text(
        json.dumps(record, indent=1, default=str).replace(str(folder / "runs"), "runs")
    )
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
