"""``sciadapt submit <pipeline> --cluster <name|path>``: a pipeline (or a sweep) as SLURM jobs, via submitit.

A cluster profile is a small YAML file; ``--cluster slurm`` means the bundled
``configs/cluster/slurm.yaml``, any other value a path. Fields (:data:`FIELDS`):

========================  ========================================================================
``executor``              ``slurm``, or ``local`` (submitit's local executor: the same job path on
                          one machine, for trying a profile without a cluster)
``nodes``                 nodes per run (multi-node DDP through ``srun`` and Lightning's SLURM
                          environment)
``gpus_per_node``         GPUs per node; one task per GPU (``--ntasks-per-node``)
``time``                  wall time, ``HH:MM:SS``, ``D-HH:MM:SS`` or minutes
``partition``             required for ``slurm``
``account``, ``qos``,     optional ``#SBATCH`` values
``constraint``,
``cpus_per_task``,
``mem_gb``, ``gres``,
``job_name``
``sbatch_extra``          more ``#SBATCH`` lines, e.g. ``["--exclusive", "--mail-type=END"]``
``setup``                 shell lines run before the job (``module load ...``, ``source venv/...``)
``signal_delay_s``        SIGUSR1 this long before the time limit (default 120): the run
                          checkpoints at its current step and requeues itself
``max_requeues``          preemptions after which a run stops requeueing (default 20)
``array_parallelism``     sweep points running at once (default 64)
========================  ========================================================================

Every run directory is made (and every run preflighted: data read, model built) before anything
is submitted; each job then runs ``sciadapt fit --resume <its run dir>``, which is also what a
requeued job runs, so a preempted job continues at its stage and step on its own. A sweep
becomes one job array, one run directory per point.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from sciadapt.errors import ConfigError, Interrupted, Preempted
from sciadapt.registry import suggest
from sciadapt.runs import read_json, write_json

REQUIRED = ("executor", "nodes", "gpus_per_node", "time")
DEFAULTS: dict[str, Any] = {
    "partition": None,
    "account": None,
    "qos": None,
    "constraint": None,
    "cpus_per_task": None,
    "mem_gb": None,
    "gres": None,
    "job_name": None,
    "sbatch_extra": [],
    "setup": [],
    "signal_delay_s": 120,
    "max_requeues": 20,
    "array_parallelism": 64,
}
FIELDS = (*REQUIRED, *DEFAULTS)
EXECUTORS = ("slurm", "local")
MAX_REQUEUES_ENV = "SCIADAPT_MAX_REQUEUES"


def cluster_dir() -> Path:
    from sciadapt.config import resource_dir

    return resource_dir("configs") / "cluster"


def bundled_clusters() -> list[str]:
    d = cluster_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def parse_minutes(value: Any, where: str) -> int:
    """``"HH:MM:SS"``, ``"D-HH:MM:SS"``, ``"MM:SS"`` or an integer count of minutes -> minutes (rounded up)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", str(value).strip())
    if not m:
        raise ConfigError(f"{where}: time {value!r} is not HH:MM:SS, D-HH:MM:SS or a number of minutes")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    if m.group(2) is None:  # "MM:SS"
        hours, minutes, seconds = 0, int(m.group(3)), int(m.group(4))
    total = days * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    if total <= 0:
        raise ConfigError(f"{where}: time {value!r} must be positive")
    return total


def _sbatch_extra(lines: Any, where: str) -> dict[str, Any]:
    """``["--exclusive", "--mail-type=END"]`` -> submitit ``additional_parameters``."""
    if not isinstance(lines, list):
        raise ConfigError(f"{where}: sbatch_extra must be a list of '--flag' or '--key=value' strings")
    out: dict[str, Any] = {}
    for line in lines:
        text = str(line).strip()
        if text.startswith("#SBATCH"):
            text = text[len("#SBATCH") :].strip()
        if not text.startswith("--") or " " in text.split("=", 1)[0]:
            raise ConfigError(f"{where}: sbatch_extra entry {line!r} is not '--flag' or '--key=value'")
        key, sep, value = text[2:].partition("=")
        out[key.replace("-", "_")] = value if sep else True
    return out


