"""One frozen base, many adapters: ``sciadapt predict --backbone B --weights W --adapter A ...``.

The base is read and built once; each adapter is then attached and filled from its folder (its base
fingerprint checked), forecasts, and is taken off again, so the next adapter meets the base exactly as
it was loaded. Nothing is written until every adapter has forecast: an adapter for another base stops
the command before any output exists.

Outputs: one forecast per adapter, ``<out stem>.<adapter name><suffix>`` with its PNG beside it (the
zero-shot CSV layout), so each file reads as ``predict --run`` output does.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from sciadapt.errors import CheckpointError, ConfigError, DataError

#: The files of an adapter folder (Hugging Face PEFT's layout); the model card comes along when present.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class AdapterRef:
    """A named adapter reference: a local folder or ``hf://org/repo[/subfolder][@revision]``."""

    name: str
    source: str


def parse_adapter_refs(refs: list[str]) -> list[AdapterRef]:
    """``--adapter`` values (``PATH`` or ``NAME=PATH``) -> named references, names unique.

    A bare path is named after its last folder (an ``hf://`` reference after its subfolder, else its
    repository).

    Raises:
        ConfigError: An empty or unusable name, or two adapters with the same name.
    """
    out: list[AdapterRef] = []
    for ref in refs:
        name, sep, source = ref.partition("=")
        if not sep or not _NAME.fullmatch(name):
            name, source = _default_name(ref), ref
        if not source:
            raise ConfigError(f"--adapter {ref}: give NAME=PATH or a path (a folder or hf://org/repo[/sub][@rev])")
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"--adapter {ref}: {name!r} cannot name an output file; write --adapter NAME={ref} with a name of "
                "letters, digits, '_', '.' or '-'"
            )
        out.append(AdapterRef(name, source))
    seen: dict[str, str] = {}
    for r in out:
        if r.name in seen:
            raise ConfigError(
                f"--adapter: two adapters are named {r.name!r} ({seen[r.name]} and {r.source}); "
                f"name them apart with --adapter NAME=PATH"
            )
        seen[r.name] = r.source
    return out


def _default_name(source: str) -> str:
    from sciadapt.hub import is_hub, parse_hub

    if is_hub(source):
        ref = parse_hub(source)
        return (ref.subfolder or ref.repo_id).rstrip("/").rsplit("/", 1)[-1]
    return Path(source.rstrip("/")).expanduser().name


def resolve_adapter(source: str) -> Path:
    """The local folder of an adapter: the folder itself, or the files fetched from the Hub (with the
    offline message of :mod:`sciadapt.hub`)."""
    from sciadapt.hub import resolve_folder

    return resolve_folder(source, ADAPTER_FILES, ["README.md"], what="adapter")


@contextmanager
def applied(
    model: nn.Module, folder: Path, name: str, base_checked: dict[tuple[str, ...], str] | None = None
) -> Iterator[None]:
    """``model`` with the adapter in ``folder`` attached as ``name`` inside the block, and the base as it
    was after it: the adapter is removed and any base tensor the file overwrote (BatchNorm statistics,
    norm parameters an adapter trains) is restored.

    Args:
        model: The base (a task), left as it was after the block.
        folder: The adapter folder.
        name: The adapter name on the model while the block runs.
        base_checked: A cache, shared over switches on one unchanged base, of the base fingerprint
            per target set: the checksum over the targeted base tensors (seconds for a large base) is
            then computed once, not per switch. An adapter whose fingerprint differs still gets the
            full check (tolerant comparison, the error naming the tensors).

    Raises:
        CheckpointError: Not an adapter folder, or one trained on another base (its fingerprint).
    """
    from safetensors import safe_open

    from sciadapt.hub import unreadable_checkpoint
    from sciadapt.peft.core import HF_PREFIX, load_adapter, remove_adapter
    from sciadapt.peft.core import adapters as adapters_of

    weights = folder / "adapter_model.safetensors"
    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:
        raise unreadable_checkpoint(weights, e) from None
    base = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    for key in keys:
        tensor = base.get(key.removeprefix(HF_PREFIX).replace(".base_layer.", "."))
        if tensor is not None:
            saved.append((tensor, tensor.detach().clone()))
    check_base = True if base_checked is None else not _same_base(model, folder, base_checked)
    try:
        load_adapter(model, folder, adapter=name, check_base=check_base)
        yield
    finally:
        if name in adapters_of(model):  # also after a load that failed once attached (a shape mismatch)
            remove_adapter(model, name)
        with torch.no_grad():
            for tensor, value in saved:
                tensor.copy_(value)


def _same_base(model: nn.Module, folder: Path, cache: dict[tuple[str, ...], str]) -> bool:
    """Whether the adapter's recorded base checksum equals the model's (cached per target set)."""
    from sciadapt.peft.io import adapter_meta, fingerprint

    meta = adapter_meta(folder) or {}
    recorded = meta.get("fingerprint")
    targets = meta.get("targets")
    if not isinstance(recorded, dict) or not isinstance(targets, list):
        return False  # nothing to compare: load_adapter decides
    key = tuple(sorted(str(t) for t in targets))
    if key not in cache:
        try:
            cache[key] = str(fingerprint(model, list(key))["sha256"])
        except KeyError:
            cache[key] = ""  # targets the model lacks: load_adapter's check names them
    return bool(cache[key]) and cache[key] == recorded.get("sha256")


