"""The library calls behind each CLI verb (usable from Python as well)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from sciadapt.config import bundled_pipelines, load_config, to_yaml
from sciadapt.config import validate as validate_cfg
from sciadapt.errors import ConfigError, UnknownComponentError
from sciadapt.registry import KINDS, suggest
from sciadapt.runs import open_run


def fit(
    pipeline: str | None, overrides: list[str], resume: str | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Validate a pipeline (nothing is written if invalid), run its stages, print the comparison."""
    from sciadapt.stages.runner import PipelineRunner

    console = console or Console()
    if resume:
        run_dir = open_run(resume)
        cfg = load_config(pipeline, overrides) if pipeline else None
        runner = PipelineRunner.resume(run_dir, cfg, console)
        console.print(f"resuming {run_dir} after stages: {', '.join(runner.state['completed']) or 'none'}")
    else:
        if pipeline is None:
            raise UnknownComponentError("fit needs a pipeline (a .yaml path or a bundled name) or --resume RUN")
        cfg = load_config(pipeline, overrides)
        runner = PipelineRunner.create(cfg, console)
        console.print(f"run directory: {runner.run_dir}")
    summary = runner.run()
    from sciadapt.stages.runner import is_writer

    if is_writer():  # under DDP every rank runs the stages; one prints
        print_comparison(summary, console)
        console.print(f"summary: {runner.run_dir / 'summary.json'}")
    return summary


HIGHER_IS_BETTER = {"miou", "iou", "f1", "mean_f1", "accuracy", "r2", "acc"}


def print_comparison(summary: dict[str, Any], console: Console) -> None:
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


