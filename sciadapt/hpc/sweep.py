"""Sweeps: the cartesian product of ``key=v1,v2`` overrides, run one after another, summarised in one table.

``sciadapt submit <pipeline> --sweep stages.lora.peft.r=4,8,16 stages.*.optim.lr=1e-4,3e-4`` validates
every combination before the first run starts (a key that does not exist fails them all at once),
then runs each into ``<run_dir>/<pipeline>-sweep-<stamp>/<i>/`` and writes ``sweep.json``;
``sciadapt summarize <sweep dir>`` prints one table over the runs' ``summary.json`` files.
"""

from __future__ import annotations

import copy
import itertools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sciadapt.errors import CheckpointError, ConfigError, SciadaptError
from sciadapt.runs import check_output_location, read_json, write_json

if TYPE_CHECKING:
    from sciadapt.spec import PipelineSpec


def _split_values(text: str) -> list[str]:
    """``a,b,[1,2],{x: 1}`` -> ``["a", "b", "[1,2]", "{x: 1}"]``: commas inside brackets stay."""
    values, depth, current = [], 0, ""
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += ch
    values.append(current)
    return [v.strip() for v in values]


def expand_sweep(specs: list[str]) -> list[list[str]]:
    """``["a=1,2", "b=x,y"]`` -> ``[["a=1", "b=x"], ["a=1", "b=y"], ["a=2", "b=x"], ["a=2", "b=y"]]``.

    Raises:
        ConfigError: A spec that is not ``key=v1[,v2...]``, a key given twice, or an empty value.
    """
    axes: list[list[str]] = []
    keys: list[str] = []
    problems = []
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"--sweep {spec!r}: expected key=value1,value2 (e.g. optim.lr=1e-4,3e-4)")
            continue
        if key in keys:
            problems.append(f"--sweep: {key} is given twice; list all its values in one key=v1,v2")
            continue
        values = _split_values(text)
        if any(v == "" for v in values):
            problems.append(f"--sweep {spec!r}: an empty value; separate values with single commas")
            continue
        keys.append(key)
        axes.append([f"{key}={v}" for v in values])
    if problems:
        raise ConfigError(problems)
    return [list(combo) for combo in itertools.product(*axes)]


def run_sweep(pipeline: str, overrides: list[str], sweep: list[str], console: Any) -> Path:
    """Validate every combination, then run them one after another; returns the sweep folder."""
    from sciadapt.config import load_config
    from sciadapt.stages.evaluate import print_comparison
    from sciadapt.stages.plan import plan
    from sciadapt.stages.runner import fit

    combos = expand_sweep(sweep)
    configs = []
    for combo in combos:
        try:
            configs.append(load_config(pipeline, [*overrides, *combo]))
        except ConfigError as err:
            raise ConfigError(f"sweep point {' '.join(combo)} is invalid, nothing was run:\n{err}") from None
    for combo, spec in zip(combos, configs, strict=True):  # every point's stage rules, before anything runs
        try:
            plan(spec)
        except ConfigError as err:
            raise ConfigError(f"sweep point {' '.join(combo)} is invalid, nothing was run:\n{err}") from None
    base = check_output_location(configs[0].run_dir, "run_dir", folder=True)
    preflight_points(combos, configs, console)
    folder = base / f"{configs[0].name}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    record: dict[str, Any] = {"pipeline": pipeline, "overrides": overrides, "sweep": sweep, "runs": []}
    for i, combo in enumerate(combos):
        console.print(f"[bold]sweep {i + 1}/{len(combos)}[/bold]: {' '.join(combo)}")
        _run, summary = fit(pipeline, [*overrides, *combo, f"run_dir={folder / str(i)}"], console=console)
        print_comparison(summary, console)
        console.print(f"summary: {_run.summary_path}")
        record["runs"].append({"point": combo, "run_dir": summary.get("run_dir")})
        write_json(folder / "sweep.json", record)  # after every run: a killed sweep still lists what finished
    return folder


def preflight_points(combos: list[list[str]], configs: list[PipelineSpec], console: Any = None) -> None:
    """Run the fit preflight of every sweep point (data read, model built, trainer and checkpoints
    checked) before the first one trains, so a point whose data is missing fails the sweep at once
    instead of after the points before it. Points that differ only in settings the preflight does
    not look at (learning rate, epochs, seed ...) share one check.

    Raises:
        SciadaptError: The first point that cannot run, named with its overrides; nothing was run.
    """
    from sciadapt.runs import Run
    from sciadapt.stages.runner import PipelineRunner

    seen: set[str] = set()
    for combo, spec in zip(combos, configs, strict=True):
        run = Run(Path(spec.run_dir) / "_pending", spec)
        key = json.dumps(
            [[p.data, p.model, p.init, p.spec.peft, p.spec.trainable, p.spec.frozen] for p in run.plans]
            + [spec.trainer, spec.run_dir],
            sort_keys=True,
            default=str,
        )
        if key in seen:
            continue
        seen.add(key)
        if console is not None and len(combos) > 1:
            console.print(f"checking sweep point {' '.join(combo)}")
        try:
            PipelineRunner(run, console).preflight()
        except SciadaptError as err:
            new = copy.copy(err)
            new.args = (f"sweep point {' '.join(combo)} cannot run, nothing was run: {err}",)
            raise new from None


def summarize(path: Path) -> dict[str, Any]:
    """One row per finished run under ``path``: its sweep point (or run name) and final metrics.

    Raises:
        ConfigError: If ``path`` holds no finished run.
    """
    points: dict[str, list[str]] = {}
    if not path.is_dir():
        raise ConfigError(f"summarize {path}: no such folder. Fix: give a folder of runs, e.g. runs/ or a sweep folder")
    if (path / "sweep.json").is_file():
        record = read_json(path / "sweep.json", "restore it from a copy, or delete it (runs are then named by folder)")
        runs = record.get("runs") if isinstance(record, dict) else None
        if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
            raise CheckpointError(
                f"{path / 'sweep.json'} is not a sweep record (a mapping with a `runs` list). The file is damaged; "
                "restore it from a copy, or delete it (runs are then named by folder)"
            )
        for run in runs:
            if run.get("run_dir"):
                points[str(Path(run["run_dir"]).resolve())] = run["point"]
    rows = []
    for summary_path in sorted(path.rglob("summary.json")):
        summary = read_json(summary_path, "restore it from a copy, or delete it to leave that run out of the table")
        if not isinstance(summary, dict):
            raise CheckpointError(
                f"{summary_path} is not a run summary (a mapping). The file is damaged; restore it from a copy, "
                "or delete it to leave that run out of the table"
            )
        final = summary.get("final") or {}
        if not final:
            continue
        run_dir = summary_path.parent.resolve()
        label = " ".join(points.get(str(run_dir), [])) or str(run_dir.relative_to(path.resolve()))
        metrics = (summary.get("evaluation") or {}).get("metrics") or []
        rows.append({"run": label, "model": final.get("model"), **{m: final.get(m) for m in metrics}})
    if not rows:
        raise ConfigError(f"{path}: no finished run (no summary.json with a final comparison) below it")
    return {"path": str(path), "rows": rows}
