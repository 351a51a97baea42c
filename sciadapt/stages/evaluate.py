"""Scoring and comparison tables: a stage's test, the final comparison, the loss plot.

The comparison scores every chosen stage's final weights and every baseline of the task on one
test split (the last stage's data, with ``evaluation.data`` overrides), so the rows compare.

Every row after the first also gets, per metric, its difference to the first row (the first
baseline) with a 95 % interval: a paired moving-block bootstrap over the test windows (initial
times of a rollout, images of a dense task) that recomputes both rows' metric from the same
resampled windows (:mod:`sciadapt.metrics.bootstrap`), seeded by the pipeline's seed. The windows
come from the task's ``test_window_scores``; a task that keeps none gets no intervals.
"""

from __future__ import annotations

import math
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback

from sciadapt.metrics.bootstrap import WindowScores, default_block, metric_interval
from sciadapt.runs import load_into, load_weights, read_csv_rows, save_figure
from sciadapt.stages.callbacks import EMA_CKPT
from sciadapt.stages.plan import evaluation_data
from sciadapt.stages.preempt import enter_phase, fault_point

if TYPE_CHECKING:
    from rich.console import Console

    from sciadapt.stages.runner import PipelineRunner
    from sciadapt.tasks.base import Task

#: metrics where a higher value is better (the table marks the best row of each column)
HIGHER_IS_BETTER = {"miou", "iou", "f1", "mean_f1", "accuracy", "r2", "acc", "skill", "csi", "pod", "fss"}
#: columns a comparison table may use when the output is not a terminal
LOG_WIDTH = 200
#: the suffix of the metrics on ``evaluation.shifted``'s test split (``mse@shifted``)
SHIFTED = "@shifted"
#: signed errors, best nearest zero
NEAREST_ZERO = {"bias", "mbe"}

#: the comparison's intervals: coverage, bootstrap replicates, method
INTERVAL_LEVEL = 0.95
INTERVAL_RESAMPLES = 2000
INTERVAL_METHOD = "paired moving-block bootstrap"
#: the marker of a cell whose interval covers 0 (no clear difference to the reference row)
COVERS_ZERO = "≈"

# The per-window scores of each stage's own test, by the datamodule they were scored on (the runner
# keeps one per data config): compare() reuses a stage's test row, and takes its windows from here.
# A run resumed in another process has none, so compare() scores those stages again for them.
_STAGE_WINDOWS: weakref.WeakKeyDictionary[Any, dict[str, dict[str, WindowScores]]] = weakref.WeakKeyDictionary()


def eval_trainer(accelerator: str, root: Path, callbacks: list[Callback] | None = None) -> pl.Trainer:
    """A one-device trainer for scoring (under DDP each rank scores the whole split); ``callbacks``:
    the run's signal points (:class:`sciadapt.stages.preempt.SignalPoints`)."""
    return pl.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        callbacks=callbacks,
    )


def score(task: Task, dm: Any, trainer: pl.Trainer) -> dict[str, Any]:
    """The task's test metrics on ``dm``'s test split."""
    task.follow_data(dm.facts())
    trainer.test(task, datamodule=dm, verbose=False)  # type: ignore[arg-type]
    stage = getattr(task.stage, "name", "")
    if stage and task.test_window_scores:
        try:
            _STAGE_WINDOWS.setdefault(dm, {})[stage] = dict(task.test_window_scores)
        except TypeError:  # a datamodule without weak references: compare() scores the stage again
            pass
    return dict(task.test_results)


def _kept_windows(dm: Any, stage: str) -> dict[str, WindowScores] | None:
    try:
        return _STAGE_WINDOWS.get(dm, {}).get(stage)
    except TypeError:
        return None


def split_name(dm: Any) -> str:
    """``<file> test split (N windows)``: how the comparison names a datamodule's test split."""
    test_windows = len(dm.test_dataloader().dataset)
    return f"{Path(str(getattr(dm, 'path', 'data'))).name} test split ({test_windows:,} windows)"


