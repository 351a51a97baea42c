"""The import floors of DESIGN.md, checked on the source (a rule that matters is checked by a machine)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "sciadapt"


def imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative imports resolved against sciadapt)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def under(names: set[str], *prefixes: str) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


def files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_spec_is_the_ground_floor() -> None:
    assert under(imports(PACKAGE / "spec.py"), "sciadapt") == []


def test_config_imports_no_stage_code() -> None:
    assert under(imports(PACKAGE / "config.py"), "sciadapt.stages", "sciadapt.hpc", "sciadapt.api") == []


@pytest.mark.parametrize("path", files(PACKAGE / "hpc"), ids=lambda p: p.name)
def test_hpc_does_not_import_api(path: Path) -> None:
    assert under(imports(path), "sciadapt.api") == []


@pytest.mark.parametrize("path", files(PACKAGE / "stages"), ids=lambda p: p.name)
def test_stages_import_nothing_from_hpc(path: Path) -> None:
    assert under(imports(path), "sciadapt.hpc", "sciadapt.api") == []


@pytest.mark.parametrize("path", files(REPO / "datamodules"), ids=lambda p: str(p.relative_to(REPO)))
def test_datamodules_import_no_model_task_or_stage_code(path: Path) -> None:
    forbidden = ("backbones", "heads", "tasks", "stages", "peft", "predict", "hpc", "api")
    assert under(imports(path), *(f"sciadapt.{m}" for m in forbidden)) == []
