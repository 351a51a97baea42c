"""The stage runner: one task, trained through the planned stages of a pipeline.

Each stage sets which parameters train, its optimiser and schedule, its length, and its data;
then calls ``Trainer.fit``. After each stage the runner writes (atomically, through the
:class:`~sciadapt.runs.Run`) the stage's final weights, its metrics (``metrics.csv``,
``summary.json``) and ``state.json``, which is what ``--resume`` reads to continue a killed run
at the stage — and the epoch — where it stopped. What each stage trains is decided by
:mod:`sciadapt.stages.plan`; scoring lives in :mod:`sciadapt.stages.evaluate`.
"""

from __future__ import annotations

import fnmatch
import io
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.environments import SLURMEnvironment

from sciadapt.config import build_datamodule, build_task, from_data_params, load_config
from sciadapt.errors import CheckpointError, ConfigError, Preempted
from sciadapt.registry import BACKBONES
from sciadapt.runs import (
    Run,
    atomic_write_bytes,
    attach_stage_adapter,
    load_into,
    load_weights,
    task_for_stage,
    write_json,
)
from sciadapt.spec import PipelineSpec
from sciadapt.stages import evaluate
from sciadapt.stages.callbacks import EpochEndCheckpoint, MetricsCSV
from sciadapt.stages.plan import StagePlan, evaluation_data
from sciadapt.stages.preempt import PreemptionCheckpoint, SignalWatch
from sciadapt.tasks.base import Task
from sciadapt.types import DataModule, FitsWindow, NamesColumns, ReportsPadding

log = logging.getLogger("sciadapt")

# rank 0 publishes its run directory here; processes launched for the other DDP ranks join it
RUN_DIR_ENV = "SCIADAPT_RUN_DIR"


