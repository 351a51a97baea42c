"""Experiment tracking: the run in TensorBoard, MLflow or Weights & Biases beside ``metrics.csv``.

``trainer.logger`` picks the tracker; ``csv`` (the default) adds none, as ``metrics.csv`` is always
written. A pipeline run is ONE tracker run, whatever its number of stages: every stage's trainer
gets a :class:`StageLogger` over the same Lightning logger, whose steps continue the count of the
stages before it, so the curves of all stages follow each other on one axis. What is logged:

- the resolved config: flattened hyperparameters (``stages.<name>.optim.lr``) and ``config.yaml``
  (an MLflow artifact, TensorBoard text, a W&B run file), once, when the tracker run starts;
- every metric the task logs (``train/loss``, ``val/loss``, ...), and ``stage`` (the stage index)
  at each stage's first step: the stage boundaries;
- each stage's test metrics as ``<stage>/test/<metric>``, at the stage's last step;
- the comparison rows of ``summary.json`` as ``compare/<model>/<metric>`` (and a table), and the
  plots (``plots/*.png``), when the run ends.

``tracking.json`` in the run folder names the tracker run, so ``fit --resume`` continues it.
Only global rank 0 tracks (other DDP ranks get no logger).
"""

from __future__ import annotations

import importlib
import numbers
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.loggers import Logger

from sciadapt.errors import ConfigError
from sciadapt.runs import is_writer, read_json, write_json

if TYPE_CHECKING:
    from sciadapt.runs import Run
    from sciadapt.stages.plan import StagePlan

#: the module each tracker imports, and what installs it
_NEEDS = {
    "tensorboard": ("tensorboard", 'pip install "sciadapt[tracking]"'),
    "mlflow": ("mlflow", 'pip install "sciadapt[tracking]"'),
    "wandb": ("wandb", "pip install wandb"),
}

TRACKING_FILE = "tracking.json"


def check_available(kind: str) -> None:
    """Raise a :class:`ConfigError` naming the install command when tracker ``kind`` cannot be imported.

    The runner calls it in its preflight, before a run folder exists.
    """
    if kind not in _NEEDS:
        return
    module, install = _NEEDS[kind]
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"trainer.logger: {kind!r} needs the Python package {module!r}, which cannot be imported here ({e}). "
            f"Fix: {install}, or set trainer.logger=csv (metrics.csv only)"
        ) from None


def flat_params(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"a.b.c": value}``; a list of named sections (stages) is keyed by name."""
    if isinstance(obj, dict):
        items: list[tuple[str, Any]] = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, list) and any(isinstance(v, dict | list) for v in obj):
        names = [v.get("name") if isinstance(v, dict) else None for v in obj]
        by_name = all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names)
        items = [(str(names[i]) if by_name else str(i), v) for i, v in enumerate(obj)]
    else:
        return {prefix: obj}
    out: dict[str, Any] = {}
    if not items:
        return {prefix: obj} if prefix else {}
    for key, value in items:
        out.update(flat_params(value, f"{prefix}.{key}" if prefix else key))
    return out


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a result row (names, labels and None left out)."""
    return {k: float(v) for k, v in values.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}


