"""Side virtual environments for the peer libraries the benchmarks compare against.

The peers are never dependencies of sciadapt: each lives in its own venv under
``benchmarks/peers/.venvs/<name>`` (git-ignored), built from the fully pinned list
``benchmarks/peers/<name>.txt``, and the benchmarks talk to it through a subprocess.

* ``neuralforecast``: Nixtla's neuralforecast and everything it pulls in.
* ``tsfm``: IBM's granite-tsfm (TTM) and AutonLab's momentfm (MOMENT). Both pin an old stack
  (``torch<2.12``; ``transformers==4.33.3``, ``numpy==1.25.2``) that conflicts with ours, so the list
  holds only what their imports need, chosen by importing them.

Every list is a complete freeze and is installed with ``pip install --no-deps``, so the environment
is exactly the list whatever the resolver would pick today. Torch is installed first, on its own and
with its dependencies: by default the version the list pins (the CPU build, 2.13.0, that lies on this
machine's disk), or the caller's version (``torch_version``) so that a timing ratio compares the two
implementations rather than two torch builds.

A stamp file in the venv holds a hash of the list, the torch version and the Python version; a venv
whose stamp matches is reused, any other is rebuilt from scratch.

Build (or check) from the command line, with the install time and size::

    python benchmarks/peers/envs.py neuralforecast tsfm
    python benchmarks/peers/envs.py tsfm --torch 2.14.1
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent
VENVS_DIR = PEERS_DIR / ".venvs"
ENVIRONMENTS = ("neuralforecast", "tsfm")
STAMP = ".sciadapt-peer-stamp.json"


class PeerEnvError(RuntimeError):
    """A peer environment could not be built (pip failed, no network, bad list)."""


def requirements(name: str) -> list[str]:
    """The pinned lines of ``<name>.txt`` (comments and blank lines dropped)."""
    if name not in ENVIRONMENTS:
        raise PeerEnvError(f"unknown peer environment {name!r}; expected one of {', '.join(ENVIRONMENTS)}")
    path = PEERS_DIR / f"{name}.txt"
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def _split_torch(lines: list[str]) -> tuple[str | None, list[str]]:
    torch_pin = None
    rest = []
    for line in lines:
        if line.lower().startswith("torch=="):
            torch_pin = line.split("==", 1)[1]
        else:
            rest.append(line)
    return torch_pin, rest


def public_version(version: str) -> str:
    """``2.14.1+cu130`` -> ``2.14.1``: pip then takes whichever build of that release it finds
    (here the CPU file on disk for 2.13.0, PyPI's default build otherwise)."""
    return version.split("+", 1)[0]


def caller_torch_version() -> str | None:
    """The torch release of the running interpreter, or None without torch."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return public_version(version("torch"))
    except PackageNotFoundError:
        return None


def venv_dir(name: str) -> Path:
    return VENVS_DIR / name


def python_path(name: str) -> Path:
    """Where the environment's interpreter is (whether or not it exists yet)."""
    return venv_dir(name) / "bin" / "python"


def _stamp(name: str, torch_version: str, rest: list[str]) -> dict[str, object]:
    digest = hashlib.sha256("\n".join([f"torch=={torch_version}", *rest]).encode()).hexdigest()
    return {
        "name": name,
        "requirements_sha256": digest,
        "torch": torch_version,
        "python": ".".join(map(str, sys.version_info[:3])),
    }


def _read_stamp(name: str) -> dict[str, object] | None:
    path = venv_dir(name) / STAMP
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _same(stamp: dict[str, object] | None, want: dict[str, object]) -> bool:
    if stamp is None:
        return False
    return all(stamp.get(k) == v for k, v in want.items())


@contextmanager
def _lock(name: str) -> Iterator[None]:
    """One builder per environment at a time (other benchmark processes wait)."""
    VENVS_DIR.mkdir(parents=True, exist_ok=True)
    with open(VENVS_DIR / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pip(python: Path, args: list[str], what: str, name: str) -> None:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        noise = "WARNING: Location"  # pip's notes about local index folders that lack a package
        out = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip() and not ln.startswith(noise)]
        tail = "\n".join(out[-15:])
        offline = any(
            s in tail
            for s in ("NewConnectionError", "Temporary failure in name resolution", "No matching distribution")
        )
        hint = (
            "pip could not reach a package index (offline?). The peer environments need PyPI once; "
            "after that they are reused from benchmarks/peers/.venvs/."
            if offline
            else "see pip's output above."
        )
        raise PeerEnvError(
            f"building the peer environment {name!r} failed while installing {what} "
            f"(exit {proc.returncode}): {hint}\n  command: {' '.join(cmd)}\n{tail}"
        )


def ensure_env(name: str, torch_version: str | None = None, verbose: bool = False) -> Path:
    """Create (or reuse) the side venv ``name`` and return the path of its ``python``.

    Args:
        name: ``"neuralforecast"`` or ``"tsfm"``.
        torch_version: Install this torch release instead of the list's pin (e.g. the caller's,
            from :func:`caller_torch_version`); a local label such as ``+cu130`` is dropped.
        verbose: Print what is being built and how long it took.

    Raises:
        PeerEnvError: If pip fails (no network, a pin that no index serves) or the list is unknown.
    """
    pinned_torch, rest = _split_torch(requirements(name))
    torch_release = public_version(torch_version) if torch_version else pinned_torch
    if torch_release is None:
        raise PeerEnvError(f"{name}.txt pins no torch and no torch_version was given")
    want = _stamp(name, torch_release, rest)
    if _same(_read_stamp(name), want) and python_path(name).exists():
        return python_path(name)
    with _lock(name):
        if _same(_read_stamp(name), want) and python_path(name).exists():  # built while we waited
            return python_path(name)
        root = venv_dir(name)
        if root.exists():
            shutil.rmtree(root)
        if verbose:
            print(f"peers: building {root} (torch {torch_release}, {len(rest)} pinned packages) ...", flush=True)
        start = time.perf_counter()
        try:
            subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as err:
            raise PeerEnvError(f"python -m venv {root} failed: {err.stderr.strip()}") from err
        py = python_path(name)
        _pip(py, [f"torch=={torch_release}"], f"torch=={torch_release}", name)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
            handle.write("\n".join(rest) + "\n")
            listing = handle.name
        try:
            _pip(py, ["--no-deps", "-r", listing], f"the {len(rest)} packages of {name}.txt", name)
        finally:
            os.unlink(listing)
        seconds = time.perf_counter() - start
        (root / STAMP).write_text(json.dumps({**want, "install_seconds": round(seconds, 1)}, indent=1) + "\n")
        if verbose:
            print(f"peers: {name} ready in {seconds:.0f} s, {_size(root) / 2**30:.2f} GiB", flush=True)
    return py


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = Path(root) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def describe(name: str) -> dict[str, object]:
    """The stamp of a built environment plus its size on disk (empty dict if not built)."""
    stamp = _read_stamp(name)
    if stamp is None:
        return {}
    return {**stamp, "size_gib": round(_size(venv_dir(name)) / 2**30, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build or check the peer benchmark environments.")
    p.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(ENVIRONMENTS)} (default: all)")
    p.add_argument("--torch", help="torch release to install instead of the pinned one (e.g. 2.14.1)")
    p.add_argument("--match-torch", action="store_true", help="install the torch release of this interpreter")
    args = p.parse_args(argv)
    torch_version = args.torch or (caller_torch_version() if args.match_torch else None)
    status = 0
    for name in args.names or ENVIRONMENTS:
        try:
            ensure_env(name, torch_version, verbose=True)
        except PeerEnvError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
            continue
        print(json.dumps(describe(name)))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
