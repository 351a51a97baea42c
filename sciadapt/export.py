"""Portable export of a run's model: ``safetensors``, ``torch-export`` (``.pt2``) or ``onnx``, with a manifest.

The exported model is the task's ``forward`` of a stage's final weights, in eval mode, with every
mergeable PEFT adapter folded into the base weights (:func:`sciadapt.peft.core.merge_and_unload`).
Its inputs are positional, in the order the manifest lists them: ``x`` and then the optional model
inputs the backbone takes (``x_mask``, ``future_exog``, ``time_delta_input`` ...), as a batch of
the run's datamodule holds them (normalised with the run's scaler, whose statistics the manifest
carries).

Running an export without sciadapt::

    ep = torch.export.load("out/model.pt2")              # plain torch
    y = ep.module()(x, *optional_inputs)

    sess = onnxruntime.InferenceSession("out/model.onnx")  # onnxruntime (pip install 'sciadapt[export]')
    y = sess.run(None, {"x": x.numpy(), ...})[0]

A ``safetensors`` export loads back into sciadapt without the run directory: :func:`load_exported`
builds the task from the manifest's model sections and data facts and loads ``model.safetensors``
strictly.

Every export is written into a temporary folder beside ``out`` and renamed into place only after
the file was read back and its outputs matched the eager model's (``torch-export``, ``onnx``): a
model that cannot be exported leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import shutil
import tempfile
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from sciadapt.errors import ConfigError, OutputError, SciadaptError

if TYPE_CHECKING:
    from sciadapt.tasks.base import Task

Format = Literal["safetensors", "torch-export", "onnx"]
FORMATS: tuple[Format, ...] = ("safetensors", "torch-export", "onnx")
FILES: dict[str, str] = {"safetensors": "model.safetensors", "torch-export": "model.pt2", "onnx": "model.onnx"}
MANIFEST = "manifest.json"
#: exported vs eager outputs: |a - b| <= ATOL + RTOL * |b| elementwise
ATOL = 1e-5
RTOL = 1e-5
#: merged vs unmerged adapters (float rounding only; as the PEFT methods' contract test)
MERGE_TOL = 1e-4
ONNX_OPSET = 18


class ExportError(SciadaptError):
    """A model that cannot be exported in the asked format (exit 2; nothing was written)."""


# ------------------------------------------------------------------------------- the module
class ExportModule(nn.Module):
    """The task's ``forward`` with positional inputs: ``x`` then ``names`` in order (what the
    exporters trace; the manifest lists the same order). For a rollout task (gridded emulators,
    nowcasting) it is one ``step``: the next normalised state from the state ``x`` and that step's
    ``forcings`` and ``static`` fields; the caller rolls it out."""

    def __init__(self, task: nn.Module, names: tuple[str, ...], step: bool = False) -> None:
        super().__init__()
        self.task: Any = task  # typed Any: a Task, whose ``step`` only rollout tasks have
        self.names = names
        self.step = step

    def forward(self, x: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.names, inputs, strict=True))
        if self.step:
            nxt: torch.Tensor = self.task.step(x, named.get("forcings"), named.get("static"))
            return nxt
        out: torch.Tensor = self.task(x, **named)
        return out


def _is_rollout(task: nn.Module) -> bool:
    from sciadapt.tasks.rollout import RolloutTask

    return isinstance(task, RolloutTask)


def input_names(task: Task) -> tuple[str, ...]:
    """The optional inputs the exported model takes after ``x``: the model inputs the backbone
    declares, or a rollout step's ``forcings`` and ``static``."""
    return ("forcings", "static") if _is_rollout(task) else task.backbone_inputs