def _cell(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


class StageLogger(Logger):
    """The run's Lightning logger as one stage's trainer sees it.

    Steps continue after ``offset`` (the steps of the stages before), Lightning's own
    hyperparameter logging is dropped (the tracker logs the resolved config once), and a stage's
    successful end does not close the tracker run (a failed one does: Lightning reports it here).
    """

    def __init__(self, base: Logger, offset: int) -> None:
        super().__init__()
        self.base = base
        self.offset = offset

    @property
    def name(self) -> str | None:
        return self.base.name

    @property
    def version(self) -> int | str | None:
        return self.base.version

    @property
    def save_dir(self) -> str | None:
        return self.base.save_dir

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.base.log_metrics(metrics, None if step is None else step + self.offset)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the task's hparams are part of the resolved config the tracker logged

    def save(self) -> None:
        self.base.save()

    def finalize(self, status: str) -> None:
        if status != "success":
            self.base.finalize(status)


class Tracker:
    """The tracker run of one pipeline run (this base class tracks nothing: ``csv``, DDP ranks > 0).

    Made once per run by :meth:`open`; the runner calls :meth:`stage_logger` for each stage's
    trainer, :meth:`stage_done` after each stage's test and :meth:`run_done` at the end.
    """

    def __init__(self, run: Run, steps_done: int = 0) -> None:
        self.run = run
        self.step = steps_done  # optimiser steps of the stages done: the next stage's first step
        self.logger: Logger | None = None

    @staticmethod
    def open(run: Run, state: dict[str, Any], summary: dict[str, Any]) -> Tracker:
        """The tracker of ``run``: a new tracker run, or the one ``tracking.json`` names (a resumed run)."""
        kind = run.spec.trainer.logger
        stages = summary.get("stages", {})
        done = sum(int(stages.get(name, {}).get("steps", 0)) for name in state.get("completed", []))
        if kind == "csv" or not is_writer():
            return Tracker(run, done)
        check_available(kind)
        cls: type[Tracker] = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}[kind]
        tracker = cls(run, done)
        path = run.path / TRACKING_FILE
        saved = read_json(path, "delete it to start a new tracker run") if path.is_file() else None
        record = saved if isinstance(saved, dict) and saved.get("logger") == kind else None
        tracker.start(record)
        if record is None:
            write_json(path, {"logger": kind, **tracker.record()})
            tracker.log_config()
        return tracker

    # -- what each tracker implements ---------------------------------------------------------
    def start(self, record: dict[str, Any] | None) -> None:
        """Make ``self.logger``: a new tracker run, or the one ``record`` (``tracking.json``) names."""

    def record(self) -> dict[str, Any]:
        """What ``tracking.json`` keeps to find the tracker run again."""
        return {}

    def log_config(self) -> None:
        """The resolved config: hyperparameters and ``config.yaml``."""

    def log_table(self, rows: list[dict[str, Any]]) -> None:
        """The comparison rows as a table."""

    def log_image(self, path: Path) -> None:
        """A PNG of ``plots/``."""

    def close(self) -> None:
        if self.logger is not None:
            self.logger.finalize("success")

    # -- the runner's hooks -------------------------------------------------------------------
    def stage_logger(self, plan: StagePlan) -> Logger | None:
        """The logger of stage ``plan``'s trainer (None: no tracker); marks the stage's start."""
        if self.logger is None:
            return None
        self.logger.log_metrics({"stage": float(plan.index)}, self.step)
        return StageLogger(self.logger, self.step)

    def stage_done(self, stage: str, stage_summary: dict[str, Any]) -> None:
        """After stage ``stage`` and its test: its test metrics, at its last step."""
        self.step += int(stage_summary.get("steps", 0))
        if self.logger is None:
            return
        test = _numbers(stage_summary.get("test") or {})
        if test:
            self.logger.log_metrics({f"{stage}/test/{k}": v for k, v in test.items()}, self.step)
            self.logger.save()

    def run_done(self, summary: dict[str, Any], plots_dir: Path) -> None:
        """After the comparison: its rows, the plots, and the tracker run closed."""
        if self.logger is None:
            return
        rows = (summary.get("evaluation") or {}).get("rows") or []
        metrics = {f"compare/{row['model']}/{k}": v for row in rows for k, v in _numbers(row).items()}
        if metrics:
            self.logger.log_metrics(metrics, self.step)
        if rows:
            self.log_table(rows)
        for png in sorted(plots_dir.glob("*.png")):
            self.log_image(png)
        self.close()


class TensorBoardTracker(Tracker):
    """TensorBoard: one event folder, ``<run_dir>/tensorboard``."""

    def start(self, record: dict[str, Any] | None) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        self.tb = TensorBoardLogger(
            save_dir=str(self.run.path), name="", version="tensorboard", default_hp_metric=False
        )
        self.logger = self.tb

    def record(self) -> dict[str, Any]:
        return {"log_dir": self.tb.log_dir}

    def log_config(self) -> None:
        # with a metric, the hparams land in the event file (TensorBoard's HPARAMS tab)
        self.tb.log_hyperparams(flat_params(self.run.spec.to_dict()), {"stage": 0.0})
        text = (self.run.path / "config.yaml").read_text()
        self.tb.experiment.add_text("config.yaml", "    " + text.replace("\n", "\n    "), 0)

    def log_table(self, rows: list[dict[str, Any]]) -> None:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
        for row in rows:
            lines.append("| " + " | ".join(_cell(row.get(k)) for k in keys) + " |")
        self.tb.experiment.add_text("comparison", "\n".join(lines), self.step)

    def log_image(self, path: Path) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))  # (H, W, 3)
        self.tb.experiment.add_image(f"plots/{path.stem}", pixels, self.step, dataformats="HWC")


