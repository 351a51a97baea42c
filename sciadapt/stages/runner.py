"""The stage runner: one task, trained through an ordered list of stages.

Each stage sets which parameters train, its optimiser and schedule, its length, and its data;
then calls ``Trainer.fit``. After each stage the runner writes (atomically) the stage's final
weights, its metrics (``metrics.csv``, ``summary.json``) and ``state.json``, which is what
``--resume`` reads to continue a killed run at the stage — and the epoch — where it stopped.
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
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.environments import SLURMEnvironment

from sciadapt.config import (
    build_datamodule,
    build_task,
    data_facts,
    model_config,
    model_section,
    stage_data_config,
    to_yaml,
)
from sciadapt.errors import CheckpointError, ConfigError, Preempted
from sciadapt.hpc.preempt import PreemptionCheckpoint, SignalWatch
from sciadapt.metrics.forecasting import forecast_metrics, seasonal_naive
from sciadapt.runs import (
    atomic_write_bytes,
    atomic_write_text,
    load_into,
    load_weights,
    new_run_dir,
    read_csv_rows,
    read_json,
    write_csv_rows,
    write_json,
)

log = logging.getLogger("sciadapt")

# rank 0 publishes its run directory here; processes launched for the other DDP ranks join it
RUN_DIR_ENV = "SCIADAPT_RUN_DIR"


def is_writer() -> bool:
    """True in the process that writes run files: global rank 0 (the only process without DDP)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0)) == 0


# data facts that fix the model's shapes: every stage's data must agree on them
GEOMETRY_FACTS = (
    "context_length",
    "horizon",
    "n_exog",
    "lat",
    "lon",
    "n_channels",
    "n_forcings",
    "n_static",
    "n_input",
    "variables",
)


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) < 60 else text[:57] + "..."


# ---------------------------------------------------------------------------------------------
# trainable / frozen


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


# ---------------------------------------------------------------------------------------------
# PEFT in stages


def effective_init(cfg: dict[str, Any], i: int) -> str:
    init = cfg["stages"][i].get("init_from")
    if init is None:
        init = (
            "previous" if i > 0 else ("pretrained" if model_section(cfg, "backbone", 0).get("weights") else "scratch")
        )
    return str(init)


def adapter_name(cfg: dict[str, Any], i: int) -> str:
    pf = cfg["stages"][i]["peft"]
    return str(pf.get("adapter_name") or cfg["stages"][i]["name"])


def stage_peft_method(pf: dict[str, Any]) -> Any:
    """The method object of a validated ``peft:`` block (its non-common keys are builder args)."""
    from sciadapt.registry import PEFT_METHODS
    from sciadapt.stages.spec import PEFT_COMMON

    return PEFT_METHODS.build(pf["method"], **{k: v for k, v in pf.items() if k not in PEFT_COMMON})


def attach_stage_peft(task: torch.nn.Module, cfg: dict[str, Any], i: int) -> str:
    """Attach stage ``i``'s adapter; its initial values depend only on (seed, stage)."""
    from sciadapt.peft import core as peft_core

    spec = cfg["stages"][i]
    pf = spec["peft"]
    name = adapter_name(cfg, i)
    method = stage_peft_method(pf)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"] * 7919 + i * 104_729 + 17)
        peft_core.attach(
            task, method, name, pf.get("targets"), pf.get("layer_types"), where=f"stages[{i}] ({spec['name']}).peft"
        )
    return name


def live_adapter_stages(cfg: dict[str, Any], j: int) -> list[int]:
    """Indices of the stages whose (unmerged) adapters are part of the model after stage ``j``."""
    names = [s["name"] for s in cfg["stages"]]
    live: list[int] = []
    for k in range(j + 1):
        init = effective_init(cfg, k)
        if init.startswith("stage:"):
            live = live_adapter_stages(cfg, names.index(init[6:]))
        elif init not in ("previous", "pretrained"):
            live = []  # scratch or a plain checkpoint: the base structure
        pf = cfg["stages"][k].get("peft")
        if pf and not pf.get("merge_after"):
            live.append(k)
    return live


