"""The config verbs stay cheap: ``validate``, ``list``, ``schema`` and ``--help`` import no torch, because
builder signatures come from :mod:`sciadapt.index`; the index reads every built-in builder exactly as
importing it does; every verb's help ends in examples."""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sciadapt import index
from sciadapt.cli import _parser
from sciadapt.config import LIGHTNING_NAMES, _lightning_choices
from sciadapt.registry import BACKBONES, KINDS, Registry
from tests.conftest import REPO

# what importing a component module costs seconds for
HEAVY = ("torch", "lightning", "torchgeo", "gluonts", "timm")

CONFIG_VERBS = textwrap.dedent(
    """
    import re, sys
    from sciadapt.cli import main
    from sciadapt.config import bundled_pipelines
    from sciadapt.errors import ConfigError
    from sciadapt.api import load_pipeline

    assert main(["validate", "quickstart"]) == 0
    assert main(["validate", "quickstart", "trainer.max_epochs=3"]) == 2  # the hint reads every builder
    assert main(["validate", "quickstart", "stages.*.peft.method=lora", "task.name=rollout"]) == 2
    assert main(["list"]) == 0
    assert main(["schema", "--out", sys.argv[1]]) == 0
    try:
        main(["fit", "--help"])
    except SystemExit as e:
        assert e.code == 0
    for name in bundled_pipelines():  # every bundled pipeline, with the values it leaves to the user
        try:
            load_pipeline(name, [])
        except ConfigError as e:
            keys = [m.group(1) for p in e.problems if (m := re.match(r"(\\S+): required, give it", p))]
            assert len(keys) == len(e.problems), e.problems
            load_pipeline(name, [f"{k}=placeholder" for k in keys])
    heavy = sorted(m for m in HEAVY if m in sys.modules)
    assert not heavy, f"config verbs imported {heavy}"

    # building imports the one module that registers the builder, not the others of its package
    from sciadapt.registry import BACKBONES
    BACKBONES.get("nhits_tiny")
    assert "sciadapt.backbones.nhits" in sys.modules
    others = [m for m in ("sciadapt.backbones.prithvi", "sciadapt.backbones.graphcast") if m in sys.modules]
    assert not others, others
    print("fine")
    """
)


def test_config_verbs_import_no_torch(tmp_path: Path) -> None:
    code = f"HEAVY = {HEAVY!r}\n{CONFIG_VERBS}"
    out = tmp_path / "schema.json"
    done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.rstrip().endswith("fine"), done.stdout[-2000:] + done.stderr[-3000:]
    assert json.loads(out.read_text())["title"] == "sciadapt pipeline"


@pytest.mark.parametrize("registry", list(KINDS.values()), ids=lambda r: r.kind)
def test_the_index_reads_every_builder_as_importing_it_does(registry: Registry[object]) -> None:
    """Static signatures (names, kinds, defaults, evaluated annotations), docstrings and a task's
    BASELINES equal the imported builder's; a builder the index cannot read would make `validate`
    import torch again."""
    assert registry.variable is not None
    entries = index.index().entries[registry.variable]
    assert sorted(entries) == registry.list()
    for name, entry in entries.items():
        try:
            static = index.describe(entry, load=lambda: pytest.fail("the index fell back to importing"))
        except index.NotStatic as e:
            pytest.fail(
                f"{registry.kind} {name}: the index cannot read its builder without importing {entry.module}: {e}. "
                "Annotate with typing, sciadapt.spec markers and aliases of sciadapt modules (sciadapt/index.py)"
            )
        real = index.describe_object(registry.get(name))
        where = f"{registry.kind} {name}"
        assert list(static.signature.parameters) == list(real.signature.parameters), where
        for param, s in static.signature.parameters.items():
            r = real.signature.parameters[param]
            assert (s.kind, s.default, type(s.default)) == (r.kind, r.default, type(r.default)), f"{where}.{param}"
            if param not in index.INJECTED:
                assert s.annotation == r.annotation, f"{where}.{param}"
        assert (static.doc, static.init_doc, static.is_class) == (real.doc, real.init_doc, real.is_class), where
        if registry.kind == "task":
            assert static.built_attribute("BASELINES") == real.built_attribute("BASELINES"), where


def test_register_lines_the_index_cannot_read_make_it_import_the_module(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """
        from sciadapt.registry import BACKBONES, HEADS as H

        @BACKBONES.register("a")
        def build_a(x: int = 1) -> int:
            return x

        H.register("b")(build_a)
        """
    )
    path = tmp_path / "mod.py"
    found, complete = index._Source("pkg.mod", path, text).registrations()
    assert [(e.registry, e.name, e.target) for e in found] == [("BACKBONES", "a", "build_a"), ("HEADS", "b", "build_a")]
    assert complete
    dynamic = text + "for n in ('c', 'd'):\n    BACKBONES.register(n)(build_a)\n"
    assert index._Source("pkg.mod", path, dynamic).registrations()[1] is False


def test_a_builder_registered_from_python_is_listed_and_described(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BACKBONES, "_items", dict(BACKBONES._items))

    def build_mine(width: int = 3) -> object:
        """Mine."""
        return object()

    BACKBONES.register("mine_for_a_test")(build_mine)
    assert "mine_for_a_test" in BACKBONES and "mine_for_a_test" in BACKBONES.list()
    assert list(BACKBONES.signature("mine_for_a_test").parameters) == ["width"]
    assert BACKBONES.get("mine_for_a_test") is build_mine


def test_lightning_names_taken_without_lightning_are_lightnings() -> None:
    choices = _lightning_choices()
    for key, names in LIGHTNING_NAMES.items():
        assert names <= set(choices[key]), (key, sorted(names - set(choices[key])))


def _verbs(parser: argparse.ArgumentParser, prefix: str = "sciadapt") -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _verbs(sub, f"{prefix} {name}")
    return out


def test_every_verb_help_ends_in_two_examples() -> None:
    verbs = _verbs(_parser())
    named = {v for v, _ in verbs}
    assert {"sciadapt fit", "sciadapt validate", "sciadapt schema", "sciadapt data prepare"} <= named
    for verb, parser in verbs:
        text = parser.format_help()
        assert "examples:\n" in text, verb
        block = text.split("examples:\n", 1)[1].splitlines()
        examples = [line.strip() for line in block if line.startswith("  sciadapt ")]
        assert len(examples) >= 2, (verb, block)
        if verb != "sciadapt":
            assert all(e.startswith(verb) for e in examples), (verb, examples)


def test_builder_info_of_a_class_and_a_function() -> None:
    info = index.describe_object(BACKBONES.get("nhits_tiny"))
    assert not info.is_class and info.doc.startswith("A tiny N-HiTS")
    assert info.signature.parameters["feature_dim"].default == 4
    assert inspect.Parameter.empty not in [p.annotation for p in info.signature.parameters.values()]
