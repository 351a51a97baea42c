"""Fault injection: bad input of every class through the real CLI entry point.

Each case asserts the promise of the error boundary (issue 14): exit status 2, no traceback
(``cli.main`` returns instead of raising), the message names the key / file / flag at fault, and
nothing is left behind (no run directory, no half-written output). The cases are generated where
possible — from the spec's dataclasses and the builders' signatures, from the files a finished run
holds, from every tiny backbone's ``save_pretrained`` folder — so a new key, run file or backbone is
covered without a new test. Signals in every phase are in ``test_signals.py``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest
import torch

from sciadapt import cli
from sciadapt.config import builder_schema
from sciadapt.errors import SciadaptError
from sciadapt.registry import BACKBONES, DATAMODULES, HEADS
from sciadapt.spec import (
    Bound,
    EarlyStoppingSpec,
    EvaluationSpec,
    OptimSpec,
    RolloutSpec,
    ScheduleSpec,
    StageSpec,
    TrainerSpec,
)
from tests.conftest import make_series_csv, tiny_pipeline

# the tiny pipeline's stages are cut short: every case here is about failing, not training
SHORT = ["stages.*.max_epochs=1", "stages.*.limit_train_batches=2", "stages.*.limit_val_batches=1"]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``sciadapt <argv>`` in this process; an exception escaping ``main`` fails the test (a traceback)."""
    capsys.readouterr()
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clear(rc: int, err: str, *names: str) -> None:
    """Exit 2 with an ``error:`` line naming every one of ``names``."""
    assert rc == 2, f"exit {rc}, expected 2: {err[-2000:]}"
    assert "error:" in err and "Traceback" not in err, err[-2000:]
    flat = " ".join(err.split())  # rich wraps long lines
    for name in names:
        assert name in flat, f"the message does not name {name!r}: {flat[-2000:]}"


def entries(root: Path) -> list[Path]:
    return sorted(root.rglob("*")) if root.exists() else []


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_series_csv(tmp_path_factory.mktemp("series") / "s.csv", n=600)


@pytest.fixture
def pipe(tmp_path: Path, series: Path) -> Path:
    return tiny_pipeline(tmp_path / "p.yaml", series, tmp_path / "runs")


# --------------------------------------------------------------------------------------------
# 1. type confusion in every section of the spec (generated from the dataclasses and builders)
# --------------------------------------------------------------------------------------------
def _strip(tp: Any) -> tuple[Any, list[Bound]]:
    """The bare type of a field and its bounds (``Annotated`` and ``| None`` removed)."""
    bounds: list[Bound] = []
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            bounds += [m for m in tp.__metadata__ if isinstance(m, Bound)]
            tp = tp.__origin__
            continue
        args = typing.get_args(tp)
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
            rest = [a for a in args if a is not type(None)]
            if len(rest) == 1:
                tp = rest[0]
                continue
        return tp, bounds


def bad_values(tp: Any) -> list[str]:
    """Override values (YAML text) that a field of type ``tp`` must refuse."""
    tp, bounds = _strip(tp)
    out: list[str] = []
    for b in bounds:
        low = getattr(b, "bound", 0)
        if type(b).__name__ in ("Ge", "Gt"):
            out.append(str(int(low) - 1 if tp is int else low - 0.5))
        else:
            out.append(str(int(low) + 1 if tp is int else low + 0.5))
    origin = typing.get_origin(tp)
    if tp is bool:
        out += ["maybe", "5"]
    elif tp is int:
        out += ["abc", "1.5", "[1]"]
    elif tp is float:
        out += ["abc", "[1.0]"]
    elif tp is str:
        out += ["[1,2]", "{a: 1}"]
    elif origin is Literal:
        out += ["not_a_choice", "[1]"]
    elif origin is list:
        out += ["5", "{a: 1}"]
    elif origin is dict:
        out += ["5", "[1,2]"]
    elif dataclasses.is_dataclass(tp):
        out += ["5", "[1,2]", "abc"]
    return out


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _spec_cases() -> Iterator[tuple[str, str, str]]:
    """(override key, bad value, the name the message must hold) for every typed spec field."""
    skip_stage = {"name", "peft", "data", "backbone", "head", "init_from"}  # checked by their own cases below
    sections: list[tuple[str, str, type]] = [
        ("trainer", "trainer", TrainerSpec),
        ("evaluation", "evaluation", EvaluationSpec),
        ("stages.source", "stages[0] (source)", StageSpec),
        ("stages.source.optim", "stages[0] (source).optim", OptimSpec),
        ("stages.source.schedule", "stages[0] (source).schedule", ScheduleSpec),
        ("stages.source.early_stopping", "stages[0] (source).early_stopping", EarlyStoppingSpec),
        ("stages.source.rollout", "stages[0] (source).rollout", RolloutSpec),
    ]
    for prefix, shown, cls in sections:
        for name, tp in _fields(cls).items():
            if cls is StageSpec and name in skip_stage:
                continue
            for value in bad_values(tp):
                yield f"{prefix}.{name}", value, f"{shown}.{name}"
    for section, name in (("data", "timeseries"), ("backbone", "nhits_tiny"), ("head", "point")):
        registry = {"data": DATAMODULES, "backbone": BACKBONES, "head": HEADS}[section]
        for param, (tp, _) in builder_schema(registry.get(name)).items():
            if param in ("path", "backbone", "head"):
                continue
            for value in bad_values(tp)[:2]:
                yield f"{section}.{param}", value, f"{section}.{param}"


