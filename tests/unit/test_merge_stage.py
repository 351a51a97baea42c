"""A ``merge:`` stage in a pipeline (its weights merged from earlier stages' final weights, skipped on
resume), its stage rules, and ``evaluation.shifted`` (every comparison row and WiSE-FT's alpha curve
also scored on a shifted test split)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from sciadapt.api import load_pipeline
from sciadapt.errors import ConfigError
from tests.conftest import TINY_SERIES_PIPELINE, make_series_csv

PIPELINE = (
    TINY_SERIES_PIPELINE.replace("{name}", "tiny_merge")
    + """stages:
  - name: a
    max_epochs: 1
    limit_train_batches: 2
    limit_val_batches: 1
    optim: {{lr: 3.0e-3}}
  - name: b
    max_epochs: 1
    limit_train_batches: 2
    limit_val_batches: 1
    optim: {{lr: 1.0e-2}}
  - name: soup
    merge: {{method: soup, stages: [a, b]}}
  - name: after
    max_epochs: 1
    limit_train_batches: 1
    limit_val_batches: 1
evaluation:
  baselines: [seasonal_naive]
  metrics: [mse, mae]
{extra}
"""
)


def _pipe(tmp_path: Path, extra: str = "") -> Path:
    data = make_series_csv(tmp_path / "series.csv", n=400)
    pipe = tmp_path / "p.yaml"
    pipe.write_text(PIPELINE.format(run_dir=tmp_path / "runs", data=data, extra=extra))
    return pipe


def _final(run: Path, stage: str) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(run / "checkpoints" / stage / "final.ckpt", weights_only=True)[
        "state_dict"
    ]
    return state


def test_soup_stage_is_the_mean_and_a_resume_skips_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sciadapt.averaging import arith
    from sciadapt.cli import main
    from sciadapt.errors import EXIT_PREEMPTED
    from sciadapt.stages.preempt import FAULT_ENV

    pipe = _pipe(tmp_path)
    monkeypatch.setenv(FAULT_ENV, "between@soup:SIGUSR1")  # stopped right after the merge stage
    assert main(["fit", str(pipe)]) == EXIT_PREEMPTED
    monkeypatch.delenv(FAULT_ENV)
    (run,) = (tmp_path / "runs").glob("tiny_merge/*")
    a, b, soup = _final(run, "a"), _final(run, "b"), _final(run, "soup")
    assert set(soup) == set(a)
    moved = False
    for k, v in soup.items():
        if v.is_floating_point():  # the mean in float64, cast back: exactly
            assert torch.equal(v, ((a[k].double() + b[k].double()) / 2).to(v.dtype)), k
            moved |= not torch.equal(a[k], b[k])
    assert moved, "the two stages ended with the same weights"
    stamp = (run / "checkpoints" / "soup" / "final.ckpt").stat().st_mtime_ns

    def no_merge(*args: object, **kwargs: object) -> None:
        raise AssertionError("the resumed run merged again")

    monkeypatch.setattr(arith, "combine", no_merge)
    assert main(["fit", "--resume", str(run)]) == 0
    assert (run / "checkpoints" / "soup" / "final.ckpt").stat().st_mtime_ns == stamp
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stages"]["soup"]["merge"] == {"method": "soup", "stages": ["a", "b"]}
    assert summary["stages"]["soup"]["trainable_params"] == 0 and summary["stages"]["soup"]["test"]["mse"] > 0
    rows = {r["model"]: r for r in summary["evaluation"]["rows"]}
    assert list(rows) == ["seasonal-naive", "a", "b", "soup", "after"]
    assert rows["soup"]["mse"] == summary["stages"]["soup"]["test"]["mse"]
    # the stage after it started from the merged weights
    assert json.loads((run / "state.json").read_text())["completed"] == ["a", "b", "soup", "after"]


@pytest.mark.parametrize(
    ("override", "key", "says"),
    [
        ("stages.soup.merge.stages=[a,zzz]", r"stages\[2\] \(soup\)\.merge\.stages\[1\]", "names no earlier stage"),
        ("stages.soup.merge.stages=[a,after]", r"stages\[2\] \(soup\)\.merge\.stages\[1\]", "names no earlier stage"),
        ("stages.soup.merge.stages=[a]", r"stages\[2\] \(soup\)\.merge\.stages", "at least 2"),
        ("stages.soup.merge.alpha=1.5", r"stages\[2\] \(soup\)\.merge\.alpha", ""),
        ("stages.soup.merge.method=wise_ft", r"stages\[2\] \(soup\)\.merge\.anchor", "needs the stage"),
        ("stages.soup.peft={method: lora}", r"stages\[2\] \(soup\)\.peft", "trains nothing"),
        ("stages.soup.merge.method=stew", r"stages\[2\] \(soup\)\.merge\.method", ""),
    ],
)
def test_bad_merge_stages_are_config_errors(tmp_path: Path, override: str, key: str, says: str) -> None:
    pipe = _pipe(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_pipeline(str(pipe), [override])
    msg = str(e.value)
    assert re.search(key, msg) and says in msg, msg
    assert not (tmp_path / "runs").exists()


def test_merge_stage_refuses_another_architecture(tmp_path: Path) -> None:
    pipe = _pipe(tmp_path)
    with pytest.raises(ConfigError, match=r"merge\.stages\[0\]: stage 'a' trains another head"):
        load_pipeline(str(pipe), ["stages.b.head={name: point, loss: mae}", "stages.b.init_from=scratch"])


SHIFTED = """
evaluation:
  baselines: [seasonal_naive]
  metrics: [mse, mae]
  shifted: {{path: {shifted}}}
