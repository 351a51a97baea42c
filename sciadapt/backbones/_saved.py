"""The ``save_pretrained`` file of the image, geospatial and weather backbones.

One ``model.safetensors`` per folder, written atomically. Its safetensors metadata says which
sciadapt backbone wrote it (``"sciadapt": "<family>"``) plus what the loader needs to read it back
strictly (Prithvi: the band order of the patch embedding; timm: the architecture). A file without
that entry is an upstream checkpoint and takes the backbone's upstream loading path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor

from sciadapt.errors import CheckpointError
from sciadapt.hub import unreadable_checkpoint
from sciadapt.runs import atomic_write_bytes

WEIGHTS_NAME = "model.safetensors"
FAMILY_KEY = "sciadapt"


def save_state(state: Mapping[str, Tensor], directory: str | Path, family: str, **meta: object) -> Path:
    """Write ``state`` to ``directory/model.safetensors``; return the folder.

    Args:
        state: A ``state_dict()``.
        directory: The folder (created when missing).
        family: The backbone family, stored as the ``sciadapt`` metadata entry.
        **meta: More metadata, each value stored as JSON.
    """
    seen: set[int] = set()
    tensors = {}
    for key, value in state.items():
        t = value.detach().cpu().contiguous()
        # safetensors refuses tensors that share storage (tied weights): give each its own
        if t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[key] = t
    metadata = {"format": "pt", FAMILY_KEY: family, **{k: json.dumps(v) for k, v in meta.items()}}
    folder = Path(directory)
    atomic_write_bytes(folder / WEIGHTS_NAME, save(tensors, metadata=metadata))
    return folder


def saved_metadata(path: Path, family: str) -> dict[str, object] | None:
    """The metadata a :func:`save_state` file of ``family`` carries (values decoded), or None for other files."""
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as err:  # truncated or not a safetensors file
        raise unreadable_checkpoint(path, err) from None
    if raw.get(FAMILY_KEY) != family:
        return None
    out: dict[str, object] = {}
    for key, value in raw.items():
        if key in ("format", FAMILY_KEY):
            continue
        try:
            out[key] = json.loads(value)
        except ValueError as err:
            raise CheckpointError(
                f"{path}: its metadata entry {key!r} is not valid JSON ({err}); the file is damaged. "
                f"Fix: save the {family} backbone again (save_pretrained) or restore the file"
            ) from None
    return out