def load_cluster(name_or_path: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """A validated cluster profile: the bundled ``configs/cluster/<name>.yaml`` or a YAML path,
    with ``key=value`` overrides (``--cluster-set partition=gpu``).

    Raises:
        ConfigError: Unknown profile, unknown or missing field, or a bad value; every problem at once.
    """
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = cluster_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            names = bundled_clusters()
            raise ConfigError(
                f"--cluster {name_or_path!r}: no such profile.{suggest(name_or_path, names)} "
                f"Bundled: {', '.join(names)}; or give the path of a YAML file"
            )
    elif not path.is_file():
        raise ConfigError(f"--cluster {name_or_path}: file not found")
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse cluster profile: {e}", source=where) from None
    if not isinstance(raw, dict):
        raise ConfigError("a cluster profile is a mapping of fields", source=where)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--cluster-set {item!r}: expected key=value", source=where)
        raw[key.strip()] = yaml.safe_load(value)
    problems = []
    for key in raw:
        if key not in FIELDS:
            problems.append(f"unknown field {key!r}.{suggest(key, FIELDS)} Fields: {', '.join(FIELDS)}")
    for key in REQUIRED:
        if raw.get(key) in (None, "???", ""):
            problems.append(f"required field {key!r} is missing: set it in {where} or pass --cluster-set {key}=...")
    if raw.get("executor") not in (None, "???", "", *EXECUTORS):
        problems.append(f"executor {raw['executor']!r} must be one of {', '.join(EXECUTORS)}")
    if raw.get("executor") == "slurm" and raw.get("partition") in (None, "???", ""):
        problems.append(
            f"required field 'partition' is missing (executor slurm): set it in {where} "
            "or pass --cluster-set partition=<name> (see `sinfo -s`)"
        )
    for key in ("nodes", "gpus_per_node", "cpus_per_task", "mem_gb", "signal_delay_s", "max_requeues"):
        v = raw.get(key)
        if v not in (None, "???") and (
            not isinstance(v, int) or isinstance(v, bool) or v < (1 if key == "nodes" else 0)
        ):
            problems.append(f"{key} must be a {'positive' if key == 'nodes' else 'non-negative'} integer, got {v!r}")
    if problems:
        raise ConfigError(problems, source=where)
    prof = {**DEFAULTS, **raw, "source": where}
    prof["time_min"] = parse_minutes(prof["time"], where)
    prof["extra"] = _sbatch_extra(prof["sbatch_extra"], where)
    if not isinstance(prof["setup"], list):
        raise ConfigError("setup must be a list of shell lines", source=where)
    return prof


def trainer_overrides(prof: dict[str, Any]) -> list[str]:
    """What the profile implies for the pipeline's trainer (the user's own overrides win)."""
    gpus, nodes = int(prof["gpus_per_node"]), int(prof["nodes"])
    if gpus == 0:
        return [f"trainer.num_nodes={nodes}"] if nodes > 1 else []
    out = ["trainer.accelerator=gpu", f"trainer.devices={gpus}", f"trainer.num_nodes={nodes}"]
    if gpus * nodes > 1:
        out.append("trainer.strategy=ddp")
    return out


def slurm_parameters(prof: dict[str, Any], job_name: str) -> dict[str, Any]:
    """submitit ``SlurmExecutor.update_parameters`` arguments for a profile."""
    gpus = int(prof["gpus_per_node"])
    params: dict[str, Any] = {
        "job_name": prof["job_name"] or job_name,
        "partition": prof["partition"],
        "time": prof["time_min"],
        "nodes": int(prof["nodes"]),
        "ntasks_per_node": max(gpus, 1),  # one process per GPU: Lightning's SLURM DDP
        "signal_delay_s": int(prof["signal_delay_s"]),
        "array_parallelism": int(prof["array_parallelism"]),
        "setup": [f"export {MAX_REQUEUES_ENV}={int(prof['max_requeues'])}", *prof["setup"]],
        # SIGUSR1 ahead of the time limit (Lightning's convention; submitit's default is USR2) and
        # requeue allowed: the run checkpoints at its step and requeues itself
        "additional_parameters": {"signal": f"USR1@{int(prof['signal_delay_s'])}", "requeue": True, **prof["extra"]},
    }
    if prof["gres"]:
        params["gres"] = prof["gres"]
    elif gpus:
        params["gpus_per_node"] = gpus
    for key in ("account", "qos", "constraint", "cpus_per_task"):
        if prof[key] is not None:
            params[key] = prof[key]
    if prof["mem_gb"] is not None:
        params["mem"] = f"{int(prof['mem_gb'])}GB"
    return params


def sbatch_script(prof: dict[str, Any], job_name: str, folder: Path, n_array: int | None = None) -> str:
    """The batch script submitit would submit for these runs (``--dry-run``)."""
    from submitit.slurm import slurm

    params = slurm_parameters(prof, job_name)
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    if n_array and n_array > 1:
        params["map_count"] = n_array
    return slurm._make_sbatch_string(command=command, folder=folder, **params)


def make_executor(prof: dict[str, Any], folder: Path, job_name: str) -> Any:
    import submitit

    if prof["executor"] == "local":
        ex = submitit.LocalExecutor(folder=str(folder))
        ex.update_parameters(
            timeout_min=prof["time_min"],
            gpus_per_node=int(prof["gpus_per_node"]),
            tasks_per_node=1,
            nodes=1,
            setup=[f"export {MAX_REQUEUES_ENV}={int(prof['max_requeues'])}", *prof["setup"]],
        )
        return ex
    slurm_ex = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=int(prof["max_requeues"]))
    slurm_ex.update_parameters(**slurm_parameters(prof, job_name))
    return slurm_ex