def validate(pipeline: str, overrides: list[str], console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    cfg = load_config(pipeline, overrides)
    console.print(
        f"[green]ok[/green]: {pipeline} is valid ({len(cfg['stages'])} stages: "
        f"{', '.join(s['name'] for s in cfg['stages'])})"
    )
    return cfg


def show(pipeline: str, overrides: list[str]) -> str:
    return to_yaml(load_config(pipeline, overrides))


def test(run: str, data: str | None = None, console: Console | None = None) -> dict[str, Any]:
    """Score a finished run's final weights on the test split (optionally of another file)."""
    from sciadapt.stages.runner import PipelineRunner

    console = console or Console()
    run_dir = open_run(run)
    cfg = validate_cfg(yaml.safe_load((run_dir / "config.yaml").read_text()), source=str(run_dir / "config.yaml"))
    if data:
        cfg["stages"][-1]["data"] = {**(cfg["stages"][-1].get("data") or {}), "path": data}
    runner = PipelineRunner(cfg, run_dir, console)
    last = cfg["stages"][-1]["name"]
    if not runner.final_ckpt(last).exists():
        raise UnknownComponentError(
            f"{run_dir} has no final weights for stage {last!r}: finish it with `sciadapt fit --resume {run_dir}`"
        )
    dm = runner._datamodule(len(cfg["stages"]) - 1)
    runner._ensure_task(dm, last)
    from sciadapt.runs import load_into, load_weights

    runner._fresh_task(len(cfg["stages"]) - 1)
    load_into(runner.task, load_weights(runner.final_ckpt(last)), runner.final_ckpt(last))
    res = runner.test(None, dm)
    table = Table(title=f"{run_dir} on {dm.describe() if hasattr(dm, 'describe') else 'test split'}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in res.items():
        if isinstance(v, float):
            table.add_row(k, f"{v:.4f}")
    console.print(table)
    return res


def predict(run: str, data: str | None, out: str, console: Console | None = None) -> Path:
    from sciadapt.predict.forecast import predict_run

    console = console or Console()
    path = predict_run(Path(open_run(run)), data, Path(out))
    console.print(f"forecast written to {path} (plot: {path.with_suffix('.png')})")
    return path


def predict_rollout(
    run: str,
    init_times: list[str],
    out: str,
    n_lead: int | None = None,
    data: str | None = None,
    variable: str | None = None,
    console: Console | None = None,
) -> Path:
    """Rollout forecast from a gridded run: CF netCDF/zarr with a ``lead_time`` dimension + a PNG map."""
    from sciadapt.predict.rollout import predict_rollout_run

    console = console or Console()
    path = predict_rollout_run(Path(open_run(run)), init_times, Path(out), n_lead, data, variable)
    console.print(f"rollout forecast written to {path} (map: {path.with_suffix('.png')})")
    return path


def predict_scene(run: str, scenes: list[str], out: str, overlap: int = 32, console: Console | None = None) -> Path:
    """Scene-scale tiled prediction of a dense run, written as a Cloud-Optimized GeoTIFF."""
    from sciadapt.predict.scene import predict_scene_run

    console = console or Console()
    predict_scene_run(Path(open_run(run)), scenes, Path(out), overlap=overlap)
    console.print(f"scene prediction written to {out}")
    return Path(out)


def predict_pretrained(
    backbone: str,
    weights: str,
    data: str,
    out: str,
    horizon: int | None = None,
    context_length: int | None = None,
    target_columns: list[str] | None = None,
    timestamp_column: str = "date",
    console: Console | None = None,
) -> Path:
    """Zero-shot forecast from pretrained weights (see :func:`sciadapt.predict.forecast.predict_pretrained`)."""
    from sciadapt.predict.forecast import predict_pretrained as _predict

    console = console or Console()
    path = _predict(
        backbone,
        weights,
        data,
        Path(out),
        horizon=horizon,
        context_length=context_length,
        target_columns=target_columns,
        timestamp_column=timestamp_column,
    )
    console.print(f"zero-shot forecast written to {path} (plot: {path.with_suffix('.png')})")
    return path


def prepare_data(
    inputs: list[str],
    out: str,
    variables: list[str] | None = None,
    levels: list[int] | None = None,
    time_chunk: int = 1,
    scheduler: str | None = None,
    engine: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> Path:
    """``sciadapt data prepare``: netCDF/GRIB files -> one chunked zarr store with statistics."""
    from sciadapt.datamodules.gridded import prepare_store

    console = console or Console()
    if not inputs:
        raise ConfigError("data prepare: give the input file(s) and then the output .zarr path")
    path = prepare_store(
        inputs,
        out,
        variables=variables,
        levels=levels,
        chunks={"time": time_chunk},
        progress=progress,
        scheduler=scheduler,
        engine=engine,
        overwrite=overwrite,
    )
    console.print(f"zarr store written to {path} (statistics included)")
    return Path(path)


def submit(
    pipeline: str | None,
    overrides: list[str],
    sweep: list[str] | None,
    cluster: str | None = None,
    cluster_set: list[str] | None = None,
    dry_run: bool = False,
    wait: bool = False,
    console: Console | None = None,
    resume: str | None = None,
) -> Any:
    """With ``cluster``: submit the pipeline (a sweep: a job array) through submitit
    (:mod:`sciadapt.hpc.cluster`). Without: run every point of the sweep here, in turn
    (:mod:`sciadapt.hpc.sweep`), then print the summary table."""
    console = console or Console()
    if cluster is not None:
        from sciadapt.hpc.cluster import submit as submit_cluster

        if pipeline is None and resume is None:
            raise ConfigError("submit needs a pipeline, or --resume RUN")
        return submit_cluster(pipeline, overrides, sweep, cluster, cluster_set, dry_run, wait, console, resume)  # type: ignore[arg-type]
    if cluster_set or dry_run or wait or resume:
        raise ConfigError("--cluster-set, --dry-run, --wait and --resume need --cluster <name|path>")
    if pipeline is None:
        raise ConfigError("submit needs a pipeline (a .yaml path or a bundled name)")
    if not sweep:
        raise ConfigError(
            "submit needs --cluster <profile> (submit to a cluster) or --sweep key=v1,v2 (run a sweep here); "
            "for one local run use `sciadapt fit`"
        )
    from sciadapt.hpc.sweep import run_sweep

    folder = run_sweep(pipeline, overrides, sweep, console)
    summarize(str(folder), console=console)
    return folder


def summarize(path: str, console: Console | None = None) -> dict[str, Any]:
    """Print one table over the finished runs below ``path``."""
    from sciadapt.hpc.sweep import summarize as _summarize

    console = console or Console()
    result = _summarize(Path(path))
    metrics = [k for k in result["rows"][0] if k not in ("run", "model")]
    table = Table(title=f"runs below {path}")
    table.add_column("run")
    table.add_column("final model")
    for m in metrics:
        table.add_column(m.upper(), justify="right")
    for row in result["rows"]:
        cells = [f"{row[m]:.4f}" if isinstance(row.get(m), int | float) else "-" for m in metrics]
        table.add_row(row["run"], str(row.get("model")), *cells)
    console.print(table)
    return result


def list_components(kind: str | None, console: Console | None = None) -> dict[str, list[str]]:
    console = console or Console()
    from sciadapt.hpc.cluster import bundled_clusters

    kinds = {
        **{k: r.list() for k, r in KINDS.items()},
        "pipelines": bundled_pipelines(),
        "clusters": bundled_clusters(),
    }
    if kind is not None:
        if kind not in kinds:
            raise UnknownComponentError(f"unknown kind {kind!r}.{suggest(kind, kinds)} Kinds: {', '.join(kinds)}")
        kinds = {kind: kinds[kind]}
    for k, names in kinds.items():
        console.print(f"[bold]{k}[/bold]: {', '.join(names) if names else '(none yet)'}")
    return kinds
