"""The stage runner: one task, trained through the planned stages of a pipeline.

Each stage sets which parameters train, its optimiser and schedule, its length, and its data;
then calls ``Trainer.fit``. After each stage the runner writes (atomically, through the
:class:`~sciadapt.runs.Run`) the stage's final weights, its metrics (``metrics.csv``,
``summary.json``) and ``state.json``, which is what ``--resume`` reads to continue a killed run
at the stage — and the epoch — where it stopped. What each stage trains is decided by
:mod:`sciadapt.stages.plan`; scoring lives in :mod:`sciadapt.stages.evaluate`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shlex
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback

from sciadapt.config import build_datamodule, build_task, from_data_params, load_config
from sciadapt.errors import ConfigError, Interrupted, Preempted
from sciadapt.registry import BACKBONES
from sciadapt.runs import (
    RUN_DIR_ENV,
    Run,
    attach_stage_adapter,
    is_writer,
    load_into,
    load_weights,
    save_task,
    task_for_stage,
    write_json,
)
from sciadapt.spec import PipelineSpec
from sciadapt.stages import evaluate
from sciadapt.stages.callbacks import EMA_CKPT, WeightEma
from sciadapt.stages.plan import (
    StagePlan,
    evaluation_data,
    new_channel_problems,
    shifted_data,
    trainable_patterns,
)
from sciadapt.stages.preempt import SignalPoints, SignalWatch, enter_phase, fault_point, save_checkpoint
from sciadapt.stages.tracking import Tracker, check_available
from sciadapt.stages.trainer import build_trainer, stage_callbacks
from sciadapt.stages.weights import (
    add_new_channels,
    apply_trainable,
    check_signature,
    grown_channels_key,
    model_facts,
)
from sciadapt.tasks.base import Task
from sciadapt.types import DataModule, FitsWindow, NamesColumns, ReportsPadding

log = logging.getLogger("sciadapt")


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) < 60 else text[:57] + "..."


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
        self._stage_facts: dict[int, dict[str, Any]] = {}  # each stage's data facts (its model's channels)
        self._dms: dict[str, DataModule] = {}
        self._weights_stage: str | None = None
        self._watch: SignalWatch | None = None  # installed by fit() (or run()) for the whole run
        self.tracker = Tracker(run)  # trainer.logger's tracker run, opened by run()

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
        self.out.preflight()  # trainer settings on this machine, the run folder's place, start/resume checkpoints
        check_available(self.spec.trainer.logger)  # the tracker's package
        pl.seed_everything(self.spec.seed, workers=True, verbose=False)
        shifted = shifted_data(self.spec)
        if shifted is not None:  # a shifted split that cannot be read fails now, not after the training
            self.datamodule(self.plans[-1], shifted, setup="test")
        for plan in self.plans:
            dm = self.datamodule(plan)
            self._ensure_task(dm, plan)
            problems = new_channel_problems(plan, self._stage_facts[plan.index])
            if problems:
                raise ConfigError(problems)
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
        return trainable_patterns(plan.spec, head_has_params=any(True for _ in self.task.head.parameters()))

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
        self._stage_facts[plan.index] = dm.facts()
        # a stage that adds input channels starts from the model without them
        facts = model_facts(self._stage_facts[plan.index], self.plans, self._stage_facts, plan.index, start=True)
        model_key = json.dumps([plan.model["backbone"], plan.model["head"]], sort_keys=True, default=str)
        if self.task is None or model_key != self._model_key:
            # the first stage, or a stage that brings its own backbone/head
            self._model_key = model_key
            self.facts = facts
            self.task = build_task(plan.model, facts)
            self.task.seed = self.spec.seed
            self.task.data_signature = {k: _compact(v) for k, v in {**facts, **self._columns(dm)}.items()}
            return
        # the facts the backbone is built from fix the model's shapes: every stage's data must keep them
        geometry = from_data_params(BACKBONES.get(plan.model["backbone"]["name"])) - {
            grown_channels_key(self.plans, plan.index)  # the model's channels follow new_channels instead
        }
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
        self.task.follow_data(facts)

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
            facts = model_facts(self.facts, self.plans, self._stage_facts, structure_of)
            self.task = task_for_stage(self.spec, self.plans, facts, structure_of)
        else:
            facts = model_facts(self.facts, self.plans, self._stage_facts, model_of, start=True)
            self.task = build_task(self.plans[model_of].model, facts)
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
        check_signature(path, self.task.data_signature)
        load_into(self.task, load_weights(path), path)

    # -- running ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run (or continue) every stage, then the comparison; returns the summary.

        Raises:
            Preempted: After a SIGUSR1/SIGTERM, once what the resume needs and ``state.json``
                (``preempted``) are written (see :mod:`sciadapt.stages.preempt`).
            Interrupted: The same after Ctrl-C (``state.json``: ``interrupted``).
        """
        if self._watch is not None:  # fit() installed it before the preflight
            return self._run_watched()
        with SignalWatch() as self._watch:
            try:
                return self._run_watched()
            finally:
                self._watch = None

    def _run_watched(self) -> dict[str, Any]:
        assert self._watch is not None
        watch = self._watch
        try:
            return self._run()
        except Preempted as p:
            stop = p
        except KeyboardInterrupt:  # raised by code, not by Ctrl-C (the watch takes SIGINT)
            stop = Interrupted(signal.SIGINT, watch.stage, phase=watch.phase, received=watch.phase)
        watch.closing = True  # further signals wait until state.json says how the run stopped
        stop.run_dir = self.run_dir
        interrupted = isinstance(stop, Interrupted)
        self.state["status"] = "interrupted" if interrupted else "preempted"
        self.state.setdefault("interruptions" if interrupted else "preemptions", []).append(stop.record())
        self._write_json(self.out.state_path, self.state)
        raise stop

    def check(self, phase: str, stage: str | None = None) -> None:
        """A safe point between the steps of a run: stop now if a signal came (on any DDP rank; every
        rank passes the same points)."""
        enter_phase(phase, stage)
        if self._watch is not None:
            self._watch.check(phase, stage)

    def _run(self) -> dict[str, Any]:
        assert self._watch is not None
        self.state["status"] = "running"
        pending = [p.name for p in self.plans if p.name not in self.state["completed"]]
        enter_phase("setup", pending[0] if pending else "")
        if self.task is None:  # resumed: nothing is written until the checks pass, so a signal stops at once
            with self._watch.at_once():
                self.preflight()
        self.tracker = Tracker.open(self.out, self.state, self.summary)
        pl.seed_everything(self.spec.seed, workers=True, verbose=False)
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*ended before the epoch ended.*")
        fault_point("setup")
        self._weights_stage = None
        dm = None
        phase = "setup"
        for plan in self.plans:
            if plan.name in self.state["completed"]:
                continue
            self.check(phase, plan.name)  # before the first stage to run, then between stages
            dm = self._run_stage(plan)
            phase = "between"
            enter_phase(phase, plan.name)
            fault_point(phase, plan.name)
        return self._finish(dm)

    def _prepare_stage(self, plan: StagePlan, dm: DataModule, resume_from: Path) -> tuple[int, int, str | None]:
        """Weights, trainable parameters and the stage's adapter; returns (trainable, total, adapter)."""
        self._ensure_task(dm, plan)
        self._init_weights(plan)
        add_new_channels(self.task.backbone, plan, self._stage_facts[plan.index])
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

    def _run_stage(self, plan: StagePlan) -> DataModule:
        """Train (or, with ``max_epochs: 0``, only score) one stage and record it; returns its datamodule.

        A stage whose training had finished before the run stopped (``state.json`` ``trained``) is
        not trained again: its final weights are scored, as the uninterrupted run scored them.
        """
        name = plan.name
        dm = self.datamodule(plan)
        resume_from = self.out.stage_dir(name) / "last.ckpt"  # present when this stage was killed or preempted
        if name in self.state.get("trained", []) and name in self.summary["stages"]:
            stage_summary, trainer = self._trained_stage(plan, dm)
        elif plan.spec.merge is not None:
            stage_summary, trainer = self._merge_stage(plan, dm)
        else:
            stage_summary, trainer = self._train_stage(plan, dm, resume_from)
        if plan.spec.evaluate:
            # under DDP each rank scores the whole test split on one device (a sharded test
            # would score each rank's shard only)
            stage_summary["test"] = self.test(trainer if trainer.world_size == 1 else None, dm, stage=name)
        self.check("test", name)  # under DDP the ranks agree here on a signal that came during the test
        self.summary["stages"][name] = stage_summary
        self.tracker.stage_done(name, stage_summary)
        self._write_json(self.out.summary_path, self.summary)
        # the stage is complete only once its final weights and summary are on disk
        self.state["completed"].append(name)
        self._write_json(self.out.state_path, self.state)
        if is_writer():
            resume_from.unlink(missing_ok=True)
            (self.out.stage_dir(name) / "best.ckpt").unlink(missing_ok=True)
        self._weights_stage = name
        return dm

    def _train_stage(self, plan: StagePlan, dm: DataModule, resume_from: Path) -> tuple[dict[str, Any], pl.Trainer]:
        """Fit one stage, save its final weights and record it ``trained``; returns its summary and trainer."""
        assert self._watch is not None
        name = plan.name
        n_train, n_total, adapter = self._prepare_stage(plan, dm, resume_from)
        self._print(
            f"[bold]stage {plan.index + 1}/{len(self.plans)} {name}[/bold]: {n_train:,} of {n_total:,} parameters "
            f"train ({100 * n_train / n_total:.3g} %), {dm.describe()}"
        )
        ckpt_cb, callbacks = stage_callbacks(
            plan.spec, self.out.stage_dir(name), self.run_dir, self._watch, resume_from, dm
        )
        ema = None
        if plan.spec.ema is not None:  # its average rides in last.ckpt, so a resumed stage continues it
            ema = WeightEma(plan.spec.ema.decay, plan.spec.ema.every_n_steps)
            callbacks.append(ema)
        trainer = build_trainer(self.spec.trainer, plan.spec, callbacks, self.run_dir, self.tracker.stage_logger(plan))
        self.state["current"] = name
        self._write_json(self.out.state_path, self.state)
        t0 = time.perf_counter()
        if plan.evaluation_only:
            self._print(f"  {name}: max_epochs 0, evaluation only")
        else:
            enter_phase("train", name)
            trainer.fit(
                self.task,  # type: ignore[arg-type]
                datamodule=dm,  # type: ignore[arg-type]
                ckpt_path=str(resume_from) if resume_from.exists() else None,
                weights_only=True if resume_from.exists() else None,
            )
        seconds = time.perf_counter() - t0
        enter_phase("trained", name)
        if plan.spec.restore_best and ckpt_cb.best_model_path:
            load_into(self.task, load_weights(Path(ckpt_cb.best_model_path)), ckpt_cb.best_model_path)
        if ema is not None:
            self._save_ema(plan, ema, adapter)
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
        if ema is not None:
            stage_summary["ema"] = {"decay": ema.decay, "every_n_steps": ema.every_n_steps, "updates": ema.updates}
        # what the model saw of the data: padded short histories, few-shot subsets, and how
        # the backbone fit the window to its own context (pad / truncate)
        if isinstance(dm, ReportsPadding):
            stage_summary["data"] = dm.padding_report()
        if isinstance(self.task.backbone, FitsWindow):
            stage_summary["backbone_input"] = self.task.backbone.input_policy(dm.facts()["context_length"])
        # trained: a stop from here on scores the saved final weights on resume instead of
        # fitting again from last.ckpt
        self.summary["stages"][name] = stage_summary
        self._write_json(self.out.summary_path, self.summary)
        self.state.setdefault("trained", []).append(name)
        self._write_json(self.out.state_path, self.state)
        fault_point("trained", name)
        self.check("trained", name)
        return dict(stage_summary), trainer

    def _merge_stage(self, plan: StagePlan, dm: DataModule) -> tuple[dict[str, Any], pl.Trainer]:
        """A ``merge:`` stage: its final weights merged from the named stages' final weights (see
        :func:`sciadapt.averaging.arith.combine`), saved and recorded ``trained``; returns its summary
        and a one-device trainer to score them."""
        from sciadapt.averaging import arith

        assert self._watch is not None and plan.spec.merge is not None
        mg, name = plan.spec.merge, plan.name
        self._ensure_task(dm, plan)
        self.fresh_task(plan.index)
        self.task.stage = plan.spec  # type: ignore[attr-defined]
        self.task.stage_index = plan.index
        self.state["current"] = name
        self._write_json(self.out.state_path, self.state)
        enter_phase("train", name)
        t0 = time.perf_counter()

        def final(stage: str) -> arith.State:
            return load_weights(self.out.final_ckpt(stage))

        trainer = evaluate.eval_trainer(self.spec.trainer.accelerator, self.run_dir, [SignalPoints(self._watch, name)])

        def val_loss(state: arith.State) -> float:
            """The validation loss of ``state`` on this stage's data (greedy soup chooses with it)."""
            load_into(self.task, state, f"{plan.where}.merge")
            results = trainer.validate(self.task, datamodule=dm, verbose=False)  # type: ignore[arg-type]
            if not results or "val/loss" not in results[0]:
                raise ConfigError(
                    f"{plan.where}.merge.method: greedy_soup chooses on the stage's validation split, and its data "
                    "has none; give the stage data with a validation split, or use soup"
                )
            self.check("train", name)
            return float(results[0]["val/loss"])

        self._print(
            f"[bold]stage {plan.index + 1}/{len(self.plans)} {name}[/bold]: {mg.method} of {', '.join(mg.stages)}"
        )
        merged, record = arith.combine(
            mg.method,
            [(s, final(s)) for s in mg.stages],
            anchor=final(mg.anchor) if mg.anchor is not None else None,
            alpha=mg.wise_ft_alpha,
            score=val_loss if mg.method == "greedy_soup" else None,
        )
        if mg.anchor is not None:
            record["anchor"] = mg.anchor
        load_into(self.task, merged, f"{plan.where}.merge")
        save_task(self.task, self.out.final_ckpt(name))
        n_total = sum(p.numel() for p in self.task.parameters())
        stage_summary: dict[str, Any] = {
            "trainable_params": 0,
            "total_params": n_total,
            "epochs": 0,
            "steps": 0,
            "fit_seconds": round(time.perf_counter() - t0, 2),
            "merge": {k: v for k, v in record.items() if k != "ratios"},  # Model Stock's per-tensor ratios: many
        }
        enter_phase("trained", name)
        self.summary["stages"][name] = stage_summary
        self._write_json(self.out.summary_path, self.summary)
        self.state.setdefault("trained", []).append(name)
        self._write_json(self.out.state_path, self.state)
        fault_point("trained", name)
        self.check("trained", name)
        return dict(stage_summary), trainer

    def _trained_stage(self, plan: StagePlan, dm: DataModule) -> tuple[dict[str, Any], pl.Trainer]:
        """A stage trained before the run stopped: its final weights back in the task, and a trainer
        like the one it was trained with (same precision and device) to score them."""
        assert self._watch is not None
        name = plan.name
        self._ensure_task(dm, plan)
        self.fresh_task(plan.index)
        final = self.out.final_ckpt(name)
        load_into(self.task, load_weights(final), final)
        self.task.stage = plan.spec  # type: ignore[attr-defined]
        self.task.stage_index = plan.index
        self._print(
            f"[bold]stage {plan.index + 1}/{len(self.plans)} {name}[/bold]: trained before the run stopped; "
            "scoring its final weights"
        )
        trainer = build_trainer(self.spec.trainer, plan.spec, [SignalPoints(self._watch, name)], self.run_dir)
        self.state["current"] = name
        self._write_json(self.out.state_path, self.state)
        return {k: v for k, v in self.summary["stages"][name].items() if k != "test"}, trainer

    def _save_ema(self, plan: StagePlan, ema: WeightEma, adapter: str | None) -> None:
        """``checkpoints/<stage>/ema.ckpt``: the stage's model with the average of its trainable weights,
        in the layout of its ``final.ckpt`` (an adapter merged after the stage is merged into it too)."""
        path = self.out.stage_dir(plan.name) / EMA_CKPT
        if adapter is not None and plan.spec.peft and plan.spec.peft["merge_after"]:
            from sciadapt.peft import core as peft_core

            # the raw adapter is merged after this; the averaged one is merged into a copy
            model = copy.deepcopy(self.task)  # a LightningModule's copy leaves its trainer behind
            ema.copy_to(model)
            peft_core.merge_and_drop(model, adapter)
            save_task(model, path)
            del model
        else:
            with ema.applied(self.task):
                save_task(self.task, path)
        log.info("stage %s: EMA of %d tensors after %d updates -> %s", plan.name, len(ema.shadow), ema.updates, path)

    def _save_final(self, name: str, trainer: pl.Trainer, evaluation_only: bool) -> None:
        if evaluation_only:  # no fit, so no trainer-attached model to save from
            save_task(self.task, self.out.final_ckpt(name))
        else:
            save_checkpoint(trainer, self.out.final_ckpt(name), weights_only=True)

    def _finish(self, dm: DataModule | None) -> dict[str, Any]:
        """After the last stage: the comparison table, the loss plot, ``state.json`` done."""
        assert self._watch is not None
        last = self.plans[-1]
        enter_phase("compare", "")
        if dm is None:  # every stage was already complete: rebuild for the comparison
            dm = self.datamodule(last)
            self._ensure_task(dm, last)
        self._write_json(self.run_dir / "scaler.json", dm.scaler_state())
        if self.spec.evaluation.data:
            dm = self.datamodule(last, evaluation_data(self.spec), setup="test")
        shifted = shifted_data(self.spec)
        shifted_dm = self.datamodule(last, shifted, setup="test") if shifted is not None else None
        evaluation = evaluate.compare(self, dm, shifted_dm)
        self.check("compare")  # the last safe point: from here the run finishes whatever comes
        self._watch.closing = True
        self.summary["evaluation"] = evaluation
        # the last stage's own (raw) weights, not the average scored after them
        own = [r for r in evaluation["rows"] if not r.get("ema")]
        self.summary["final"] = own[-1] if own else {}
        self._write_json(self.out.summary_path, self.summary)
        if is_writer():
            evaluate.plot_losses(self.run_dir, self.spec.name)
            self._write_cards()
        self.tracker.run_done(self.summary, self.run_dir / "plots")
        self.state["status"] = "done"
        self._write_json(self.out.state_path, self.state)
        return self.summary

    def command(self) -> str:
        """The command that made the run (``state.json`` ``command``), else one that makes it again."""
        argv = self.state.get("command")
        if isinstance(argv, list) and argv:
            return shlex.join(str(a) for a in argv)
        return shlex.join(["sciadapt", "fit", str(self.run_dir / "config.yaml")])

    def _base_of(self, plan: StagePlan) -> str:
        """Where a stage's base weights came from, for its model card."""
        if plan.init == "pretrained":
            return f"the pretrained weights `{plan.model['backbone']['weights']}`"
        if plan.init == "scratch":
            return "the seeded random initial weights of this stage (init_from: scratch)"
        if plan.init_stage is not None:
            start = self.plans[plan.init_stage].name
            return f"the final weights of stage `{start}` of this run (`checkpoints/{start}/final.ckpt`)"
        return f"the checkpoint `{plan.init}`"

    def _write_cards(self) -> None:
        """A model card (``README.md``) in every adapter directory of the run, with the comparison known."""
        from sciadapt.peft.card import CardFacts, write_card

        for plan in self.plans:
            directory = self.run_dir / "adapters" / plan.name
            if not plan.spec.peft or not (directory / "adapter_model.safetensors").is_file():
                continue
            dm = self._dms.get(json.dumps(plan.data, sort_keys=True, default=str))
            data = dm.describe() if dm is not None else ""
            where = plan.data.get("path")
            data = f"`{plan.data['name']}`" + (f" `{where}`" if where else "") + (f": {data}" if data else "")
            facts = CardFacts(
                pipeline=self.spec.name,
                stage=plan.name,
                backbone=str(plan.model["backbone"]["name"]),
                weights=plan.model["backbone"].get("weights"),
                task=str(plan.model["task"]["name"]),
                data=data,
                command=self.command(),
                base=self._base_of(plan),
                run_dir=str(self.run_dir),
                test=self.summary["stages"].get(plan.name, {}).get("test"),
                comparison=self.summary.get("evaluation") or {},
            )
            write_card(directory, facts)

    @staticmethod
    def _write_json(path: Path, obj: Any) -> None:
        """Run files are written by global rank 0 only (every rank runs the same stages)."""
        if is_writer():
            write_json(path, obj)

    def test(self, trainer: pl.Trainer | None, dm: DataModule, phase: str = "test", stage: str = "") -> dict[str, Any]:
        """The current task's test metrics on ``dm`` (a fresh one-device trainer unless given; a
        given one carries its stage's :class:`SignalPoints`); a signal stops it before the next batch."""
        if trainer is None:
            points: list[Callback] = [SignalPoints(self._watch, stage, phase)] if self._watch is not None else []
            trainer = evaluate.eval_trainer(self.spec.trainer.accelerator, self.run_dir, points)
        return evaluate.score(self.task, dm, trainer)


