"""Sweeps: the cartesian product of ``key=v1,v2`` overrides, run one after another, summarised in one table.

``sciadapt submit <pipeline> --sweep stages.lora.peft.r=4,8,16 stages.*.optim.lr=1e-4,3e-4`` validates
every combination before the first run starts (a key that does not exist fails them all at once),
then runs each into ``<run_dir>/<pipeline>-sweep-<stamp>/<i>/`` and writes ``sweep.json``;
``sciadapt summarize <sweep dir>`` prints one table over the runs' ``summary.json`` files.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

from sciadapt.errors import ConfigError
from sciadapt.runs import read_json, write_json


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
    for spec in configs:  # every point's stage rules, before anything runs
        plan(spec)
    base = Path(configs[0].run_dir)
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


def summarize(path: Path) -> dict[str, Any]:
    """One row per finished run under ``path``: its sweep point (or run name) and final metrics.

    Raises:
        ConfigError: If ``path`` holds no finished run.
    """
    points: dict[str, list[str]] = {}
    if (path / "sweep.json").is_file():
        for run in read_json(path / "sweep.json")["runs"]:
            if run.get("run_dir"):
                points[str(Path(run["run_dir"]).resolve())] = run["point"]
    rows = []
    for summary_path in sorted(path.rglob("summary.json")):
        summary = json.loads(summary_path.read_text())
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
