"""Stage mechanics: schedules, freezing patterns, early stopping, pretrained init."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sciadapt.cli import main
from sciadapt.errors import ConfigError
from sciadapt.spec import ScheduleSpec
from sciadapt.stages.weights import apply_trainable
from sciadapt.tasks.base import build_schedule
from tests.conftest import tiny_pipeline


def _lrs(spec: dict, steps: int = 100, lr: float = 1.0) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_schedule(opt, ScheduleSpec(**spec), lr, steps)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return out


def test_schedules() -> None:
    assert _lrs({"name": "constant"}) == [1.0] * 100
    warm = _lrs({"name": "constant", "warmup_steps": 10})
    assert warm[0] == pytest.approx(0.1) and warm[9] == 1.0 and warm[-1] == 1.0
    cos = _lrs({"name": "cosine", "warmup_steps": 10, "min_lr": 0.1})
    assert cos[0] == pytest.approx(0.1) and cos[10] == pytest.approx(1.0)
    assert cos[-1] == pytest.approx(0.1, abs=0.01) and all(a >= b for a, b in zip(cos[10:], cos[11:], strict=False))
    one = _lrs({"name": "onecycle", "pct_start": 0.3})
    assert max(one) == pytest.approx(1.0, rel=1e-3) and one.index(max(one)) in range(25, 35) and one[-1] < 0.01
    cyc = _lrs({"name": "cyclic", "cycle_steps": 10, "min_lr": 0.1})
    assert cyc[0] == pytest.approx(0.1) and cyc[10] == pytest.approx(1.0) and cyc[20] == pytest.approx(0.1)


def test_trainable_patterns() -> None:
    model = torch.nn.ModuleDict({"backbone": torch.nn.Linear(3, 3), "head": torch.nn.Linear(3, 1)})
    n_train, n_total = apply_trainable(model, ["*"], ["backbone"], "stages[0]")
    assert (n_train, n_total) == (4, 16)
    assert not model["backbone"].weight.requires_grad and model["head"].weight.requires_grad
    n_train, _ = apply_trainable(model, ["head.bias", "backbone.*"], [], "stages[0]")
    assert n_train == 13
    with pytest.raises(ConfigError, match="matches no parameter"):
        apply_trainable(model, ["haed"], [], "stages[0]")
    with pytest.raises(ConfigError, match="no parameter is trainable"):
        apply_trainable(model, ["head"], ["head"], "stages[0]")


def test_early_stopping_and_pretrained_init(tmp_path: Path, series_csv: Path) -> None:
    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    es = "{monitor: val/loss, patience: 1, min_delta: 10.0}"  # nothing improves by 10: stop after 2 epochs
    assert (
        main(
            [
                "fit",
                str(pipe),
                "stages.*.max_epochs=1",
                f"stages.source.early_stopping={es}",
                "stages.source.max_epochs=50",
            ]
        )
        == 0
    )
    (run,) = (tmp_path / "runs").glob("tiny/*")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stages"]["source"]["epochs"] == 2

    # the trained backbone as a pretrained file: `init_from: pretrained` loads it strictly
    state = torch.load(run / "checkpoints" / "finetune" / "final.ckpt", weights_only=True)["state_dict"]
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    save_file(backbone, str(tmp_path / "nhits.safetensors"))
    out = tmp_path / "runs2"
    pipe2 = tiny_pipeline(tmp_path / "p2.yaml", series_csv, out)
    args = ["fit", str(pipe2), f"backbone.weights={tmp_path / 'nhits.safetensors'}", "stages.*.max_epochs=1"]
    assert (
        main([*args, "stages.source.frozen=[backbone]", "stages.source.trainable=[head]", "stages.source.optim.lr=0.0"])
        == 0
    )
    (run2,) = out.glob("tiny/*")
    after = torch.load(run2 / "checkpoints" / "source" / "final.ckpt", weights_only=True)["state_dict"]
    for k, v in backbone.items():
        assert torch.equal(after[f"backbone.{k}"], v), k


def test_frozen_batchnorm_keeps_its_running_statistics() -> None:
    from torch import nn

    from sciadapt.tasks.base import Task

    class Backbone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn_frozen = nn.BatchNorm1d(3)
            self.bn_trained = nn.BatchNorm1d(3)

        def forward_features(self, x):  # type: ignore[no-untyped-def]
            return self.bn_trained(self.bn_frozen(x))

    task = Task(Backbone(), nn.Identity())
    for p in task.backbone.bn_frozen.parameters():
        p.requires_grad_(False)
    task.train()
    task.on_train_epoch_start()
    assert not task.backbone.bn_frozen.training and task.backbone.bn_trained.training
    before = task.backbone.bn_frozen.running_mean.clone()
    task.backbone.forward_features(torch.randn(8, 3) + 5)
    assert torch.equal(task.backbone.bn_frozen.running_mean, before)
    assert not torch.equal(task.backbone.bn_trained.running_mean, torch.zeros(3))
