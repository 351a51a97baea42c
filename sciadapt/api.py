"""The library calls behind each CLI verb (usable from Python as well).

``validate``, ``show``, ``list_components`` and ``schema`` read configs and builder signatures only:
this module imports torch and Lightning (through runs, stages, predict) inside the verbs that train
or load models, so those stay fast (:mod:`sciadapt.index`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sciadapt.config import bundled_pipelines, group_blocks, load_config, to_yaml
from sciadapt.errors import ConfigError, OutputError, UnknownComponentError
from sciadapt.registry import KINDS, suggest
from sciadapt.spec import PipelineSpec


def fit(
    pipeline: str | None, overrides: list[str], resume: str | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Validate a pipeline (nothing is written if invalid), run its stages, print the comparison."""
    from sciadapt.runs import is_writer, open_run
    from sciadapt.stages.evaluate import print_comparison
    from sciadapt.stages.runner import fit as run_fit

    console = console or Console()
    if resume:
        open_run(resume)
    run, summary = run_fit(pipeline, overrides, resume=resume, console=console)
    if is_writer():  # under DDP every rank runs the stages; one prints
        print_comparison(summary, console)
        console.print(f"summary: {run.summary_path}")
    return summary


def load_pipeline(pipeline: str, overrides: list[str]) -> PipelineSpec:
    """A validated pipeline whose stage rules hold (:func:`sciadapt.stages.plan.plan`) and whose
    ``init_from`` files exist."""
    from sciadapt.stages.plan import init_file_problems, plan

    spec = load_config(pipeline, overrides)
    plan(spec, source=pipeline)
    problems = init_file_problems(spec)
    if problems:
        raise ConfigError(problems, source=pipeline)
    return spec


def validate(pipeline: str, overrides: list[str], console: Console | None = None) -> PipelineSpec:
    console = console or Console()
    spec = load_pipeline(pipeline, overrides)
    console.print(
        f"[green]ok[/green]: {pipeline} is valid ({len(spec.stages)} stages: {', '.join(s.name for s in spec.stages)})"
    )
    return spec


def show(pipeline: str, overrides: list[str]) -> str:
    return to_yaml(load_pipeline(pipeline, overrides))


