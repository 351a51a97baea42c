"""The allocator setting for rollouts (sciadapt._process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sciadapt import _process


def test_the_users_allocator_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert _process._tune() == "user"
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("SCIADAPT_MALLOC", "default")
    assert _process._tune() == "default"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_the_mmap_threshold_is_fixed_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("SCIADAPT_MALLOC", raising=False)
    assert _process._tune() in ("set", "not glibc")


def test_only_a_rollout_task_sets_it() -> None:
    """Importing sciadapt or building another task leaves glibc alone (a fixed threshold doubles their
    CPU time); building a rollout task sets it, once per process."""
    code = (
        "import sciadapt, sciadapt._process as p\n"
        "from sciadapt.registry import BACKBONES, HEADS\n"
        "from sciadapt.tasks.forecasting import ForecastingTask\n"
        "ForecastingTask(BACKBONES.build('nhits_tiny'), HEADS.build('point', in_features=4, horizon=24))\n"
        "assert p._done is None, p._done\n"
        "from sciadapt.tasks.rollout import RolloutTask\n"
        "import torch\n"
        "class B(torch.nn.Module):\n"
        "    def forward_features(self, x):\n"
        "        return x\n"
        "RolloutTask(B(), torch.nn.Identity(), ['t'], [1.0], [1.0])\n"
        "first = p._done\n"
        "assert first in ('set', 'not glibc', 'refused'), first\n"
        "RolloutTask(B(), torch.nn.Identity(), ['t'], [1.0], [1.0])\n"
        "assert p._done == first\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "SCIADAPT_MALLOC")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
