"""Portable export (``sciadapt export``): every tiny backbone family goes through torch.export (and ONNX where
onnxruntime is installed) and reproduces the eager model within 1e-5; a model torch.export cannot trace is
refused in one line naming the backbone and module, writing nothing; the CLI exports a tiny trained run with a
LoRA stage (merged) in all three formats."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from sciadapt.config import call_builder, head_facts
from sciadapt.export import ATOL, FILES, RTOL, ExportError, export_task, input_names, load_exported
from sciadapt.registry import BACKBONES, HEADS, PEFT_METHODS, TASKS
from sciadapt.tasks.base import Task
from sciadapt.types import IMAGE_SERIES
from tests.conftest import tiny_pipeline

TINY_BACKBONES = [n for n in BACKBONES.list() if n.endswith("_tiny")]
HAS_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime", "onnxscript"))
NO_ORT = "onnx export needs onnx, onnxscript and onnxruntime (pip install 'sciadapt[export]')"


def family_task(name: str) -> tuple[Task, dict[str, torch.Tensor]]:
    """Backbone ``name`` with a head of its kind, on its own example inputs: series features (B L C D) -> a
    point forecast head; image series -> a segmentation decoder; gridded states -> the grid head of a rollout."""
    torch.manual_seed(0)
    backbone = BACKBONES.build(name).eval()
    example = backbone.example_inputs(2)
    with torch.no_grad():
        feats = backbone.forward_features(**example)
    last = feats[-1] if isinstance(feats, list | tuple) else feats
    x = example["x"]
    if backbone.feature_info[-1]["layout"] == "B L C D":
        head = call_builder("head", {"name": "point"}, head_facts(backbone, {"horizon": int(last.shape[1])}))
        task = TASKS.build("forecasting", backbone=backbone, head=head, n_targets=int(x.shape[-1]))
    elif backbone.input_layout == IMAGE_SERIES:
        facts = {"img_size": int(x.shape[-1]), "n_classes": 3, "ignore_index": -1}
        head = call_builder("head", {"name": "conv_decoder"}, head_facts(backbone, facts))
        task = TASKS.build("segmentation", backbone=backbone, head=head, n_classes=3)
    else:  # gridded state B T C H W
        c, h = int(x.shape[2]), int(x.shape[3])
        head = call_builder("head", {"name": "grid"}, head_facts(backbone, {}))
        task = TASKS.build(
            "rollout",
            backbone=backbone,
            head=head,
            variables=[f"v{i}" for i in range(c)],
            tendency_scale=[1.0] * c,
            area_weights=[1.0] * h,
            n_input=int(x.shape[1]),
        )
    return task.eval(), {k: v for k, v in example.items() if k == "x" or k in input_names(task)}


def _eager(task: Task, example: dict[str, torch.Tensor]) -> torch.Tensor:
    """What the export computes: the task's forward, or one step of a rollout task."""
    from sciadapt.tasks.rollout import RolloutTask

    with torch.no_grad():
        if isinstance(task, RolloutTask):
            return task.step(example["x"], example.get("forcings"), example.get("static"))
        out: torch.Tensor = task(example["x"], **{k: v for k, v in example.items() if k != "x"})
    return out


