"""``sciadapt merge``: weight-space methods over finished runs, written as a new run.

The output run is made from the first input run (its ``config.yaml``, ``scaler.json`` and
``state.json``) with the merged weights as the final checkpoint of the merged stage, and a
``merge.json`` recording the method, the inputs (paths and stage), the settings and the held-out
scores of every input and of the merged model. Everything is built in a hidden folder beside the
output and renamed into place once all of it succeeded, so a failure leaves nothing behind.

Held-out scores are the validation loss of the first run's data (lower is better): greedy soup
chooses with it, WiSE-FT reports it per alpha (next to the test-split metrics) and keeps the alpha
with the best one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sciadapt.averaging import arith
from sciadapt.errors import CheckpointError, ConfigError, OutputError
from sciadapt.runs import Run, atomic_write_bytes, atomic_write_text, load_into, load_weights, write_json

if TYPE_CHECKING:
    from sciadapt.tasks.base import Task

METHODS = ("soup", "greedy_soup", "wise_ft", "model_stock", "adapters_linear", "adapters_ties")
DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: the held-out score every method reports (and greedy soup / WiSE-FT choose with)
HELD_OUT = "val/loss"
_LORA = (".lora_A.", ".lora_B.", ".lora_magnitude_vector")


@dataclasses.dataclass
class _Input:
    run: Run
    stage: str

    @property
    def label(self) -> str:
        return f"{self.run.path}:{self.stage}"

    def record(self) -> dict[str, Any]:
        return {"run": str(self.run.path), "stage": self.stage, "checkpoint": str(self.run.final_ckpt(self.stage))}

    def state(self) -> arith.State:
        ckpt = self.run.require_final(self.stage)
        return load_weights(ckpt, self.run._final_fix(self.stage))


def _check_method_args(
    method: str,
    runs: Sequence[str],
    alphas: Sequence[float] | None,
    weights: Sequence[float] | None,
    anchor: str | None,
) -> None:
    if method not in METHODS:
        from sciadapt.registry import suggest

        raise ConfigError(
            f"unknown merge method {method!r}.{suggest(method, list(METHODS))} Methods: {', '.join(METHODS)}"
        )
    if alphas is not None and method != "wise_ft":
        raise ConfigError(f"--alpha applies to wise_ft, not {method}")
    for a in alphas or ():
        arith.check_alpha(a)
    if alphas is not None and not alphas:
        raise ConfigError("--alpha is empty: give one or more values in [0, 1], e.g. --alpha 0,0.5,1")
    if weights is not None and not method.startswith("adapters_"):
        raise ConfigError(f"--weights applies to adapters_linear and adapters_ties, not {method}")
    if weights is not None and len(weights) != len(runs):
        raise ConfigError(f"--weights has {len(weights)} values for {len(runs)} runs: give one weight per run")
    if anchor is not None and method not in ("wise_ft", "model_stock"):
        raise ConfigError(f"--anchor applies to wise_ft and model_stock, not {method}")
    if method in ("wise_ft", "model_stock") and anchor is None:
        raise ConfigError(
            f"{method} needs the pretrained/zero-shot weights: give --anchor RUN (a run directory) or "
            "--anchor STAGE (a stage of the first run, e.g. source)"
        )
    if method == "wise_ft" and len(runs) != 1:
        raise ConfigError(f"wise_ft interpolates one fine-tuned run with --anchor; got {len(runs)} runs")
    if method != "wise_ft" and len(runs) < 2:
        what = "a soup of one model is that model" if "soup" in method else "there is nothing to merge"
        raise ConfigError(f"{method} needs at least two runs, got {len(runs)} ({what})")


def _anchor_input(anchor: str, first: _Input) -> _Input:
    """``--anchor``: a run directory (its stage of the merged stage's name, else its last) or a stage
    of the first run."""
    if (Path(anchor) / "config.yaml").is_file():
        run = Run.open(anchor)
        names = [p.name for p in run.plans]
        return _Input(run, first.stage if first.stage in names else names[-1])
    names = [p.name for p in first.run.plans]
    if anchor not in names:
        from sciadapt.registry import suggest

        raise ConfigError(
            f"--anchor {anchor} is neither a run directory nor a stage of {first.run.path}.{suggest(anchor, names)} "
            f"Stages: {', '.join(names)}"
        )
    return _Input(first.run, anchor)


def _no_lora(states: Sequence[arith.State], names: Sequence[str], method: str) -> None:
    keys = [k for k in states[0] if any(m in k for m in _LORA)]
    if keys:
        raise ConfigError(
            f"{names[0]} holds LoRA/DoRA factors ({', '.join(keys[:3])}): averaging the factors A and B is not "
            f"averaging the updates B A, so {method} would be wrong; use adapters_linear or adapters_ties"
        )


class _Scorer:
    """Scores state dicts with the first run's model on its data: validation loss and test metrics."""

    def __init__(self, task: Task, dm: Any, root: Path, accelerator: str, shifted: Any = None) -> None:
        self.task, self.dm, self.root, self.accelerator = task, dm, root, accelerator
        self.shifted = shifted  # the datamodule of the run's evaluation.shifted, or None

    def _load(self, state: arith.State, source: str) -> None:
        load_into(self.task, state, source)

    def val(self, state: arith.State, source: str = "merged weights") -> float:
        from sciadapt.stages.evaluate import eval_trainer

        self._load(state, source)
        self.task.follow_data(self.dm.facts())  # after a test on the shifted split
        results = eval_trainer(self.accelerator, self.root).validate(self.task, datamodule=self.dm, verbose=False)
        if not results or HELD_OUT not in results[0]:
            raise ConfigError(
                f"the data of {self.root} has no validation split to score the merge on: merge runs whose data "
                "keeps a validation split (greedy soup and WiSE-FT choose on it)"
            )
        return float(results[0][HELD_OUT])

    def test(self, state: arith.State, source: str = "merged weights", shifted: bool = False) -> dict[str, float]:
        """Test metrics on the in-domain test split, or (``shifted``) on the shifted one."""
        from sciadapt.stages.evaluate import eval_trainer, score

        self._load(state, source)
        res = score(self.task, self.shifted if shifted else self.dm, eval_trainer(self.accelerator, self.root))
        return {k: float(v) for k, v in res.items() if isinstance(v, int | float)}

    def scores(self, state: arith.State, source: str = "merged weights") -> dict[str, Any]:
        """``{"test": ..., "shifted": ...}`` (``shifted`` where the run has ``evaluation.shifted``)."""
        out: dict[str, Any] = {"test": self.test(state, source)}
        if self.shifted is not None:
            out["shifted"] = self.test(state, source, shifted=True)
        return out


def _scorer(first: _Input, task_spec: Run | None = None) -> _Scorer:
    """The first run's model (``task_spec``'s structure where given) and data, for scoring."""
    from sciadapt.predict.verbs import RUN_FLAGS, verb_keys
    from sciadapt.runs import task_for_stage

    run = first.run
    with verb_keys("sciadapt merge", RUN_FLAGS):
        dm = run.datamodule(first.stage)
        dm.setup("fit")
    shaped = task_spec or run
    plan = shaped.plan_of(first.stage)
    task = task_for_stage(shaped.spec, shaped.plans, dm.facts(), plan.index)
    task.follow_data(dm.facts())
    shifted = None
    if run.spec.evaluation.shifted is not None:  # the same stage's data with the shifted overrides
        with verb_keys("sciadapt merge", RUN_FLAGS):
            shifted = run.datamodule(first.stage, **run.spec.evaluation.shifted)
            shifted.setup("test")
    return _Scorer(task, dm, run.path, run.spec.trainer.accelerator, shifted)


# -- adapters ------------------------------------------------------------------------------------
def read_adapter(directory: Path) -> arith.LoraAdapter:
    """A LoRA adapter directory saved by sciadapt (``adapter_model.safetensors`` with its header)."""
    from safetensors import safe_open

    path = directory / "adapter_model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{directory} holds no adapter (no adapter_model.safetensors): did its stage train one?")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        ours = json.loads(meta["sciadapt"])
    except (KeyError, ValueError, OSError) as e:
        raise CheckpointError(
            f"{path}: cannot read sciadapt's description of the adapter ({type(e).__name__}: {e}); adapter "
            "arithmetic needs adapters saved by sciadapt (they carry the base fingerprint)"
        ) from None
    rest = {k: v for k, v in ours.items() if k not in ("method", "config", "targets", "fingerprint")}
    return arith.LoraAdapter(
        name=str(directory),
        method=str(ours["method"]),
        config=dict(ours["config"]),
        targets=[str(t) for t in ours["targets"]],
        fingerprint=ours.get("fingerprint"),
        tensors=tensors,
        meta=rest,
    )