def merged_copy(task: Task) -> tuple[Task, dict[str, list[str]]]:
    """An eval-mode copy of ``task`` with its adapters merged into the weights and unwrapped.

    Returns:
        The copy, and ``{"merged": [...], "kept": [...]}``: the adapters folded in and those of
        methods that cannot merge (bottleneck adapters, prompts), which stay in the model as
        ordinary modules.
    """
    from sciadapt.peft import core as peft_core

    model = copy.deepcopy(task).eval()
    merged, kept = [], []
    for name in list(peft_core.adapters(model)):
        try:
            peft_core.merge_and_drop(model, name)
            merged.append(name)
        except ConfigError:  # a method that adds modules cannot fold into weights: export it as it is
            kept.append(name)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, {"merged": merged, "kept": kept}


def example_inputs(task: Task, batch: Mapping[str, Any], n: int = 2) -> dict[str, torch.Tensor]:
    """``x`` and the optional inputs of the exported model (:func:`input_names`) from ``batch``, first
    ``n`` rows; a rollout step's forcings are those of its first step, as ``RolloutTask.rollout`` passes them."""
    inputs = {"x": batch["x"]}
    for k in input_names(task):
        v = batch.get(k)
        if v is None:
            continue
        if k == "forcings":  # (B, T, F, H, W) -> the inputs' and the target's: (B, (n_input + 1) * F, H, W)
            from sciadapt.tasks.rollout import RolloutTask

            assert isinstance(task, RolloutTask)  # input_names names forcings for rollout tasks only
            v = v[:, : task.n_input + 1].flatten(1, 2)
        inputs[k] = v
    return {k: v[:n].detach().float() if v.is_floating_point() else v[:n].detach() for k, v in inputs.items()}


# ------------------------------------------------------------------------------- failures
@contextmanager
def _module_stack(model: nn.Module) -> Iterator[list[str]]:
    """While inside: the names of the modules whose forward is running, outermost first (hooks; the
    exporters run the Python forward, so the top of the stack at a failure is the module that failed)."""
    stack: list[str] = []
    handles = []
    for name, module in model.named_modules():

        def pre(_m: nn.Module, _a: Any, name: str = name) -> None:
            stack.append(name)

        def post(_m: nn.Module, _a: Any, _o: Any) -> None:
            if stack:
                stack.pop()

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def _where(stack: list[str], model: nn.Module) -> str:
    """`` in module backbone.blocks.0 (Block)``: the innermost module running at a failure (names as
    in the task's ``named_modules``)."""
    if not stack or not stack[-1]:  # the wrapper itself: nothing more precise to say
        return ""
    module = dict(model.named_modules())[stack[-1]]
    name = stack[-1].removeprefix("task").removeprefix(".") or "task"
    return f" in module {name} ({type(module).__name__})"