def compare(runner: PipelineRunner, dm: Any, shifted: Any = None) -> dict[str, Any]:
    """Every chosen stage's final weights and every baseline, on ``dm``'s test split; a stage with
    ``ema`` also gets a row of its averaged weights (``<label> (EMA)``) right after its own.

    With ``shifted`` (the datamodule of ``evaluation.shifted``) every row is also scored on its test
    split: the metrics ``<metric>@shifted`` beside the in-domain ones (``metrics`` lists both,
    ``shifted`` says where), with their own intervals.

    A signal meanwhile stops it before the next row or test batch (``runner.check``); nothing of it
    is written until it is whole, so the resume redoes it.
    """
    spec = runner.spec
    ev = spec.evaluation
    order = [p.name for p in runner.plans]
    names = ev.stages or order
    labels = ev.labels or {}
    rows: list[dict[str, Any]] = []
    windows: list[dict[str, WindowScores]] = []  # per row: its per-window scores (for the intervals)
    enter_phase("compare", "")
    fault_point("compare")
    if ev.baselines:
        runner.task.follow_data(dm.facts())
    for b in ev.baselines:
        runner.task.test_window_scores = {}
        rows.append({"model": b.replace("_", "-"), **runner.task.baseline(b, dm)})
        windows.append(dict(runner.task.test_window_scores))
        if shifted is not None:
            runner.task.follow_data(shifted.facts())
            runner.task.test_window_scores = {}
            _add_shifted(rows[-1], windows[-1], runner.task.baseline(b, shifted), runner.task.test_window_scores)
            runner.task.follow_data(dm.facts())
        runner.check("compare")
    last_data = evaluation_data(spec)
    for name in names:
        plan = runner.plans[order.index(name)]
        done = runner.summary["stages"].get(name, {}).get("test")
        if done is not None and plan.data != last_data:
            done = None  # scored on other data: score again on this split
        kept = _kept_windows(dm, name) if done is not None else None
        loaded = False
        if done is not None and (kept is not None or not ev.baselines or not windows[0]):
            # the stage was already scored with these final weights on this very test split
            rows.append({"model": labels.get(name, name), "stage": name, **done})
            windows.append(dict(kept or {}))
        else:
            runner.fresh_task(plan.index)
            ckpt = runner.out.final_ckpt(name)
            load_into(runner.task, load_weights(ckpt), ckpt)
            loaded = True
            scored = runner.test(None, dm, phase="compare", stage=name)
            # a stage scored before (its windows only needed again) keeps the row its test gave
            rows.append({"model": labels.get(name, name), "stage": name, **(done if done is not None else scored)})
            windows.append(dict(runner.task.test_window_scores))
            runner.check("compare")
        if shifted is not None:
            if not loaded:
                runner.fresh_task(plan.index)
                ckpt = runner.out.final_ckpt(name)
                load_into(runner.task, load_weights(ckpt), ckpt)
            _score_shifted(runner, shifted, name, rows[-1], windows[-1])
        if plan.spec.ema is not None:  # the average of the stage's weights, right after its own row
            runner.fresh_task(plan.index)
            ckpt = runner.out.stage_dir(name) / EMA_CKPT
            load_into(runner.task, load_weights(ckpt), ckpt)
            scored = runner.test(None, dm, phase="compare", stage=name)
            rows.append({"model": f"{labels.get(name, name)} (EMA)", "stage": name, "ema": True, **scored})
            windows.append(dict(runner.task.test_window_scores))
            runner.check("compare")
            if shifted is not None:
                _score_shifted(runner, shifted, name, rows[-1], windows[-1])
    metrics = list(ev.metrics)
    out: dict[str, Any] = {"data": split_name(dm), "metrics": metrics, "rows": rows}
    if shifted is not None:
        metrics += [f"{m}{SHIFTED}" for m in ev.metrics]
        out["shifted"] = {"data": split_name(shifted), "overrides": dict(ev.shifted or {})}
    if ev.baselines:  # the reference of the intervals is the first baseline
        unit = getattr(runner.task, "WINDOW_UNIT", "test windows")
        interval = intervals(rows, windows, metrics, spec.seed, unit)
        if interval is not None:
            out["interval"] = interval
    return out