def fit(
    pipeline: str | None, overrides: list[str], resume: str | None = None, console: Any = None
) -> tuple[Run, dict[str, Any]]:
    """Validate a pipeline (nothing is written if invalid) and run its stages, or continue the run
    ``resume``; returns the run and its summary."""
    # one watch for the whole run: a signal during the checks stops at once (nothing is written
    # yet); from the first stage on, at the next safe point (see sciadapt.stages.preempt)
    with SignalWatch() as watch:
        with watch.at_once():
            fault_point("preflight")
            if resume:
                spec = load_config(pipeline, overrides) if pipeline else None
                runner = PipelineRunner.resume(Path(resume), spec, console)
            else:
                if pipeline is None:
                    raise ConfigError("fit needs a pipeline (a .yaml path or a bundled name) or --resume RUN")
                runner = PipelineRunner.create(load_config(pipeline, overrides), console)
                # what the model cards say made the run
                runner.state["command"] = ["sciadapt", "fit", pipeline, *overrides]
        runner._watch = watch
        if console is not None:
            if resume:
                done = ", ".join(runner.state["completed"]) or "none"
                console.print(f"resuming {runner.run_dir} after stages: {done}")
            else:
                console.print(f"run directory: {runner.run_dir}")
        return runner.out, runner.run()


#: facts with more numbers than this (2-D latitude, longitude and cell areas of a projected grid) go
#: into checkpoints as a digest and a shape, not as millions of pickled floats
_SIGNATURE_MAX_NUMBERS = 4096


def _compact(value: Any) -> Any:
    """A data-signature value as stored with the weights: large nested number lists become
    ``{"sha256", "shape"}`` (equal data gives an equal digest)."""
    if not isinstance(value, list) or not value or not isinstance(value[0], list):
        return value
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return value
    if array.size <= _SIGNATURE_MAX_NUMBERS:
        return value
    return {"sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest(), "shape": list(array.shape)}
