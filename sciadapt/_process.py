"""Process-wide allocator setting for rollout training (made when a rollout task is built).

glibc's ``malloc`` serves large blocks from ``mmap`` only up to a threshold that grows each time
such a block is freed; after a few steps of a checkpointed rollout (every step recomputed in
backward) the threshold has grown past the activation blocks, which then stay in the heap once
freed. A 12-step rollout then peaks at several times a 1-step one (measured: 1,754 MB against
347 MB, README "Gridded weather"). A fixed threshold of 128 KiB, what
``MALLOC_MMAP_THRESHOLD_=131072`` sets, returns them to the system as they are freed. A user's own
``MALLOC_MMAP_THRESHOLD_`` wins; ``SCIADAPT_MALLOC=default`` keeps glibc's behaviour.

It is set only for rollouts (:class:`sciadapt.tasks.rollout.RolloutTask`), not at import: every large
block then costs an ``mmap``/``munmap`` pair and fresh page faults, which measured twice the CPU time of
TTM and MOMENT inference and fine-tuning against their upstream packages (benchmarks/ltsf_tsfm.py
--peers; ratios back to 1.0 with glibc's default). ``mallopt`` may be called at any time; blocks
allocated before keep their place, later frees follow the new threshold.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
MMAP_THRESHOLD_BYTES = 128 * 1024


_done: str | None = None


def tune_allocator() -> str:
    """Fix glibc's mmap threshold once per process (see the module docstring); returns what was done."""
    global _done
    if _done is None:
        _done = _tune()
    return _done


def _tune() -> str:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return "user"  # glibc read the user's setting at start-up
    if os.environ.get("SCIADAPT_MALLOC") == "default":
        return "default"
    if not sys.platform.startswith("linux"):
        return "not glibc"
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return "not glibc"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return "set" if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 else "refused"