def _add_shifted(
    row: dict[str, Any], windows: dict[str, WindowScores], scored: dict[str, Any], scores: dict[str, WindowScores]
) -> None:
    """Put a row's metrics and per-window scores on the shifted split beside its in-domain ones."""
    row.update({f"{k}{SHIFTED}": v for k, v in scored.items() if isinstance(v, int | float)})
    windows.update({f"{k}{SHIFTED}": v for k, v in scores.items()})


def _score_shifted(runner: PipelineRunner, shifted: Any, stage: str, row: dict[str, Any], windows: Any) -> None:
    """The loaded weights of ``row`` on the shifted test split."""
    scored = runner.test(None, shifted, phase="compare", stage=stage)
    _add_shifted(row, windows, scored, dict(runner.task.test_window_scores))
    runner.check("compare")


def intervals(
    rows: list[dict[str, Any]],
    windows: list[dict[str, WindowScores]],
    metrics: list[str],
    seed: int,
    unit: str = "test windows",
    *,
    level: float = INTERVAL_LEVEL,
    resamples: int = INTERVAL_RESAMPLES,
) -> dict[str, Any] | None:
    """Each row's difference to the first row, per metric, with its bootstrap interval.

    Adds ``row["intervals"] = {metric: {"diff", "low", "high", "covers_zero"}}`` to every row after
    the first that has per-window scores of a metric the first row has too, and returns what the
    table's footnote says of them (``None`` when the first row has no per-window scores):
    ``{"method", "reference", "level", "resamples", "block", "windows", "unit", "seed", "metrics",
    "without"}`` (``without``: the metrics of the table that have no interval).
    """
    if len(rows) < 2 or not windows or not windows[0]:
        return None
    ref = windows[0]
    n = next(iter(ref.values())).n
    with_interval: set[str] = set()
    for row, scores in zip(rows[1:], windows[1:], strict=True):
        found = {}
        for m in metrics:
            if m not in ref or m not in scores or scores[m].sums.shape != ref[m].sums.shape:
                continue
            iv = metric_interval(scores[m], ref[m], level=level, replicates=resamples, seed=seed)
            if math.isfinite(iv.diff) and math.isfinite(iv.low) and math.isfinite(iv.high):
                found[m] = {"diff": iv.diff, "low": iv.low, "high": iv.high, "covers_zero": iv.covers_zero}
                with_interval.add(m)
        if found:
            row["intervals"] = found
    return {
        "method": INTERVAL_METHOD,
        "reference": rows[0]["model"],
        "level": level,
        "resamples": resamples,
        "block": default_block(n) if n else 0,
        "windows": n,
        "unit": unit,
        "seed": seed,
        "metrics": [m for m in metrics if m in with_interval],
        "without": [m for m in metrics if m not in with_interval],
    }


def plot_losses(run_dir: Path, pipeline: str) -> None:
    """``plots/loss.png``: train and validation loss over every epoch of every stage."""
    rows = read_csv_rows(run_dir / "metrics.csv")
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(rows))
    for key in ("train/loss", "val/loss"):
        ys = [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows]
        ax.plot(x, ys, marker="o", ms=3, label=key)
    # a metrics.csv of another shape (damaged, hand-edited) still plots; stage bounds need the column
    stages = [str(r.get("stage") or "") for r in rows]
    bounds = [j for j in range(1, len(rows)) if stages[j] != stages[j - 1]]
    for j in bounds:
        ax.axvline(j - 0.5, color="grey", ls=":")
    ax.set_xlabel("epoch (all stages)")
    ax.set_ylabel("loss (scaled)")
    ax.set_title(f"{pipeline}: " + " → ".join(dict.fromkeys(s for s in stages if s)))
    ax.legend()
    fig.tight_layout()
    save_figure(fig, run_dir / "plots" / "loss.png")


def print_table(console: Console, table: Any) -> None:
    """Print a rich table whole: in a log file (a SLURM job, a pipe) rich would squeeze it into 80
    columns and crop what does not fit, so it gets the room it needs there (up to LOG_WIDTH); a
    terminal keeps its own width."""
    width = console.width
    wanted = console.measure(table, options=console.options.update_width(LOG_WIDTH)).maximum
    if not console.is_terminal and wanted > width:
        console.width = wanted
        try:
            console.print(table)
        finally:
            console.width = width
    else:
        console.print(table)


