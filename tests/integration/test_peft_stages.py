"""PEFT stages: adapters attach per stage, adapters/<stage>/ is written, merge_after chains LoRAs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sciadapt.cli import main
from tests.conftest import tiny_pipeline

PEFT_STAGES = """
  - name: lora1
    max_epochs: 2
    limit_train_batches: 8
    optim: {lr: 1.0e-2}
    peft: {method: lora, r: 2, alpha: 4, merge_after: true}
  - name: lora2
    max_epochs: 2
    limit_train_batches: 8
    optim: {lr: 1.0e-2}
    peft: {method: dora, r: 2, alpha: 4}
"""


def test_chain_of_lora_pipeline(tmp_path: Path, series_csv: Path) -> None:
    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    # the PEFT stages come after the three plain ones
    pipe.write_text(pipe.read_text().rstrip() + "\n" + PEFT_STAGES)
    assert main(["fit", str(pipe)]) == 0
    (run,) = (tmp_path / "runs").glob("tiny/*")
    for stage in ("lora1", "lora2"):
        ad = run / "adapters" / stage
        assert (ad / "adapter_config.json").is_file() and (ad / "adapter_model.safetensors").is_file()
    cfg = json.loads((run / "adapters" / "lora2" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["use_dora"] is True
    summary = json.loads((run / "summary.json").read_text())
    lora2 = summary["stages"]["lora2"]
    assert lora2["trainable_params"] < 0.5 * lora2["total_params"]
    # lora1 was merged: lora2's final checkpoint has the plain base keys plus lora2's adapter only
    state = torch.load(run / "checkpoints" / "lora2" / "final.ckpt", weights_only=True)["state_dict"]
    assert any(".lora_magnitude_vector.lora2." in k for k in state)
    assert not any(".lora1" in k for k in state)
    # the last stage's structure is rebuilt for predict and test
    assert main(["predict", "--run", str(run), "--out", str(tmp_path / "f.csv")]) == 0
    assert main(["test", "--run", str(run)]) == 0


def test_peft_stage_bad_target_fails_before_training(
    tmp_path: Path, series_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    code = main(["fit", str(pipe), "stages.finetune.peft={method: lora, targets: [backbone.blocks.*.hiden.*]}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "stages[2] (finetune).peft.targets" in err and "matches no module" in err
    assert not list((tmp_path / "runs").glob("*/*"))