def is_writer() -> bool:
    """True in the process that writes run files: global rank 0 (the only process without DDP)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0)) == 0


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) < 60 else text[:57] + "..."


def _matches(name: str, pattern: str) -> bool:
    # `backbone` means the whole module, as `backbone.*` does
    return fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + ".")


def apply_trainable(
    model: torch.nn.Module, trainable: list[str], frozen: list[str], where: str, adapter_follows: bool = False
) -> tuple[int, int]:
    """Set ``requires_grad`` from glob patterns over parameter names; frozen wins.

    Returns (trainable count, total count). A pattern that matches no parameter is an error:
    it is almost always a typo, and silently training everything (or nothing) wastes a run.
    """
    names = [n for n, _ in model.named_parameters()]
    problems = []
    for key, pats in (("trainable", trainable), ("frozen", frozen)):
        for pat in pats:
            if not any(_matches(n, pat) for n in names):
                tops = sorted({n.split(".")[0] for n in names})
                problems.append(
                    f"{where}.{key}: pattern {pat!r} matches no parameter. Parameter names start with "
                    f"{', '.join(t + '.' for t in tops)} (e.g. {names[0]!r})"
                )
    if problems:
        raise ConfigError(problems)
    n_train = n_total = 0
    for n, p in model.named_parameters():
        on = any(_matches(n, t) for t in trainable) and not any(_matches(n, f) for f in frozen)
        p.requires_grad_(on)
        n_total += p.numel()
        n_train += p.numel() if on else 0
    if n_train == 0 and not adapter_follows:
        raise ConfigError(f"{where}: no parameter is trainable (check `trainable` and `frozen`)")
    return n_train, n_total


class PipelineRunner:
    """Runs the stages of a validated pipeline (see :func:`sciadapt.config.load_config`) in a run."""

    def __init__(self, run: Run, console: Any = None) -> None:
        self.out = run  # the Run this runner writes to
        self.spec: PipelineSpec = run.spec
        self.plans: list[StagePlan] = run.plans
        self.console = console
        self.state: dict[str, Any] = run.state()
        self.summary: dict[str, Any] = run.summary()
        self.task: Task = None  # type: ignore[assignment]  # built by preflight()
        self._model_key = ""
        self.facts: dict[str, Any] = {}
        self._dms: dict[str, DataModule] = {}
        self._weights_stage: str | None = None

    @property
    def run_dir(self) -> Path:
        return self.out.path

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def create(cls, spec: PipelineSpec, console: Any = None) -> PipelineRunner:
        """Preflight every stage (data read, model built, patterns checked), then make the run dir.

        Bad data in the last stage fails now, not after the first stage's hours of training,
        and an invalid pipeline leaves nothing in ``runs/``.
        """
        runner = cls(Run(Path(spec.run_dir) / "_pending", spec), console)
        runner.preflight()
        shared = os.environ.get(RUN_DIR_ENV)
        if not is_writer() and shared:
            # a DDP worker process re-running the command: it joins rank 0's run and writes nothing
            runner.out = Run(Path(shared), spec)
        else:
            runner.out = Run.create(spec)
            # the processes Lightning launches for the other ranks inherit this and join the run
            os.environ[RUN_DIR_ENV] = str(runner.out.path)
        runner.summary["run_dir"] = str(runner.out.path)
        return runner

    @classmethod
    def resume(cls, run_dir: Path, spec: PipelineSpec | None = None, console: Any = None) -> PipelineRunner:
        """Continue the run in ``run_dir``; ``spec`` (a pipeline named on the command line) must be its pipeline."""
        run = Run.open(run_dir)
        if spec is not None and spec.name != run.spec.name:
            raise ConfigError(
                f"--resume {run_dir} is a run of pipeline {run.spec.name!r}, not {spec.name!r}: "
                f"resume it with `sciadapt fit {run.spec.name} --resume {run_dir}`"
                " or start a new run"
            )
        return cls(run, console)

    def preflight(self) -> None:
        pl.seed_everything(self.spec.seed, workers=True, verbose=False)
        for plan in self.plans:
            dm = self.datamodule(plan)
            self._ensure_task(dm, plan)
            apply_trainable(
                self.task, self._trainable(plan), plan.spec.frozen, plan.where, adapter_follows=bool(plan.spec.peft)
            )
            if plan.spec.peft:
                from sciadapt.peft import core as peft_core
                from sciadapt.registry import PEFT_METHODS

                pf = plan.spec.peft
                method = PEFT_METHODS.build(pf["method"], **plan.peft_method_args())
                peft_core.find_targets(
                    self.task, method, pf["targets"], pf["layer_types"], where=f"{plan.where}.peft.targets"
                )

    def _trainable(self, plan: StagePlan) -> list[str]:
        if plan.spec.trainable is not None:
            return list(plan.spec.trainable)
        if plan.spec.peft:
            # a PEFT stage trains its adapter and the head; a parameter-free head (a backbone that
            # forecasts itself, as TTM and MOMENT do) leaves only the adapter
            return ["head"] if any(True for _ in self.task.head.parameters()) else []
        return ["*"]

    def _print(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg)
        else:
            log.info(msg)

    # -- data and model ---------------------------------------------------------------------
    def datamodule(self, plan: StagePlan, data: dict[str, Any] | None = None, setup: str = "fit") -> DataModule:
        """The (set-up, cached) datamodule of a stage's data (or of ``data``)."""
        data = plan.data if data is None else data
        key = json.dumps(data, sort_keys=True, default=str)
        if key not in self._dms:
            dm: DataModule = build_datamodule(data)
            dm.setup(setup)
            self._dms[key] = dm
        dm = self._dms[key]
        dm.shuffle_seed = self.spec.seed * 131 + plan.index
        return dm

    def _ensure_task(self, dm: DataModule, plan: StagePlan) -> None:
        facts = dm.facts()
        model_key = json.dumps([plan.model["backbone"], plan.model["head"]], sort_keys=True, default=str)
        if self.task is None or model_key != self._model_key:
            # the first stage, or a stage that brings its own backbone/head
            self._model_key = model_key
            self.facts = facts
            self.task = build_task(plan.model, facts)
            self.task.seed = self.spec.seed
            self.task.data_signature = {**facts, **self._columns(dm)}
            return
        # the facts the backbone is built from fix the model's shapes: every stage's data must keep them
        geometry = from_data_params(BACKBONES.get(plan.model["backbone"]["name"]))
        diff = {
            k: (self.facts[k], facts[k])
            for k in facts
            if k in geometry and k in self.facts and self.facts[k] != facts[k]
        }
        if diff:
            desc = ", ".join(f"{k} {_short(a)} -> {_short(b)}" for k, (a, b) in diff.items())
            raise ConfigError(
                f"stage {plan.name!r}: its data changes the model geometry ({desc}); stages share one model, "
                f"so every stage's data must keep {', '.join(sorted(diff))} as the first stage's data has them"
            )

    @staticmethod
    def _columns(dm: DataModule) -> dict[str, Any]:
        """Column names of series data, so a checkpoint names what it was trained on."""
        if isinstance(dm, NamesColumns):
            return {"target_columns": list(dm.target_columns), "exog_columns": list(dm.exog_columns)}
        return {}

    def fresh_task(self, structure_of: int, model_of: int | None = None) -> None:
        """A new task with stage ``structure_of``'s adapters and stage ``model_of``'s model
        (default: the same stage; -1 means no adapters)."""
        data_signature = self.task.data_signature
        if model_of is None or model_of == structure_of:
            self.task = task_for_stage(self.spec, self.plans, self.facts, structure_of)
        else:
            self.task = build_task(self.plans[model_of].model, self.facts)
        self.task.seed = self.spec.seed
        self.task.data_signature = data_signature

    def _init_weights(self, plan: StagePlan) -> None:
        i, init = plan.index, plan.init
        if init == "scratch":
            if i > 0:
                self.fresh_task(-1, model_of=i)
            return
        if init == "previous":
            prev = self.plans[i - 1].name
            if self._weights_stage != prev:  # resumed: the previous stage's weights are on disk only
                self.fresh_task(i - 1)
                load_into(self.task, load_weights(self.out.final_ckpt(prev)), self.out.final_ckpt(prev))
            return
        if init == "pretrained":
            weights = plan.model["backbone"].get("weights")
            if not weights:
                raise ConfigError(f"stages[{i}].init_from: pretrained, but backbone.weights is not set")
            self.task.backbone.load_pretrained(weights)
            return
        if plan.init_stage is not None:  # stage:<name>
            path = self.out.final_ckpt(self.plans[plan.init_stage].name)
            self.fresh_task(plan.init_stage)
        else:
            path = Path(init)
            self.fresh_task(-1, model_of=i)
        self._check_signature(path)
        load_into(self.task, load_weights(path), path)

    def _check_signature(self, path: Path) -> None:
        """A checkpoint trained on other channels fails here, naming both channel lists."""
        if path.suffix not in (".ckpt", ".pt"):
            return
        try:
            meta = torch.load(path, map_location="cpu", weights_only=True).get("sciadapt", {})
        except Exception as e:
            raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
        theirs = meta.get("data_signature")
        ours = self.task.data_signature
        if not theirs or not ours:
            return
        for key in ("n_targets", "n_exog", "context_length", "horizon"):
            if theirs.get(key) != ours.get(key):
                raise CheckpointError(
                    f"checkpoint {path} was trained with {key}={theirs.get(key)} "
                    f"(targets {theirs.get('target_columns')}, exog {theirs.get('exog_columns')}) but this data has "
                    f"{key}={ours.get(key)} (targets {ours.get('target_columns')}, exog {ours.get('exog_columns')}): "
                    f"select the same columns with data.target_columns / data.exog_columns, or train from scratch"
                )

    # -- running ----------------------------------------------------------------------------
    def _trainer(self, plan: StagePlan, callbacks: list[Callback]) -> pl.Trainer:
        t, st = self.spec.trainer, plan.spec
        if t.enable_progress_bar:
            # Lightning's default rich bar redraws every step: 10-20x slower than the model
            # itself for small CPU models. TQDM at a few redraws per second costs nothing.
            callbacks = [*callbacks, TQDMProgressBar(refresh_rate=t.progress_refresh_steps)]
        plugins: list[Any] = []
        if SLURMEnvironment.detect():
            # the runner's own preemption handling checkpoints and requeues (sciadapt.stages.preempt)
            plugins.append(SLURMEnvironment(auto_requeue=False))
        return pl.Trainer(
            plugins=plugins or None,
            accelerator=t.accelerator,
            devices=t.devices,
            strategy=t.strategy,
            precision=t.precision,  # type: ignore[arg-type]  # Lightning checks the name itself
            num_nodes=t.num_nodes,
            max_epochs=-1 if st.max_epochs is None else st.max_epochs,
            max_steps=st.max_steps or -1,
            limit_train_batches=st.limit_train_batches or 1.0,
            limit_val_batches=st.limit_val_batches or 1.0,
            gradient_clip_val=st.gradient_clip_val,
            accumulate_grad_batches=t.accumulate_grad_batches,
            val_check_interval=t.val_check_interval,
            num_sanity_val_steps=t.num_sanity_val_steps,
            log_every_n_steps=t.log_every_n_steps,
            enable_progress_bar=t.enable_progress_bar,
            deterministic=t.deterministic,
            callbacks=callbacks,
            logger=False,
            enable_model_summary=False,
            default_root_dir=str(self.run_dir),
        )

    def run(self) -> dict[str, Any]:
        """Run (or continue) every stage, then the comparison; returns the summary.

        Raises:
            Preempted: After a SIGUSR1/SIGTERM, once the resume checkpoint and ``state.json`` are
                written (see :mod:`sciadapt.stages.preempt`).
        """
        with SignalWatch() as self._watch:
            try:
                return self._run()
            except Preempted as p:
                p.run_dir = self.run_dir
                self.state["status"] = "preempted"
                self.state.setdefault("preemptions", []).append(p.record())
                self._write_json(self.out.state_path, self.state)
                raise

    def _check_signal(self, stage: str) -> None:
        """Between stages: stop now if a preemption signal came while nothing was training."""
        if self._watch.received is not None:
            raise Preempted(self._watch.received, stage)

    def _run(self) -> dict[str, Any]:
        self.state["status"] = "running"
        if self.task is None:
            self.preflight()
        pl.seed_everything(self.spec.seed, workers=True, verbose=False)
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*ended before the epoch ended.*")
        self._weights_stage = None
        dm = None
        for plan in self.plans:
            if plan.name in self.state["completed"]:
                continue
            self._check_signal(plan.name)
            dm = self._run_stage(plan)
            if plan.index + 1 < len(self.plans):
                self._check_signal(self.plans[plan.index + 1].name)
        return self._finish(dm)

    def _prepare_stage(self, plan: StagePlan, dm: DataModule, resume_from: Path) -> tuple[int, int, str | None]:
        """Weights, trainable parameters and the stage's adapter; returns (trainable, total, adapter)."""
        self._ensure_task(dm, plan)
        self._init_weights(plan)
        trainable = self._trainable(plan)
        n_train, n_total = apply_trainable(
            self.task, trainable, plan.spec.frozen, plan.where, adapter_follows=bool(plan.spec.peft)
        )
        adapter = None
        if plan.spec.peft:
            from sciadapt.peft import core as peft_core
            from sciadapt.registry import PEFT_METHODS

            adapter = attach_stage_adapter(self.task, self.spec, plan)
            if not resume_from.exists():  # a resumed stage's adapter comes from its checkpoint
                method = PEFT_METHODS.build(plan.spec.peft["method"], **plan.peft_method_args())
                method.init_from_data(self.task, adapter, dm.train_dataloader())
            n_train, n_total = peft_core.mark_trainable(
                self.task, adapter, also=[p for p in trainable if p not in plan.spec.frozen]
            )
        self.task.stage = plan.spec  # type: ignore[attr-defined]
        self.task.stage_index = plan.index
        return n_train, n_total, adapter

    def _stage_callbacks(
        self, plan: StagePlan, dm: DataModule, resume_from: Path
    ) -> tuple[ModelCheckpoint, list[Callback]]:
        ckpt_cb = ModelCheckpoint(
            dirpath=str(self.out.stage_dir(plan.name)),
            filename="best",
            monitor="val/loss",
            save_top_k=1 if plan.spec.restore_best else 0,
            enable_version_counter=False,
        )
        callbacks: list[Callback] = [
            ckpt_cb,
            MetricsCSV(self.run_dir / "metrics.csv", plan.name),
            EpochEndCheckpoint(resume_from),
            PreemptionCheckpoint(self._watch, resume_from, plan.name, dm),
        ]
        es = plan.spec.early_stopping
        if es is not None:
            callbacks.append(
                EarlyStopping(monitor=es.monitor, patience=es.patience, mode=es.mode, min_delta=es.min_delta)
            )
        return ckpt_cb, callbacks

    def _run_stage(self, plan: StagePlan) -> DataModule:
        """Train (or, with ``max_epochs: 0``, only score) one stage and record it; returns its datamodule."""
        name = plan.name
        dm = self.datamodule(plan)
        resume_from = self.out.stage_dir(name) / "last.ckpt"  # present when this stage was killed or preempted
        n_train, n_total, adapter = self._prepare_stage(plan, dm, resume_from)
        self._print(
            f"[bold]stage {plan.index + 1}/{len(self.plans)} {name}[/bold]: {n_train:,} of {n_total:,} parameters "
            f"train ({100 * n_train / n_total:.3g} %), {dm.describe()}"
        )
        ckpt_cb, callbacks = self._stage_callbacks(plan, dm, resume_from)
        trainer = self._trainer(plan, callbacks)
        self.state["current"] = name
        self._write_json(self.out.state_path, self.state)
        t0 = time.perf_counter()
        if plan.evaluation_only:
            self._print(f"  {name}: max_epochs 0, evaluation only")
        else:
            trainer.fit(
                self.task,  # type: ignore[arg-type]
                datamodule=dm,  # type: ignore[arg-type]
                ckpt_path=str(resume_from) if resume_from.exists() else None,
                weights_only=True if resume_from.exists() else None,
            )
        seconds = time.perf_counter() - t0
        if plan.spec.restore_best and ckpt_cb.best_model_path:
            load_into(self.task, load_weights(Path(ckpt_cb.best_model_path)), ckpt_cb.best_model_path)
        if adapter is not None:
            from sciadapt.peft import core as peft_core

            if is_writer():
                peft_core.save_adapter(self.task, self.run_dir / "adapters" / name, adapter)
            if plan.spec.peft and plan.spec.peft["merge_after"]:
                peft_core.merge_and_drop(self.task, adapter)
        self._save_final(name, trainer, plan.evaluation_only)
        stage_summary: dict[str, Any] = {
            "trainable_params": n_train,
            "total_params": n_total,
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "fit_seconds": round(seconds, 2),
        }
        # what the model saw of the data: padded short histories, few-shot subsets, and how
        # the backbone fit the window to its own context (pad / truncate)
        if isinstance(dm, ReportsPadding):
            stage_summary["data"] = dm.padding_report()
        if isinstance(self.task.backbone, FitsWindow):
            stage_summary["backbone_input"] = self.task.backbone.input_policy(dm.facts()["context_length"])
        if plan.spec.evaluate:
            # under DDP each rank scores the whole test split on one device (a sharded test
            # would score each rank's shard only)
            stage_summary["test"] = self.test(trainer if trainer.world_size == 1 else None, dm)
        self.summary["stages"][name] = stage_summary
        self._write_json(self.out.summary_path, self.summary)
        # the stage is complete only once its final weights and summary are on disk
        self.state["completed"].append(name)
        self._write_json(self.out.state_path, self.state)
        if is_writer():
            resume_from.unlink(missing_ok=True)
            (self.out.stage_dir(name) / "best.ckpt").unlink(missing_ok=True)
        self._weights_stage = name
        return dm

    def _save_final(self, name: str, trainer: pl.Trainer, evaluation_only: bool) -> None:
        if not evaluation_only:
            trainer.save_checkpoint(str(self.out.final_ckpt(name)), weights_only=True)
            return
        # no fit, so no trainer-attached model to save from: write the same layout directly
        ckpt = {"state_dict": self.task.state_dict()}  # type: ignore[attr-defined]
        self.task.on_save_checkpoint(ckpt)  # type: ignore[attr-defined]
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        if is_writer():
            atomic_write_bytes(self.out.final_ckpt(name), buf.getvalue())

    def _finish(self, dm: DataModule | None) -> dict[str, Any]:
        """After the last stage: the comparison table, the loss plot, ``state.json`` done."""
        last = self.plans[-1]
        if dm is None:  # every stage was already complete: rebuild for the comparison
            dm = self.datamodule(last)
            self._ensure_task(dm, last)
        self._write_json(self.run_dir / "scaler.json", dm.scaler_state())
        if self.spec.evaluation.data:
            dm = self.datamodule(last, evaluation_data(self.spec), setup="test")
        self.summary["evaluation"] = evaluate.compare(self, dm)
        self.summary["final"] = self.summary["evaluation"]["rows"][-1] if self.summary["evaluation"]["rows"] else {}
        self._write_json(self.out.summary_path, self.summary)
        if is_writer():
            evaluate.plot_losses(self.run_dir, self.spec.name)
        self.state["status"] = "done"
        self._write_json(self.out.state_path, self.state)
        return self.summary

    @staticmethod
    def _write_json(path: Path, obj: Any) -> None:
        """Run files are written by global rank 0 only (every rank runs the same stages)."""
        if is_writer():
            write_json(path, obj)

    def test(self, trainer: pl.Trainer | None, dm: DataModule) -> dict[str, Any]:
        """The current task's test metrics on ``dm`` (a fresh one-device trainer unless given)."""
        return evaluate.score(
            self.task, dm, trainer or evaluate.eval_trainer(self.spec.trainer.accelerator, self.run_dir)
        )


def fit(
    pipeline: str | None, overrides: list[str], resume: str | None = None, console: Any = None
) -> tuple[Run, dict[str, Any]]:
    """Validate a pipeline (nothing is written if invalid) and run its stages, or continue the run
    ``resume``; returns the run and its summary."""
    if resume:
        spec = load_config(pipeline, overrides) if pipeline else None
        runner = PipelineRunner.resume(Path(resume), spec, console)
        if console is not None:
            console.print(f"resuming {runner.run_dir} after stages: {', '.join(runner.state['completed']) or 'none'}")
    else:
        if pipeline is None:
            raise ConfigError("fit needs a pipeline (a .yaml path or a bundled name) or --resume RUN")
        runner = PipelineRunner.create(load_config(pipeline, overrides), console)
        if console is not None:
            console.print(f"run directory: {runner.run_dir}")
    return runner.out, runner.run()
