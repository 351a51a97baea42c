"""Run directories: ``runs/<pipeline>/<timestamp>/`` and atomic writes into them.

Every file is written to a temporary name in the same folder and renamed into place, so a
killed process leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import hashlib
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from sciadapt.errors import CheckpointError, ConfigError, OutputError
from sciadapt.hub import describe_mismatch, read_state_dict

if TYPE_CHECKING:
    from sciadapt.spec import PipelineSpec
    from sciadapt.stages.plan import StagePlan
    from sciadapt.tasks.base import Task
    from sciadapt.types import DataModule


# rank 0 publishes its run directory here; processes launched for the other DDP ranks join it
RUN_DIR_ENV = "SCIADAPT_RUN_DIR"

# False while runs are made here to be trained elsewhere (cluster submission from a login node):
# the accelerator is then checked where the job runs, not on this machine
_TRAINS_HERE: contextvars.ContextVar[bool] = contextvars.ContextVar("sciadapt_trains_here", default=True)


@contextlib.contextmanager
def trained_elsewhere() -> Iterator[None]:
    """Within: :meth:`Run.preflight` does not require the trainer's accelerator on this machine
    (runs created for a cluster job; the job's own preflight checks it on the compute node)."""
    token = _TRAINS_HERE.set(False)
    try:
        yield
    finally:
        _TRAINS_HERE.reset(token)


def is_writer() -> bool:
    """True in the process that writes run files: global rank 0 (the only process without DDP)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0)) == 0


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic) or (isinstance(o, np.ndarray | torch.Tensor) and o.ndim == 0):
        return o.item()
    if isinstance(o, np.ndarray | torch.Tensor):
        return o.tolist()
    return str(o)


def read_json(path: Path, fix: str = "restore it from a copy, or start a new run") -> Any:
    """A run file's JSON; a corrupt or unreadable file is a CheckpointError naming it and ``fix``."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}. The file is damaged; {fix}") from None


def _nearest_existing(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists() or parent.is_symlink():
            return parent
    return Path(".")  # pragma: no cover - a relative path's parents end in "."


def check_output_location(path: str | Path, name: str, folder: bool = False) -> Path:
    """Check, creating nothing that stays, that ``path`` can be written: a folder (``folder``) or a file.

    Every output (a run folder, a sweep folder, a store, a forecast file) is checked here before any
    work starts, so an unwritable place fails in a second rather than after hours of work.

    Args:
        path: The output.
        name: The key or flag that set it (``run_dir``, ``--out``), or a description (``the output
            store``), named in the message.
        folder: Whether ``path`` is a folder (else a file).

    Returns:
        ``path`` with ``~`` expanded.

    Raises:
        OutputError: ``path`` (or a parent) is the wrong kind of thing, or its place is not writable.
    """
    target = Path(path).expanduser()
    is_key = re.fullmatch(r"-{0,2}[\w.]+", name) is not None
    what = f"{name}={path}" if is_key else f"{name} {path}"
    fix = f"Fix: set {name} to a writable location" if is_key else "Fix: choose a writable location"
    if target.exists():
        if folder and not target.is_dir():
            raise OutputError(f"{what} is a file, but a folder is needed there. {fix} (or remove the file)")
        if not folder and target.is_dir():
            raise OutputError(f"{what} is a folder, but a file name is needed there, e.g. {target / 'forecast.csv'}")
    start = target if folder else target.parent
    existing = _nearest_existing(start)
    if not existing.is_dir():
        raise OutputError(f"{what}: {existing} is a file, so {start} cannot be created there. {fix}")
    try:
        probe = tempfile.mkdtemp(dir=existing, prefix=".sciadapt-write-check-")
        os.rmdir(probe)
    except OSError as e:
        raise OutputError(f"{what}: cannot write in {existing} ({e.strerror or e}). {fix}") from None
    return target


def write_csv_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite a CSV from rows (the union of keys is the header, in first-seen order)."""
    header: list[str] = []
    for r in rows:
        header.extend(k for k in r if k not in header)
    from io import StringIO

    buf = StringIO()
    w = csv.DictWriter(buf, fieldnames=header)
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(path, buf.getvalue())


def read_csv_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a run's CSV (none when it does not exist); a damaged file is a CheckpointError naming it."""
    if not path.exists():
        return []
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CheckpointError(
            f"cannot read {path}: {e}. The file is damaged; delete it (it holds the per-epoch losses of the loss "
            "plot; the run writes a new one)"
        ) from None


def new_run_dir(root: str, pipeline: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / pipeline
    path = base / stamp
    n = 1
    while path.exists():
        n += 1
        path = base / f"{stamp}-{n}"
    path.mkdir(parents=True)
    return path


def open_run(run: str | Path) -> Path:
    """An existing run directory; error with the fix when it is not one."""
    path = Path(run)
    if not (path / "config.yaml").is_file():
        hint = ""
        if path.is_dir():
            subs = sorted([*path.glob("*/config.yaml"), *path.glob("*/*/config.yaml")])
            if subs:
                hint = f" It contains runs, e.g. {subs[-1].parent}"
        raise ConfigError(f"{path} is not a sciadapt run directory (no config.yaml).{hint}")
    return path


def load_weights(path: Path, fix: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a Lightning checkpoint or a plain state-dict file, never executing code
    (``fix``: what to do about a file that cannot be read, see :func:`sciadapt.hub.read_state_dict`)."""
    return read_state_dict(Path(path), unwrap=True, fix=fix)


def save_figure(fig: Any, path: Path, dpi: int = 100) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def load_into(model: Task, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Strict load that names every missing, unexpected or mis-shaped tensor (after the model's own
    declared migration of keys older checkpoints have: :meth:`sciadapt.tasks.base.Task.migrate_state`)."""
    state = model.migrate_state(state)
    problems = describe_mismatch(model.state_dict(), state)
    if problems:
        raise CheckpointError(
            f"checkpoint {source} does not fit the model ({'; '.join(problems)}). The checkpoint was built "
            "for a different geometry (channels, exogenous columns, context length or horizon): use the "
            "same data and backbone settings as the run that wrote it, or start from scratch"
        )
    model.load_state_dict(state, strict=True)


def save_task(task: Task, path: Path) -> None:
    """A task's weights in the layout of a Lightning ``weights_only`` checkpoint (rank 0 writes)."""
    if not is_writer():  # the other DDP ranks hold the same weights and write nothing
        return
    ckpt: dict[str, Any] = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(ckpt)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(path, buf.getvalue())


def attach_stage_adapter(task: torch.nn.Module, spec: PipelineSpec, plan: StagePlan) -> str:
    """Attach stage ``plan``'s adapter; its initial values depend only on (seed, stage)."""
    from sciadapt.peft import core as peft_core
    from sciadapt.registry import PEFT_METHODS

    pf = plan.spec.peft
    assert pf is not None and plan.adapter is not None
    method = PEFT_METHODS.build(pf["method"], **plan.peft_method_args())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed * 7919 + plan.index * 104_729 + 17)
        peft_core.attach(task, method, plan.adapter, pf["targets"], pf["layer_types"], where=f"{plan.where}.peft")
    return plan.adapter


def task_for_stage(spec: PipelineSpec, plans: list[StagePlan], facts: dict[str, Any], j: int) -> Task:
    """A fresh task whose module structure matches the final checkpoint of stage ``j``."""
    from sciadapt.config import build_task

    task: Task = build_task(plans[j].model, facts)
    for k in plans[j].live_adapters:
        attach_stage_adapter(task, spec, plans[k])
    return task


_CHECKSUM = "# sciadapt config.yaml, sha256 of the lines below: "


def with_checksum(text: str) -> str:
    """``config.yaml`` text with a first line holding the checksum of the rest: a file cut short (a
    full disk, a copy that stopped) still parses as YAML, and would build another model silently."""
    return f"{_CHECKSUM}{hashlib.sha256(text.encode()).hexdigest()}\n{text}"


def checked_text(path: Path, fix: str) -> str:
    """A run's ``config.yaml`` text, its checksum verified (files written before checksums pass)."""
    text = path.read_text()
    if not text.startswith(_CHECKSUM):
        return text
    head, _, body = text.partition("\n")
    if hashlib.sha256(body.encode()).hexdigest() != head[len(_CHECKSUM) :].strip():
        raise ConfigError(
            f"{path} does not match the checksum on its first line: it was cut short or changed. {fix}; "
            "if you edited it on purpose, delete that first line"
        )
    return body


class Run:
    """A run directory and the pipeline that made it: the one way to reopen a run.

    ``predict``, ``test``, ``--resume`` and cluster jobs get a finished (or stopped) run's data and
    model back through :meth:`open`, :meth:`datamodule` and :meth:`task`; nothing else re-reads
    ``config.yaml``.
    """

    def __init__(self, path: Path, spec: PipelineSpec) -> None:
        from sciadapt.stages.plan import plan

        self.path = Path(path)
        self.spec = spec
        self.plans = plan(spec, source=str(self.path / "config.yaml"))

    # -- making and opening -----------------------------------------------------------------
    @classmethod
    def create(cls, spec: PipelineSpec, path: Path | None = None) -> Run:
        """A new ``<run_dir>/<pipeline>/<timestamp>/`` (or ``path``) holding the resolved ``config.yaml``."""
        from sciadapt.config import to_yaml

        if path is None:
            path = new_run_dir(spec.run_dir, spec.name)
        atomic_write_text(path / "config.yaml", with_checksum(to_yaml(spec)))
        return cls(path, spec)

    @classmethod
    def open(cls, run: str | Path) -> Run:
        """An existing run; a folder that is not one, or a damaged ``config.yaml``, is an error naming the fix."""
        from sciadapt.config import validate

        path = open_run(run)
        cfg_path = path / "config.yaml"
        fix = "The run's config is damaged; restore it from a copy (it is the resolved pipeline the run trained with)"
        try:
            raw = yaml.safe_load(checked_text(cfg_path, fix))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or type(e).__name__
            raise ConfigError(f"cannot read {cfg_path}: not valid YAML{where} ({problem}). {fix}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read {cfg_path}: {e}. {fix}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{cfg_path} holds {type(raw).__name__}, not a pipeline mapping. {fix}")
        return cls(path, validate(raw, source=str(cfg_path)))

    # -- files ----------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    def state(self) -> dict[str, Any]:
        """``state.json``: completed stages and status (a fresh state before the first write)."""
        if self.state_path.exists():
            state = read_json(self.state_path, "restore it from a copy, or start a new run")
            if not isinstance(state, dict) or not isinstance(state.get("completed"), list):
                raise CheckpointError(
                    f"{self.state_path} is not a run state (a mapping with a `completed` list of stages). "
                    "The file is damaged; restore it from a copy, or start a new run"
                )
            return state
        return {"completed": [], "status": "running"}

    def summary(self) -> dict[str, Any]:
        if self.summary_path.exists():
            summary = read_json(self.summary_path, "restore it from a copy, or start a new run")
            if not isinstance(summary, dict) or not isinstance(summary.get("stages", {}), dict):
                raise CheckpointError(
                    f"{self.summary_path} is not a run summary (a mapping with `stages`). "
                    "The file is damaged; restore it from a copy, or start a new run"
                )
            summary.setdefault("stages", {})
            return summary
        return {"pipeline": self.spec.name, "run_dir": str(self.path), "stages": {}}

    def stage_dir(self, stage: str) -> Path:
        return self.path / "checkpoints" / stage

    def final_ckpt(self, stage: str) -> Path:
        return self.stage_dir(stage) / "final.ckpt"

    def plan_of(self, stage: str | int) -> StagePlan:
        """The plan of a stage by name or index (-1: the last stage)."""
        if isinstance(stage, int):
            return self.plans[stage]
        names = [p.name for p in self.plans]
        if stage not in names:
            from sciadapt.registry import suggest

            raise ConfigError(f"{self.path} has no stage {stage!r}.{suggest(stage, names)} Stages: {', '.join(names)}")
        return self.plans[names.index(stage)]

    def require_final(self, stage: str | int = -1, scaler: bool = False) -> Path:
        """The final weights of a stage; an unfinished run is an error with the resume command."""
        name = self.plan_of(stage).name
        ckpt = self.final_ckpt(name)
        missing = [str(ckpt.relative_to(self.path))] if not ckpt.is_file() else []
        if scaler and not (self.path / "scaler.json").is_file():
            missing.append("scaler.json")
        if missing:
            raise CheckpointError(
                f"{self.path} is not finished (no {' or '.join(missing)}): "
                f"complete it with `sciadapt fit --resume {self.path}`"
            )
        return ckpt

    def scaler(self) -> dict[str, Any]:
        """``scaler.json``: the train-split statistics the run's datamodule normalised with."""
        self.require_final(-1, scaler=True)
        path = self.path / "scaler.json"
        fix = f"delete it and run `sciadapt fit --resume {self.path}`, which writes it again from the training data"
        state = read_json(path, fix)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} is not a scaler state (a mapping). The file is damaged; {fix}")
        return state

    # -- data and model -------------------------------------------------------------------
    def data_config(self, stage: str | int = -1, **overrides: Any) -> dict[str, Any]:
        """The data section a stage trained on, with ``overrides``."""
        return {**self.plan_of(stage).data, **overrides}

    def datamodule(self, stage: str | int = -1, **overrides: Any) -> DataModule:
        """The (not yet set-up) datamodule of a stage's data with ``overrides``."""
        from sciadapt.config import build_datamodule

        dm: DataModule = build_datamodule(self.data_config(stage, **overrides))
        return dm

    def task(self, stage: str | int, facts: dict[str, Any]) -> Task:
        """Stage ``stage``'s model for data with ``facts`` (``datamodule.facts()``), its final weights loaded."""
        plan = self.plan_of(stage)
        ckpt = self.require_final(plan.index)
        task = task_for_stage(self.spec, self.plans, facts, plan.index)
        load_into(task, load_weights(ckpt, self._final_fix(plan.name)), ckpt)
        return task

    def _final_fix(self, stage: str) -> str:
        return (
            f"it holds the final weights of stage {stage!r} of run {self.path}: restore it from a copy, "
            "or train the run again"
        )

    # -- preflight ------------------------------------------------------------------------
    def preflight(self) -> None:
        """What can fail at setup, checked before a new run's folder exists or a stopped run continues.

        The trainer settings on this machine (an accelerator that is not here, a strategy or
        precision Lightning refuses), the place of the run folder, the checkpoint files the stages
        still to run start from (present, weights-only, readable) and, for a stopped run, each
        stage's resume checkpoint.

        Raises:
            ConfigError: A trainer setting this machine cannot run, or an ``init_from`` file missing.
            OutputError: The run folder cannot be created or written.
            CheckpointError: A checkpoint that cannot be read.
        """
        from sciadapt.config import trainer_problems
        from sciadapt.stages.plan import init_file_problems

        resumed = (self.path / "config.yaml").is_file()
        source = str(self.path / "config.yaml") if resumed else None
        problems = trainer_problems(self.spec.trainer, here=_TRAINS_HERE.get())
        if problems:
            raise ConfigError(problems, source=source)
        if resumed:
            check_output_location(self.path, "--resume", folder=True)
        else:
            check_output_location(self.spec.run_dir, "run_dir", folder=True)
        done = set(self.state()["completed"]) if resumed else set()
        if resumed:
            self.summary()
            read_csv_rows(self.path / "metrics.csv")  # the run appends to both
        todo = [p for p in self.plans if p.name not in done]
        problems = init_file_problems(self.spec, [p.index for p in todo])
        if problems:
            raise ConfigError(problems, source=source)
        for plan in todo:
            if plan.init_file is not None:
                load_weights(Path(plan.init_file).expanduser())
            if not resumed:
                continue
            if plan.init_stage is not None and self.plans[plan.init_stage].name in done:
                start = self.plans[plan.init_stage].name  # a finished stage's weights this one starts from
                load_weights(self.final_ckpt(start), self._final_fix(start))
            last = self.stage_dir(plan.name) / "last.ckpt"
            if last.is_file():
                read_state_dict(
                    last,
                    fix=f"it is the resume checkpoint of stage {plan.name!r}: delete it to run that stage again "
                    f"from its start (`sciadapt fit --resume {self.path}`)",
                )