"""


def test_shifted_split_in_the_comparison_and_the_wise_ft_curve(tmp_path: Path) -> None:
    from sciadapt.averaging import arith
    from sciadapt.cli import main

    shifted = make_series_csv(tmp_path / "shifted.csv", n=400, seed=7)
    pipe = _pipe(tmp_path)
    text = pipe.read_text().split("evaluation:")[0] + SHIFTED.format(shifted=shifted)
    # a: the anchor (scored as built), b: fine-tuned from it, wise: WiSE-FT at 0.25 in the pipeline
    text = text.replace(
        "  - name: after\n    max_epochs: 1\n    limit_train_batches: 1\n    limit_val_batches: 1\n", ""
    )
    text = text.replace(
        "merge: {method: soup, stages: [a, b]}", "merge: {method: wise_ft, stages: [b], anchor: a, alpha: 0.25}"
    )
    text = text.replace("name: soup", "name: wise")
    pipe.write_text(text)
    assert main(["fit", str(pipe)]) == 0
    (run,) = (tmp_path / "runs").glob("tiny_merge/*")
    want = arith.interpolate(_final(run, "a"), _final(run, "b"), 0.25)
    for k, v in _final(run, "wise").items():
        assert torch.equal(v, want[k]), k
    ev = json.loads((run / "summary.json").read_text())["evaluation"]
    assert ev["metrics"] == ["mse", "mae", "mse@shifted", "mae@shifted"]
    assert "shifted.csv test split" in ev["shifted"]["data"] and "series.csv" in ev["data"]
    for row in ev["rows"]:  # every row, the baseline too, on both splits
        assert row["mse"] > 0 and row["mse@shifted"] > 0 and row["mse@shifted"] != row["mse"], row
    assert "mse@shifted" in ev["rows"][1]["intervals"]

    out = tmp_path / "wise_out"
    assert (
        main(["merge", "wise_ft", str(run), "--stage", "b", "--anchor", "a", "--alpha", "0,1", "--out", str(out)]) == 0
    )
    rec = json.loads((out / "merge.json").read_text())
    assert [r["alpha"] for r in rec["table"]] == [0.0, 1.0]
    for r in rec["table"]:
        assert set(r["shifted"]) == set(r["test"]) and r["shifted"]["mse"] != r["test"]["mse"]
    assert "shifted.csv" in rec["shifted"]["data"] and "shifted" in rec["merged"]
    assert (out / "plots" / "wise_ft.png").stat().st_size > 0
