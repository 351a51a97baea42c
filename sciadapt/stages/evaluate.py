"""Scoring and comparison tables: a stage's test, the final comparison, the loss plot.

The comparison scores every chosen stage's final weights and every baseline of the task on one
test split (the last stage's data, with ``evaluation.data`` overrides), so the rows compare.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback

from sciadapt.runs import atomic_write_bytes, load_into, load_weights, read_csv_rows
from sciadapt.stages.plan import evaluation_data
from sciadapt.stages.preempt import enter_phase, fault_point

if TYPE_CHECKING:
    from rich.console import Console

    from sciadapt.stages.runner import PipelineRunner
    from sciadapt.tasks.base import Task

#: metrics where a higher value is better (the table marks the best row of each column)
HIGHER_IS_BETTER = {"miou", "iou", "f1", "mean_f1", "accuracy", "r2", "acc"}


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
    trainer.test(task, datamodule=dm, verbose=False)  # type: ignore[arg-type]
    return dict(task.test_results)


def compare(runner: PipelineRunner, dm: Any) -> dict[str, Any]:
    """Every chosen stage's final weights and every baseline, on ``dm``'s test split.

    A signal meanwhile stops it before the next row or test batch (``runner.check``); nothing of it
    is written until it is whole, so the resume redoes it.
    """
    spec = runner.spec
    ev = spec.evaluation
    order = [p.name for p in runner.plans]
    names = ev.stages or order
    labels = ev.labels or {}
    rows = []
    enter_phase("compare", "")
    fault_point("compare")
    for b in ev.baselines:
        rows.append({"model": b.replace("_", "-"), **runner.task.baseline(b, dm)})
        runner.check("compare")
    last_data = evaluation_data(spec)
    for name in names:
        plan = runner.plans[order.index(name)]
        done = runner.summary["stages"].get(name, {}).get("test")
        if done is not None and plan.data == last_data:
            # the stage was already scored with these final weights on this very test split
            rows.append({"model": labels.get(name, name), "stage": name, **done})
            continue
        runner.fresh_task(plan.index)
        ckpt = runner.out.final_ckpt(name)
        load_into(runner.task, load_weights(ckpt), ckpt)
        rows.append(
            {"model": labels.get(name, name), "stage": name, **runner.test(None, dm, phase="compare", stage=name)}
        )
        runner.check("compare")
    test_windows = len(dm.test_dataloader().dataset)
    where = f"{Path(str(getattr(dm, 'path', 'data'))).name} test split ({test_windows:,} windows)"
    return {"data": where, "metrics": list(ev.metrics), "rows": rows}


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
    bounds = [j for j in range(1, len(rows)) if rows[j]["stage"] != rows[j - 1]["stage"]]
    for j in bounds:
        ax.axvline(j - 0.5, color="grey", ls=":")
    ax.set_xlabel("epoch (all stages)")
    ax.set_ylabel("loss (scaled)")
    ax.set_title(f"{pipeline}: " + " → ".join(dict.fromkeys(r["stage"] for r in rows)))
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(run_dir / "plots" / "loss.png", buf.getvalue())


def print_comparison(summary: dict[str, Any], console: Console) -> None:
    """The comparison of a finished run as one table, the best value of each column in bold."""
    from rich.table import Table

    ev = summary.get("evaluation") or {}
    if not ev.get("rows"):
        return
    metrics = ev["metrics"]
    where = str(ev.get("data", ""))
    table = Table(title=f"{summary['pipeline']}: {where if 'test' in where else 'test split of ' + where}")
    table.add_column("model")
    for m in metrics:
        table.add_column({"smape": "sMAPE"}.get(m, m.upper()), justify="right")

    def finite(v: Any) -> bool:
        return isinstance(v, int | float) and math.isfinite(v)

    best = {}
    for m in metrics:
        values = [r[m] for r in ev["rows"] if finite(r.get(m))]
        if values:
            # scores (IoU, F1, accuracy, R^2, ACC) are best high, errors best low; bias best near 0
            pick = max if m.split("/")[0] in HIGHER_IS_BETTER else min
            best[m] = pick(values, key=abs) if m == "bias" else pick(values)
    for r in ev["rows"]:
        cells = []
        for m in metrics:
            v = r.get(m)
            text = "-" if v is None else f"{v:.4f}"
            cells.append(f"[bold green]{text}[/]" if finite(v) and v == best.get(m) else text)
        table.add_row(r["model"], *cells)
    console.print(table)