def _args(manifest: dict[str, Any], example: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [example[i["name"]] for i in manifest["inputs"]]


def _run_onnx(path: Path, manifest: dict[str, Any], example: dict[str, torch.Tensor]) -> torch.Tensor:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {i["name"]: example[i["name"]].numpy() for i in manifest["inputs"]}
    return torch.from_numpy(sess.run(None, feed)[0])


def _check_close(got: torch.Tensor, want: torch.Tensor) -> float:
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    return float((got - want).abs().max())


# two cheap families in the default run (a series and a grid model); every family with -m slow
_QUICK = {"nhits_tiny", "unet_grid_tiny"}


@pytest.mark.parametrize(
    "name", [n if n in _QUICK else pytest.param(n, marks=pytest.mark.slow) for n in TINY_BACKBONES]
)
def test_every_family_exports_with_torch_export(name: str, tmp_path: Path) -> None:
    """export_task writes the .pt2 only after a fresh torch.export.load of it equalled eager (1e-5)."""
    task, example = family_task(name)
    want = _eager(task, example)
    out = export_task(task, example, "torch-export", tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.pt2"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == list(example)
    assert manifest["inputs"][0]["layout"] == task.backbone.input_layout
    assert manifest["output"]["shape"] == list(want.shape)
    assert manifest["verification"]["max_abs_error"] <= ATOL


def _batch_of(example: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """``n`` rows (the example's, repeated and perturbed): another batch size than the export's."""
    torch.manual_seed(1)
    return {
        k: torch.cat([v] * n)[:n] + (0.01 * torch.randn_like(torch.cat([v] * n)[:n]) if k == "x" else 0)
        for k, v in example.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_every_family_runs_exported_at_another_batch_size(name: str, tmp_path: Path) -> None:
    """A fresh load of the .pt2 (plain torch) and of the .onnx (onnxruntime) on a batch of 3 (the export
    traced 2; the batch dimension is dynamic) equals eager within 1e-5."""
    task, example = family_task(name)
    other = _batch_of(example, 3)
    want = _eager(task, other)
    out = export_task(task, example, "torch-export", tmp_path / "pt2")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verification"]["batch"] == "dynamic"
    with torch.no_grad():
        got = torch.export.load(str(out / FILES["torch-export"])).module()(*_args(manifest, other))
    _check_close(got, want)
    if not HAS_ORT:
        pytest.skip(NO_ORT)
    out = export_task(task, example, "onnx", tmp_path / "onnx")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verification"]["batch"] == "dynamic" and manifest["verification"]["max_abs_error"] <= ATOL
    _check_close(_run_onnx(out, manifest, other), want)


def test_adapters_are_merged_or_kept_and_the_export_equals_eager(tmp_path: Path) -> None:
    """Every PEFT method that adapts nhits_tiny: mergeable adapters are folded into the weights (the
    manifest says which), the others stay in the exported graph; either way the export equals eager."""
    from sciadapt.errors import ConfigError
    from sciadapt.peft import core

    seen = {"merged": 0, "kept": 0}
    for method in PEFT_METHODS.list():
        task, example = family_task("nhits_tiny")
        try:
            core.attach(task, PEFT_METHODS.build(method), "a", None, None, where="test")
        except ConfigError:  # a method that adapts none of this backbone's layers
            continue
        torch.manual_seed(3)
        params = dict(task.named_parameters())
        for name in core.adapter_param_names(task, "a"):  # away from the identity init
            params[name].data += 0.05 * torch.randn_like(params[name])
        want = _eager(task, example)
        out = export_task(task, example, "torch-export", tmp_path / method)
        manifest = json.loads((out / "manifest.json").read_text())
        kind = "merged" if manifest["adapters"]["merged"] == ["a"] else "kept"
        assert manifest["adapters"][kind] == ["a"], (method, manifest["adapters"])
        seen[kind] += 1
        with torch.no_grad():
            got = torch.export.load(str(out / FILES["torch-export"])).module()(*_args(manifest, example))
        _check_close(got, want)
        assert core.adapters(task), "the task itself keeps its adapters (a merged copy is exported)"
    assert seen["merged"] and seen["kept"], seen


# ------------------------------------------------------------------------------- refusals
class _Gate(nn.Module):
    """Branches on the data: torch.export cannot trace it (the branch taken depends on the values)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return x * 2
        return x


class _Branchy(nn.Module):
    input_layout = "B T C"
    feature_info = [{"layout": "B L C D", "channels": 1, "horizon": 4}]  # noqa: RUF012

    def __init__(self) -> None:
        super().__init__()
        self.gate = _Gate()
        self.proj = nn.Linear(8, 4)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, C) -> (B, L, C, 1)
        return self.proj(self.gate(x).transpose(1, 2)).transpose(1, 2).unsqueeze(-1)


@pytest.mark.parametrize(
    "fmt", ["torch-export", pytest.param("onnx", marks=pytest.mark.skipif(not HAS_ORT, reason=NO_ORT))]
)
def test_data_dependent_control_flow_is_refused_naming_the_module(fmt: str, tmp_path: Path) -> None:
    head = HEADS.build("point", in_features=1, horizon=4)
    task = TASKS.build("forecasting", backbone=_Branchy(), head=head).eval()
    out = tmp_path / "out"
    with pytest.raises(ExportError) as e:
        export_task(task, {"x": torch.randn(2, 8, 1)}, fmt, out)  # type: ignore[arg-type]
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert "backbone _Branchy" in msg and "module backbone.gate (_Gate)" in msg and "data-dependent" in msg, msg
    assert e.value.exit_code == 2
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing written, no temp folder left


# ------------------------------------------------------------------------------- the CLI on a trained run
LORA_STAGE = """
  - name: lora
    max_epochs: 1
    limit_train_batches: 4
    optim: {lr: 1.0e-2}
    peft: {method: lora, r: 2, alpha: 4}
"""


def test_cli_exports_a_trained_run_in_every_format(tmp_path: Path, series_csv: Path) -> None:
    from sciadapt.cli import main
    from sciadapt.export import example_inputs
    from sciadapt.runs import Run, read_json

    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    text = pipe.read_text()
    stages = text[: text.index("  - name: probe")] + LORA_STAGE  # source, then a LoRA stage on it
    pipe.write_text(
        stages.replace("max_epochs: 2\n    limit_train_batches: 8", "max_epochs: 1\n    limit_train_batches: 4")
    )
    assert main(["fit", str(pipe)]) == 0
    (run,) = (tmp_path / "runs").glob("tiny/*")

    # the eager model of the last stage (its LoRA adapter live, not merged) on a test batch
    r = Run.open(run)
    dm = r.datamodule(-1)
    dm.load_scaler_state(r.scaler())
    dm.setup("fit")
    task = r.task(-1, dm.facts()).eval()
    example = example_inputs(task, next(iter(dm.test_dataloader())))
    want = _eager(task, example)

    formats = ["safetensors", "torch-export", *(["onnx"] if HAS_ORT else [])]
    for fmt in formats:
        out = tmp_path / f"export-{fmt}"
        assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
        assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", FILES[fmt]])
        m = json.loads((out / "manifest.json").read_text())
        assert m["format"] == fmt and m["pipeline"] == "tiny" and m["stage"] == "lora"
        assert m["adapters"] == {"merged": ["lora"], "kept": []}
        assert m["model"]["backbone"]["name"] == "nhits_tiny" and m["model"]["head"]["name"] == "point"
        assert m["model"]["task"]["name"] == "forecasting"
        assert m["scaler"] == read_json(run / "scaler.json")
        assert m["variables"]["target_columns"] == ["y0", "y1"]
        assert m["facts"]["context_length"] == 48 and m["facts"]["horizon"] == 12
        assert m["inputs"][0] == {"name": "x", "shape": [2, 48, 2], "dtype": "float32", "layout": "B T C"}
        assert m["output"]["shape"] == [2, 12, 2]
        assert isinstance(m["sciadapt_version"], str)
        if fmt == "safetensors":  # back into sciadapt without the run
            got = _eager(load_exported(out), example)
        elif fmt == "torch-export":
            with torch.no_grad():
                got = torch.export.load(str(out / "model.pt2")).module()(*_args(m, example))
        else:
            got = _run_onnx(out, m, example)
        _check_close(got, want)

    # a folder that is not empty, an unknown stage: exit 2, nothing written
    assert main(["export", str(run), "--format", "torch-export", "--out", str(tmp_path / "export-safetensors")]) == 2
    assert main(["export", str(run), "--stage", "nope", "--format", "torch-export", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    # an earlier stage (no adapter)
    assert (
        main(["export", str(run), "--stage", "source", "--format", "torch-export", "--out", str(tmp_path / "s")]) == 0
    )
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["adapters"] == {"merged": [], "kept": []}