class MLflowTracker(Tracker):
    """MLflow: one run in experiment ``<pipeline name>``; the store is ``MLFLOW_TRACKING_URI`` when
    set, else a file store in ``<run_dir>/mlruns``."""

    def start(self, record: dict[str, Any] | None) -> None:
        from lightning.pytorch.loggers import MLFlowLogger
        from mlflow.tracking import MlflowClient

        # a resumed run keeps its store: the one it started with, or its own mlruns (wherever the
        # run folder is now)
        uri = record.get("tracking_uri") if record else os.environ.get("MLFLOW_TRACKING_URI")
        self.uri = uri or None
        if not uri:
            uri = "file:" + str((self.run.path / "mlruns").resolve())
            # MLflow 3 refuses a file store unless asked: it is the store that needs no server or database
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        run_id = record.get("run_id") if record else None
        if run_id is None:
            # made here, not by Lightning, which warns that it "creates" the experiment
            store = MlflowClient(uri)
            if store.get_experiment_by_name(self.run.spec.name) is None:
                store.create_experiment(self.run.spec.name)
        self.mlf = MLFlowLogger(
            experiment_name=self.run.spec.name,
            run_name=self.run.path.name,
            tracking_uri=uri,
            tags={"sciadapt.run_dir": str(self.run.path.resolve())},
            run_id=run_id,
        )
        self.logger = self.mlf
        before = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            client = self.mlf.experiment  # makes (or finds) the run now, so tracking.json can name it
        finally:
            # Lightning sets MLflow's global tracking URI, and MLflow with it MLFLOW_TRACKING_URI: the
            # next pipeline run of this process (a sweep, a notebook) would go to this run's store
            if before is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = before
        if run_id is not None:  # resumed: the run was marked failed, or still says running
            client.update_run(run_id, status="RUNNING")

    def record(self) -> dict[str, Any]:
        return {"tracking_uri": self.uri, "experiment": self.run.spec.name, "run_id": self.mlf.run_id}

    def log_config(self) -> None:
        self.mlf.log_hyperparams(flat_params(self.run.spec.to_dict()))
        self.mlf.experiment.log_artifact(self.mlf.run_id, str(self.run.path / "config.yaml"))

    def log_table(self, rows: list[dict[str, Any]]) -> None:
        summary = self.run.summary_path
        if summary.is_file():
            self.mlf.experiment.log_artifact(self.mlf.run_id, str(summary))

    def log_image(self, path: Path) -> None:
        self.mlf.experiment.log_artifact(self.mlf.run_id, str(path), "plots")


class WandbTracker(Tracker):
    """Weights & Biases: one run in project ``<pipeline name>``, files in ``<run_dir>/wandb``
    (``WANDB_MODE=offline`` keeps it there; ``wandb sync`` uploads it later)."""

    def start(self, record: dict[str, Any] | None) -> None:
        from lightning.pytorch.loggers import WandbLogger

        self.wb = WandbLogger(
            project=self.run.spec.name,
            name=self.run.path.name,
            save_dir=str(self.run.path),
            id=record.get("id") if record else None,  # resume="allow" (Lightning's default): the same run
        )
        self.logger = self.wb
        _ = self.wb.experiment  # start it now, so tracking.json can name it

    def record(self) -> dict[str, Any]:
        return {"id": self.wb.experiment.id, "project": self.run.spec.name}

    def log_config(self) -> None:
        self.wb.log_hyperparams(self.run.spec.to_dict())
        self.wb.experiment.save(str(self.run.path / "config.yaml"), base_path=str(self.run.path), policy="now")

    def log_table(self, rows: list[dict[str, Any]]) -> None:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        self.wb.log_table("comparison", columns=keys, data=[[row.get(k) for k in keys] for row in rows])

    def log_image(self, path: Path) -> None:
        self.wb.log_image(f"plots/{path.stem}", [str(path)])

    def close(self) -> None:
        super().close()
        self.wb.experiment.finish()
