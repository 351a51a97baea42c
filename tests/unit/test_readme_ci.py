"""README's two setup commands and .ci/run must not drift apart."""

from __future__ import annotations

import re

from tests.conftest import REPO


def _readme_setup() -> list[str]:
    text = (REPO / "README.md").read_text()
    first = re.search(r"```bash\n(.*?)```", text, re.S)
    assert first, "README must open with a bash block of setup commands"
    return [ln.strip() for ln in first.group(1).strip().splitlines()]


def test_readme_opens_with_install_and_test_then_quickstart() -> None:
    text = (REPO / "README.md").read_text()
    setup = _readme_setup()
    assert len(setup) == 2
    assert setup[0].startswith("pip install") and "pytest" in setup[1]
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert blocks[1].strip() == "sciadapt fit quickstart"


def test_ci_runs_readme_commands_verbatim() -> None:
    ci = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()]
    for cmd in _readme_setup():
        assert cmd in ci, f".ci/run must run the README command {cmd!r} verbatim"
    assert any("venv" in ln for ln in ci), ".ci/run must create a fresh virtual environment"
