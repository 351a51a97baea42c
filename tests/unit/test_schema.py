"""`sciadapt schema`: the JSON Schema accepts every bundled pipeline and refuses what the config refuses."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sciadapt.config import bundled_pipelines, load_config, resolve_pipeline
from sciadapt.errors import ConfigError
from sciadapt.schema import pipeline_schema

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema checks the schema against the pipelines")


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = pipeline_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator: Any, doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(doc)]


def _resolved(name: str) -> dict[str, Any]:
    """The pipeline as config.yaml holds it; keys it leaves to the command line (``???``) get a path."""
    overrides: list[str] = []
    for _ in range(5):
        try:
            return load_config(name, overrides).to_dict()
        except ConfigError as e:
            missing = re.findall(r"give it on the command line: (\S+)=\.\.\.", str(e))
            if not missing:
                raise
            overrides += [f"{key}=x" for key in missing]
    raise AssertionError(name)


@pytest.mark.parametrize("name", bundled_pipelines())
def test_every_bundled_pipeline_file_and_its_resolved_config_validate(name: str, validator: Any) -> None:
    raw = yaml.safe_load(resolve_pipeline(name).read_text())
    assert _errors(validator, raw) == []
    assert _errors(validator, _resolved(name)) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["stages", 0, "max_epochs"], -1),
        (["stages", 0, "optim", "name"], "adamx"),
        (["stages", 0, "optim", "warmup_steps"], 3),
        (["trainer", "max_epochs"], 3),
        (["data", "context_length"], "abc"),
        (["data", "nan_policy"], "drop"),
        (["backbone", "no_such_key"], 1),
        (["stages", 0, "peft"], {"method": "lora", "r": "eight"}),
    ],
)
def test_what_the_config_refuses_the_schema_refuses(path: list[Any], value: Any, validator: Any) -> None:
    doc = load_config("quickstart").to_dict()
    bad = copy.deepcopy(doc)
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert _errors(validator, bad), f"the schema accepts {path}={value!r}"


def test_descriptions_come_from_the_builders_docstrings() -> None:
    schema = pipeline_schema()
    data = {o["title"]: o for o in schema["properties"]["data"]["anyOf"]}
    ts = data["data: timeseries"]["properties"]
    assert "nan_policy" in ts and "description" in ts["nan_policy"]
    assert ts["nan_policy"]["enum"] == ["error", "mask", "interpolate"]
    assert Path  # keep the import for type-checkers


def test_schema_verb_prints_or_writes_the_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sciadapt.cli import main

    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(pipeline_schema()))
    out = tmp_path / "editor" / "pipeline.schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == printed
    assert [p.name for p in out.parent.iterdir()] == ["pipeline.schema.json"]  # no temporary file left
    assert "schema written to" in capsys.readouterr().out
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    assert main(["schema", "--out", str(blocked / "x.json")]) != 0  # a file where a folder is needed
    err = capsys.readouterr().err
    assert "cannot write the schema" in err and "Traceback" not in err


def test_a_pipelines_schema_offers_its_own_components(validator: Any) -> None:
    schema = pipeline_schema("quickstart")
    jsonschema.Draft202012Validator.check_schema(schema)
    props = schema["properties"]
    assert [o["title"] for o in props["data"]["anyOf"]] == ["data: timeseries"]
    assert [o["title"] for o in props["backbone"]["anyOf"]] == ["backbone: nhits"]
    assert [o["title"] for o in props["task"]["anyOf"]] == ["task: forecasting"]  # the default task
    narrow = jsonschema.Draft202012Validator(schema)
    assert _errors(narrow, yaml.safe_load(resolve_pipeline("quickstart").read_text())) == []
    assert _errors(narrow, _resolved("quickstart")) == []
    doc = _resolved("quickstart")
    doc["backbone"]["name"] = "ttm"
    assert _errors(narrow, doc) and not _errors(validator, {**doc, "backbone": {"name": "ttm"}})
