"""Where weights come from: a local file or folder, or ``hf://org/repo[@revision]`` on the Hugging Face Hub.

Every loader goes through :func:`resolve_folder` / :func:`resolve_file` and :func:`read_state_dict`,
so hub access, the offline message and the safe readers (safetensors first, ``torch.load`` only with
``weights_only=True``) exist once.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sciadapt.errors import CheckpointError

HF_SCHEME = "hf://"
#: Weight files in the order a folder is searched: safetensors wins over pickled torch files.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_json_object(path: Path, holds: str, fix: str) -> dict[str, Any]:
    """A checkpoint folder's JSON settings file (``config.json``, ``adapter_config.json``).

    Args:
        path: The file.
        holds: What the object is, for the message (e.g. "a JSON object of TTM settings").
        fix: The end of every message: what the user should do.

    Raises:
        CheckpointError: Naming the file when it is unreadable, not JSON, not UTF-8 or not an object.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: bad JSON or not UTF-8
        raise CheckpointError(f"cannot read {path}: {err}. {fix}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds {type(data).__name__}, not {holds}. {fix}")
    return data


@dataclass(frozen=True)
class HubRef:
    """A parsed ``hf://org/repo[/subfolder][@revision]`` reference."""

    repo_id: str
    revision: str | None = None
    subfolder: str | None = None

    def __str__(self) -> str:
        sub = f"/{self.subfolder}" if self.subfolder else ""
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HF_SCHEME}{self.repo_id}{sub}{rev}"


def is_hub(source: str | os.PathLike[str]) -> bool:
    return str(source).startswith(HF_SCHEME)


def parse_hub(source: str) -> HubRef:
    """``hf://org/repo@rev`` -> HubRef; the revision is a branch, tag or commit."""
    body = source[len(HF_SCHEME) :]
    revision = None
    if "@" in body:
        body, revision = body.rsplit("@", 1)
        if not revision:
            raise CheckpointError(f"{source!r}: empty revision after '@' (write hf://org/repo@<branch|tag|commit>)")
    parts = [p for p in body.split("/") if p]
    if len(parts) < 2:
        raise CheckpointError(f"{source!r}: expected hf://<org>/<repo>[/<subfolder>][@<revision>]")
    return HubRef("/".join(parts[:2]), revision, "/".join(parts[2:]) or None)


def _download(ref: HubRef, patterns: Sequence[str]) -> Path:
    """Snapshot the files matching ``patterns`` into the local hub cache and return the folder."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - huggingface_hub is a core dependency
        raise CheckpointError(f"{ref}: huggingface_hub is not installed (pip install huggingface_hub)") from err
    allow = [f"{ref.subfolder}/{p}" for p in patterns] if ref.subfolder else list(patterns)
    try:
        folder = Path(snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=allow))
    except Exception as err:  # offline, DNS, 404, gated repo: hub raises many types
        name = type(err).__name__
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise CheckpointError(
            f"cannot fetch {ref} from the Hugging Face Hub ({name}: {str(err).splitlines()[0] if str(err) else ''}). "
            + ("HF_HUB_OFFLINE is set and the files are not in the local cache. " if offline else "")
            + "Without network access, download it where there is one "
            + f"(hf download {ref.repo_id}"
            + (f" --revision {ref.revision}" if ref.revision else "")
            + " --local-dir <dir>) and pass the local folder instead of the hf:// reference."
        ) from None
    return folder / ref.subfolder if ref.subfolder else folder


def resolve_folder(
    source: str | os.PathLike[str], required: Sequence[str], optional: Sequence[str] = (), what: str = "weights"
) -> Path:
    """A local folder holding ``required`` (and, when present, ``optional``) files.

    Args:
        source: A local folder or ``hf://org/repo[/subfolder][@revision]``.
        required: File names that must exist in the folder (e.g. ``["config.json"]``).
        optional: File names fetched from the hub when they exist (e.g. the weight files).
        what: What the folder holds, for the messages ("weights", "adapter").

    Raises:
        CheckpointError: The folder or a required file is missing, or the hub cannot be reached.
    """
    src = str(source)
    if is_hub(src):
        ref = parse_hub(src)
        folder = _download(ref, [*required, *optional])
        where = str(ref)
    else:
        folder = Path(src).expanduser()
        where = str(folder)
        if not folder.exists():
            raise CheckpointError(f"{what} {where!r} not found: give a local folder or hf://org/repo@revision")
        if not folder.is_dir():
            raise CheckpointError(f"{what} {where!r} is a file; this loads a folder with {', '.join(required)}")
    missing = [f for f in required if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(f"{where} has no {', '.join(missing)} (expected files: {', '.join(required)})")
    return folder


def weights_file(folder: Path, names: Sequence[str] = WEIGHT_FILES) -> Path:
    """The first existing weight file of ``names`` in ``folder`` (safetensors first)."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder} holds no weights: expected one of {', '.join(names)}")