def run_job(run_dir: str) -> dict[str, Any]:
    """What each submitted job (and each requeue of it) runs: ``sciadapt fit --resume run_dir``."""
    from rich.console import Console

    from sciadapt.runs import is_writer
    from sciadapt.stages.evaluate import print_comparison
    from sciadapt.stages.preempt import requeue
    from sciadapt.stages.runner import fit

    console = Console()
    try:
        _run, summary = fit(None, [], resume=run_dir, console=console)
        if is_writer():
            print_comparison(summary, console)
    except Interrupted:
        raise  # Ctrl-C is the user's stop, never a reason to requeue
    except Preempted as p:
        state = read_json(Path(run_dir) / "state.json") if (Path(run_dir) / "state.json").exists() else {}
        limit = int(os.environ.get(MAX_REQUEUES_ENV, "20"))
        if len(state.get("preemptions", [])) > limit:
            msg = f"not requeued: preempted {len(state['preemptions'])} times (max_requeues {limit})"
        else:
            msg = requeue()
        console.print(f"preempted: {p}; {msg}")
        return {"status": "preempted", "run_dir": run_dir, "requeue": msg}
    return {"status": "done", "run_dir": run_dir, "final": summary.get("final")}


def submit(
    pipeline: str,
    overrides: list[str],
    sweep: list[str] | None,
    cluster: str,
    cluster_set: list[str] | None,
    dry_run: bool,
    wait: bool,
    console: Any,
    resume: str | None = None,
) -> dict[str, Any]:
    """Validate the profile and every run, make the run directories, submit one job (or one array).

    With ``resume``: submit an existing run (one that ran out of requeues, or was started
    elsewhere) to continue where it stopped.

    Returns:
        ``{"jobs": [...ids], "run_dirs": [...], "folder": ..., "script": ... (dry run)}``.

    Raises:
        ConfigError: A bad profile, an invalid pipeline or sweep point (nothing submitted), or no
            ``sbatch`` on this machine.
    """
    from sciadapt.config import load_config
    from sciadapt.hpc.sweep import expand_sweep
    from sciadapt.stages.plan import plan
    from sciadapt.stages.runner import PipelineRunner

    prof = load_cluster(cluster, cluster_set)
    if resume is not None:
        return _resubmit(pipeline, overrides, sweep, resume, prof, dry_run, wait, console)
    points = expand_sweep(sweep) if sweep else [[]]
    implied = trainer_overrides(prof)
    configs = []
    for combo in points:
        try:
            spec = load_config(pipeline, [*implied, *overrides, *combo])
            plan(spec)  # the stage rules too: nothing is submitted for a point that cannot run
            configs.append(spec)
        except ConfigError as err:
            what = f"sweep point {' '.join(combo)}" if combo else "the pipeline"
            raise ConfigError(f"{what} is invalid, nothing was submitted:\n{err}") from None
    name = configs[0].name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(configs[0].run_dir).resolve()  # jobs may start elsewhere
    folder = base / f"{name}-{'sweep' if sweep else 'job'}-{stamp}"
    logs = folder / "slurm"
    if dry_run:
        runs = [
            f"sciadapt fit --resume {folder / str(i)}/<run>  {' '.join(combo)}".rstrip()
            for i, combo in enumerate(points)
        ]
        return _dry_run(prof, name, logs, runs, len(points), folder, [])
    _require_sbatch(prof)
    from sciadapt.hpc.sweep import preflight_points
    from sciadapt.runs import RUN_DIR_ENV, check_output_location, trained_elsewhere

    check_output_location(base, "run_dir", folder=True)
    run_dirs = []
    before = os.environ.get(RUN_DIR_ENV)
    try:
        with trained_elsewhere():  # the accelerator is the compute node's; the job checks it there
            if len(points) > 1:  # every point's data and model before the first run folder is made
                preflight_points(points, configs, console)
            for i, cfg in enumerate(configs):
                runner = PipelineRunner.create(dataclasses.replace(cfg, run_dir=str(folder / str(i))), console)
                runner.state["status"] = "submitted"
                write_json(runner.out.state_path, runner.state)
                run_dirs.append(str(runner.run_dir))
    finally:  # create() publishes the run dir for DDP ranks; jobs must not inherit it
        if before is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = before
    return _submit_runs(pipeline, overrides, sweep, points, run_dirs, prof, folder, name, wait, console)