def print_comparison(summary: dict[str, Any], console: Console) -> None:
    """The comparison of a finished run as one table, the best value of each column in bold; under
    each value of a row after the first, its difference to the first row with its interval (runs
    written before intervals existed print without them)."""
    from rich.table import Table

    ev = summary.get("evaluation") or {}
    if not ev.get("rows"):
        return
    metrics = ev["metrics"]
    where = str(ev.get("data", ""))
    title = f"{summary['pipeline']}: {where if 'test' in where else 'test split of ' + where}"
    if ev.get("shifted"):  # the columns "<metric> shifted" are scored on another split
        title += f"; shifted: {ev['shifted'].get('data', '')}"
    table = Table(title=title)
    # the row names stay whole; the Δ lines under the values wrap first in a narrow console
    table.add_column("model", min_width=min(30, max(len(str(r["model"])) for r in ev["rows"])))
    for m in metrics:
        table.add_column(_header(m), justify="right")

    def finite(v: Any) -> bool:
        return isinstance(v, int | float) and math.isfinite(v)

    best = {}
    for m in metrics:
        values = [r[m] for r in ev["rows"] if finite(r.get(m))]
        if values:
            # scores (IoU, F1, accuracy, R^2, ACC) are best high, errors best low; bias best near 0
            # "rmse/24h", "csi@1/10min": the score is the name before any "/" or "@"
            base = m.split("/")[0].split("@")[0]
            pick = max if base in HIGHER_IS_BETTER else min
            best[m] = min(values, key=abs) if base in NEAREST_ZERO else pick(values)
    iv = ev.get("interval") or {}
    for r in ev["rows"]:
        cells = []
        for m in metrics:
            v = r.get(m)
            text = "-" if v is None else f"{v:.4f}"
            cell = f"[bold green]{text}[/]" if finite(v) and v == best.get(m) else text
            ci = (r.get("intervals") or {}).get(m)
            if ci:
                cell += "\n" + _delta_text(ci)
            cells.append(cell)
        table.add_row(r["model"], *cells)
    # in a log file (a SLURM job, a pipe) rich would squeeze the table into 80 columns and crop what does
    # not fit: give it the room it needs there (up to LOG_WIDTH); a terminal keeps its own width
    print_table(console, table)
    if iv.get("metrics"):
        console.print(_interval_footnote(iv, metrics), style="dim", highlight=False)


def _delta_text(ci: dict[str, Any]) -> str:
    """``Δ -0.0312`` over ``[-0.0401, -0.0223]`` (two lines, so four metrics fit 80 columns), the
    marker in front where the interval covers 0."""
    from rich.markup import escape

    mark = f"[yellow]{COVERS_ZERO}[/] " if ci.get("covers_zero") else ""
    bounds = escape(f"[{ci['low']:.3g}, {ci['high']:.3g}]")
    return f"{mark}[dim]Δ {ci['diff']:+.3g}\n{bounds}[/]"


def _interval_footnote(iv: dict[str, Any], metrics: list[str]) -> str:
    from rich.markup import escape

    ref = iv.get("reference", "the first row")
    lines = [
        f"Δ: difference to {ref} [{100 * float(iv.get('level', INTERVAL_LEVEL)):g} % interval: "
        f"{iv.get('method', INTERVAL_METHOD)} over the {int(iv.get('windows', 0)):,} {iv.get('unit', 'test windows')}, "
        f"blocks of {iv.get('block', '?')}, {int(iv.get('resamples', 0)):,} resamples, seed {iv.get('seed', '?')}]; "
        f"{COVERS_ZERO}: the interval covers 0, no clear difference to {ref}."
    ]
    without = [_header(m) for m in iv.get("without", []) if m in metrics]
    if without:
        lines.append(f"No interval for {', '.join(without)}: the task keeps no per-window scores of it for both rows.")
    return escape("\n".join(lines))


def _header(metric: str) -> str:
    if metric.endswith(SHIFTED):  # the shifted split's column: "MSE shifted"
        return f"{_header(metric[: -len(SHIFTED)])} shifted"
    return {"smape": "sMAPE"}.get(metric, metric.upper())