def resolve_file(source: str | os.PathLike[str], default_names: Sequence[str] = WEIGHT_FILES) -> Path:
    """A local weight file: ``source`` itself, the first weight file in a folder, or one fetched from the hub."""
    src = str(source)
    if is_hub(src):
        return weights_file(resolve_folder(src, [], default_names), default_names)
    path = Path(src).expanduser()
    if path.is_dir():
        return weights_file(path, default_names)
    if not path.is_file():
        raise CheckpointError(f"weights {src!r} not found: give a file, a folder or hf://org/repo@revision")
    return path


def read_state_dict(
    path: Path, prefix: str | None = None, unwrap: bool = True, fix: str | None = None
) -> dict[str, Tensor]:
    """A flat ``name -> tensor`` mapping from a safetensors or torch file, never executing code.

    Args:
        path: A ``.safetensors`` file or a torch file (``.pt``, ``.pth``, ``.bin``, ``.ckpt``).
        prefix: Keep only the entries under this prefix, with the prefix removed.
        unwrap: Unwrap a Lightning checkpoint (``{"state_dict": ...}``) or a ``{"model": ...}``
            wrapper; without it the file must hold the flat mapping itself.
        fix: What to do about a file that cannot be read, when the caller knows better than the
            generic advice (a run's own checkpoint: restore it or train again).

    Raises:
        CheckpointError: The file is missing, of an unsupported format, unreadable, or not a state dict.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found (expected a local file)")
    suffix = path.suffix.lower()
    if suffix != ".safetensors" and suffix not in _TORCH_SUFFIXES:
        raise CheckpointError(
            f"unsupported checkpoint format {path}: use .safetensors or one of {', '.join(_TORCH_SUFFIXES)}"
        )
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            with warnings.catch_warnings():  # torch warns about the pickles it then refuses
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, foreign or pickled-code files
        raise unreadable_checkpoint(path, err, fix) from None
    if unwrap and isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if unwrap and isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    state = {str(k): v for k, v in obj.items()}
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _head(path: Path, n: int = 8) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _refused_global(err: BaseException) -> str | None:
    """The Python object a weights-only load refused (``builtins.object``), or ``""`` for a pickle
    that refers to code in another way; None when ``err`` is not a refusal."""
    import pickle

    if not isinstance(err, pickle.UnpicklingError):
        return None
    text = str(err)
    m = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if m:
        return m.group(1)
    return "" if "Weights only load failed" in text else None


def convert_hint(path: Path) -> str:
    """How to turn a trusted pickled checkpoint into a safetensors file, once, outside sciadapt."""
    out = path.with_suffix(".safetensors")
    return (
        "If you trust where the file came from, convert it once, outside sciadapt: load it as its authors do "
        "(unpickling runs the code the file names, so only for a file you trust), then save its tensors with "
        "`from safetensors.torch import save_file; save_file({k: v.contiguous() for k, v in state_dict.items()}, "
        f"'{out}')` and give {out} instead"
    )


def unreadable_checkpoint(path: Path, err: BaseException, fix: str | None = None) -> CheckpointError:
    """The error for a weight file that cannot be read: damaged, another format, or a pickle with code.

    Never suggests loading with ``weights_only=False``: sciadapt never runs code from a file.

    Args:
        path: The file.
        err: What the reader raised.
        fix: What to do instead of the generic advice (re-download; convert a trusted pickle).
    """
    head = f"cannot read checkpoint {path}"
    if isinstance(err, OSError):
        return CheckpointError(f"{head}: {err.strerror or err}. Fix: check the file's permissions")
    first = _head(path)
    refused = _refused_global(err)
    if refused is not None and (refused or (first[:1] == b"\x80")):
        what = f", it refers to {refused}" if refused else ""
        return CheckpointError(
            f"{head}: it is not a weights-only checkpoint (a Python pickle that holds more than tensors{what}), "
            f"and sciadapt never runs code from a file. {f'Fix: {fix}' if fix else convert_hint(path)}"
        )
    if not first:
        return CheckpointError(f"{head}: the file is empty. Fix: {fix or 're-create or re-download it'}")
    if path.suffix.lower() == ".safetensors":
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        return CheckpointError(
            f"{head}: it is damaged or incomplete ({detail}), probably cut off while copying or downloading. "
            f"Fix: {fix or 're-create or re-download it'}"
        )
    if first.startswith(b"PK") or isinstance(err, EOFError):
        return CheckpointError(
            f"{head}: it is damaged or incomplete (the end of the file is missing). "
            f"Fix: {fix or 're-create or re-download it'}"
        )
    return CheckpointError(
        f"{head}: it is neither a PyTorch checkpoint nor a safetensors file (damaged, or another format). "
        f"Fix: {fix or 'give a .safetensors file or a weights-only .pt/.ckpt state dict'}"
    )


def describe_mismatch(own: Mapping[str, Tensor], state: Mapping[str, Tensor], n: int = 8) -> list[str]:
    """Missing, unexpected and mis-shaped keys between a model's and a file's state dicts.

    Args:
        own: The model's ``state_dict()``.
        state: What the file holds.
        n: Keys named per kind before the rest is counted.

    Returns:
        One message per kind of problem (empty when ``state`` loads strictly).
    """
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shaped = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))

    def preview(keys: list[str]) -> str:
        return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")

    problems: list[str] = []
    if missing:
        problems.append(f"{len(missing)} keys missing from the file: {preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys in the file: {preview(unexpected)}")
    problems += [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in shaped[:n]]
    if len(shaped) > n:
        problems.append(f"... {len(shaped) - n} more shape mismatches")
    return problems


_HTTP_LIBRARIES = ("httpx", "httpx2", "requests", "urllib3")  # huggingface_hub's HTTP client varies by version
_NETWORK_ERRORS = ("TransportError", "ConnectionError", "Timeout", "ConnectTimeout")


def _network_error(err: BaseException) -> bool:
    """Whether ``err`` says the Hub could not be reached (by the HTTP library of any hub version)."""
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    return any(
        c.__name__ in _NETWORK_ERRORS and c.__module__.split(".")[0] in _HTTP_LIBRARIES for c in type(err).__mro__
    )


def _push_failure(repo: str, err: BaseException) -> str | None:
    """What went wrong talking to the Hub, in one line; None for an error that is not the Hub's."""
    from huggingface_hub import errors

    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, errors.OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so nothing can be pushed: unset it (and have network access) to push"
    if isinstance(err, errors.LocalTokenNotFoundError):
        return "not logged in to the Hugging Face Hub: run `hf auth login` or set HF_TOKEN"
    if isinstance(err, errors.HfHubHTTPError):
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            return f"the Hub refused the push to {repo} (HTTP {status}): log in with a token that can write there"
        return f"the Hub refused the push to {repo} ({type(err).__name__}: {first})"
    if isinstance(err, errors.HFValidationError):
        return f"{repo!r} is not a Hub repository id (write org/name): {first}"
    if _network_error(err):
        return f"the Hugging Face Hub cannot be reached (no network? {type(err).__name__}: {first})"
    return None