def _reason(e: BaseException) -> str:
    """The first line of an exporter's message, without its internals' call chain."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else type(e).__name__
    if "data-dependent" in str(e).lower() or "GuardOnDataDependent" in type(e).__name__:
        # torch's own line names symbols (Eq(u0, 1)) that mean nothing to the user
        first = "data-dependent control flow (a branch or shape depends on tensor values, which cannot be traced)"
    return (first[:300] + " ...") if len(first) > 300 else first


def _root(e: BaseException) -> BaseException:
    """The innermost cause of a chain of exceptions (the exporters wrap the one that says why)."""
    while e.__cause__ is not None:
        e = e.__cause__
    return e


def _user_frame(e: BaseException) -> str:
    """`` at file:line (`code`)`` of the deepest frame of the model's own code in the traceback (not torch's,
    not the standard library's, not this module's): the line the exporter could not trace."""
    import sysconfig

    skip = (str(Path(torch.__file__).parent), sysconfig.get_paths()["stdlib"], __file__)
    for err in (e, _root(e)):
        frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith(skip)]
        if frames:
            f = frames[-1]
            code = f" (`{f.line.strip()}`)" if f.line else ""
            return f" at {Path(f.filename).name}:{f.lineno}{code}"
    return ""


# ------------------------------------------------------------------------------- writing one format
def _close(a: torch.Tensor, b: torch.Tensor, tol: float | None = None) -> tuple[bool, float]:
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        return False, float("inf")
    err = (a - b).abs()
    atol, rtol = (ATOL, RTOL) if tol is None else (tol, tol)
    ok = bool((err <= atol + rtol * b.abs()).all()) and bool(torch.isfinite(a).all() == torch.isfinite(b).all())
    return ok, float(err.max()) if err.numel() else 0.0


def _dynamic_batch(module: ExportModule) -> tuple[Any, ...]:
    """Dim 0 of every input (``forward(x, *inputs)``'s structure): AUTO keeps the batch symbolic
    where the model allows it and fixes it where it does not."""
    batch = {0: torch.export.Dim.AUTO}
    # an empty *inputs is no entry at all in torch.export's view of the call
    return (batch, tuple(batch for _ in module.names)) if module.names else (batch,)


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Loggers ``names`` at ERROR while inside: the exporters log their internals (a failed trace dumps its
    graph as a warning) where a failure is reported as one line of ours."""
    import logging

    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _torch_export(module: ExportModule, args: tuple[torch.Tensor, ...], label: str) -> torch.export.ExportedProgram:
    with (
        _module_stack(module) as stack,
        _quiet("torch.fx.experimental.symbolic_shapes", "torch._dynamo", "torch.export"),
    ):
        try:
            # a failed trace prints its partial graph to stderr: our one line says what failed
            with contextlib.redirect_stderr(io.StringIO()):
                return torch.export.export(module, args, dynamic_shapes=_dynamic_batch(module), strict=False)
        except Exception as e:
            raise ExportError(
                f"cannot export {label} with torch.export{_where(stack, module)}{_user_frame(e)}: {_reason(_root(e))}. "
                "Fix: export with --format safetensors (weights for sciadapt), or choose a backbone that exports"
            ) from None


def _batch_is_dynamic(ep: torch.export.ExportedProgram) -> bool:
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name == "x":
            val = node.meta.get("val")
            return val is not None and not isinstance(val.shape[0], int)
    return False


def _write_torch_export(
    module: ExportModule, args: tuple[torch.Tensor, ...], eager: torch.Tensor, path: Path, label: str
) -> dict[str, Any]:
    ep = _torch_export(module, args, label)
    torch.export.save(ep, str(path))
    loaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        got = loaded(*args)
    ok, err = _close(got, eager)
    if not ok:
        raise ExportError(
            f"the torch.export of {label} does not reproduce the eager model (max abs error {err:.3g} > "
            f"{ATOL:g} + {RTOL:g}*|y|); nothing was written. Fix: export with --format safetensors"
        )
    return {"max_abs_error": err, "batch": "dynamic" if _batch_is_dynamic(ep) else "fixed"}


def _write_onnx(
    module: ExportModule, args: tuple[torch.Tensor, ...], eager: torch.Tensor, path: Path, label: str
) -> dict[str, Any]:
    try:
        import onnxruntime as ort
        import onnxscript  # noqa: F401  (torch's ONNX translator imports it)
    except ImportError:
        raise ConfigError(
            "--format onnx needs onnx, onnxscript and onnxruntime: pip install 'sciadapt[export]'"
        ) from None
    import warnings

    # torch.export first (its failures name the module), then the ONNX translation of that program
    ep = _torch_export(module, args, label)
    # the translator's progress notes and optimiser warnings ("Skipping constant folding ...") are not
    # the user's concern: a failed translation raises, and the file is checked against eager below
    with warnings.catch_warnings(), _quiet("torch.onnx", "onnxscript", "onnx_ir"):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                ep,
                args,
                input_names=["x", *module.names],
                output_names=["y"],
                opset_version=ONNX_OPSET,
                verbose=False,
            )
            assert program is not None
            program.save(str(path), external_data=False)
        except Exception as e:
            raise ExportError(
                f"cannot translate {label} to ONNX (opset {ONNX_OPSET}){_user_frame(e)}: {_reason(_root(e))}. "
                "Fix: use --format torch-export, or --format safetensors (weights for sciadapt)"
            ) from None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args, strict=True)}
    got = torch.from_numpy(sess.run(None, feed)[0])
    ok, err = _close(got, eager)
    if not ok:
        raise ExportError(
            f"the ONNX export of {label} does not reproduce the eager model under onnxruntime (max abs error "
            f"{err:.3g} > {ATOL:g} + {RTOL:g}*|y|); nothing was written. Fix: try --format torch-export"
        )
    shape0 = sess.get_inputs()[0].shape[0]
    return {"max_abs_error": err, "batch": "fixed" if isinstance(shape0, int) else "dynamic", "opset": ONNX_OPSET}


