"""Command line: argument parsing only; each verb calls one function of :mod:`sciadapt.api`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Any

from sciadapt.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED, ConfigError, Interrupted, Preempted, SciadaptError

# verbs that read configs and builder signatures only (sciadapt.index): they import no torch or Lightning
CONFIG_VERBS = frozenset({"validate", "list", "schema"})
STAMP = "runs/quickstart/<stamp>"


def _examples(*lines: str) -> dict[str, Any]:
    """The ``epilog`` (an "examples:" block, kept as written) of a parser."""
    text = "examples:\n" + "\n".join(f"  {line}" for line in lines)
    return {"epilog": text, "formatter_class": argparse.RawDescriptionHelpFormatter}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sciadapt",
        description="Adapt pretrained scientific and time-series models.",
        **_examples("sciadapt fit quickstart", "sciadapt validate nhits_ltsf data.path=ETTh1.csv --show"),
    )
    sub = p.add_subparsers(dest="verb", required=True)

    f = sub.add_parser(
        "fit",
        help="run a multi-stage pipeline",
        **_examples(
            "sciadapt fit nhits_ltsf data.path=ETTh1.csv stages.*.max_epochs=1", f"sciadapt fit --resume {STAMP}"
        ),
    )
    f.add_argument("pipeline", nargs="?", help="a pipeline .yaml or a bundled name (sciadapt list pipelines)")
    f.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.path=ETTh1.csv stages.*.max_epochs=1")
    f.add_argument("--resume", metavar="RUN", help="continue a killed run at the stage and epoch where it stopped")

    v = sub.add_parser(
        "validate",
        help="check a pipeline config (no data, no training)",
        **_examples("sciadapt validate quickstart", "sciadapt validate my_pipeline.yaml stages.*.optim.lr=1e-4 --show"),
    )
    v.add_argument("pipeline", help="a pipeline .yaml or a bundled name (sciadapt list pipelines)")
    v.add_argument("overrides", nargs="*", help="key=value overrides, checked as `fit` would apply them")
    v.add_argument("--show", action="store_true", help="print the resolved config")

    t = sub.add_parser(
        "test",
        help="score a run's final weights on the test split",
        **_examples(f"sciadapt test --run {STAMP}", f"sciadapt test --run {STAMP} --data other_site.csv"),
    )
    t.add_argument("--run", required=True, help="a finished run directory (runs/<pipeline>/<stamp>)")
    t.add_argument(
        "--data", help="score another file with the run's columns (default: the run's own data); its test split"
    )

    mg = sub.add_parser(
        "merge",
        help="merge finished runs in weight space (soups, WiSE-FT, Model Stock, LoRA adapter arithmetic)",
        **_examples(
            "sciadapt merge soup runs/quickstart/A runs/quickstart/B --out runs/quickstart/soup",
            "sciadapt merge wise_ft runs/quickstart/A --anchor source --out runs/quickstart/wise",
            "sciadapt merge adapters_ties runs/ttm_lora/A runs/ttm_lora/B --weights 1,1 --out runs/ttm_lora/ties",
        ),
    )
    mg.add_argument("method", help="soup | greedy_soup | wise_ft | model_stock | adapters_linear | adapters_ties")
    mg.add_argument("runs", nargs="+", help="finished run directories (the first one's data and config are used)")
    mg.add_argument("--out", required=True, help="the new run directory to write (must not exist)")
    mg.add_argument("--stage", help="the stage whose final weights are merged (default: the last)")
    mg.add_argument("--alpha", help="wise_ft: comma-separated alphas in [0, 1] (default 0,0.25,0.5,0.75,1)")
    mg.add_argument("--weights", help="adapters_*: comma-separated weights, one per run")
    mg.add_argument(
        "--anchor", help="wise_ft, model_stock: the pretrained weights: a run directory or a stage of the first run"
    )
    mg.add_argument("--density", type=float, default=0.2, help="adapters_ties: fraction of each update kept (0.2)")
    mg.add_argument("--rank", type=int, help="adapters_ties: the merged rank (default: the largest input rank)")

    ex = sub.add_parser(
        "export",
        help="write a run's model (adapters merged) as safetensors, torch.export (.pt2) or ONNX, with a manifest",
        **_examples(
            f"sciadapt export {STAMP} --format torch-export --out exported/",
            f"sciadapt export {STAMP} --stage source --format onnx --out exported_onnx/",
        ),
    )
    ex.add_argument("run", help="a finished run directory (runs/<pipeline>/<stamp>)")
    ex.add_argument("--stage", help="the stage whose final model is exported (default: the last)")
    ex.add_argument(
        "--format",
        required=True,
        choices=["safetensors", "torch-export", "onnx"],
        help="safetensors (weights for sciadapt), torch-export (model.pt2, plain torch) or onnx (onnxruntime)",
    )
    ex.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty)")

    pr = sub.add_parser(
        "predict",
        help="forecast with a trained run, or zero-shot from pretrained weights",
        description="Either --run RUN, or --backbone NAME --weights DIR|hf://org/repo@rev --data FILE (zero-shot).",
        **_examples(
            f"sciadapt predict --run {STAMP} --data new.csv --out forecast.csv",
            "sciadapt predict --backbone ttm --weights hf://ibm-granite/granite-timeseries-ttm-r2 --data ETTh1.csv "
            "--out forecast.csv",
            "sciadapt predict --backbone ttm --weights W --adapter site_a=runs/A/adapters/lora "
            "--adapter hf://org/ttm-lora-b --data x.csv --out y.csv",
        ),
    )
    pr.add_argument("--run", help="a finished run directory (runs/<pipeline>/<stamp>)")
    pr.add_argument("--data", help="CSV/parquet whose last rows are the context (default: the run's data)")
    pr.add_argument(
        "--out",
        required=True,
        help="output: CSV (series), .nc/.zarr (rollout), .fits/.nc (image forecast), .tif (scene); PNG(s) beside it",
    )
    pr.add_argument("--backbone", help="zero-shot: a backbone that forecasts itself (ttm, moment)")
    pr.add_argument("--weights", help="zero-shot: a local folder or hf://org/repo@revision")
    pr.add_argument("--horizon", type=int, help="zero-shot: forecast length (default: the checkpoint's)")
    pr.add_argument("--context-length", type=int, help="zero-shot: context length (default: the checkpoint's)")
    pr.add_argument("--target-columns", help="zero-shot: comma-separated columns (default: every numeric one)")
    pr.add_argument("--timestamp-column", default="date", help="zero-shot: timestamp column (default: date)")
    pr.add_argument(
        "--adapter",
        action="append",
        metavar="[NAME=]PATH",
        help="with --backbone/--weights: an adapter trained on those weights (folder or hf://org/repo[/sub][@rev]), "
        "repeatable; the base is loaded once and each adapter writes <out stem>.NAME.csv and .png",
    )
    pr.add_argument(
        "--group-column",
        help="with --adapter NAME=PATH: a data column naming each row's group; group NAME is forecast with adapter NAME",
    )
    pr.add_argument(
        "--init",
        action="append",
        help="rollout runs: initial time(s) in the data (ISO), repeatable; image-forecast runs: the last input's time",
    )
    pr.add_argument("--lead", type=int, help="rollout runs: steps to roll out (default: the run's evaluation)")
    pr.add_argument("--variable", help="rollout runs: variable of the PNG map (default: the first)")
    pr.add_argument("--scene", action="append", help="dense runs: GeoTIFF scene(s) to predict tile by tile")
    pr.add_argument("--overlap", type=int, default=32, help="dense runs: tile overlap in pixels (default 32)")

    pu = sub.add_parser(
        "push",
        help="upload a run's adapters/<stage>/ (with its model card) to a Hugging Face Hub repository",
        **_examples(
            f"sciadapt push {STAMP} --stage lora --repo my-org/ttm-lora-site-a",
            f"sciadapt push {STAMP} --stage lora --repo my-org/ttm-lora --revision site-b --private",
        ),
    )
    pu.add_argument("run", help="a finished run directory (runs/<pipeline>/<stamp>)")
    pu.add_argument("--stage", required=True, help="the stage whose adapter folder (adapters/<stage>/) is pushed")
    pu.add_argument("--repo", required=True, help="the Hub model repository, org/name (created when missing)")
    pu.add_argument("--revision", default="main", help="the branch to commit to (default main; created when missing)")
    pu.add_argument("--private", action="store_true", help="create the repository private")

    prepare = _examples(
        "sciadapt data prepare era5_2020.nc era5_2021.nc era5.zarr --variables t2m,z --levels 500,850",
        "sciadapt data prepare forecast.grib store.zarr --scheduler local",
        "sciadapt data prepare --format knmi_hdf5 'RAD_NL25_RAP_5min_*.h5' radar.zarr",
    )
    d = sub.add_parser(
        "data", help="data tools: `data prepare` converts netCDF/GRIB to a chunked zarr store", **prepare
    )
    dsub = d.add_subparsers(dest="data_verb", required=True)
    dp = dsub.add_parser(
        "prepare", help="netCDF/GRIB -> chunked zarr (one time step per chunk) + normalisation statistics", **prepare
    )
    dp.add_argument(
        "inputs",
        nargs="+",
        help="input files or globs, then the output .zarr store (inputs sorted by time; netCDF, GRIB, or radar with --format)",
    )
    dp.add_argument("--variables", help="comma-separated variables to keep (default: all)")
    dp.add_argument("--levels", help="comma-separated pressure levels to keep (default: all)")
    dp.add_argument("--time-chunk", type=int, default=1, help="time steps per chunk (default 1)")
    dp.add_argument(
        "--scheduler", help="dask.distributed scheduler address (tcp://host:8786), or `local` to start a LocalCluster"
    )
    dp.add_argument("--engine", help="xarray engine (default: from the file suffix; cfgrib for GRIB)")
    dp.add_argument(
        "--format",
        help="netcdf, zarr or grib (default: from the suffix), or a pysteps radar importer "
        "(knmi_hdf5, odim_hdf5, bom_rf3, mch_gif, fmi_pgm, ...; pip install 'sciadapt[nowcast]')",
    )
    dp.add_argument("--crs", help="CRS of a projected grid whose files declare none, e.g. EPSG:3035 or a proj4 string")
    dp.add_argument(
        "--nodata",
        type=float,
        help="raw missing-value code of ODIM radar files (--format odim_hdf5) whose datasets declare none, e.g. 65535",
    )
    dp.add_argument("--overwrite", action="store_true", help="replace the store if it exists")
    dp.add_argument("--no-progress", action="store_true", help="no progress bar")

    sb = sub.add_parser(
        "submit",
        help="submit a pipeline (or a --sweep of it) to a cluster (--cluster), or run a sweep here in turn",
        **_examples(
            "sciadapt submit quickstart --sweep stages.*.optim.lr=1e-4,3e-4",
            "sciadapt submit ttm_lora --cluster slurm --cluster-set partition=gpu --dry-run",
        ),
    )
    sb.add_argument("pipeline", nargs="?", help="a .yaml path or a bundled name")
    sb.add_argument("overrides", nargs="*", help="key=value overrides shared by every run")
    sb.add_argument("--resume", metavar="RUN", help="submit an existing run directory to continue it (with --cluster)")
    sb.add_argument("--sweep", nargs="+", metavar="KEY=V1,V2", help="swept keys and their values (one run each)")
    sb.add_argument(
        "--cluster",
        help="a cluster profile: a name in configs/cluster/ (slurm, local) or a YAML path; submitit submits",
    )
    sb.add_argument("--cluster-set", nargs="+", metavar="KEY=VALUE", help="override profile fields (partition=gpu)")
    sb.add_argument("--dry-run", action="store_true", help="print the sbatch script, submit nothing")
    sb.add_argument("--wait", action="store_true", help="wait for the jobs to finish")

    sm = sub.add_parser(
        "summarize",
        help="one table over the finished runs below a folder (e.g. a sweep)",
        **_examples("sciadapt summarize runs/quickstart-sweep-<stamp>", "sciadapt summarize runs/"),
    )
    sm.add_argument("path", help="a folder of runs: a sweep folder, runs/<pipeline>, or runs/")

    ls = sub.add_parser(
        "list", help="list registered components", **_examples("sciadapt list", "sciadapt list backbones")
    )
    ls.add_argument("kind", nargs="?", help="backbones | heads | peft | tasks | datamodules | pipelines | clusters")

    sc = sub.add_parser(
        "schema",
        help="print the JSON Schema of pipeline files (for editors: completion and checking)",
        **_examples(
            "sciadapt schema --out pipeline.schema.json", "sciadapt schema quickstart --out quickstart.schema.json"
        ),
    )
    sc.add_argument(
        "pipeline", nargs="?", help="narrow the component sections to those of this pipeline (.yaml or bundled name)"
    )
    sc.add_argument("--out", metavar="FILE", help="write the schema to FILE (atomically) instead of printing it")
    return p


def _floats(text: str | None, flag: str) -> list[float] | None:
    """A comma-separated list of numbers (None stays None)."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text}: give comma-separated numbers, e.g. {flag} 0,0.5,1") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # OpenMP threads that spin while waiting make torch 10-30x slower on a CPU shared with
    # other jobs (measured: an N-HiTS step 0.04 s -> 1.3 s); passive waiting costs nothing
    # on an idle machine. Must be set before torch is first imported; a user's value wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    debug = os.environ.get("SCIADAPT_DEBUG") == "1"
    if not debug:
        if args.verb not in CONFIG_VERBS:  # importing Lightning costs seconds: only where it runs
            import lightning.pytorch  # noqa: F401  (sets its own log level on import; override it after)

            # Lightning's banners ("GPU available: ...") and tips drown the table users came for
            for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
                logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
        warnings.filterwarnings("ignore", category=FutureWarning)
    from rich.console import Console

    from sciadapt import api

    console = Console()
    err = Console(stderr=True)
    try:
        if args.verb == "fit":
            api.fit(args.pipeline, args.overrides, resume=args.resume, console=console)
        elif args.verb == "validate":
            if args.show:
                print(api.show(args.pipeline, args.overrides))
            else:
                api.validate(args.pipeline, args.overrides, console=console)
        elif args.verb == "test":
            api.test(args.run, args.data, console=console)
        elif args.verb == "merge":
            api.merge(
                args.method,
                args.runs,
                args.out,
                stage=args.stage,
                alphas=_floats(args.alpha, "--alpha"),
                weights=_floats(args.weights, "--weights"),
                anchor=args.anchor,
                density=args.density,
                rank=args.rank,
                console=console,
            )
        elif args.verb == "export":
            api.export(args.run, args.format, args.out, stage=args.stage, console=console)
        elif args.verb == "predict":
            if args.run and (args.backbone or args.weights):
                raise ConfigError("predict: give either --run, or --backbone with --weights (zero-shot), not both")
            if args.adapter or args.group_column:
                if args.run or not (args.backbone and args.weights and args.data and args.adapter):
                    raise ConfigError(
                        "predict --adapter: give --backbone NAME --weights W --data FILE and one --adapter per adapter "
                        "(not --run: a run predicts with its own adapters)"
                    )
                api.predict_adapters(
                    args.backbone,
                    args.weights,
                    args.adapter,
                    args.data,
                    args.out,
                    horizon=args.horizon,
                    context_length=args.context_length,
                    target_columns=args.target_columns.split(",") if args.target_columns else None,
                    timestamp_column=args.timestamp_column,
                    group_column=args.group_column,
                    console=console,
                )
            elif args.run and args.init:
                api.predict_rollout(args.run, args.init, args.out, args.lead, args.data, args.variable, console=console)
            elif args.run and args.scene:
                api.predict_scene(args.run, args.scene, args.out, overlap=args.overlap, console=console)
            elif args.run:
                api.predict(args.run, args.data, args.out, console=console)
            elif args.backbone and args.weights and args.data:
                api.predict_pretrained(
                    args.backbone,
                    args.weights,
                    args.data,
                    args.out,
                    horizon=args.horizon,
                    context_length=args.context_length,
                    target_columns=args.target_columns.split(",") if args.target_columns else None,
                    timestamp_column=args.timestamp_column,
                    console=console,
                )
            else:
                raise ConfigError(
                    "predict: give --run RUN, or --backbone NAME --weights DIR|hf://org/repo@rev --data FILE "
                    "for a zero-shot forecast"
                )
        elif args.verb == "data":
            api.prepare_data(
                args.inputs[:-1],
                args.inputs[-1],
                variables=args.variables.split(",") if args.variables else None,
                levels=[int(v) for v in args.levels.split(",")] if args.levels else None,
                time_chunk=args.time_chunk,
                scheduler=args.scheduler,
                engine=args.engine,
                overwrite=args.overwrite,
                progress=not args.no_progress,
                console=console,
                format=args.format,
                crs=args.crs,
                nodata=args.nodata,
            )
        elif args.verb == "submit":
            api.submit(
                args.pipeline,
                args.overrides,
                args.sweep,
                cluster=args.cluster,
                cluster_set=args.cluster_set,
                dry_run=args.dry_run,
                wait=args.wait,
                console=console,
                resume=args.resume,
            )
        elif args.verb == "push":
            api.push(args.run, args.stage, args.repo, revision=args.revision, private=args.private, console=console)
        elif args.verb == "summarize":
            api.summarize(args.path, console=console)
        elif args.verb == "list":
            api.list_components(args.kind, console=console)
        elif args.verb == "schema":
            api.schema(args.pipeline, args.out, console=console)
    except SciadaptError as e:
        if debug:
            raise
        err.print("[bold red]error:[/bold red]", end=" ")
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:  # outside a run (a run turns Ctrl-C into Interrupted): nothing to resume
        err.print("interrupted")
        return EXIT_INTERRUPTED
    except Preempted as p:
        # a clean stop: what the resume needs and state.json are on disk (Interrupted: Ctrl-C, no requeue)
        from sciadapt.runs import is_writer
        from sciadapt.stages.preempt import requeue, slurm_job_id

        interrupted = isinstance(p, Interrupted)
        if is_writer():  # under DDP every rank stops; one reports and requeues
            err.print(
                f"{'interrupted' if interrupted else 'preempted'}: {p}", markup=False, highlight=False, soft_wrap=True
            )
            if p.run_dir is None:  # stopped before the run directory was made
                hint = "nothing was written: run the same command again"
            else:
                hint = f"resume with: sciadapt fit --resume {p.run_dir}"
            if not interrupted and (p.run_dir is not None or slurm_job_id() is not None):
                hint = f"{hint}; {requeue()}"
            err.print(hint, markup=False, highlight=False, soft_wrap=True)
        return EXIT_INTERRUPTED if interrupted else EXIT_PREEMPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