SPEC_CASES = list(_spec_cases())


def test_the_spec_generator_covers_every_section() -> None:
    keys = {k.split(".")[0] + "." + k.split(".")[1] for k, _, _ in SPEC_CASES}
    assert {"trainer.accelerator", "stages.source", "evaluation.metrics", "data.context_length"} <= keys
    assert len(SPEC_CASES) > 100


@pytest.mark.parametrize(("key", "value", "named"), SPEC_CASES, ids=[f"{k}={v}" for k, v, _ in SPEC_CASES])
def test_type_confusion_is_a_clear_error(
    key: str, value: str, named: str, pipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run_cli(["validate", str(pipe), f"{key}={value}"], capsys)
    assert_clear(rc, err, named)


# keys written in the wrong section: the message says where they belong
MISPLACED = [
    ("trainer.max_epochs=2", "stages"),
    ("max_epochs=2", "stages"),
    ("lr=1e-3", "optim.lr"),
    ("stages.source.lr=1e-3", "optim.lr"),
    ("stages.source.batch_size=8", "data.batch_size"),
    ("batch_size=8", "data.batch_size"),
    ("stages.source.accelerator=cpu", "trainer.accelerator"),
    ("data.max_epochs=2", "stages"),
    ("optim.lr=1", "optim"),
    ("stages.source.optim.warmup_steps=3", "schedule.warmup_steps"),
]


@pytest.mark.parametrize(("override", "where"), MISPLACED, ids=[m[0] for m in MISPLACED])
def test_a_key_in_the_wrong_place_names_its_place(
    override: str, where: str, pipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run_cli(["validate", str(pipe), override], capsys)
    assert_clear(rc, err, where)


CONFIG_FAULTS = [
    (["stages.probe.init_from=previus"], ["init_from", "previous"]),
    (["stages.probe.init_from=stage:nope"], ["init_from", "nope"]),
    (["stages.probe.init_from=/no/such/file.ckpt"], ["init_from", "/no/such/file.ckpt"]),
    (["trainer.accelerator=tpux"], ["trainer.accelerator"]),
    (["trainer.strategy=ddpx"], ["trainer.strategy"]),
    (["trainer.precision=99-true"], ["trainer.precision"]),
    (["trainer.devices=abc"], ["trainer.devices"]),
]


@pytest.mark.parametrize(("overrides", "names"), CONFIG_FAULTS, ids=[" ".join(c[0]) for c in CONFIG_FAULTS])
def test_config_values_are_checked_before_anything_runs(
    overrides: list[str], names: list[str], pipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run_cli(["validate", str(pipe), *overrides], capsys)
    assert_clear(rc, err, *names)
    rc, _, err = run_cli(["fit", str(pipe), *SHORT, *overrides], capsys)
    assert_clear(rc, err, *names)
    assert entries(tmp_path / "runs") == [], "fit left files behind"


def test_an_accelerator_this_machine_lacks_fails_before_a_run_exists(
    pipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    rc, _, err = run_cli(["validate", str(pipe), "trainer.accelerator=gpu"], capsys)
    assert rc == 0, err  # validate checks the config, not this machine (a login node has no GPU)
    for acc in ("gpu", "tpu"):
        rc, _, err = run_cli(["fit", str(pipe), *SHORT, f"trainer.accelerator={acc}"], capsys)
        assert_clear(rc, err, "trainer.accelerator")
    assert entries(tmp_path / "runs") == []


# --------------------------------------------------------------------------------------------
# 2. data whose content cannot be used: an error naming the cells, before any run directory
# --------------------------------------------------------------------------------------------
def _frame(n: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    t = np.arange(n)
    return pd.DataFrame(
        {
            "date": pd.date_range("2021-01-01", periods=n, freq="h"),
            "y0": np.sin(2 * np.pi * t / 24) + 0.1 * rng.standard_normal(n),
            "y1": np.cos(2 * np.pi * t / 24) + 0.1 * rng.standard_normal(n),
        }
    )


def _stray_text(path: Path) -> list[str]:
    f = _frame().astype({"y1": object})
    f.loc[17, "y1"] = "n/a?"
    f.to_csv(path, index=False)
    return ["data.target_columns=null"]  # "every numeric column": the stray cell must not drop y1


def _infinite(path: Path) -> list[str]:
    f = _frame()
    f.loc[40, "y0"] = np.inf
    f.to_csv(path, index=False)
    return []


def _parquet_named_csv(path: Path) -> list[str]:
    _frame().to_parquet(path)
    return []


def _binary(path: Path) -> list[str]:
    path.write_bytes(bytes(range(256)) * 64)
    return []


def _extra_field(path: Path) -> list[str]:
    _frame().to_csv(path, index=False)
    text = path.read_text()
    path.write_text(text[: len(text) // 2] + "2021-01-13 01:00:00,0.5")  # a row run into the next one
    return []


def _cut_short(path: Path) -> list[str]:
    _frame().to_csv(path, index=False)
    text = path.read_text().rstrip("\n")
    path.write_text(text[: text.rindex(",")])  # a copy that stopped inside the last row
    return []


DATA_FAULTS = {
    "stray_text_cell": (_stray_text, ["'y1'", "n/a?", "file line 19", "data.na_values"]),
    "infinite_value": (_infinite, ["'y0'", "infinite", "data.nan_policy"]),
    "parquet_named_csv": (_parquet_named_csv, ["parquet", ".parquet"]),
    "binary_garbage": (_binary, ["not a CSV text file", "binary"]),
    "row_with_extra_field": (_extra_field, ["line 301", "has 4 fields", "have 3"]),
    "last_row_cut_short": (_cut_short, ["'y1'", "1 NaN", "data.nan_policy"]),
}


@pytest.mark.parametrize("case", list(DATA_FAULTS))
def test_bad_data_is_named_before_a_run_exists(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make, names = DATA_FAULTS[case]
    data = tmp_path / "bad.csv"
    extra = make(data)
    p = tiny_pipeline(tmp_path / "p.yaml", data, tmp_path / "runs")
    rc, _, err = run_cli(["fit", str(p), *SHORT, *extra], capsys)
    assert_clear(rc, err, "bad.csv", *names)
    assert "latin-1" not in err  # binary is not text in another encoding
    assert entries(tmp_path / "runs") == []


# --------------------------------------------------------------------------------------------
# 3. a finished run whose files are damaged, one at a time (generated from the run's own files)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(series: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("finished")
    p = tiny_pipeline(tmp / "p.yaml", series, tmp / "runs")
    assert cli.main(["fit", str(p), *SHORT]) == 0
    (run,) = (c.parent for c in (tmp / "runs").glob("tiny/*/config.yaml"))
    return run


def _damage(path: Path, mode: str) -> None:
    data = path.read_bytes()
    if mode == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif mode == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, max(len(data), 64), dtype=np.uint8).tobytes())
    elif mode == "empty":
        path.write_bytes(b"")
    elif mode == "wrong_shape":  # well-formed, but not what the file must hold
        path.write_text({".json": "[1, 2]\n", ".yaml": "- 1\n- 2\n", ".csv": "a\n1\n"}.get(path.suffix, "x"))


# every file a finished tiny run holds (a new run file is covered without editing this list)
RUN_FILES = [
    "config.yaml",
    "state.json",
    "summary.json",
    "scaler.json",
    "metrics.csv",
    "checkpoints/source/final.ckpt",
    "checkpoints/probe/final.ckpt",
    "checkpoints/finetune/final.ckpt",
    "plots/loss.png",
]
MODES = {"text": ["truncated", "garbage", "wrong_shape"], "binary": ["truncated", "garbage", "empty"]}


def test_the_run_file_list_is_every_file_of_a_finished_run(finished: Path) -> None:
    assert sorted(str(p.relative_to(finished)) for p in finished.rglob("*") if p.is_file()) == sorted(RUN_FILES)


def _run_cases() -> Iterator[Any]:
    for rel in RUN_FILES:
        kind = "binary" if rel.endswith((".ckpt", ".png")) else "text"
        for mode in MODES[kind]:
            for verb in ("test", "predict", "summarize", "resume"):
                marks = [pytest.mark.slow] if verb == "resume" and mode != "garbage" else []
                yield pytest.param(rel, mode, verb, id=f"{rel}-{mode}-{verb}", marks=marks)


def _verb(verb: str, run: Path, out: Path) -> list[str]:
    return {
        "test": ["test", "--run", str(run)],
        "predict": ["predict", "--run", str(run), "--out", str(out)],
        "summarize": ["summarize", str(run.parent)],
        "resume": ["fit", "--resume", str(run)],
    }[verb]


@pytest.fixture(scope="module")
def pristine(finished: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What each verb prints on the undamaged run (the comparison for a file a verb does not read)."""
    out: dict[str, str] = {}
    for verb in ("test", "predict", "summarize", "resume"):
        tmp = tmp_path_factory.mktemp(f"pristine-{verb}")
        run = tmp / "tiny" / finished.name
        shutil.copytree(finished, run)
        assert cli.main(_verb(verb, run, tmp / "f.csv")) == 0
        out[verb] = _result(verb, run, tmp / "f.csv")
    return out


def _result(verb: str, run: Path, out: Path) -> str:
    if verb == "predict":
        return out.read_text()
    if verb == "resume":
        return json.dumps(json.loads((run / "summary.json").read_text())["final"], sort_keys=True)
    return ""


@pytest.mark.parametrize(("rel", "mode", "verb"), list(_run_cases()))
def test_a_damaged_run_file_is_named_or_not_needed(
    rel: str,
    mode: str,
    verb: str,
    finished: Path,
    pristine: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "tiny" / finished.name
    shutil.copytree(finished, run)
    _damage(run / rel, mode)
    out = tmp_path / "f.csv"
    rc, _, err = run_cli(_verb(verb, run, out), capsys)
    if rc == 0:
        # the verb does not need this file: its result must be exactly the undamaged run's
        assert _result(verb, run, out) == pristine[verb], f"{verb} used damaged {rel} silently"
        return
    assert_clear(rc, err, Path(rel).name)
    assert not out.exists(), "a failed predict left its output behind"


# --------------------------------------------------------------------------------------------
# 4. weights folders: every file of every tiny backbone's save_pretrained, damaged in turn
# --------------------------------------------------------------------------------------------
TINY = [n for n in BACKBONES.list() if n.endswith("_tiny")]


@pytest.mark.parametrize("name", TINY)
def test_a_damaged_weights_folder_is_named(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved = Path(BACKBONES.build(name).save_pretrained(tmp_path / "saved"))
    files = [p for p in sorted(saved.rglob("*")) if p.is_file()]
    assert files
    for f in files:
        for mode in ("truncated", "wrong_shape" if f.suffix == ".json" else "garbage"):
            case = tmp_path / f"{f.name}-{mode}"
            shutil.copytree(saved, case)
            _damage(case / f.relative_to(saved), mode)
            model = BACKBONES.build(name)
            with pytest.raises(SciadaptError) as err:
                model.load_pretrained(str(case))
            assert f.name in str(err.value), f"{name}, {f.name} {mode}: {err.value}"


def test_a_pickle_that_runs_code_is_refused_without_advice_to_run_it(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": pd.Timestamp("2020")}, path)
    from sciadapt.runs import load_weights

    with pytest.raises(SciadaptError) as err:
        load_weights(path)
    msg = str(err.value)
    assert "model.ckpt" in msg and "weights_only=False" not in msg.replace("torch.load(", "")
    assert "safetensors" in msg


# --------------------------------------------------------------------------------------------
# 5. outputs that cannot be written: refused before any work, nothing left behind
# --------------------------------------------------------------------------------------------
def test_an_unwritable_run_dir_is_refused_before_work(
    pipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for target in ("/proc/sciadapt-x", str(a_file), str(a_file / "sub")):
        rc, _, err = run_cli(["fit", str(pipe), *SHORT, f"run_dir={target}"], capsys)
        assert_clear(rc, err, "run_dir")
        assert "stage 1/" not in capsys.readouterr().out
    assert a_file.read_text() == "x"


def test_test_on_a_file_without_the_runs_columns_is_refused(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.csv"
    f = _frame()
    f.rename(columns={"y1": "z1"}).to_csv(other, index=False)
    rc, _, err = run_cli(["test", "--run", str(finished), "--data", str(other)], capsys)
    assert_clear(rc, err, "other.csv", "'y1'", "trained on")
    assert "data.target_columns" not in err  # a key `test` cannot set
    rc, _, err = run_cli(
        ["predict", "--run", str(finished), "--data", str(other), "--out", str(tmp_path / "o.csv")], capsys
    )
    assert_clear(rc, err, "other.csv", "'y1'")


@pytest.fixture(scope="module")
def writers(finished: Path, series: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Every command that writes an output, with ``{out}`` where its output path goes."""
    from tests.data.gridded.make import make_dataset, write_netcdf

    tmp = tmp_path_factory.mktemp("writers")
    weights = BACKBONES.build("ttm_tiny").save_pretrained(tmp / "ttm")
    nc = write_netcdf(make_dataset(n_time=8), tmp / "g.nc")
    return {
        "predict --run": ["predict", "--run", str(finished), "--out", "{out}"],
        "predict --backbone": [
            "predict", "--backbone", "ttm", "--weights", str(weights), "--data", str(series),
            "--target-columns", "y0,y1", "--out", "{out}",
        ],
        "data prepare": ["data", "prepare", "--no-progress", str(nc), "{out}"],
        "schema": ["schema", "quickstart", "--out", "{out}"],
        "merge": ["merge", "soup", str(finished), str(finished), "--out", "{out}"],
        "export": ["export", str(finished), "--format", "safetensors", "--out", "{out}"],
    }  # fmt: skip


def test_every_output_argument_of_the_cli_is_in_the_corpus(writers: dict[str, list[str]]) -> None:
    parser = cli._parser()
    found: set[str] = set()
    for verb, sub in parser._subparsers._group_actions[0].choices.items():  # type: ignore[union-attr]
        subs = [sub]
        if verb == "data":
            subs = [a.choices["prepare"] for a in sub._actions if a.dest == "data_verb"]  # type: ignore[index]
        for s in subs:
            for a in s._actions:
                if a.dest == "out" or "output" in (a.help or "").split("(")[0].lower():
                    found.add(f"{s.prog.split(' ', 1)[1]}:{a.dest}")
    assert found == {"predict:out", "data prepare:inputs", "schema:out", "merge:out", "export:out"}, found
    assert {"predict --run", "predict --backbone", "data prepare", "schema", "merge", "export"} == set(writers)


@pytest.mark.parametrize("writer", ["predict --run", "predict --backbone", "data prepare", "schema", "merge", "export"])
@pytest.mark.parametrize("where", ["/proc/sciadapt-x/o", "{file}/o", "{dir}"])
def test_an_output_that_cannot_be_written_is_refused_before_work(
    writer: str, where: str, writers: dict[str, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    (a_dir / "keep").write_text("k")
    suffix = ".zarr" if writer == "data prepare" else ".csv"
    out = where.format(file=a_file, dir=a_dir)
    out = out if where == "{dir}" else out + suffix
    before = entries(tmp_path)
    rc, _, err = run_cli([a.format(out=out) for a in writers[writer]], capsys)
    assert_clear(rc, err, out)
    assert entries(tmp_path) == before and a_file.read_text() == "x" and (a_dir / "keep").read_text() == "k"
