"""Run files, weights files, outputs and config checks: every failure is a SciadaptError naming the
file, key or flag and the fix, raised before anything is written; no training (runs are built by hand)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from sciadapt import api, cli
from sciadapt.config import load_config, trainer_problems
from sciadapt.errors import CheckpointError, ConfigError, OutputError, SciadaptError
from sciadapt.hub import read_state_dict
from sciadapt.predict.verbs import RUN_FLAGS, ZERO_SHOT_FLAGS, rephrase
from sciadapt.runs import Run, check_output_location, save_task
from sciadapt.spec import TrainerSpec
from sciadapt.stages.plan import init_file_problems, plan
from tests.conftest import make_series_csv, tiny_pipeline

TTM_TINY = Path(__file__).resolve().parents[1] / "data" / "ttm_golden" / "tiny"
PEFT_GOLDEN = Path(__file__).resolve().parents[1] / "data" / "peft_golden"


def entries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished three-stage run built by hand (untrained weights): config, final checkpoints, scaler, state."""
    root = tmp_path_factory.mktemp("finished")
    data = make_series_csv(root / "series.csv", n=600)
    spec = load_config(str(tiny_pipeline(root / "p.yaml", data, root / "runs")))
    run = Run.create(spec)
    dm = run.datamodule(-1)
    dm.setup("fit")
    for p in run.plans:
        save_task(run_task(run, p.index, dm.facts()), run.final_ckpt(p.name))
    (run.path / "scaler.json").write_text(json.dumps(dm.scaler_state(), default=lambda o: o.tolist()))
    (run.path / "state.json").write_text(json.dumps({"completed": [p.name for p in run.plans], "status": "done"}))
    (run.path / "summary.json").write_text(json.dumps({"stages": {}, "final": {"model": "x", "mse": 1.0}}))
    return run.path


def run_task(run: Run, index: int, facts: dict[str, Any]) -> Any:
    from sciadapt.runs import task_for_stage

    return task_for_stage(run.spec, run.plans, facts, index)


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    return " ".join(err.split())  # rich wraps long lines


# -- run files --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rel", "text", "verb", "expect"),
    [
        ("state.json", '{"completed": ["so', "resume", "restore it"),
        ("state.json", "[1, 2]", "resume", "not a run state"),
        ("scaler.json", '{"mean": [1,', "predict", "sciadapt fit --resume"),
        ("scaler.json", "[1]", "predict", "not a scaler state"),
        ("config.yaml", "name: [x\n  y: : :", "test", "not valid YAML at line 2"),
        ("config.yaml", "- 1\n- 2\n", "predict", "not a pipeline mapping"),
        ("summary.json", '{"final": ', "summarize", "leave that run out"),
        ("checkpoints/finetune/final.ckpt", None, "test", "final weights of stage 'finetune'"),
    ],
)
def test_a_damaged_run_file_is_named_with_its_fix(
    run: Path, rel: str, text: str | None, verb: str, expect: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = run / rel
    if text is None:
        path.write_bytes(path.read_bytes()[:200])  # truncated
    else:
        path.write_text(text)
    out = run.parent / "forecast.csv"
    argv = {
        "resume": ["fit", "--resume", str(run)],
        "predict": ["predict", "--run", str(run), "--out", str(out)],
        "test": ["test", "--run", str(run)],
        "summarize": ["summarize", str(run)],
    }[verb]
    before = entries(run)
    err = cli_error(argv, capsys)
    assert rel.split("/")[-1] in err and expect in err, err
    assert entries(run) == before and not out.exists()


def test_damaged_resume_checkpoints_fail_before_training(run: Path) -> None:
    state = {"completed": ["source"], "status": "running"}
    (run / "state.json").write_text(json.dumps(state))
    last = run / "checkpoints" / "probe" / "last.ckpt"
    last.write_bytes((run / "checkpoints" / "probe" / "final.ckpt").read_bytes()[:300])
    with pytest.raises(CheckpointError, match="resume checkpoint of stage 'probe': delete it"):
        Run.open(run).preflight()
    last.unlink()
    src = run / "checkpoints" / "source" / "final.ckpt"  # probe starts from it
    src.write_bytes(b"")
    with pytest.raises(CheckpointError, match="source/final.ckpt: the file is empty.*stage 'source'"):
        Run.open(run).preflight()


# -- weights files ------------------------------------------------------------------------------------
def _write(path: Path, kind: str) -> Path:
    good = path.with_name("good.pt")
    torch.save({"state_dict": {"w": torch.ones(3)}}, good)
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[:100])
    elif kind == "garbage":
        path.write_bytes(os.urandom(64).replace(b"\x80", b"\x00"))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "object":
        torch.save({"state_dict": {"w": torch.ones(1)}, "a": object()}, path)
    elif kind == "plain pickle":
        path.write_bytes(pickle.dumps({"w": [1.0]}))
    return path