def _write_safetensors(model: Task, path: Path) -> dict[str, Any]:
    from safetensors.torch import save_model

    save_model(model, str(path))  # shared (tied) tensors are written once
    return {}


def _check_format(format: str) -> None:
    if format not in FORMATS:
        from sciadapt.registry import suggest

        raise ConfigError(
            f"--format {format!r} is not an export format.{suggest(format, FORMATS)} Formats: {', '.join(FORMATS)}"
        )


def _tensor_info(name: str, t: torch.Tensor, layout: str | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    if layout is not None:
        info["layout"] = layout
    return info


def export_task(
    task: Task,
    example: Mapping[str, torch.Tensor],
    format: Format,
    out: str | Path,
    manifest: Mapping[str, Any] | None = None,
    label: str | None = None,
) -> Path:
    """Export ``task`` (its adapters merged, eval mode) to folder ``out`` with ``manifest.json``.

    Args:
        task: The model (not changed: a merged copy is exported).
        example: ``x`` and the optional model inputs the backbone takes (a batch of at least 2: the
            batch dimension stays dynamic where the model allows it).
        format: ``safetensors``, ``torch-export`` or ``onnx``.
        out: The folder to create (it must not exist, or be empty).
        manifest: What the manifest records beside the inputs, output and verification.
        label: How messages name the model (default: the backbone's class).

    Returns:
        ``out``.

    Raises:
        ExportError: The exporter cannot trace the model (naming the module that failed where the
            exporter says), or the exported file's outputs differ from the eager model's.
        ConfigError: An unknown format, or ONNX without its packages.
        OutputError: ``out`` is a file, a folder that is not empty, or not writable.
    """
    from sciadapt import __version__
    from sciadapt.runs import check_output_location, write_json

    _check_format(format)
    target = check_output_location(out, "--out", folder=True)
    if target.exists() and any(target.iterdir()):
        raise OutputError(f"--out {out} is a folder that is not empty. Fix: choose a new folder, or remove this one")
    if "x" not in example:
        raise ConfigError("export: the example inputs have no `x`")
    model, adapters = merged_copy(task)
    names = tuple(k for k in input_names(model) if k in example)
    step = _is_rollout(model)
    module = ExportModule(model, names, step).eval()
    args = (example["x"], *(example[k] for k in names))
    label = label or f"backbone {type(model.backbone).__name__}"
    was_training = task.training
    try:
        with torch.no_grad():
            eager = module(*args)
            reference = ExportModule(task, names, step).eval()(*args)
    finally:
        task.train(was_training)
    if not isinstance(eager, torch.Tensor):
        raise ExportError(f"cannot export {label}: its task returns {type(eager).__name__}, not one tensor")
    # folding an adapter into the weights changes float rounding only (the PEFT contract test's 1e-4);
    # more means a method's merge is wrong: never export that. The file is then checked against the
    # merged eager model at ATOL/RTOL.
    ok, merge_err = _close(eager, reference, tol=MERGE_TOL)
    if not ok:
        raise ExportError(
            f"merging the adapters of {label} changes its outputs (max abs error {merge_err:.3g}); nothing was written"
        )

    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        path = tmp / FILES[format]
        if format == "safetensors":
            check = _write_safetensors(model, path)
        elif format == "torch-export":
            check = _write_torch_export(module, args, eager, path, label)
        else:
            check = _write_onnx(module, args, eager, path, label)
        layout = model.backbone.input_layout
        doc: dict[str, Any] = {
            "format": format,
            "file": FILES[format],
            "sciadapt_version": __version__,
            "torch_version": torch.__version__,
            **dict(manifest or {}),
            "adapters": adapters,
            "inputs": [_tensor_info("x", example["x"], layout), *(_tensor_info(k, example[k]) for k in names)],
            "output": _tensor_info("y", eager),
            "normalisation": "inputs as the run's datamodule feeds the model (normalised with `scaler`); the "
            "output in the same normalised units (the datamodule's inverse transform maps it back)",
            "call": ("y = model(x" + "".join(f", {k}" for k in names) + ")")
            + (
                " is one step: the next state (B, C, H, W); roll out with x = cat([x[:, 1:], y[:, None]], 1)"
                if step
                else ""
            ),
            "verification": {
                "atol": ATOL,
                "rtol": RTOL,
                **check,
                **({"merge_max_abs_error": merge_err} if adapters["merged"] else {}),
            },
        }
        write_json(tmp / MANIFEST, doc)
        if target.exists():
            target.rmdir()  # empty (checked above): the rename replaces it
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# ------------------------------------------------------------------------------- runs
def export_run(run: str | Path, format: Format, out: str | Path, stage: str | None = None) -> Path:
    """Export the final model of a run's ``stage`` (default: the last) to ``out`` (see :func:`export_task`).

    The example inputs are the first rows of a test batch of the stage's data (normalised with the
    run's scaler); the manifest records the pipeline, stage, model sections, data facts, scaler
    statistics and variables.
    """
    from sciadapt.runs import Run, check_output_location

    check_output_location(out, "--out", folder=True)
    _check_format(format)
    r = Run.open(run)
    plan = r.plan_of(stage if stage is not None else -1)
    r.require_final(plan.index, scaler=True)
    scaler = r.scaler()
    dm = r.datamodule(plan.index)
    dm.load_scaler_state(scaler)
    dm.setup("fit")
    facts = dm.facts()
    task = r.task(plan.index, facts)
    batch = next(iter(dm.test_dataloader()))
    example = example_inputs(task, batch)
    variables = {
        k: scaler[k] for k in ("columns", "target_columns", "exog_columns", "variables", "channels") if k in scaler
    }
    manifest = {
        "pipeline": r.spec.name,
        "run": str(r.path),
        "stage": plan.name,
        "model": {k: plan.model[k] for k in ("backbone", "head", "task")},
        "data": {"name": plan.data["name"], "describe": dm.describe()},
        "facts": facts,
        "variables": variables,
        "scaler": scaler,
    }
    label = f"backbone {plan.model['backbone']['name']} of {r.path} (stage {plan.name})"
    return export_task(task, example, format, out, manifest, label=label)


def load_exported(folder: str | Path) -> Task:
    """The task of a ``safetensors`` export, without its run: built from the manifest's ``model``
    sections and ``facts``, its weights loaded strictly from ``model.safetensors``.

    Example::

        task = load_exported("out")          # eval mode
        y = task(x, **optional_inputs)       # the manifest lists the inputs and their shapes
    """
    from safetensors.torch import load_model

    from sciadapt.config import build_task
    from sciadapt.runs import read_json

    folder = Path(folder)
    doc = read_json(folder / MANIFEST, "export the run again")
    if doc.get("format") != "safetensors":
        raise ConfigError(
            f"{folder} holds a {doc.get('format')} export: load it with torch.export.load or onnxruntime "
            "(load_exported reads safetensors exports)"
        )
    if doc["adapters"]["kept"]:
        raise ConfigError(
            f"{folder}: the adapters {doc['adapters']['kept']} could not be merged, so the weights need the run's "
            "adapter modules; export with --format torch-export or onnx, or load the run itself"
        )
    task: Task = build_task(doc["model"], doc["facts"])
    load_model(task, str(folder / doc["file"]), strict=True)
    return task.eval()