def push_adapter(run: Path, stage: str, repo: str, revision: str = "main", private: bool = False) -> str:
    """Upload a run's ``adapters/<stage>/`` (its ``README.md`` model card included) to the Hub model
    repository ``repo``, creating the repository (and branch ``revision``) when needed.

    Args:
        run: A run directory.
        stage: The stage whose adapter folder is pushed.
        repo: ``org/name`` on the Hub.
        revision: The branch to commit to.
        private: Create the repository private (an existing one keeps its visibility).

    Returns:
        The repository's address.

    Raises:
        ConfigError: ``run`` is not a folder, or the stage wrote no adapter (naming those that did).
        CheckpointError: No network, offline mode, not logged in, or the Hub refused: one line.
    """
    from sciadapt.errors import ConfigError

    if not run.is_dir():
        raise ConfigError(f"push {run}: no such run directory (give runs/<pipeline>/<stamp>)")
    folder = run / "adapters" / stage
    if not all((folder / f).is_file() for f in ("adapter_config.json", "adapter_model.safetensors")):
        have = sorted(d.name for d in (run / "adapters").glob("*") if (d / "adapter_model.safetensors").is_file())
        which = (
            f"stages with adapters: {', '.join(have)}"
            if have
            else "it trained no adapters (a stage with `peft:` writes one)"
        )
        raise ConfigError(f"push --stage {stage}: {run} has no adapter for stage {stage!r} ({which})")
    if len([p for p in repo.split("/") if p]) != 2:
        raise ConfigError(f"push --repo {repo}: write the Hub repository as org/name")
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise CheckpointError(
            f"cannot push {folder} to {repo}: HF_HUB_OFFLINE is set, so nothing can be pushed; unset it "
            "(and have network access) to push"
        )
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = str(api.create_repo(repo, repo_type="model", private=private, exist_ok=True))
        if revision != "main":
            api.create_branch(repo, branch=revision, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo,
            folder_path=str(folder),
            repo_type="model",
            revision=revision,
            commit_message=f"sciadapt push {run} --stage {stage}",
        )
    except Exception as err:  # the Hub raises many types: each becomes one line
        why = _push_failure(repo, err)
        if why is None:
            raise
        raise CheckpointError(f"cannot push {folder} to {repo}: {why}") from None
    return url
