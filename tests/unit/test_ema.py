"""EMA of weights as a stage option (``stages[i].ema``): the arithmetic, resume, ema.ckpt and its comparison row."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from sciadapt.api import load_pipeline
from sciadapt.errors import ConfigError
from sciadapt.stages.callbacks import EMA_CKPT, WeightEma
from tests.conftest import TINY_SERIES_PIPELINE, make_series_csv


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    model[0].bias.requires_grad_(False)  # a frozen tensor is not averaged
    return model


def test_ema_arithmetic_matches_a_hand_computed_average() -> None:
    model = _tiny()
    ema = WeightEma(decay=0.9)
    trainer: Any = SimpleNamespace(global_step=0)
    ema.on_train_start(trainer, model)  # type: ignore[arg-type]
    assert "0.bias" not in ema.shadow and "1.running_mean" not in ema.shadow
    params = dict(model.named_parameters())
    hand = {n: params[n].detach().clone() for n in ema.shadow}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for step in range(1, 5):
        for _ in range(2):  # two batches per optimiser step (gradient accumulation)
            loss = model(torch.randn(8, 3, generator=gen)).pow(2).mean()
            loss.backward()
            # the batch that does not step the optimiser leaves the average alone
            ema.on_train_batch_end(trainer, model, None, None, 0)  # type: ignore[arg-type]
        opt.step()
        opt.zero_grad()
        trainer.global_step = step
        ema.on_train_batch_end(trainer, model, None, None, 0)  # type: ignore[arg-type]
        hand = {n: 0.9 * hand[n] + 0.1 * params[n].detach() for n in hand}
    assert ema.updates == 4
    for n in hand:
        torch.testing.assert_close(ema.shadow[n], hand[n], rtol=1e-6, atol=1e-7)
        assert not torch.equal(ema.shadow[n], params[n])
    # applied: the average inside, the raw weights back after
    raw = {n: p.detach().clone() for n, p in model.named_parameters()}
    with ema.applied(model):
        for n in hand:
            torch.testing.assert_close(params[n].detach(), hand[n], rtol=1e-6, atol=1e-7)
        assert torch.equal(params["0.bias"], raw["0.bias"])
    for n, p in model.named_parameters():
        assert torch.equal(p, raw[n])


def test_every_n_steps() -> None:
    model = _tiny()
    ema = WeightEma(decay=0.5, every_n_steps=2)
    trainer: Any = SimpleNamespace(global_step=0)
    ema.on_train_start(trainer, model)  # type: ignore[arg-type]
    for step in range(1, 6):
        trainer.global_step = step
        ema.on_train_batch_end(trainer, model, None, None, 0)  # type: ignore[arg-type]
    assert ema.updates == 2  # steps 2 and 4


class _Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(3, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _loader() -> torch.utils.data.DataLoader[Any]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=gen)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def _fit(epochs: int, root: Path, ckpt: Path | None = None) -> tuple[pl.Trainer, WeightEma]:
    ema = WeightEma(decay=0.8)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(root),
        callbacks=[ema],
    )
    # as the runner resumes: a weights-only load of the resume checkpoint
    trainer.fit(
        _Regressor(),
        train_dataloaders=_loader(),
        ckpt_path=str(ckpt) if ckpt else None,
        weights_only=True if ckpt else None,
    )
    return trainer, ema


def test_ema_survives_a_resume(tmp_path: Path) -> None:
    """The average rides in the resume checkpoint: stopping after epoch 1 and resuming gives the
    uninterrupted run's average."""
    _, whole = _fit(2, tmp_path)
    first, _ = _fit(1, tmp_path)
    first.save_checkpoint(tmp_path / "last.ckpt")
    _, resumed = _fit(2, tmp_path, tmp_path / "last.ckpt")
    assert resumed.updates == whole.updates == 8
    for n in whole.shadow:
        torch.testing.assert_close(resumed.shadow[n], whole.shadow[n])


PIPELINE = (
    TINY_SERIES_PIPELINE.replace("{name}", "tiny_ema")
    + """stages:
  - name: source
    max_epochs: 2
    limit_train_batches: 4
    optim: {{lr: 3.0e-3}}
evaluation:
  labels: {{source: "source-only"}}
"""
)