@pytest.mark.parametrize(
    ("kind", "expect"),
    [
        ("truncated", "damaged or incomplete"),
        ("garbage", "neither a PyTorch checkpoint nor a safetensors file"),
        ("empty", "the file is empty"),
        ("object", "not a weights-only checkpoint.*refers to .*object.*never runs code.*safetensors"),
        ("plain pickle", "not a weights-only checkpoint.*never runs code.*safetensors"),
    ],
)
def test_unreadable_weights_say_what_is_wrong_never_to_unpickle(tmp_path: Path, kind: str, expect: str) -> None:
    path = _write(tmp_path / "w.ckpt", kind)
    with pytest.raises(CheckpointError, match=expect) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert msg.startswith(f"cannot read checkpoint {path}")
    assert "weights_only" not in msg and "safe_globals" not in msg and "\n" not in msg


def test_truncated_safetensors_and_a_damaged_save_pretrained_header(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from sciadapt.backbones._saved import saved_metadata

    good = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(3)}, str(good), metadata={"sciadapt": "timm", "arch": "{bad"})
    with pytest.raises(CheckpointError, match="metadata entry 'arch' is not valid JSON"):
        saved_metadata(good, "timm")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-4])
    for reader in (lambda: read_state_dict(cut), lambda: saved_metadata(cut, "timm")):
        with pytest.raises(CheckpointError, match="cut.safetensors: it is damaged or incomplete"):
            reader()


@pytest.mark.parametrize("text", ['{"context_length": 6', "[1]", b"\xff\xfe"])
def test_a_damaged_weights_config_json_is_named(tmp_path: Path, text: str | bytes) -> None:
    from sciadapt.backbones._moment_config import read_config
    from sciadapt.backbones._ttm_checkpoints import read_checkpoint_config

    folder = tmp_path / "ttm"
    shutil.copytree(TTM_TINY, folder)
    cfg = folder / "config.json"
    cfg.write_bytes(text) if isinstance(text, bytes) else cfg.write_text(text)
    for read in (lambda: read_checkpoint_config(folder), lambda: read_config(cfg)):
        with pytest.raises(CheckpointError, match="config.json.*download it again"):
            read()


@pytest.mark.parametrize(
    ("rel", "text", "expect"),
    [
        ("adapter_config.json", '{"peft_type": "LO', "cannot read"),
        ("adapter_config.json", "[1]", "holds list"),
        ("adapter_config.json", '{"peft_type": "LORA"}', "KeyError: 'r'"),
        ("adapter_model.safetensors", None, "damaged or incomplete"),
    ],
)
def test_a_damaged_adapter_is_named(tmp_path: Path, rel: str, text: str | None, expect: str) -> None:
    from sciadapt.peft import core
    from tests.unit.test_peft_lora import golden_base

    d = tmp_path / "adapter"
    shutil.copytree(PEFT_GOLDEN / "adapter", d)
    if text is None:
        (d / rel).write_bytes((d / rel).read_bytes()[:-40])
    else:
        (d / rel).write_text(text)
    with pytest.raises(CheckpointError, match=expect) as err:
        core.load_adapter(golden_base(), d)
    assert rel in str(err.value)


