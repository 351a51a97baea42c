"""Weight averaging after adaptation under a domain shift, in-domain and shifted side by side.

Two shipped pipelines, run as a user runs them (only the data chosen):

- ``quickstart_averaging``: N-HiTS trained at Sand Point AK, fine-tuned at Greensboro NC at three learning
  rates; shifted split = the AK test split (what the source domain keeps).
- ``solar_cross_site_averaging``: N-HiTS on the clear-sky index, TMY3 Greensboro NC -> the NSRDB PSM3 2017
  site (40.5N 108.5W, Colorado plateau), few-shot (10 % of the target's train windows); shifted = NC.

Each run scores source-only, the three fine-tunes, the EMA of the middle one, WiSE-FT (alpha 0.5), the
uniform and greedy soups and Model Stock; then ``sciadapt merge wise_ft`` sweeps alpha over 0..1 and keeps
the alpha best on validation. One table per setup.

    python benchmarks/averaging_shift.py [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sciadapt.cli import main as cli  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ALPHAS = ",".join(f"{a / 10:g}" for a in range(11))
SOLAR_SITE = [
    "data.latitude=40.5137",
    "data.longitude=-108.5449",
    "data.timezone=-07:00",
    "data.split=dates",
    "data.split_dates=[2017-10-01,2017-11-01]",
]


def run(pipeline: str, overrides: list[str], root: Path) -> Path:
    shutil.rmtree(root / pipeline, ignore_errors=True)
    if cli(["fit", pipeline, f"run_dir={root}", "trainer.enable_progress_bar=false", *overrides]) != 0:
        raise SystemExit(f"sciadapt fit {pipeline} failed")
    (out,) = sorted((root / pipeline).glob("*"))[-1:]
    return out


def wise_grid(run_dir: Path, out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    args = ["merge", "wise_ft", str(run_dir), "--stage", "ft_mid", "--anchor", "source", "--alpha", ALPHAS]
    if cli([*args, "--out", str(out)]) != 0:
        raise SystemExit("sciadapt merge wise_ft failed")
    merged: dict[str, Any] = json.loads((out / "merge.json").read_text())
    return merged


def table(run_dir: Path, wise: dict[str, Any], metrics: list[str]) -> list[str]:
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = summary["evaluation"]["rows"]
    cols = [*metrics, *(f"{m}@shifted" for m in metrics)]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['model']} | " + " | ".join(f"{r.get(c, float('nan')):.4f}" for c in cols) + " |")
    test, shifted = wise["merged"].get("test", {}), wise["merged"].get("shifted", {})
    label = f"WiSE-FT, alpha {wise['alpha']:g} chosen on validation"
    lines.append(
        f"| {label} | "
        + " | ".join(f"{test.get(m, float('nan')):.4f}" for m in metrics)
        + " | "
        + " | ".join(f"{shifted.get(m, float('nan')):.4f}" for m in metrics)
        + " |"
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--work", type=Path, default=Path("/tmp/sciadapt-averaging"))
    args = p.parse_args(argv)
    out: list[str] = []
    for title, pipeline, overrides, metrics in (
        ("Quickstart AK -> NC (scaled MSE/MAE)", "quickstart_averaging", [], ["mse", "mae"]),
        (
            "Solar TMY3 Greensboro NC -> NSRDB 2017 (W/m^2)",
            "solar_cross_site_averaging",
            [f"data.path={args.data_dir / 'solar' / 'test_psm3_2017.csv'}", *SOLAR_SITE],
            ["rmse", "mae", "skill"],
        ),
    ):
        run_dir = run(pipeline, overrides, args.work)
        wise = wise_grid(run_dir, args.work / f"{pipeline}-wise")
        out += [f"## {title}: `sciadapt fit {pipeline}`", "", *table(run_dir, wise, metrics), ""]
    text = "\n".join(out)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "averaging_shift.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