def test_pipeline_writes_ema_ckpt_and_compares_it(tmp_path: Path) -> None:
    from sciadapt.cli import main

    data = make_series_csv(tmp_path / "series.csv", n=600)
    pipe = tmp_path / "p.yaml"
    pipe.write_text(PIPELINE.format(run_dir=tmp_path / "runs", data=data))
    assert main(["fit", str(pipe), "stages.source.ema.decay=0.9"]) == 0
    (run,) = (tmp_path / "runs").glob("tiny_ema/*")
    stage = run / "checkpoints" / "source"
    final_ckpt = torch.load(stage / "final.ckpt", weights_only=True)
    final = final_ckpt["state_dict"]
    ema = torch.load(stage / EMA_CKPT, weights_only=True)
    assert set(ema["state_dict"]) == set(final)  # the layout of final.ckpt
    assert ema["sciadapt"] == final_ckpt["sciadapt"]  # the data signature the task checks on load
    differ = [k for k in final if final[k].is_floating_point() and not torch.equal(final[k], ema["state_dict"][k])]
    assert differ, "the average equals the raw weights"
    summary = json.loads((run / "summary.json").read_text())
    models = [r["model"] for r in summary["evaluation"]["rows"]]
    assert models[models.index("source-only") + 1] == "source-only (EMA)"
    ema_row = summary["evaluation"]["rows"][models.index("source-only (EMA)")]
    assert ema_row["ema"] is True and ema_row["stage"] == "source" and ema_row["mse"] > 0
    assert summary["stages"]["source"]["ema"] == {"decay": 0.9, "every_n_steps": 1, "updates": 8}
    assert summary["final"]["model"] == "source-only"  # the stage's own weights stay its final ones
    state = json.loads((run / "state.json").read_text())
    assert state["command"][:3] == ["sciadapt", "fit", str(pipe)]


@pytest.mark.parametrize("decay", ["0", "1.5", "1.0"])
def test_bad_decay_is_a_config_error(tmp_path: Path, decay: str) -> None:
    data = make_series_csv(tmp_path / "series.csv", n=200)
    pipe = tmp_path / "p.yaml"
    pipe.write_text(PIPELINE.format(run_dir=tmp_path / "runs", data=data))
    with pytest.raises(ConfigError) as e:
        load_pipeline(str(pipe), [f"stages.source.ema.decay={decay}"])
    assert re.search(r"stages\[0\][^:]*\.ema\.decay", str(e.value)), str(e.value)
    assert not (tmp_path / "runs").exists()


def test_preempted_stage_continues_its_average(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage preempted mid-epoch and resumed writes the ema.ckpt of the uninterrupted run."""
    from sciadapt.cli import main
    from sciadapt.errors import EXIT_PREEMPTED
    from sciadapt.stages.preempt import FAULT_ENV

    data = make_series_csv(tmp_path / "series.csv", n=600)
    pipe = tmp_path / "p.yaml"
    pipe.write_text(PIPELINE.format(run_dir=tmp_path / "runs", data=data))
    ema = ["stages.source.ema.decay=0.9", "stages.source.limit_train_batches=null", "data.batch_size=64"]
    assert main(["fit", str(pipe), *ema, f"run_dir={tmp_path / 'ref'}"]) == 0
    monkeypatch.setenv(FAULT_ENV, "train@source:SIGUSR1")  # after the first batch: mid-epoch
    assert main(["fit", str(pipe), *ema, f"run_dir={tmp_path / 'cut'}"]) == EXIT_PREEMPTED
    monkeypatch.delenv(FAULT_ENV)
    (run,) = (tmp_path / "cut").glob("tiny_ema/*")
    assert not (run / "checkpoints" / "source" / EMA_CKPT).exists()
    assert main(["fit", "--resume", str(run)]) == 0
    (ref,) = (tmp_path / "ref").glob("tiny_ema/*")
    got = torch.load(run / "checkpoints" / "source" / EMA_CKPT, weights_only=True)["state_dict"]
    want = torch.load(ref / "checkpoints" / "source" / EMA_CKPT, weights_only=True)["state_dict"]
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=k)