def _dry_run(
    prof: dict[str, Any], name: str, logs: Path, runs: list[str], n_array: int, folder: Path, run_dirs: list[str]
) -> dict[str, Any]:
    """Print what would be submitted (plain print: a script to read or pipe, not a rich rendering)."""
    script = sbatch_script(prof, name, logs, n_array) if prof["executor"] == "slurm" else ""
    print(f"# {prof['executor']} profile {prof['source']}: {len(runs)} run(s), nothing submitted")
    for i, run in enumerate(runs):
        print(f"# run {i}: {run}")
    if script:
        print(script)
    return {"jobs": [], "run_dirs": run_dirs, "folder": str(folder), "script": script}


def _submit_runs(
    pipeline: str | None,
    overrides: list[str],
    sweep: list[str] | None,
    points: list[list[str]],
    run_dirs: list[str],
    prof: dict[str, Any],
    folder: Path,
    name: str,
    wait: bool,
    console: Any,
) -> dict[str, Any]:
    logs = folder / "slurm"
    executor = make_executor(prof, logs, name)
    if len(run_dirs) == 1:
        jobs = [executor.submit(run_job, run_dirs[0])]
    else:
        jobs = executor.map_array(run_job, run_dirs)
    job_ids = [str(j.job_id) for j in jobs]
    record = {
        "pipeline": pipeline,
        "overrides": overrides,
        "sweep": sweep or [],
        "cluster": {k: v for k, v in prof.items() if k != "extra"},
        "jobs": job_ids,
        "runs": [{"point": combo, "run_dir": d} for combo, d in zip(points, run_dirs, strict=True)],
    }
    write_json(folder / "sweep.json", record)
    console.print(f"submitted {len(jobs)} job(s) ({', '.join(job_ids)}); logs in {logs}", soft_wrap=True)
    console.print(f"follow: sciadapt summarize {folder}", soft_wrap=True)
    if wait:
        for job in jobs:
            result = job.result()
            console.print(f"job {job.job_id}: {result['status']} ({result['run_dir']})", soft_wrap=True)
    return {"jobs": record["jobs"], "run_dirs": run_dirs, "folder": str(folder)}


def _require_sbatch(prof: dict[str, Any]) -> None:
    import shutil

    if prof["executor"] == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError(
            "sbatch not found: submit from a SLURM login node, or use --dry-run to see the script, "
            "or --cluster local to run the jobs on this machine"
        )


def _resubmit(
    pipeline: str | None,
    overrides: list[str],
    sweep: list[str] | None,
    resume: str,
    prof: dict[str, Any],
    dry_run: bool,
    wait: bool,
    console: Any,
) -> dict[str, Any]:
    """Submit an existing run directory; refused before submission when it belongs to another pipeline."""
    from sciadapt.config import load_config
    from sciadapt.runs import open_run
    from sciadapt.stages.runner import PipelineRunner

    if sweep or overrides:
        raise ConfigError("--resume continues a run as it was configured: drop --sweep and key=value overrides")
    run_dir = open_run(resume).resolve()
    cfg = load_config(pipeline, []) if pipeline else None
    runner = PipelineRunner.resume(run_dir, cfg)  # a run of another pipeline fails here, naming both
    if runner.state.get("status") == "done":
        raise ConfigError(f"{run_dir} is already finished (state.json: done); nothing to resume")
    folder = run_dir / "resubmit"
    if dry_run:
        runs = [f"sciadapt fit --resume {run_dir}"]
        return _dry_run(prof, runner.spec.name, folder / "slurm", runs, 1, folder, [str(run_dir)])
    _require_sbatch(prof)
    return _submit_runs(runner.spec.name, [], None, [[]], [str(run_dir)], prof, folder, runner.spec.name, wait, console)