def predict_adapters(
    backbone: str,
    weights: str,
    adapters: list[str],
    data: str,
    out: Path,
    horizon: int | None = None,
    context_length: int | None = None,
    target_columns: list[str] | None = None,
    timestamp_column: str = "date",
    group_column: str | None = None,
) -> list[Path]:
    """Forecast ``data`` with the base ``weights`` and each adapter in turn, the base loaded once.

    Args:
        backbone: A zero-shot backbone (``ttm``, ``moment``): the adapters' base.
        weights: The base weights the adapters were trained on (a folder or ``hf://``).
        adapters: ``--adapter`` values: ``PATH`` or ``NAME=PATH``, a folder or ``hf://org/repo[/sub][@rev]``.
        data: The series (CSV/parquet) whose last rows are the context.
        out: The output CSV; adapter ``NAME`` writes ``<stem>.NAME<suffix>`` and its PNG.
        horizon, context_length, target_columns, timestamp_column: As for a zero-shot forecast.
        group_column: A column of ``data`` naming each row's group (site, region): each group is a
            series of its own, forecast with the adapter named like the group (``--adapter NAME=PATH``).

    Returns:
        The CSVs written, in the order of ``adapters`` (or of the groups).

    Raises:
        ConfigError: Bad ``--adapter`` values; with ``group_column``, a group without an adapter.
        CheckpointError: An adapter missing, unreadable, or for another base: nothing is written.
        DataError: Bad data file or group column.
    """
    from sciadapt.predict.forecast import forecast_frame, write_forecast, zero_shot_task
    from sciadapt.runs import check_output_location

    check_output_location(out, "--out")  # before any adapter is fetched
    refs = parse_adapter_refs(adapters)
    if not refs:
        raise ConfigError("predict --adapter: give at least one adapter folder (or hf://org/repo[/sub][@rev])")
    folders = {r.name: resolve_adapter(r.source) for r in refs}  # every reference checked before any work
    with tempfile.TemporaryDirectory(prefix="sciadapt-groups-") as tmp:
        if group_column is None:
            series = {r.name: data for r in refs}
        else:
            series = _split_groups(data, group_column, [r.name for r in refs], Path(tmp))
        first = next(iter(series.values()))
        task, dm, inputs = zero_shot_task(
            backbone, weights, first, out, horizon, context_length, target_columns, timestamp_column
        )
        results: list[tuple[Path, pd.DataFrame, dict[str, Any], list[float] | None]] = []
        base_checked: dict[tuple[str, ...], str] = {}  # the base never changes between switches
        for name, source in series.items():
            if source != first:
                inputs = dm.predict_inputs(source)
            try:
                with applied(task, folders[name], name, base_checked):
                    frame, quantiles = forecast_frame(task, dm, inputs)
            except CheckpointError as err:
                raise type(err)(f"--adapter {name}: {err} (nothing was written)") from None
            results.append((out.with_name(f"{out.stem}.{name}{out.suffix}"), frame, inputs, quantiles))
    written: list[Path] = []
    try:
        for target, frame, inp, quantiles in results:
            written.append(write_forecast(frame, inp, list(dm.target_columns), quantiles, target))
    except BaseException:
        for path in written:  # every adapter's forecast or none
            path.unlink(missing_ok=True)
            path.with_suffix(".png").unlink(missing_ok=True)
        raise
    return written


def _split_groups(data: str, column: str, names: list[str], folder: Path) -> dict[str, str]:
    """One CSV per group of ``data`` (rows where ``column`` is the group), without ``column``; every
    group must have an adapter of its name, and every adapter a group."""
    path = Path(data).expanduser()
    try:
        frame = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise DataError(f"--data {data}: cannot read it ({err})") from None
    if column not in frame.columns:
        raise DataError(
            f"--group-column {column}: {data} has no such column (it has {', '.join(map(str, frame.columns))})"
        )
    groups = {str(g): rows.drop(columns=[column]) for g, rows in frame.groupby(column, sort=False)}
    lacking = [g for g in groups if g not in names]
    unused = [n for n in names if n not in groups]
    if lacking or unused:
        parts = []
        if lacking:
            parts.append(f"groups without an adapter: {', '.join(lacking[:8])}")
        if unused:
            parts.append(f"adapters without a group: {', '.join(unused[:8])}")
        raise ConfigError(
            f"--group-column {column}: {'; '.join(parts)}. Fix: one --adapter GROUP=PATH per value of {column}"
        )
    out = {}
    for i, name in enumerate(names):
        target = folder / f"{i}.csv"
        groups[name].to_csv(target, index=False)
        out[name] = str(target)
    return out
