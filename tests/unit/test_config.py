"""Config composition, overrides and validation: every problem, its key path, a suggestion."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sciadapt.cli import main
from sciadapt.config import apply_overrides, bundled_pipelines, load_config, to_yaml, validate
from sciadapt.errors import ConfigError, UnknownComponentError
from sciadapt.registry import BACKBONES
from sciadapt.stages.plan import plan


def test_bundled_pipelines_validate() -> None:
    cfg = load_config("quickstart")
    assert [s.name for s in cfg.stages] == ["target_only", "source", "probe", "finetune"]
    # defaults composed from configs/ and filled from the builders' signatures
    assert cfg.backbone["name"] == "nhits" and cfg.backbone["mlp_units"] == [128, 128]
    assert cfg.stages[2].frozen == ["backbone"]
    assert cfg.stages[0].optim.weight_decay == 0.0
    ltsf = load_config("nhits_ltsf", ["data.path=x.csv"])
    assert ltsf.data["path"] == "x.csv"


def test_every_problem_is_reported_with_path_and_suggestion() -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(
            "quickstart",
            [
                "data.contxt_length=5",
                "backbone.mlp_unit=[4]",
                "stages.source.max_epochs=abc",
                "stages.probe.optim.lrr=1",
            ],
        )
    msg = str(ei.value)
    assert len(ei.value.problems) == 4
    assert "data.contxt_length: unknown key" in msg and "'context_length'" in msg
    assert "backbone.mlp_unit" in msg and "'mlp_units'" in msg
    assert "stages[1] (source).max_epochs: expected int or null, got 'abc'" in msg
    assert "stages[2] (probe).optim.lrr" in msg and "'lr'" in msg


def test_unknown_component_and_choices() -> None:
    with pytest.raises(ConfigError, match="did you mean 'nhits'"):
        load_config("quickstart", ["backbone.name=nhit"])
    with pytest.raises(ConfigError, match="cosine"):
        load_config("quickstart", ["stages.*.schedule.name=cosin"])
    with pytest.raises(UnknownComponentError, match="quickstart"):
        load_config("quickstar")
    with pytest.raises(UnknownComponentError, match="did you mean"):
        BACKBONES.get("nhts")


def test_required_and_missing_values() -> None:
    with pytest.raises(ConfigError, match=r"data.path: required.*data.path=\.\.\."):
        load_config("nhits_ltsf")


def test_overrides_address_stages_by_name_index_and_star() -> None:
    base = {"stages": [{"name": "a", "max_epochs": 1}, {"name": "b", "max_epochs": 1}]}
    out = apply_overrides(base, ["stages.b.max_epochs=5", "stages.0.optim.lr=0.1", "stages.*.max_steps=7"])
    assert out["stages"][1]["max_epochs"] == 5 and out["stages"][0]["optim"] == {"lr": 0.1}
    assert all(s["max_steps"] == 7 for s in out["stages"])
    assert base["stages"][1]["max_epochs"] == 1  # the input is not mutated
    with pytest.raises(ConfigError, match="no stage 'c'"):
        apply_overrides(base, ["stages.c.max_epochs=1"])


def test_defaults_unknown_block(tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text("defaults:\n  - backbone: nhits_smal\nstages: []\n")
    with pytest.raises(ConfigError, match="did you mean 'nhits_small'"):
        load_config(str(p))


def test_stage_rules(tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(
        "backbone: {name: nhits_tiny}\ndata: {name: timeseries, path: x.csv}\n"
        "stages:\n  - {name: a}\n  - {name: a, max_epochs: 1, init_from: 'stage:zz'}\n"
    )
    with pytest.raises(ConfigError) as ei:
        plan(load_config(str(p)))  # the stage rules belong to the plan
    msg = str(ei.value)
    assert "set max_epochs or max_steps" in msg
    assert "duplicate stage name 'a'" in msg
    assert "names no earlier stage" in msg


def test_cli_validate_exit_code_and_no_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "quickstart"]) == 0
    assert main(["validate", "quickstart", "data.contxt_length=5"]) == 2
    err = capsys.readouterr().err
    assert "data.contxt_length" in err and "context_length" in err
    assert "Traceback" not in err


def test_invalid_config_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "quickstart", "trainer.acelerator=cpu"]) == 2
    assert not (tmp_path / "runs").exists()


def test_cli_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "nhits" in out and "quickstart" in out and "timeseries" in out
    assert main(["list", "backbone"]) == 2
    assert "did you mean 'backbones'" in capsys.readouterr().err


def test_group_override_swaps_a_building_block() -> None:
    cfg = load_config("quickstart", ["backbone=nhits_tiny", "backbone.dropout=0.1"])
    assert cfg.backbone["name"] == "nhits_tiny" and cfg.backbone["feature_dim"] == 4
    assert cfg.backbone["dropout"] == 0.1  # dotted overrides still apply on top
    with pytest.raises(ConfigError, match="no building block 'nhits_tny'.*nhits_tiny"):
        load_config("quickstart", ["backbone=nhits_tny"])


@pytest.mark.parametrize("name", bundled_pipelines())
def test_every_bundled_pipeline_validates(name: str) -> None:
    """Every bundled pipeline, with its required values given, passes the schema and the stage rules."""
    try:
        spec = load_config(name)
    except ConfigError as e:  # values a user must give (`path: ???`): give placeholders
        keys = [m.group(1) for p in e.problems if (m := re.match(r"(\S+): required, give it on the command line", p))]
        assert len(keys) == len(e.problems), e.problems
        spec = load_config(name, [f"{k}=placeholder" for k in keys])
    plans = plan(spec)
    assert [p.name for p in plans] == [s.name for s in spec.stages]
    # the saved form reads back to the same spec (what --resume, predict and test rely on)
    assert validate(yaml.safe_load(to_yaml(spec))) == spec


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        # Lightning habits: max_epochs belongs to a stage (stages differ in length), optim to a stage
        (
            "trainer.max_epochs=3",
            "`max_epochs` is a stage key: set stages.*.max_epochs=3 (every stage) or "
            "stages.<name>.max_epochs=3 (one stage).",
        ),
        (
            "optim.lr=0.01",
            "`optim` is a stage key: set stages.*.optim.lr=0.01 (every stage) or "
            "stages.<name>.optim.lr=0.01 (one stage).",
        ),
        ("lr=0.01", "`lr` is a stage key: set stages.*.optim.lr=0.01 (every stage)"),
        ("stages.probe.lr=0.1", "`lr` belongs in stages.probe.optim: set stages.probe.optim.lr=0.1."),
        ("data.accelerator=cpu", "`accelerator` belongs in trainer: set trainer.accelerator=cpu."),
    ],
)
def test_a_misplaced_key_names_the_override_that_puts_it_home(
    override: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "quickstart", override]) == 2
    err = capsys.readouterr().err
    assert hint in err, err
    assert "Traceback" not in err


def test_a_misplaced_section_names_each_of_its_keys() -> None:
    with pytest.raises(ConfigError) as ei:
        load_config("quickstart", ["optim={lr: 0.1, name: sgd}"])
    assert "set stages.*.optim.lr=0.1 stages.*.optim.name=sgd (every stage)" in str(ei.value)


def test_unquoted_dates_stay_text_in_overrides_and_files(tmp_path: Path) -> None:
    from sciadapt.config import _parse_value, _read_yaml

    assert _parse_value("[2017-10-01, 2017-11-01]") == ["2017-10-01", "2017-11-01"]
    assert _parse_value("2017-10-01 06:00:00") == "2017-10-01T06:00:00"
    path = tmp_path / "p.yaml"
    path.write_text("data: {split_dates: [2017-10-01, 2017-11-01]}\n")
    assert _read_yaml(path) == {"data": {"split_dates": ["2017-10-01", "2017-11-01"]}}
