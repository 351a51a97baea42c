"""Normalisation statistics and climatologies: computed once out of core with dask, then cached."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sciadapt.datamodules.gridded.reader import StoreReader
from sciadapt.datamodules.gridded.store import StoreInfo, VarPlan, freq_alias, open_xarray
from sciadapt.datamodules.gridded.transforms import RainTransform
from sciadapt.errors import DataError
from sciadapt.runs import read_json, write_json

log = logging.getLogger(__name__)

STATS_ATTR = "sciadapt_stats"
STATS_FORMAT = 1
# Dask chunks for the statistics pass: about this many bytes of one variable per task.
_STATS_CHUNK_BYTES = 64 * 2**20


def _default_cache_root() -> Path:
    env = os.environ.get("SCIADAPT_CACHE_DIR")
    root = (
        Path(env).expanduser() if env else Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "sciadapt"
    )
    return root / "gridded_stats"


def is_writable(path: Path) -> bool:
    """True when ``path`` may be written: the OS allows it *and* it has a write permission bit.

    The second test makes a folder marked read-only (``chmod a-w``, like the shared data folder)
    count as read-only even for root, whom the OS would let write anyway.
    """
    try:
        return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)
    except OSError:
        return False


def _store_fingerprint(path: Path) -> str:
    """Path + modification time + size of the store (its metadata files for a zarr directory)."""
    parts = [str(path.resolve())]
    targets = [path]
    if path.is_dir():
        targets += [path / m for m in ("zarr.json", ".zgroup", ".zmetadata", ".zattrs") if (path / m).exists()]
    for p in targets:
        st = p.stat()
        parts.append(f"{p.name}:{st.st_mtime_ns}:{st.st_size}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


class StatsLocation:
    """Where one store's statistics live: a JSON file, or the attributes of a zarr store.

    Both hold ``{"format": 1, "entries": {<stats_key>: {"channels": {<channel>: {"mean", "std",
    "tendency_std", "count"}}}}}``.

    Args:
        path: The JSON file, or the zarr store.
        in_zarr: Keep the statistics in the store's root attributes (key ``sciadapt_stats``):
            they travel with the store, and zarr readers see no foreign file in it.
    """

    def __init__(self, path: Path, in_zarr: bool = False) -> None:
        self.path = path
        self.in_zarr = in_zarr

    def __str__(self) -> str:
        return f"{self.path} (zarr attribute {STATS_ATTR!r})" if self.in_zarr else str(self.path)

    def read(self) -> dict[str, Any]:
        """The stored statistics (empty entries when there are none or they are unreadable)."""
        empty: dict[str, Any] = {"format": STATS_FORMAT, "entries": {}}
        try:
            if self.in_zarr:
                import zarr

                # not the consolidated copy: it is not refreshed when the attributes change
                data = zarr.open_group(str(self.path), mode="r", use_consolidated=False).attrs.get(STATS_ATTR)
            elif self.path.is_file():
                data = read_json(self.path)
            else:
                return empty
        except (OSError, ValueError, KeyError) as err:
            log.warning("ignoring unreadable statistics in %s (%s); they will be recomputed", self, err)
            return empty
        if data is None:
            return empty
        if (
            not isinstance(data, dict)
            or data.get("format") != STATS_FORMAT
            or not isinstance(data.get("entries"), dict)
        ):
            log.warning("ignoring statistics in %s written in another format; they will be recomputed", self)
            return empty
        return data

    def write(self, data: dict[str, Any]) -> None:
        """Replace the stored statistics (atomically: a reader sees the old or the new ones)."""
        if self.in_zarr:
            import zarr

            zarr.open_group(str(self.path), mode="r+", use_consolidated=False).attrs[STATS_ATTR] = data
        else:
            write_json(self.path, data)
            self.path.chmod(0o644)  # a cache others may share, not a secret


def default_stats_location(path: Path, kind: str) -> StatsLocation:
    """Where statistics are cached: in a writable zarr store, else in the user cache folder.

    The cache file (``$SCIADAPT_CACHE_DIR`` or ``~/.cache/sciadapt``, then
    ``gridded_stats/<name>-<hash>.json``) is keyed by the store's path, modification time and
    size, so a re-written store gets fresh statistics; the selection (train period, time step,
    member) keys the entries inside it.
    """
    if kind == "zarr" and path.is_dir() and is_writable(path):
        meta = _zarr_root_meta(path)
        if not meta.exists() or is_writable(meta):
            return StatsLocation(path, in_zarr=True)
    return StatsLocation(_default_cache_root() / f"{path.name}-{_store_fingerprint(path)}.json")


def _zarr_root_meta(path: Path) -> Path:
    return path / "zarr.json" if (path / "zarr.json").exists() else path / ".zattrs"


def stats_key(train_start: Any, train_stop: Any, time_step: pd.Timedelta, member: int | None) -> str:
    """The entry of a statistics file: train period (inclusive), tendency lag and member."""
    return (
        f"train={pd.Timestamp(train_start).isoformat()}..{pd.Timestamp(train_stop).isoformat()};"
        f"step={freq_alias(time_step)};member={'none' if member is None else member}"
    )


def _dask_chunks(info: StoreInfo, names: Sequence[str]) -> dict[str, int]:
    """Time chunk for the statistics pass: a multiple of the store's chunk, about 64 MB a task."""
    per_step = max(info.bytes_per_step[n] for n in names)
    native = max(info.time_chunks[n] for n in names)
    k = max(1, _STATS_CHUNK_BYTES // max(per_step * native, 1))
    return {info.time_dim: int(native * k)}


def compute_statistics(
    info: StoreInfo,
    plans: list[VarPlan],
    channels: list[str],
    stop: int,
    lag: int,
    member: int,
    transform: RainTransform | None = None,
) -> dict[str, dict[str, float]]:
    """Per-channel mean, std and std of ``lag``-step tendencies over time indices ``[0, stop)``, with dask.

    One pass over the data, out of core: dask reads the store in ~64 MB chunks and reduces them.
    NaNs are skipped. Unweighted over the grid (every grid point counts once).

    Returns:
        channel -> {"mean", "std", "tendency_std", "count"}.

    Raises:
        DataError: A channel with no observed value in the period, or a period shorter than ``lag``.
    """
    import dask
    import dask.array as da

    if stop <= lag:
        raise DataError(
            f"{info.path}: the train split has {stop} time steps, too few for tendencies over "
            f"{lag} step(s). Fix: give the train split more time (data.split_fractions / data.split_dates) "
            "or lower data.time_step"
        )
    ds = open_xarray(info.path, info.kind, info.engine, chunks=_dask_chunks(info, [p.name for p in plans]))
    reader = StoreReader(info, plans, member, in_memory=False, transform=transform)
    try:
        todo = []
        for plan in plans:
            arr = reader.lazy(ds[plan.name], plan).isel({info.time_dim: slice(0, stop)}).data
            arr = arr.astype(np.float64)
            if plan.level_index is None:
                arr = arr[:, None]  # (T, 1, H, W)
            tend = arr[lag:] - arr[:-lag]  # (T - lag, L, H, W)
            axes = (0, 2, 3)
            todo.append(
                (
                    da.nanmean(arr, axis=axes),
                    da.nanstd(arr, axis=axes),
                    da.nanstd(tend, axis=axes),
                    da.sum(~da.isnan(arr), axis=axes),
                )
            )
        with np.errstate(invalid="ignore", divide="ignore"):
            results = dask.compute(*todo)
    except Exception as err:  # a corrupt chunk surfaces here as a codec or HDF5 error
        names = ", ".join(repr(p.name) for p in plans)
        raise DataError(
            f"{info.path}: computing the statistics of {names} over time indices 0..{stop - 1} failed: "
            f"{type(err).__name__}: {err}. A chunk of the store is corrupt or truncated. Fix: re-create "
            "the store (sciadapt data prepare) or restore the damaged files"
        ) from err
    finally:
        ds.close()
    out: dict[str, dict[str, float]] = {}
    unseen = []
    for plan, (mean, std, tstd, count) in zip(plans, results, strict=True):
        for k in range(plan.n_channels):
            name = channels[plan.channel_start + k]
            if int(count[k]) == 0:
                unseen.append(name)
            out[name] = {
                "mean": float(mean[k]),
                "std": float(std[k]),
                "tendency_std": float(tstd[k]),
                "count": int(count[k]),
            }
    if unseen:
        t_end = pd.Timestamp(info.times[stop - 1])
        raise DataError(
            f"{info.path}: channel(s) {', '.join(unseen)} have no observed (non-NaN) value in the train "
            f"split (up to {t_end}), so they cannot be normalised. Fix: remove them from data.variables "
            "or change the split"
        )
    return out


def load_statistics(
    info: StoreInfo,
    plans: list[VarPlan],
    channels: list[str],
    where: StatsLocation,
    key: str,
    mode: str,
    explicit_path: bool,
    train_stop: int,
    lag: int,
    member: int,
    transform: RainTransform | None = None,
) -> tuple[dict[str, np.ndarray], StatsLocation]:
    """The per-channel statistics of entry ``key``: cached ones, the missing ones computed and cached.

    Args:
        info / plans / channels: The store and what is read of it.
        where: Where statistics are read and written.
        key: The entry (see :func:`stats_key`).
        mode: ``data.stats``: ``"auto"``, ``"require"`` or ``"recompute"``.
        explicit_path: ``where`` is the user's ``data.stats_path`` (no fallback when unwritable).
        train_stop / lag / member / transform: As for :func:`compute_statistics` (``key``
            must name the transform: statistics of dBR are not those of rates).

    Returns:
        ``{"mean", "std", "tendency_std"}`` arrays ``(C,)`` (zero spreads replaced), and where they live.

    Raises:
        DataError: ``mode="require"`` and some are not cached, or they cannot be written.
    """
    data = where.read()
    entry = data["entries"].get(key, {})
    known = entry.get("channels", {}) if mode != "recompute" else {}
    missing = [c for c in channels if c not in known]
    if missing:
        if mode == "require":
            have = sorted(data["entries"])
            raise DataError(
                f"{info.path}: no statistics for channel(s) {', '.join(missing)} over {key} in {where} "
                f"(data.stats=require; entries there: {'; '.join(have) or 'none'}). Fix: run "
                "`sciadapt data prepare` for the store, point data.stats_path at the file the run was "
                "trained with, or set data.stats=auto to compute them now (one pass over the train split)"
            )
        todo = [p for p in plans if any(channels[p.channel_start + k] in missing for k in range(p.n_channels))]
        t0 = time.perf_counter()
        log.info("computing normalisation statistics of %s for %s", ", ".join(missing), info.path)
        fresh = compute_statistics(info, todo, channels, train_stop, lag, member, transform)
        log.info("statistics computed in %.1f s", time.perf_counter() - t0)
        known = {**known, **fresh}
        where = _write_stats(where, key, known, Path(info.path), explicit_path)
    mean = np.array([known[c]["mean"] for c in channels], dtype=np.float64)
    std = np.array([known[c]["std"] for c in channels], dtype=np.float64)
    tstd = np.array([known[c]["tendency_std"] for c in channels], dtype=np.float64)
    # A constant channel would divide by zero; scaling it by 1 keeps it a (shifted) constant.
    std = np.where(std > 0, std, 1.0)
    tstd = np.where(tstd > 0, tstd, std)
    return {"mean": mean, "std": std, "tendency_std": tstd}, where


def _write_stats(
    where: StatsLocation, key: str, channels: dict[str, Any], store: Path, explicit_path: bool
) -> StatsLocation:
    """Merge ``channels`` into entry ``key`` of ``where`` (or of the cache file when that fails)."""

    def merge(target: StatsLocation) -> None:
        data = target.read()  # re-read: another process may have added entries meanwhile
        entry = data["entries"].setdefault(key, {"channels": {}})
        entry["channels"].update(channels)
        target.write(data)

    try:
        merge(where)
        return where
    except (OSError, PermissionError) as err:
        if explicit_path:
            raise DataError(
                f"cannot write statistics to data.stats_path={where}: {err}. Fix: point it at a writable file"
            ) from err
        fallback = StatsLocation(_default_cache_root() / f"{store.name}-{_store_fingerprint(store)}.json")
        log.warning("cannot write statistics into %s (%s); caching them in %s", where, err, fallback)
        merge(fallback)
        return fallback