def test(run: str, data: str | None = None, console: Console | None = None) -> dict[str, Any]:
    """Score a finished run's final weights on the test split (optionally of another file)."""
    from sciadapt.predict.verbs import RUN_FLAGS, verb_keys
    from sciadapt.runs import Run
    from sciadapt.stages.evaluate import eval_trainer, score

    console = console or Console()
    r = Run.open(run)
    r.require_final(-1)
    with verb_keys("sciadapt test --run", RUN_FLAGS):
        dm = r.datamodule(-1, **({"path": data} if data else {}))
        if data:
            # another file is scored as the run's model sees data: the run's channels (a file that
            # lacks one is an error naming it, as in `predict`) and the run's normalisation
            dm.load_scaler_state(r.scaler())
        dm.setup("fit")
        task = r.task(-1, dm.facts())
        res = score(task, dm, eval_trainer(r.spec.trainer.accelerator, r.path))
    table = Table(title=f"{r.path} on {dm.describe()}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in res.items():
        if isinstance(v, float):
            table.add_row(k, f"{v:.4f}")
    console.print(table)
    return res


def merge(
    method: str,
    runs: list[str],
    out: str,
    stage: str | None = None,
    alphas: list[float] | None = None,
    weights: list[float] | None = None,
    anchor: str | None = None,
    density: float = 0.2,
    rank: int | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """``sciadapt merge``: a weight-space merge of finished runs into a new run
    (:func:`sciadapt.averaging.merge.merge`); prints the held-out scores (and WiSE-FT's alpha table)."""
    from sciadapt.averaging.merge import HELD_OUT
    from sciadapt.averaging.merge import merge as _merge
    from sciadapt.stages.evaluate import print_table

    console = console or Console()
    res = _merge(method, runs, out, stage, alphas, weights, anchor, density, rank, log=console.log)
    scores = Table(title=f"{method}: {HELD_OUT} on the validation split (lower is better)")
    scores.add_column("model")
    scores.add_column(HELD_OUT, justify="right")
    for label, row in res["scores"].items():
        scores.add_row(label, f"{row[HELD_OUT]:.4f}")
    scores.add_row("[bold]merged[/bold]", f"{res['merged'][HELD_OUT]:.4f}")
    print_table(console, scores)
    if "history" in res:
        console.print(f"greedy soup kept {len(res['kept'])} of {len(res['history'])}: {', '.join(res['kept'])}")
    if "table" in res:
        metrics = list(res["table"][0]["test"])
        wise = Table(title="WiSE-FT: alpha (0: anchor, 1: fine-tuned) vs metric")
        wise.add_column("alpha", justify="right")
        wise.add_column(f"val {HELD_OUT.split('/')[-1]}", justify="right")
        for m in metrics:
            wise.add_column(f"test {m}", justify="right")
        # the run's evaluation.shifted split, beside the in-domain test
        shifted = list(res["table"][0].get("shifted") or {})
        for m in shifted:
            wise.add_column(f"shifted {m}", justify="right")
        for row in res["table"]:
            mark = " *" if row["alpha"] == res["alpha"] else ""
            cells = [f"{row['test'][m]:.4f}" for m in metrics] + [f"{row['shifted'][m]:.4f}" for m in shifted]
            wise.add_row(f"{row['alpha']:g}{mark}", f"{row[HELD_OUT]:.4f}", *cells)
        print_table(console, wise)
        console.print(f"chosen alpha={res['alpha']:g} (best on validation); plot: {res['path']}/plots/wise_ft.png")
    if "adapters" in res and "svd_relative_error" in res["adapters"]:
        ties = res["adapters"]
        console.print(f"TIES: rank {ties['rank']}, SVD relative error {ties['svd_relative_error']:.3g}")
    if res.get("adapters", {}).get("from_first"):
        kept = res["adapters"]["from_first"]
        console.print(
            f"note: {len(kept)} trained tensor(s) outside the adapters differ between the runs and were taken "
            f"from the first run ({', '.join(kept[:4])}{' ...' if len(kept) > 4 else ''})",
            markup=False,
            highlight=False,
        )
    console.print(f"merged run written to {res['path']} (merge.json)", markup=False, highlight=False)
    return res


def export(run: str, format: str, out: str, stage: str | None = None, console: Console | None = None) -> Path:
    """``sciadapt export``: a run's final model of ``stage`` (default: the last), adapters merged, as
    ``format`` in folder ``out`` with ``manifest.json`` (:func:`sciadapt.export.export_run`)."""
    from sciadapt.export import FILES, export_run

    console = console or Console()
    path = export_run(run, format, out, stage=stage)  # type: ignore[arg-type]  # export_run checks the format
    doc = json.loads((path / "manifest.json").read_text())
    err = doc["verification"].get("max_abs_error")
    check = f"; matches the eager model (max abs error {err:.2g})" if err is not None else ""
    console.print(
        f"{format} export of stage {doc['stage']} written to {path / FILES[format]} (manifest.json beside it){check}",
        markup=False,
        highlight=False,
    )
    return path


def predict(run: str, data: str | None, out: str, console: Console | None = None) -> Path:
    from sciadapt.predict.forecast import predict_run
    from sciadapt.runs import open_run

    console = console or Console()
    if _image_forecast(run):
        return predict_image(run, None, out, data, console)
    path = predict_run(Path(open_run(run)), data, Path(out))
    console.print(f"forecast written to {path} (plot: {path.with_suffix('.png')})")
    return path


def _image_forecast(run: str) -> bool:
    from sciadapt.predict.image import is_image_forecast_run
    from sciadapt.runs import open_run

    return is_image_forecast_run(Path(open_run(run)))


def predict_image(run: str, init: list[str] | None, out: str, data: str | None, console: Console) -> Path:
    """Next-frame forecast of an image-forecast run (FITS or netCDF in the data's units) + a PNG per channel."""
    from sciadapt.predict.image import predict_image_run
    from sciadapt.runs import open_run

    path = predict_image_run(Path(open_run(run)), init, Path(out), data)
    console.print(f"image forecast written to {path} (plots: {path.with_name(path.stem)}_<channel>.png)")
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
    from sciadapt.runs import open_run

    console = console or Console()
    if _image_forecast(run):
        return predict_image(run, init_times, out, data, console)
    path = predict_rollout_run(Path(open_run(run)), init_times, Path(out), n_lead, data, variable)
    console.print(f"rollout forecast written to {path} (map: {path.with_suffix('.png')})")
    return path


def predict_scene(run: str, scenes: list[str], out: str, overlap: int = 32, console: Console | None = None) -> Path:
    """Scene-scale tiled prediction of a dense run, written as a Cloud-Optimized GeoTIFF."""
    from sciadapt.predict.scene import predict_scene_run
    from sciadapt.runs import open_run

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


def predict_adapters(
    backbone: str,
    weights: str,
    adapters: list[str],
    data: str,
    out: str,
    horizon: int | None = None,
    context_length: int | None = None,
    target_columns: list[str] | None = None,
    timestamp_column: str = "date",
    group_column: str | None = None,
    console: Console | None = None,
) -> list[Path]:
    """One base, many adapters (see :func:`sciadapt.predict.adapters.predict_adapters`)."""
    from sciadapt.predict.adapters import predict_adapters as _predict

    console = console or Console()
    paths = _predict(
        backbone,
        weights,
        adapters,
        data,
        Path(out),
        horizon=horizon,
        context_length=context_length,
        target_columns=target_columns,
        timestamp_column=timestamp_column,
        group_column=group_column,
    )
    for path in paths:
        console.print(
            f"forecast written to {path} (plot: {path.with_suffix('.png')})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    return paths


def push(
    run: str, stage: str, repo: str, revision: str = "main", private: bool = False, console: Console | None = None
) -> str:
    """``sciadapt push``: a run's ``adapters/<stage>/`` (model card included) to a Hub repository
    (:func:`sciadapt.hub.push_adapter`); returns the repository's address."""
    from sciadapt.hub import push_adapter

    console = console or Console()
    url = push_adapter(Path(run), stage, repo, revision=revision, private=private)
    console.print(f"adapters/{stage} of {run} pushed to {url}", markup=False, highlight=False, soft_wrap=True)
    return url


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
    format: str | None = None,
    crs: str | None = None,
    nodata: float | None = None,
) -> Path:
    """``sciadapt data prepare``: netCDF/GRIB files or radar frames (``format``: a pysteps importer)
    -> one chunked zarr store with statistics; ``crs`` places a projected grid that declares none,
    ``nodata`` gives the missing-value code of ODIM radar files that declare none."""
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
        format=format,
        crs=crs,
        nodata=nodata,
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
    """Print (and return) the registered components, the bundled pipelines and cluster profiles."""
    console = console or Console()
    kinds = {
        **{k: r.list() for k, r in KINDS.items()},
        "pipelines": bundled_pipelines(),
        "clusters": group_blocks("cluster"),
    }
    if kind is not None:
        if kind not in kinds:
            raise UnknownComponentError(f"unknown kind {kind!r}.{suggest(kind, kinds)} Kinds: {', '.join(kinds)}")
        kinds = {kind: kinds[kind]}
    for k, names in kinds.items():
        console.print(f"[bold]{k}[/bold]: {', '.join(names) if names else '(none yet)'}")
    return kinds


def schema(pipeline: str | None = None, out: str | None = None, console: Console | None = None) -> dict[str, Any]:
    """The JSON Schema of a pipeline YAML (:func:`sciadapt.schema.pipeline_schema`), written to ``out``
    (atomically) or printed; with ``pipeline``, narrowed to the components that pipeline uses."""
    from sciadapt.schema import pipeline_schema

    doc = pipeline_schema(pipeline)
    text = json.dumps(doc, indent=2) + "\n"
    if out is None:
        print(text, end="")
        return doc
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise OutputError(
            f"cannot write the schema to {out}: {e.strerror or e}. Fix: give --out a writable path"
        ) from None
    (console or Console()).print(f"schema written to {path}", markup=False, highlight=False)
    return doc