# -- outputs ----------------------------------------------------------------------------------------
def test_output_locations_are_checked_creating_nothing(tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        ("/proc/sciadapt-x", True, "cannot write in /proc"),
        (str(a_file), True, "is a file, but a folder is needed"),
        (str(a_file / "sub" / "o.csv"), False, "a_file is a file"),
        (str(tmp_path), False, "is a folder, but a file name is needed"),
    ]
    for path, folder, expect in cases:
        with pytest.raises(OutputError, match=expect) as err:
            check_output_location(path, "--out", folder=folder)
        assert f"--out={path}" in str(err.value)
    assert check_output_location(tmp_path / "new" / "deeper", "run_dir", folder=True) == tmp_path / "new" / "deeper"
    assert entries(tmp_path) == ["a_file"]


def test_predict_out_is_checked_before_work(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = cli_error(["predict", "--run", str(run), "--out", "/proc/sciadapt-x/f.csv"], capsys)
    assert "--out=/proc/sciadapt-x/f.csv: cannot write in /proc" in err
    out = tmp_path / "ok" / "f.csv"
    assert cli.main(["predict", "--run", str(run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["f.csv", "f.png"]


def test_data_prepare_checks_its_store_and_cleans_a_killed_runs_leftovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sciadapt.datamodules.gridded import prepare_store
    from tests.data.gridded.make import make_dataset, write_netcdf

    nc = write_netcdf(make_dataset(n_time=8), tmp_path / "g.nc")
    with pytest.raises(OutputError, match="output store /proc/x.zarr: cannot write in /proc"):
        prepare_store(str(nc), "/proc/x.zarr", progress=False)
    stale = tmp_path / "out.zarr.tmp-999999999"
    (stale / "t2m").mkdir(parents=True)
    with caplog.at_level("WARNING"):
        out = prepare_store(str(nc), str(tmp_path / "out.zarr"), progress=False)
    assert out.is_dir() and not stale.exists()
    assert str(stale) in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.nc", "out.zarr"]


# -- config checks ------------------------------------------------------------------------------------
def test_trainer_names_are_checked_at_validate_and_the_machine_at_fit() -> None:
    assert not trainer_problems(TrainerSpec(accelerator="cuda", devices=4, strategy="ddp", precision="bf16-mixed"))
    cases = {
        "accelerator": ("tpux", "did you mean 'tpu'"),
        "strategy": ("dpp", "did you mean 'ddp'"),
        "precision": ("17-true", "Valid: .*16-mixed"),
        "devices": ("abc", "a count .* or auto"),
    }
    for key, (value, expect) in cases.items():
        (problem,) = trainer_problems(TrainerSpec(**{key: value}))
        assert problem.startswith(f"trainer.{key}:")
        assert __import__("re").search(expect, problem), problem
    if not torch.cuda.is_available():
        (problem,) = trainer_problems(TrainerSpec(accelerator="gpu"), here=True)
        assert "not available on this machine" in problem and "available here: cpu" in problem
    (problem,) = trainer_problems(TrainerSpec(accelerator="cpu", strategy="fsdp"), here=True)
    assert problem.startswith("trainer: Lightning cannot run") and "fsdp" in problem


def test_an_accelerator_that_is_not_here_fails_before_a_run_dir(tmp_path: Path) -> None:
    from sciadapt.stages.runner import PipelineRunner

    data = make_series_csv(tmp_path / "s.csv", n=400)
    spec = load_config(str(tiny_pipeline(tmp_path / "p.yaml", data, tmp_path / "runs")), ["trainer.accelerator=tpu"])
    with pytest.raises(ConfigError, match="trainer.accelerator: 'tpu' is not available on this machine"):
        PipelineRunner.create(spec)
    assert not (tmp_path / "runs").exists()


def test_init_from_grammar(tmp_path: Path) -> None:
    data = make_series_csv(tmp_path / "s.csv", n=400)
    pipe = str(tiny_pipeline(tmp_path / "p.yaml", data, tmp_path / "runs"))
    with pytest.raises(ConfigError, match=r"probe\).init_from: 'previus' is not a checkpoint file.*'previous'"):
        api.load_pipeline(pipe, ["stages.probe.init_from=previus"])
    spec = load_config(pipe, [f"stages.probe.init_from={tmp_path}", "stages.finetune.init_from=nowhere/x.ckpt"])
    problems = init_file_problems(spec)
    assert len(problems) == 2 and "is a folder" in problems[0] and "x.ckpt' is not a checkpoint file" in problems[1]
    assert plan(spec)[1].init_file == str(tmp_path)  # a finished run reopens whatever its start file became
    weights = tmp_path / "w.ckpt"
    torch.save({"state_dict": {}}, weights)
    assert not init_file_problems(load_config(pipe, [f"stages.probe.init_from={weights}"]))
    with pytest.raises(ConfigError, match="pretrained, but the stage's backbone.weights is not set"):
        plan(load_config(pipe, ["stages.probe.init_from=pretrained"]))


def test_validate_catches_config_errors_fit_would_hit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_series_csv(tmp_path / "s.csv", n=400)
    pipe = str(tiny_pipeline(tmp_path / "p.yaml", data, tmp_path / "runs"))
    assert "did you mean 'tpu'" in cli_error(["validate", pipe, "trainer.accelerator=tpux"], capsys)
    assert "did you mean 'previous'" in cli_error(["validate", pipe, "stages.probe.init_from=previus"], capsys)
    assert cli.main(["validate", pipe, "trainer.accelerator=gpu"]) == 0  # a login node validates GPU pipelines


# -- verbs -------------------------------------------------------------------------------------------
def test_messages_name_what_the_verb_accepts() -> None:
    msg = "f.csv: has 3 rows; lower data.context_length or set data.min_context (check data.path)"
    zero = rephrase(msg, "sciadapt predict --backbone", ZERO_SHOT_FLAGS, retrain=False)
    assert "--context-length" in zero and "check --data" in zero and "cannot set data.min_context" in zero
    run = rephrase(msg, "sciadapt test --run", RUN_FLAGS, retrain=True)
    assert "keeps the run's data.context_length, data.min_context" in run and "sciadapt fit <pipeline>" in run
    assert rephrase("no keys here", "v", RUN_FLAGS, True) == "no keys here"


def test_predict_backbone_that_is_not_zero_shot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_series_csv(tmp_path / "s.csv", n=300)
    argv = ["predict", "--backbone", "nhits", "--weights", str(TTM_TINY), "--data", str(data), "--out", "o.csv"]
    err = cli_error(argv, capsys)
    assert "nhits is not a zero-shot backbone (those are:" in err and "ttm" in err and "moment" in err


def test_zero_shot_config_json_damaged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ttm"
    shutil.copytree(TTM_TINY, folder)
    (folder / "config.json").write_text("[1]")
    data = make_series_csv(tmp_path / "s.csv", n=300)
    out = tmp_path / "o.csv"
    argv = ["predict", "--backbone", "ttm", "--weights", str(folder), "--data", str(data), "--out", str(out)]
    err = cli_error(argv, capsys)
    assert "config.json holds list" in err and "download it again" in err and not out.exists()


def test_a_sweep_checks_every_point_before_the_first_trains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_series_csv(tmp_path / "s.csv", n=400)
    pipe = str(tiny_pipeline(tmp_path / "p.yaml", data, tmp_path / "runs"))
    argv = ["submit", pipe, "--sweep", f"data.path={data},{tmp_path / 'missing.csv'}"]
    err = cli_error(argv, capsys)
    assert "sweep point data.path=" in err and "missing.csv" in err and "nothing was run" in err
    assert not (tmp_path / "runs").exists()
    err = cli_error(["submit", pipe, "run_dir=/proc/sciadapt-x", "--sweep", "seed=1,2"], capsys)
    assert "run_dir=/proc/sciadapt-x: cannot write in /proc" in err


def test_every_cli_argument_has_help() -> None:
    import argparse

    missing = []

    def walk(parser: argparse.ArgumentParser, prog: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{prog} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{prog} {action.dest}")

    walk(cli._parser(), "sciadapt")
    assert not missing


def test_errors_keep_their_class_and_exit_status() -> None:
    from sciadapt.predict.verbs import verb_keys

    with pytest.raises(CheckpointError) as err, verb_keys("sciadapt test --run", RUN_FLAGS):
        raise CheckpointError("bad data.path")
    assert str(err.value) == "bad --data" and isinstance(err.value, SciadaptError)
