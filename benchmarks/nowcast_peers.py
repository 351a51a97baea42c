"""Radar nowcasting baselines: persistence and pysteps' extrapolation nowcast, verified per lead time.

The peer is pysteps' advection nowcast as its own example builds it: Lucas-Kanade optical flow
(``pysteps.motion.get_method("LK")``) on the last three frames in dBR, then semi-Lagrangian
advection (``pysteps.nowcasts.get_method("extrapolation")``) of the last frame, back to mm/h. Both
baselines are scored with :mod:`sciadapt.metrics.nowcast` (CSI/POD/FAR at 0.1/1/5 mm/h, FSS at
1 mm/h over 1-32 km, MAE) on the KNMI 5-minute composites of 26 Aug 2010, for the initial times of
the test part (frames 61-92, 1-based) that have all 12 leads (5-60 min) inside it: frames 61-80.
Inputs before an initial time are past observations and may come from before frame 61.

Pixels are scored where the observation has data (the radars' range); a forecast pixel without a
value (extrapolation advects nothing in from outside the grid) counts as "no rain" — the forecast
is charged for it, not excused — so both baselines are scored on the same pixels.

    pip install -e ".[nowcast]"  # pysteps (and opencv-python-headless for the LK flow)
    python benchmarks/nowcast_peers.py ../shared/data/gridded/knmi_20100826
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from sciadapt.metrics import nowcast as nm
from sciadapt.metrics.bootstrap import metric_interval
from sciadapt.tasks.nowcast import extrapolation_nowcast

RESULTS = Path(__file__).parent / "results"
HEADLINE = ["csi@1", "fss@1/1km", "fss@1/8km", "fss@1/32km", "mae"]


def load_frames(folder: Path) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Every KNMI HDF5 frame of ``folder`` in time order, in mm/h ``(T, H, W)``, their names and metadata."""
    from pysteps.io.importers import import_knmi_hdf5
    from pysteps.utils import to_rainrate

    files = sorted(folder.glob("*.h5"))
    if not files:
        raise SystemExit(f"no KNMI HDF5 frames (*.h5) in {folder}")
    fields, meta = [], {}
    for f in files:
        r, _, meta = import_knmi_hdf5(str(f))
        rr, meta = to_rainrate(r, meta)
        fields.append(rr)
    return np.stack(fields), [f.name for f in files], meta


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, nargs="?", default=Path("../shared/data/gridded/knmi_20100826"))
    p.add_argument("--first", type=int, default=61, help="first frame of the test part (1-based)")
    p.add_argument("--last", type=int, default=92, help="last frame of the test part (1-based)")
    p.add_argument("--leads", type=int, default=12)
    p.add_argument("--timestep", type=float, default=5.0, help="minutes between frames and leads")
    p.add_argument("--out", type=Path, default=RESULTS / "nowcast_knmi_baselines")
    args = p.parse_args(argv)
    logging.getLogger("pysteps").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=RuntimeWarning)

    t0 = time.perf_counter()
    rates, names, meta = load_frames(args.folder)
    t_load = time.perf_counter() - t0
    spacing = float(meta["xpixelsize"])  # km (KNMI: 1 km)
    inits = list(range(args.first - 1, args.last - args.leads))  # 0-based; init + leads <= last
    lead_min = [args.timestep * (k + 1) for k in range(args.leads)]

    parts: dict[str, list[nm.NowcastSums]] = {"persistence": [], "pysteps_extrapolation": []}
    t_fc = {"persistence": 0.0, "pysteps_extrapolation": 0.0}
    t_score = 0.0
    for i in inits:
        obs = rates[i + 1 : i + 1 + args.leads]  # (L, H, W)
        mask = np.isfinite(obs)  # the radars' range at each valid time
        ts = time.perf_counter()
        pers = np.broadcast_to(rates[i], obs.shape)
        t_fc["persistence"] += time.perf_counter() - ts
        ts = time.perf_counter()
        extrap = extrapolation_nowcast(rates[: i + 1], args.leads)
        t_fc["pysteps_extrapolation"] += time.perf_counter() - ts
        ts = time.perf_counter()
        for name, fc in (("persistence", pers), ("pysteps_extrapolation", extrap)):
            filled = np.where(np.isfinite(fc), fc, 0.0)  # no value forecast = no rain forecast
            parts[name].append(nm.nowcast_sums(filled, obs, spacing, mask=mask))
        t_score += time.perf_counter() - ts
    total = time.perf_counter() - t0

    sums = {k: nm.concat_sums(v) for k, v in parts.items()}
    tables = {k: nm.nowcast_table(s, lead_min) for k, s in sums.items()}
    n_pix = int(sums["persistence"].abs_error[..., 1].mean())
    head = (
        f"KNMI radar composite 2010-08-26 ({rates.shape[1]}x{rates.shape[2]}, {spacing:g} km), "
        f"{len(inits)} initial times {names[inits[0]][-15:-3]}..{names[inits[-1]][-15:-3]} "
        f"(frames {inits[0] + 1}-{inits[-1] + 1}), leads {lead_min[0]:g}-{lead_min[-1]:g} min, "
        f"~{n_pix} observed pixels per field"
    )
    blocks = [head, ""]
    for title, metrics in (
        ("Headline: CSI at 1 mm/h, FSS at 1 mm/h (1, 8, 32 km), MAE (mm/h)", HEADLINE),
        ("CSI", [f"csi@{t:g}" for t in nm.THRESHOLDS]),
        ("POD", [f"pod@{t:g}" for t in nm.THRESHOLDS]),
        ("FAR", [f"far@{t:g}" for t in nm.THRESHOLDS]),
        ("FSS at 1 mm/h", [f"fss@1/{k:g}km" for k in nm.FSS_SCALES_KM]),
    ):
        blocks += [title, nm.lead_table(tables, metrics), ""]
    timing = (
        f"time: {total:.1f} s total; load {t_load:.1f} s, persistence {t_fc['persistence']:.2f} s, "
        f"pysteps extrapolation {t_fc['pysteps_extrapolation']:.1f} s "
        f"({t_fc['pysteps_extrapolation'] / len(inits):.2f} s per initial time), scoring {t_score:.1f} s "
        f"({t_score / (2 * len(inits)):.2f} s per 12-lead forecast)"
    )
    windows = {k: nm.nowcast_window_scores(s, lead_min) for k, s in sums.items()}
    intervals: dict[str, dict[str, Any]] = {}
    lines = [
        "extrapolation - persistence, paired moving-block bootstrap 95% interval over initial times",
        "| metric | " + " | ".join(f"{m:g} min" for m in lead_min) + " | all |",
        "|---|" + "---:|" * (len(lead_min) + 1),
    ]
    for metric in ("csi@1", "fss@1/8km"):
        cells = []
        for key in [f"{metric}/{m:g}min" for m in lead_min] + [metric]:
            iv = metric_interval(windows["pysteps_extrapolation"][key], windows["persistence"][key], seed=0)
            intervals[key] = iv.as_dict()
            cells.append(f"{iv.diff:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    blocks += [*lines, "", timing]
    text = "\n".join(blocks)
    print(text)
    result = {
        "data": str(args.folder),
        "initial_frames_1based": [i + 1 for i in inits],
        "lead_minutes": lead_min,
        "spacing_km": spacing,
        "fss_sizes_px": list(sums["persistence"].sizes),
        "tables": {
            k: {m: {str(lead): v for lead, v in row.items()} for m, row in t.items()} for k, t in tables.items()
        },
        "extrapolation_minus_persistence": intervals,
        "timing_s": {"total": total, "load": t_load, "score": t_score, **t_fc},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".txt").write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