def task_for_stage(cfg: dict[str, Any], facts: dict[str, Any], j: int) -> Any:
    """A fresh task whose module structure matches the final checkpoint of stage ``j``."""
    task = build_task(model_config(cfg, j), facts)
    for k in live_adapter_stages(cfg, j):
        attach_stage_peft(task, cfg, k)
    return task


# ---------------------------------------------------------------------------------------------
# callbacks


class MetricsCSV(Callback):
    """One row per epoch in ``metrics.csv`` (every stage in one file, a ``stage`` column)."""

    def __init__(self, path: Path, stage: str) -> None:
        self.path = path
        self.stage = stage

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        rows = [
            r
            for r in read_csv_rows(self.path)
            if not (r["stage"] == self.stage and int(r["epoch"]) >= trainer.current_epoch)
        ]
        row: dict[str, Any] = {
            "stage": self.stage,
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
        }
        for k, v in sorted(trainer.callback_metrics.items()):
            if k.endswith("_step"):
                continue
            row[k.replace("_epoch", "")] = float(v)
        rows.append(row)
        write_csv_rows(self.path, rows)


class EpochEndCheckpoint(Callback):
    """``last.ckpt`` at every epoch end: what ``--resume`` continues from.

    Epoch ends (after validation) are the resume points because Lightning cannot replay the
    rest of a half-finished epoch exactly; with the seeded sampler an epoch boundary can.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            trainer.save_checkpoint(str(self.path), weights_only=False)  # full state: optimizer, loops


# ---------------------------------------------------------------------------------------------
# the runner


class PipelineRunner:
    """Runs a validated pipeline config (see :func:`sciadapt.config.load_config`)."""

    def __init__(self, cfg: dict[str, Any], run_dir: Path, console: Any = None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.console = console
        self.state_path = run_dir / "state.json"
        self.summary_path = run_dir / "summary.json"
        self.state: dict[str, Any] = (
            read_json(self.state_path) if self.state_path.exists() else {"completed": [], "status": "running"}
        )
        self.summary: dict[str, Any] = (
            read_json(self.summary_path)
            if self.summary_path.exists()
            else {"pipeline": cfg["name"], "run_dir": str(run_dir), "stages": {}}
        )
        self.task: Any = None
        self._model_key = ""
        self.facts: dict[str, Any] | None = None
        self._dms: dict[str, Any] = {}

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: dict[str, Any], console: Any = None) -> PipelineRunner:
        """Preflight every stage (data read, model built, patterns checked), then make the run dir.

        Bad data in the last stage fails now, not after the first stage's hours of training,
        and an invalid pipeline leaves nothing in ``runs/``.
        """
        runner = cls(cfg, Path(cfg["run_dir"]) / "_pending", console)
        runner.preflight()
        shared = os.environ.get(RUN_DIR_ENV)
        if not is_writer() and shared:
            # a DDP worker process re-running the command: it joins rank 0's run and writes nothing
            runner.run_dir = Path(shared)
        else:
            runner.run_dir = new_run_dir(cfg["run_dir"], cfg["name"])
            atomic_write_text(runner.run_dir / "config.yaml", to_yaml(cfg))
            # the processes Lightning launches for the other ranks inherit this and join the run
            os.environ[RUN_DIR_ENV] = str(runner.run_dir)
        runner.state_path = runner.run_dir / "state.json"
        runner.summary_path = runner.run_dir / "summary.json"
        runner.summary["run_dir"] = str(runner.run_dir)
        return runner

    def preflight(self) -> None:
        pl.seed_everything(self.cfg["seed"], workers=True, verbose=False)
        for i, spec in enumerate(self.cfg["stages"]):
            dm = self._datamodule(i)
            self._ensure_task(dm, spec["name"], i)
            where = f"stages[{i}] ({spec['name']})"
            apply_trainable(
                self.task, self._trainable(spec), spec["frozen"], where, adapter_follows=bool(spec.get("peft"))
            )
            pf = spec.get("peft")
            if pf:
                from sciadapt.peft import core as peft_core

                method = stage_peft_method(pf)
                peft_core.find_targets(
                    self.task, method, pf.get("targets"), pf.get("layer_types"), where=f"{where}.peft.targets"
                )

    def _trainable(self, spec: dict[str, Any]) -> list[str]:
        if spec.get("trainable") is not None:
            return list(spec["trainable"])
        if spec.get("peft"):
            # a PEFT stage trains its adapter and the head; a parameter-free head (a backbone that
            # forecasts itself, as TTM and MOMENT do) leaves only the adapter
            head = getattr(self.task, "head", None) if self.task is not None else None
            return ["head"] if head is None or any(True for _ in head.parameters()) else []
        return ["*"]

    @classmethod
    def resume(cls, run_dir: Path, cfg: dict[str, Any] | None = None, console: Any = None) -> PipelineRunner:
        import yaml

        from sciadapt.config import validate

        saved = validate(yaml.safe_load((run_dir / "config.yaml").read_text()), source=str(run_dir / "config.yaml"))
        if cfg is not None and cfg["name"] != saved["name"]:
            raise ConfigError(
                f"--resume {run_dir} is a run of pipeline {saved['name']!r}, not {cfg['name']!r}: "
                f"resume it with `sciadapt fit {saved['name']} --resume {run_dir}` or start a new run"
            )
        return cls(saved, run_dir, console)

    def _print(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg)
        else:
            log.info(msg)

    # -- stages ---------------------------------------------------------------------------
    def stage_dir(self, name: str) -> Path:
        return self.run_dir / "checkpoints" / name

    def final_ckpt(self, name: str) -> Path:
        return self.stage_dir(name) / "final.ckpt"

    def _datamodule(self, i: int) -> Any:
        key = json.dumps(stage_data_config(self.cfg, i), sort_keys=True, default=str)
        if key not in self._dms:
            dm = build_datamodule(self.cfg, i)
            dm.setup("fit")
            self._dms[key] = dm
        dm = self._dms[key]
        dm.shuffle_seed = self.cfg["seed"] * 131 + i
        return dm

    def _ensure_task(self, dm: Any, stage_name: str, i: int = 0) -> None:
        facts = data_facts(dm)
        model_cfg = model_config(self.cfg, i)
        model_key = json.dumps([model_cfg["backbone"], model_cfg["head"]], sort_keys=True, default=str)
        if self.task is None or model_key != self._model_key:
            # the first stage, or a stage that brings its own backbone/head
            self._model_key = model_key
            self.facts = facts
            self.task = build_task(model_cfg, facts)
            self.task.seed = self.cfg["seed"]
            self.task.data_signature = {**facts}
            for key in ("target_columns", "exog_columns"):
                if hasattr(dm, key):
                    self.task.data_signature[key] = list(getattr(dm, key))
            return
        assert self.facts is not None
        diff = {
            k: (self.facts[k], facts[k])
            for k in GEOMETRY_FACTS
            if k in facts and k in self.facts and self.facts[k] != facts[k]
        }
        if diff:
            desc = ", ".join(f"{k} {_short(a)} -> {_short(b)}" for k, (a, b) in diff.items())
            raise ConfigError(
                f"stage {stage_name!r}: its data changes the model geometry ({desc}); stages share one model, "
                f"so every stage's data must keep {', '.join(sorted(diff))} as the first stage's data has them"
            )

    def _fresh_task(self, structure_of: int, model_of: int | None = None) -> None:
        """A new task with stage ``structure_of``'s adapters and stage ``model_of``'s model
        (default: the same stage; -1 means no adapters)."""
        data_signature = self.task.data_signature
        if model_of is None or model_of == structure_of:
            self.task = task_for_stage(self.cfg, self.facts or {}, structure_of)
        else:
            self.task = build_task(model_config(self.cfg, model_of), self.facts or {})
        self.task.seed = self.cfg["seed"]
        self.task.data_signature = data_signature

    def _init_weights(self, i: int, spec: dict[str, Any]) -> None:
        init = effective_init(self.cfg, i)
        if init == "scratch":
            if i > 0:
                self._fresh_task(-1, model_of=i)
            return
        if init == "previous":
            prev = self.cfg["stages"][i - 1]["name"]
            if self._weights_stage != prev:  # resumed: the previous stage's weights are on disk only
                self._fresh_task(i - 1)
                load_into(self.task, load_weights(self.final_ckpt(prev)), self.final_ckpt(prev))
            return
        if init == "pretrained":
            weights = model_section(self.cfg, "backbone", i).get("weights")
            if not weights:
                raise ConfigError(f"stages[{i}].init_from: pretrained, but backbone.weights is not set")
            self.task.backbone.load_pretrained(weights)
            return
        if init.startswith("stage:"):
            path = self.final_ckpt(init[6:])
            self._fresh_task([s["name"] for s in self.cfg["stages"]].index(init[6:]))
        else:
            path = Path(init)
            self._fresh_task(-1, model_of=i)
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
        ours = getattr(self.task, "data_signature", None)
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

    def _trainer(self, spec: dict[str, Any], callbacks: list[Callback]) -> pl.Trainer:
        t = self.cfg["trainer"]
        if t["enable_progress_bar"]:
            # Lightning's default rich bar redraws every step: 10-20x slower than the model
            # itself for small CPU models. TQDM at a few redraws per second costs nothing.
            callbacks = [*callbacks, TQDMProgressBar(refresh_rate=t["progress_refresh_steps"])]
        max_steps = spec.get("max_steps") or -1
        max_epochs = spec.get("max_epochs")
        if max_epochs is None:
            max_epochs = -1
        plugins = []
        if SLURMEnvironment.detect():
            # the runner's own preemption handling checkpoints and requeues (sciadapt.hpc.preempt)
            plugins.append(SLURMEnvironment(auto_requeue=False))
        return pl.Trainer(
            plugins=plugins or None,
            accelerator=t["accelerator"],
            devices=t["devices"],
            strategy=t["strategy"],
            precision=t["precision"],
            num_nodes=t["num_nodes"],
            max_epochs=max_epochs,
            max_steps=max_steps,
            limit_train_batches=spec.get("limit_train_batches") or 1.0,
            limit_val_batches=spec.get("limit_val_batches") or 1.0,
            gradient_clip_val=spec.get("gradient_clip_val"),
            accumulate_grad_batches=t["accumulate_grad_batches"],
            val_check_interval=t["val_check_interval"],
            num_sanity_val_steps=t["num_sanity_val_steps"],
            log_every_n_steps=t["log_every_n_steps"],
            enable_progress_bar=t["enable_progress_bar"],
            deterministic=t["deterministic"],
            callbacks=callbacks,
            logger=False,
            enable_model_summary=False,
            default_root_dir=str(self.run_dir),
        )

    def run(self) -> dict[str, Any]:
        """Run (or continue) every stage, then the comparison; returns the summary.

        Raises:
            Preempted: After a SIGUSR1/SIGTERM, once the resume checkpoint and ``state.json`` are
                written (see :mod:`sciadapt.hpc.preempt`).
        """
        with SignalWatch() as self._watch:
            try:
                return self._run()
            except Preempted as p:
                p.run_dir = self.run_dir
                self.state["status"] = "preempted"
                self.state.setdefault("preemptions", []).append(p.record())
                self._write_json(self.state_path, self.state)
                raise

    def _check_signal(self, stage: str) -> None:
        """Between stages: stop now if a preemption signal came while nothing was training."""
        if self._watch.received is not None:
            raise Preempted(self._watch.received, stage)

    def _run(self) -> dict[str, Any]:
        self.state["status"] = "running"
        if self.task is None:
            self.preflight()
        pl.seed_everything(self.cfg["seed"], workers=True, verbose=False)
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*ended before the epoch ended.*")
        self._weights_stage: str | None = None
        stages = self.cfg["stages"]
        dm = None
        for i, spec in enumerate(stages):
            if spec["name"] in self.state["completed"]:
                continue
            self._check_signal(spec["name"])
            dm = self._run_stage(i, spec)
            if i + 1 < len(stages):
                self._check_signal(stages[i + 1]["name"])
        return self._finish(dm)

    def _prepare_stage(self, i: int, spec: dict[str, Any], dm: Any, resume_from: Path) -> tuple[int, int, Any]:
        """Weights, trainable parameters and the stage's adapter; returns (trainable, total, adapter)."""
        name = spec["name"]
        self._ensure_task(dm, name, i)
        self._init_weights(i, spec)
        where = f"stages[{i}] ({name})"
        n_train, n_total = apply_trainable(
            self.task, self._trainable(spec), spec["frozen"], where, adapter_follows=bool(spec.get("peft"))
        )
        adapter = None
        if spec.get("peft"):
            from sciadapt.peft import core as peft_core

            adapter = attach_stage_peft(self.task, self.cfg, i)
            if spec["peft"].get("init") == "eva" and not resume_from.exists():
                from itertools import islice

                from sciadapt.peft.lora import eva_init

                n_batches = int(spec["peft"].get("eva_batches", 4))
                eva_init(self.task, adapter, (b["x"] for b in islice(dm.train_dataloader(), n_batches)), self.task)
            n_train, n_total = peft_core.mark_trainable(
                self.task, adapter, also=[p for p in self._trainable(spec) if p not in spec["frozen"]]
            )
        self.task.stage = spec
        self.task.stage_index = i
        return n_train, n_total, adapter

    def _stage_callbacks(
        self, spec: dict[str, Any], dm: Any, resume_from: Path
    ) -> tuple[ModelCheckpoint, list[Callback]]:
        name = spec["name"]
        ckpt_cb = ModelCheckpoint(
            dirpath=str(self.stage_dir(name)),
            filename="best",
            monitor="val/loss",
            save_top_k=1 if spec.get("restore_best") else 0,
            enable_version_counter=False,
        )
        callbacks: list[Callback] = [
            ckpt_cb,
            MetricsCSV(self.run_dir / "metrics.csv", name),
            EpochEndCheckpoint(resume_from),
            PreemptionCheckpoint(self._watch, resume_from, name, dm),
        ]
        es = spec.get("early_stopping")
        if es:
            callbacks.append(
                EarlyStopping(
                    monitor=es["monitor"], patience=es["patience"], mode=es["mode"], min_delta=es["min_delta"]
                )
            )
        return ckpt_cb, callbacks

    def _run_stage(self, i: int, spec: dict[str, Any]) -> Any:
        """Train (or, with ``max_epochs: 0``, only score) one stage and record it; returns its datamodule."""
        name = spec["name"]
        stages = self.cfg["stages"]
        dm = self._datamodule(i)
        sdir = self.stage_dir(name)
        resume_from = sdir / "last.ckpt"  # present when this stage was killed or preempted mid-way
        n_train, n_total, adapter = self._prepare_stage(i, spec, dm, resume_from)
        self._print(
            f"[bold]stage {i + 1}/{len(stages)} {name}[/bold]: {n_train:,} of {n_total:,} parameters train "
            f"({100 * n_train / n_total:.3g} %), {dm.describe() if hasattr(dm, 'describe') else ''}"
        )
        ckpt_cb, callbacks = self._stage_callbacks(spec, dm, resume_from)
        trainer = self._trainer(spec, callbacks)
        self.state["current"] = name
        self._write_json(self.state_path, self.state)
        t0 = time.perf_counter()
        evaluation_only = spec.get("max_epochs") == 0
        if evaluation_only:
            # zero-shot: the weights are scored as loaded, nothing trains
            self._print(f"  {name}: max_epochs 0, evaluation only")
        else:
            trainer.fit(
                self.task,
                datamodule=dm,
                ckpt_path=str(resume_from) if resume_from.exists() else None,
                weights_only=True if resume_from.exists() else None,
            )
        seconds = time.perf_counter() - t0
        if spec.get("restore_best") and ckpt_cb.best_model_path:
            load_into(self.task, load_weights(Path(ckpt_cb.best_model_path)), ckpt_cb.best_model_path)
        if adapter is not None:
            from sciadapt.peft import core as peft_core

            if is_writer():
                peft_core.save_adapter(self.task, self.run_dir / "adapters" / name, adapter)
            if spec["peft"].get("merge_after"):
                peft_core.merge_and_drop(self.task, adapter)
        self._save_final(name, trainer, evaluation_only)
        stage_summary: dict[str, Any] = {
            "trainable_params": n_train,
            "total_params": n_total,
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "fit_seconds": round(seconds, 2),
        }
        # what the model saw of the data: padded short histories, few-shot subsets, and how
        # the backbone fit the window to its own context (pad / truncate)
        if hasattr(dm, "padding_report"):
            stage_summary["data"] = dm.padding_report()
        if hasattr(self.task.backbone, "input_policy"):
            stage_summary["backbone_input"] = self.task.backbone.input_policy(dm.context_length)
        if spec.get("evaluate", True):
            # under DDP each rank scores the whole test split on one device (a sharded test
            # would score each rank's shard only)
            stage_summary["test"] = self.test(trainer if trainer.world_size == 1 else None, dm)
        self.summary["stages"][name] = stage_summary
        self._write_json(self.summary_path, self.summary)
        # the stage is complete only once its final weights and summary are on disk
        self.state["completed"].append(name)
        self._write_json(self.state_path, self.state)
        if is_writer():
            resume_from.unlink(missing_ok=True)
            (sdir / "best.ckpt").unlink(missing_ok=True)
        self._weights_stage = name
        return dm

    def _save_final(self, name: str, trainer: pl.Trainer, evaluation_only: bool) -> None:
        if not evaluation_only:
            trainer.save_checkpoint(str(self.final_ckpt(name)), weights_only=True)
            return
        # no fit, so no trainer-attached model to save from: write the same layout directly
        ckpt = {"state_dict": self.task.state_dict()}
        self.task.on_save_checkpoint(ckpt)
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        if is_writer():
            atomic_write_bytes(self.final_ckpt(name), buf.getvalue())

    def _finish(self, dm: Any) -> dict[str, Any]:
        """After the last stage: the comparison table, the loss plot, ``state.json`` done."""
        stages = self.cfg["stages"]
        if dm is None:  # every stage was already complete: rebuild for the comparison
            dm = self._datamodule(len(stages) - 1)
            self._ensure_task(dm, stages[-1]["name"], len(stages) - 1)
        if hasattr(dm, "scaler_state"):
            self._write_json(self.run_dir / "scaler.json", dm.scaler_state())
        if self.cfg["evaluation"].get("data"):
            dm = self._eval_datamodule()
        self.summary["evaluation"] = self.compare(dm)
        self.summary["final"] = self.summary["evaluation"]["rows"][-1] if self.summary["evaluation"]["rows"] else {}
        self._write_json(self.summary_path, self.summary)
        if is_writer():
            self._plot_losses()
        self.state["status"] = "done"
        self._write_json(self.state_path, self.state)
        return self.summary

    @staticmethod
    def _write_json(path: Path, obj: Any) -> None:
        """Run files are written by global rank 0 only (every rank runs the same stages)."""
        if is_writer():
            write_json(path, obj)

    # -- evaluation -------------------------------------------------------------------------
    def _eval_trainer(self) -> pl.Trainer:
        t = self.cfg["trainer"]
        return pl.Trainer(
            accelerator=t["accelerator"],
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=str(self.run_dir),
        )

    def test(self, trainer: pl.Trainer | None, dm: Any) -> dict[str, Any]:
        trainer = trainer or self._eval_trainer()
        trainer.test(self.task, datamodule=dm, verbose=False)
        return dict(self.task.test_results)

    def _eval_datamodule(self) -> Any:
        """The last stage's data with ``evaluation.data`` overrides (e.g. a longer ``n_lead``)."""
        data = {**stage_data_config(self.cfg, len(self.cfg["stages"]) - 1), **self.cfg["evaluation"]["data"]}
        key = json.dumps(data, sort_keys=True, default=str)
        if key not in self._dms:
            dm = build_datamodule({**self.cfg, "data": data}, -1)
            dm.setup("test")
            self._dms[key] = dm
        return self._dms[key]

    def compare(self, dm: Any) -> dict[str, Any]:
        """Every chosen stage's final weights and every baseline, on the last stage's test split
        (with ``evaluation.data`` overrides when given)."""
        ev = self.cfg["evaluation"]
        names = ev.get("stages") or [s["name"] for s in self.cfg["stages"]]
        labels = ev.get("labels") or {}
        rows = []
        for b in ev.get("baselines") or []:
            # a task with its own baselines (rollout: persistence, climatology) scores them itself
            scores = self.task.baseline(b, dm) if hasattr(self.task, "baseline") else self._baseline(dm, b)
            rows.append({"model": b.replace("_", "-"), **scores})
        order = [s["name"] for s in self.cfg["stages"]]
        last_data = {**stage_data_config(self.cfg, len(order) - 1), **(ev.get("data") or {})}
        for name in names:
            i = order.index(name)
            done = self.summary["stages"].get(name, {}).get("test")
            if done is not None and stage_data_config(self.cfg, i) == last_data:
                # the stage was already scored with these final weights on this very test split
                rows.append({"model": labels.get(name, name), "stage": name, **done})
                continue
            self._fresh_task(i)
            load_into(self.task, load_weights(self.final_ckpt(name)), self.final_ckpt(name))
            rows.append({"model": labels.get(name, name), "stage": name, **self.test(None, dm)})
        test_windows = len(dm.test_dataloader().dataset)
        where = f"{Path(str(getattr(dm, 'path', 'data'))).name} test split ({test_windows:,} windows)"
        return {"data": where, "metrics": ev["metrics"], "rows": rows}

    def _baseline(self, dm: Any, name: str) -> dict[str, Any]:
        season = dm.seasonality if name == "seasonal_naive" else 1
        ys, ps, pasts, masks = [], [], [], []
        for batch in dm.test_dataloader():
            past = batch["x"][..., : dm.n_targets].numpy()
            ys.append(batch["y"].numpy())
            pasts.append(past)
            ps.append(seasonal_naive(past, dm.horizon, season))
            if batch.get("mask") is not None:
                masks.append(batch["mask"].numpy())
        return forecast_metrics(
            np.concatenate(ys),
            np.concatenate(ps),
            np.concatenate(pasts),
            seasonality=dm.seasonality,
            mask=np.concatenate(masks) if masks else None,
        )

    def _plot_losses(self) -> None:
        rows = read_csv_rows(self.run_dir / "metrics.csv")
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
        ax.set_title(f"{self.cfg['name']}: " + " → ".join(dict.fromkeys(r["stage"] for r in rows)))
        ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        atomic_write_bytes(self.run_dir / "plots" / "loss.png", buf.getvalue())
