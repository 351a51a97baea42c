"""Model cards: every adapter directory a run writes has a README.md in Hugging Face's card format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from sciadapt.peft.card import CardFacts, base_model_id, render_card
from tests.conftest import TINY_SERIES_PIPELINE, make_series_csv

PIPELINE = (
    TINY_SERIES_PIPELINE.replace("{name}", "tiny_card")
    + """stages:
  - name: source
    max_epochs: 1
    limit_train_batches: 4
  - name: lora1
    max_epochs: 1
    limit_train_batches: 4
    optim: {{lr: 1.0e-2}}
    peft: {{method: lora, r: 2, alpha: 4, merge_after: true}}
    ema: {{decay: 0.5}}
  - name: lora2
    max_epochs: 1
    limit_train_batches: 4
    optim: {{lr: 1.0e-2}}
    peft: {{method: lora, r: 2, alpha: 4}}
"""
)


def _front_matter(text: str) -> dict[str, object]:
    assert text.startswith("---\n")
    head, _, _ = text[4:].partition("\n---\n")
    meta = yaml.safe_load(head)
    assert isinstance(meta, dict)
    return meta


def test_adapter_dirs_have_model_cards(tmp_path: Path) -> None:
    from sciadapt.cli import main

    data = make_series_csv(tmp_path / "series.csv", n=600)
    pipe = tmp_path / "p.yaml"
    pipe.write_text(PIPELINE.format(run_dir=tmp_path / "runs", data=data))
    assert main(["fit", str(pipe), "seed=0"]) == 0
    (run,) = (tmp_path / "runs").glob("tiny_card/*")
    summary = json.loads((run / "summary.json").read_text())
    for stage in ("lora1", "lora2"):
        text = (run / "adapters" / stage / "README.md").read_text()
        meta = _front_matter(text)
        assert meta["library_name"] == "sciadapt"
        assert meta["base_model"] == "nhits_tiny"  # no weights id: the backbone's name
        assert {"sciadapt", "lora", "forecasting"} <= set(meta["tags"])  # type: ignore[arg-type]
        assert meta["pipeline_tag"] == "time-series-forecasting"
        sd = json.loads((run / "adapters" / stage / "adapter_config.json").read_text())
        assert sd["peft_type"] == "LORA"
        from sciadapt.peft.io import adapter_meta

        fp = (adapter_meta(run / "adapters" / stage) or {})["fingerprint"]["sha256"]
        assert fp in text  # the base fingerprint
        assert "series.csv" in text  # the data
        assert f"sciadapt fit {pipe} seed=0" in text  # the command
        mse = summary["stages"][stage]["test"]["mse"]
        assert f"| mse | {mse:.4g} |" in text  # the stage's test metrics
        assert f"**{stage}**" in text  # its comparison row
        if stage == "lora1":
            assert "**lora1 (EMA)**" in text
        try:
            from huggingface_hub import ModelCard
        except ImportError:  # pragma: no cover - a dependency, but the card must not need it
            continue
        card = ModelCard.load(run / "adapters" / stage / "README.md")
        assert card.data.library_name == "sciadapt" and card.data.base_model == "nhits_tiny"
    # the merged adapter's average is merged into its ema.ckpt too: the layout of its final.ckpt
    final = torch.load(run / "checkpoints" / "lora1" / "final.ckpt", weights_only=True)["state_dict"]
    ema = torch.load(run / "checkpoints" / "lora1" / "ema.ckpt", weights_only=True)["state_dict"]
    assert set(final) == set(ema) and not any(".lora" in k for k in final)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [("hf://ibm-granite/granite-timeseries-ttm-r2@main", "ibm-granite/granite-timeseries-ttm-r2"), (None, "ttm")],
)
def test_base_model_id(weights: str | None, expected: str) -> None:
    assert base_model_id("ttm", weights) == expected


def test_card_without_sciadapt_meta_or_metrics(tmp_path: Path) -> None:
    """An adapter folder PEFT wrote alone (no sciadapt header) and a stage never scored still get a card."""
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    facts = CardFacts(
        pipeline="p", stage="s", backbone="unet", weights=None, task="pixel_regression", data="x", command="c"
    )
    text = render_card(tmp_path, facts)
    meta = _front_matter(text)
    assert "pipeline_tag" not in meta and "lora" in meta["tags"]  # type: ignore[operator]
    assert "not scored" in text
