"""Process settings made at import (sciadapt._process)."""

from __future__ import annotations

import sys

import pytest

from sciadapt._process import tune_allocator


def test_the_users_allocator_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert tune_allocator() == "user"
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("SCIADAPT_MALLOC", "default")
    assert tune_allocator() == "default"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_the_mmap_threshold_is_fixed_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("SCIADAPT_MALLOC", raising=False)
    assert tune_allocator() in ("set", "not glibc")
