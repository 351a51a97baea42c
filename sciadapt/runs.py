"""Run directories: ``runs/<pipeline>/<timestamp>/`` and atomic writes into them.

Every file is written to a temporary name in the same folder and renamed into place, so a
killed process leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from sciadapt.errors import CheckpointError, ConfigError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_csv_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite a CSV from rows (the union of keys is the header, in first-seen order)."""
    header: list[str] = []
    for r in rows:
        header.extend(k for k in r if k not in header)
    from io import StringIO

    buf = StringIO()
    w = csv.DictWriter(buf, fieldnames=header)
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(path, buf.getvalue())


def read_csv_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def new_run_dir(root: str, pipeline: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / pipeline
    path = base / stamp
    n = 1
    while path.exists():
        n += 1
        path = base / f"{stamp}-{n}"
    path.mkdir(parents=True)
    return path


def open_run(run: str | Path) -> Path:
    """An existing run directory; error with the fix when it is not one."""
    path = Path(run)
    if not (path / "config.yaml").is_file():
        hint = ""
        if path.is_dir():
            subs = sorted([*path.glob("*/config.yaml"), *path.glob("*/*/config.yaml")])
            if subs:
                hint = f" It contains runs, e.g. {subs[-1].parent}"
        raise ConfigError(f"{path} is not a sciadapt run directory (no config.yaml).{hint}")
    return path


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a Lightning checkpoint or a plain state-dict file, never executing code."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {e}. Is the file complete?") from None
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds no state dict")
    return obj


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Strict load that names every missing, unexpected or mis-shaped tensor."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatches: " + "; ".join(shapes[:5]) + (" ..." if len(shapes) > 5 else ""))
        if missing:
            parts.append(f"missing: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append(f"unexpected: {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else ""))
        raise CheckpointError(
            f"checkpoint {source} does not fit the model ({'; '.join(parts)}). The checkpoint was built "
            "for a different geometry (channels, exogenous columns, context length or horizon): use the "
            "same data and backbone settings as the run that wrote it, or start from scratch"
        )
    model.load_state_dict(state, strict=True)