def adapter_files(adapter: arith.LoraAdapter) -> dict[str, bytes]:
    """``adapter_model.safetensors`` and ``adapter_config.json`` of an adapter, as bytes."""
    from safetensors.torch import save

    from sciadapt.registry import PEFT_METHODS

    method = PEFT_METHODS.build(adapter.method, **adapter.config)
    ours = {
        "method": adapter.method,
        "config": adapter.config,
        "targets": adapter.targets,
        "fingerprint": adapter.fingerprint,
        **adapter.meta,
    }
    cfg = method.hf_config(adapter.targets) or {"peft_type": None, "sciadapt_method": adapter.method, **adapter.config}
    blob = save({k: v.contiguous() for k, v in adapter.tensors.items()}, metadata={"sciadapt": json.dumps(ours)})
    return {
        "adapter_model.safetensors": blob,
        "adapter_config.json": (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode(),
    }


def _model_key(hf_key: str, adapter: str) -> str:
    """``base_model.model.fc1.lora_A.weight`` -> ``fc1.lora_A.<adapter>.weight`` (the model's key)."""
    from sciadapt.peft.core import HF_PREFIX

    key = hf_key.removeprefix(HF_PREFIX)
    for part in (".lora_A.", ".lora_B."):
        if part in key:
            return key.replace(part, f"{part}{adapter}.")
    return key


def _with_rank(run: Run, stage: str, config: dict[str, Any]) -> Run:
    """``run``'s pipeline with stage ``stage``'s adapter config replaced (a merged adapter's rank)."""
    spec = run.spec
    stages = tuple(
        dataclasses.replace(s, peft={**(s.peft or {}), "r": config["r"], "alpha": config["alpha"]})
        if s.name == stage
        else s
        for s in spec.stages
    )
    return Run(run.path, dataclasses.replace(spec, stages=stages))


# -- the verb ------------------------------------------------------------------------------------
def merge(
    method: str,
    runs: Sequence[str],
    out: str,
    stage: str | None = None,
    alphas: Sequence[float] | None = None,
    weights: Sequence[float] | None = None,
    anchor: str | None = None,
    density: float = 0.2,
    rank: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Merge the stage ``stage`` (default: the last) of ``runs`` with ``method`` into the new run ``out``.

    Args:
        method: One of :data:`METHODS`.
        runs: Finished run directories.
        out: The new run directory (must not exist).
        stage: The stage whose final weights are merged.
        alphas: WiSE-FT's alpha grid (default 0, 0.25, 0.5, 0.75, 1).
        weights: Per-run weights of the adapter methods.
        anchor: The pretrained/zero-shot weights of WiSE-FT and Model Stock: a run or a stage of the first run.
        density: TIES: the fraction of each update kept.
        rank: TIES: the merged adapter's rank (default: the largest input rank).
        log: Called with progress lines.

    Returns:
        What ``merge.json`` holds, plus ``path`` (the output run).

    Raises:
        ConfigError: Bad arguments (a soup of one model, alpha outside [0, 1], a missing anchor ...).
        CheckpointError: Weights or adapters that cannot be merged (naming the tensors).
        OutputError: ``out`` exists or cannot be written.
    """
    from sciadapt.runs import check_output_location

    say = log or (lambda _line: None)
    _check_method_args(method, runs, alphas, weights, anchor)
    target = check_output_location(out, "--out", folder=True)
    if target.exists():
        raise OutputError(f"--out {out} exists: give a new run directory (merge never overwrites a run)")
    opened = [Run.open(r) for r in runs]
    name = stage or opened[0].plans[-1].name
    inputs = [_Input(r, r.plan_of(name).name) for r in opened]
    for i in inputs:
        i.run.require_final(i.stage)
    anchor_in = _anchor_input(anchor, inputs[0]) if anchor is not None else None
    if anchor_in is not None:
        anchor_in.run.require_final(anchor_in.stage)

    record: dict[str, Any] = {
        "method": method,
        "stage": name,
        "inputs": [i.record() for i in inputs],
        "held_out": f"{HELD_OUT} on the validation split of {inputs[0].run.path} (lower is better)",
    }
    if anchor_in is not None:
        record["anchor"] = anchor_in.record()
    files: dict[str, bytes] = {}
    plot: Callable[[Path], None] | None = None
    out_run = inputs[0].run

    if method.startswith("adapters_"):
        merged, out_run, extra = _merge_adapters(method, inputs, weights, density, rank)
        record.update(extra["record"])
        files.update(extra["files"])
        scorer = _scorer(inputs[0], out_run)
        record["scores"] = {i.label: {HELD_OUT: _val_of_adapter_run(i)} for i in inputs}
    else:
        labels = [i.label for i in inputs] + ([anchor_in.label] if anchor_in else [])
        states = [i.state() for i in inputs] + ([anchor_in.state()] if anchor_in else [])
        arith.check_compatible(states, labels)
        _no_lora(states, labels, method)
        say(f"scoring {len(states)} input model(s) on the validation split")
        scorer = _scorer(inputs[0])
        record["scores"] = {lab: {HELD_OUT: scorer.val(s, lab)} for lab, s in zip(labels, states, strict=True)}
        fine = states[: len(inputs)]
        if method == "soup":
            merged = arith.uniform_soup(fine)
        elif method == "greedy_soup":
            merged, kept, history = arith.greedy_soup(
                list(zip(labels, fine, strict=False)), lambda s: scorer.val(s), higher_is_better=False
            )
            record.update({"kept": kept, "history": history})
        elif method == "model_stock":
            assert anchor_in is not None
            merged = arith.model_stock(states[-1], fine)
            ratios = {
                k: arith.model_stock_ratio(states[-1][k], [s[k] for s in fine])
                for k in merged
                if merged[k].is_floating_point()
            }
            record["ratios"] = {k: {"cos": c, "t": t} for k, (c, t) in ratios.items()}
        else:  # wise_ft
            merged, table, best = _wise_ft(states[-1], fine[0], list(alphas or DEFAULT_ALPHAS), scorer, say)
            record.update({"alphas": list(alphas or DEFAULT_ALPHAS), "table": table, "alpha": best})

            def plot(path: Path, table: list[dict[str, Any]] = table) -> None:
                _plot_wise_ft(table, path)

    from sciadapt.stages.evaluate import split_name

    say("scoring the merged model")
    record["merged"] = {HELD_OUT: scorer.val(merged), **scorer.scores(merged)}
    if scorer.shifted is not None:
        record["shifted"] = {
            "data": split_name(scorer.shifted),
            "overrides": dict(inputs[0].run.spec.evaluation.shifted or {}),
        }
    final = _final_bytes(scorer.task)
    _write_out(target, inputs[0].run, out_run, name, final, files, record, plot)
    record["path"] = str(target)
    return record


def _val_of_adapter_run(i: _Input) -> float:
    scorer = _scorer(i)
    return scorer.val(i.state(), i.label)


def _merge_adapters(
    method: str, inputs: Sequence[_Input], weights: Sequence[float] | None, density: float, rank: int | None
) -> tuple[arith.State, Run, dict[str, Any]]:
    first = inputs[0]
    plan = first.run.plan_of(first.stage)
    if plan.adapter is None:
        raise ConfigError(
            f"stage {first.stage!r} of {first.run.path} trains no adapter of its own (no peft: block): "
            "adapter arithmetic merges the adapters stages trained; use soup or model_stock for full weights"
        )
    adapters = [read_adapter(i.run.path / "adapters" / i.stage) for i in inputs]
    if method == "adapters_linear":
        merged_ad = arith.linear_adapters(adapters, weights)
    else:
        merged_ad = arith.ties_adapters(adapters, weights, density=density, rank=rank)
    states = [i.state() for i in inputs]
    lora = {
        _model_key(k, plan.adapter) for k in adapters[0].tensors if k.endswith((".lora_A.weight", ".lora_B.weight"))
    }
    missing = sorted(k for k in lora if k not in states[0])
    if missing:
        raise CheckpointError(
            f"{first.run.final_ckpt(first.stage)} lacks the adapter's tensors ({', '.join(missing[:3])}): "
            "the adapter directory and the checkpoint are from different runs"
        )
    rest = [{k: v for k, v in s.items() if k not in lora} for s in states]
    arith.check_compatible(rest, [i.label for i in inputs])
    differ = sorted(k for k in rest[0] if any(not torch.equal(rest[0][k], r[k]) for r in rest[1:]))
    merged = dict(states[0])
    for k, v in merged_ad.tensors.items():
        key = _model_key(k, plan.adapter)
        if key in lora:
            merged[key] = v
    out_run = _with_rank(first.run, first.stage, merged_ad.config)
    files = {f"adapters/{first.stage}/{fname}": blob for fname, blob in adapter_files(merged_ad).items()}
    rec = {**merged_ad.meta["merge"], "rank": merged_ad.config["r"], "from_first": differ}
    rec.pop("inputs", None)
    return merged, out_run, {"record": {"adapters": rec}, "files": files}


def _wise_ft(
    zero: arith.State,
    tuned: arith.State,
    alphas: list[float],
    scorer: _Scorer,
    say: Callable[[str], None],
) -> tuple[arith.State, list[dict[str, Any]], float]:
    table: list[dict[str, Any]] = []
    for a in alphas:
        say(f"WiSE-FT alpha={a:g}")
        state = arith.interpolate(zero, tuned, a)
        table.append({"alpha": a, HELD_OUT: scorer.val(state, f"alpha={a:g}"), **scorer.scores(state, f"alpha={a:g}")})
    best = min(table, key=lambda row: row[HELD_OUT])["alpha"]
    return arith.interpolate(zero, tuned, best), table, best


def _plot_wise_ft(table: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sciadapt.runs import save_figure

    alphas = [row["alpha"] for row in table]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(alphas, [row[HELD_OUT] for row in table], "o-", label=f"validation {HELD_OUT.split('/')[-1]}")
    # the in-domain test curve, and the shifted split's beside it where the run has evaluation.shifted
    for split, style, name in (("test", "s--", "test"), ("shifted", "^:", "shifted test")):
        if split not in table[0]:
            continue
        for metric in table[0][split]:
            if metric in ("mse", "mae", "loss") or len(table[0][split]) <= 3:
                ax.plot(alphas, [row[split][metric] for row in table], style, label=f"{name} {metric}")
    ax.set_xlabel("alpha (0: anchor, 1: fine-tuned)")
    ax.set_ylabel("error")
    ax.set_title("WiSE-FT" + (": in-domain and shifted" if "shifted" in table[0] else ""))
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def _final_bytes(task: Task) -> bytes:
    """The scorer's task (the merged weights last loaded) as a weights-only checkpoint (as :func:`save_task`)."""
    ckpt: dict[str, Any] = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(ckpt)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def _write_out(
    target: Path,
    source: Run,
    shaped: Run,
    stage: str,
    final: bytes,
    files: dict[str, bytes],
    record: dict[str, Any],
    plot: Callable[[Path], None] | None,
) -> None:
    """Build the output run in a hidden folder beside ``target``, then rename it into place."""
    from sciadapt.config import to_yaml
    from sciadapt.runs import with_checksum

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.merging-"))
    try:
        if shaped is source:
            shutil.copyfile(source.path / "config.yaml", tmp / "config.yaml")
        else:  # a merged adapter of another rank: the stage's peft block says so
            atomic_write_text(tmp / "config.yaml", with_checksum(to_yaml(shaped.spec)))
        shutil.copyfile(source.path / "scaler.json", tmp / "scaler.json")
        state = source.state()
        order = [p.name for p in source.plans]
        upto = order[: order.index(stage) + 1]
        state["completed"] = [s for s in state["completed"] if s in upto]
        state["merged"] = {"method": record["method"], "stage": stage}
        write_json(tmp / "state.json", state)
        atomic_write_bytes(tmp / "checkpoints" / stage / "final.ckpt", final)
        for rel, blob in files.items():
            atomic_write_bytes(tmp / rel, blob)
        if plot is not None:
            plot(tmp / "plots" / "wise_ft.png")
        summary = {
            "pipeline": source.spec.name,
            "run_dir": str(target),
            "merged_from": [i["run"] for i in record["inputs"]],
            "stages": {stage: {"test": record["merged"]["test"]}},
        }
        write_json(tmp / "summary.json", summary)
        write_json(tmp / "merge.json", {**record, "path": str(target)})
        _check_loads(tmp, stage)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_loads(path: Path, stage: str) -> None:
    """The written run reopens (its config plans) and its merged weights are finite."""
    run = Run.open(path)
    state = load_weights(run.final_ckpt(stage))
    if not all(math.isfinite(float(v.float().abs().sum())) for v in state.values() if v.is_floating_point()):
        raise CheckpointError("the merged weights hold NaN or inf: the inputs are damaged; nothing was written")
