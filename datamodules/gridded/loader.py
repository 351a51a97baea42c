"""Batches built in place: the split dataset, recycled shared-memory buffers, the DataLoader."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from sciadapt.datamodules.gridded.features import FORCING_NAMES, time_forcings
from sciadapt.datamodules.gridded.reader import StoreReader
from sciadapt.errors import DataError

_NAN_FIX = "set data.nan_policy=mask (NaNs become 0 with mask 0) or fill the gaps in the store"


def _empty(shape: tuple[int, ...], shared: bool, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A tensor; in a DataLoader worker, allocated in shared memory.

    The batch then crosses to the main process without the copy that moving an ordinary tensor
    into shared memory costs (default_collate allocates its output the same way).
    """
    if not shared:
        return torch.empty(shape, dtype=dtype)
    proto = torch.empty(0, dtype=dtype)
    storage = proto._typed_storage()._new_shared(math.prod(shape), device=proto.device)
    return proto.new(storage).resize_(shape)


_ONE = torch.ones(())


class _SlotPool:
    """Shared-memory batch buffers that one worker process re-uses.

    Fresh shared memory costs a page fault per 4 KiB page on first write, as much as decoding the
    data on a VM; so a worker keeps a few batch buffers and refills one once the training process
    has let go of every tensor viewing it (:class:`GriddedLoader` frees the slot). ``flags`` (in
    shared memory, travelling with each batch) holds 1 for a slot in use.
    """

    def __init__(self, n_slots: int, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.flags = _empty((n_slots,), True, torch.int32)
        self.flags.zero_()
        self.buffers = [{k: _empty(shape, True) for k, shape in shapes.items()} for _ in range(n_slots)]
        self.key = f"{os.getpid()}-{id(self)}"  # names this pool in the training process's cache
        self.announced: set[int] = set()  # slots whose storage the training process has been sent
        self.flags_sent = False

    def acquire(self) -> int | None:
        """A free slot, marked in use; None when all are held (the caller allocates afresh)."""
        flags = self.flags.numpy()
        free = np.flatnonzero(flags == 0)
        if free.size == 0:
            return None
        slot = int(free[0])
        flags[slot] = 1
        return slot


class _SlotRef:
    """A batch built in slot ``slot`` of worker pool ``pool``, sent instead of its tensors.

    Passing a shared storage between processes costs a file-descriptor hand-over (a socket round
    trip to the worker) per storage per batch, measured at about 1.4 ms of CPU per batch here. A
    slot's storage and the pool's flags therefore cross once, on first use (``storage`` /
    ``flags`` set); afterwards the reference alone crosses and :class:`GriddedLoader` rebuilds
    ``x``, ``y`` and ``forcings`` as views of the storage it kept. (Not a tuple: pin_memory must
    pass it through untouched.)
    """

    def __init__(
        self,
        pool: str,
        slot: int,
        layout: tuple[int, ...],
        storage: torch.Tensor | None,
        flags: torch.Tensor | None,
    ) -> None:
        self.pool = pool
        self.slot = slot
        self.layout = layout  # (B, n_input, n_lead, C, F, H, W)
        self.storage = storage
        self.flags = flags


def _views(flat: torch.Tensor, layout: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """``x``, ``y`` and ``forcings`` of a batch laid out in one flat float32 buffer."""
    n_b, n_in, n_ld, c, n_f, h, w = layout
    n_states = n_b * (n_in + n_ld) * c * h * w
    states = flat[:n_states].view(n_b, n_in + n_ld, c, h, w)
    forcings = flat[n_states : n_states + n_b * (n_in + n_ld) * n_f * h * w].view(n_b, n_in + n_ld, n_f, h, w)
    return {"x": states[:, :n_in], "y": states[:, n_in:], "forcings": forcings}


def compact_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t.to(device)``, but a broadcast view (a stride-0 dimension) moves only its distinct
    values and is expanded again on the device (``.to`` would materialise it on the host first)."""
    if 0 not in t.stride():
        return t.to(device, non_blocking=True)
    base = t[tuple(slice(0, 1) if st == 0 else slice(None) for st in t.stride())]
    return base.contiguous().to(device, non_blocking=True).expand(t.shape)


def collate_gridded(data: Any) -> Any:
    """DataLoader ``collate_fn``: batches come ready from :meth:`GriddedDataset.__getitems__`."""
    if isinstance(data, dict):
        return data
    return torch.utils.data.default_collate(data)


class GriddedLoader(DataLoader):
    """A DataLoader that hands recycled batch buffers back to the workers.

    A batch built in a re-used buffer arrives as a :class:`_SlotRef`; the loader rebuilds its tensors
    from the slot's storage (sent once) and frees the slot once nothing in this process holds a view of it any more
    (their use count is checked at every ``next``; a tensor, view, ``detach()``ed alias or numpy
    array of them keeps the slot busy, so a consumer that keeps batches only makes the worker
    allocate fresh buffers, never overwrites what it kept).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: list[tuple[torch.Tensor, int, Any]] = []
        # pool -> {"flags": tensor, "slots": {slot: untyped storage}}: what the workers sent once
        self._pools: dict[str, dict[str, Any]] = {}

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        inner = super().__iter__()
        while True:
            self._release()
            try:
                batch = next(inner)
            except StopIteration:
                return
            ref = batch.pop("_slot", None) if isinstance(batch, dict) else None
            if ref is not None:
                storage = self._storage(ref)
                flat = torch.empty(0, dtype=torch.float32).set_(storage, 0, (storage.nbytes() // 4,), (1,))
                batch.update(_views(flat, ref.layout))
                del flat
                self._held.append((self._pools[ref.pool]["flags"], ref.slot, storage))
            if isinstance(batch, dict) and "_time_index" in batch:
                batch = self.dataset.complete(batch)  # type: ignore[attr-defined]
            yield batch

    def _storage(self, ref: _SlotRef) -> Any:
        pool = self._pools.get(ref.pool)
        if pool is None:
            self._forget_dead_workers()
            pool = self._pools[ref.pool] = {"flags": None, "slots": {}}
        if ref.flags is not None:
            pool["flags"] = ref.flags
        if ref.storage is not None:
            pool["slots"][ref.slot] = ref.storage.untyped_storage()
        return pool["slots"][ref.slot]

    def _forget_dead_workers(self) -> None:
        """Drop the buffers of worker processes that have exited (workers restarted each epoch)."""
        for key in list(self._pools):
            try:
                os.kill(int(key.split("-")[0]), 0)
            except (ProcessLookupError, ValueError):
                del self._pools[key]
            except PermissionError:
                pass

    def _release(self) -> None:
        still = []
        for flags, slot, storage in self._held:
            # 1: only our own (cached) handle on the storage is left
            if torch._C._storage_Use_Count(storage._cdata) == 1:
                flags[slot] = 0
            else:
                still.append((flags, slot, storage))
        self._held = still


class GriddedDataset(Dataset):
    """Samples of one split; builds whole batches in place (see :meth:`__getitems__`).

    Args:
        reader: The store reader (opened lazily in each process).
        indices: Current-state time index ``t`` of every sample.
        n_input / n_lead: States before (including) and after ``t``.
        stride: ``time_step`` in store time steps.
        mean / std: Per-channel normalisation, ``(C,)``.
        flip_lat / flip_lon: Reverse the store's latitude / longitude axis on read.
        static: ``(S, H, W)`` float32, the same for every sample.
        forcings: Add the ``forcings`` entry.
        times: The store's time axis (``datetime64[ns]``).
        lon: Output longitudes ``(W,)``, or ``(H, W)`` on a projected or curvilinear grid (for local time).
        channels: Channel names (for messages).
        nan_policy: ``"mask"`` or ``"error"``.
        patch: ``(height, width)`` of the window each sample is cut to (train only), None: the grid.
        seed: Seeds the windows' positions (with the sample's time index and a per-process draw count).
        fill: Normalised value per channel ``(C,)`` that a missing (masked) value takes; default 0, the
            channel mean (a dBR channel fills with its dry value instead: no rain where the radar saw nothing).
    """

    #: random windows a sample chooses from (the most varied wins)
    PATCH_CANDIDATES = 4

    def __init__(
        self,
        reader: StoreReader,
        indices: np.ndarray,
        n_input: int,
        n_lead: int,
        stride: int,
        mean: np.ndarray,
        std: np.ndarray,
        flip_lat: bool,
        flip_lon: bool,
        static: np.ndarray,
        forcings: bool,
        times: np.ndarray,
        lon: np.ndarray,
        channels: list[str],
        nan_policy: str,
        patch: tuple[int, int] | None = None,
        seed: int = 0,
        fill: np.ndarray | None = None,
    ) -> None:
        self.reader = reader
        self.indices = np.asarray(indices, dtype=np.int64)
        self.n_input = n_input
        self.n_lead = n_lead
        self.stride = stride
        self.mean = mean.astype(np.float32)[:, None, None]  # (C, 1, 1)
        self.inv_std = (1.0 / std).astype(np.float32)[:, None, None]
        self.flip_lat = flip_lat
        self.flip_lon = flip_lon
        self.static = torch.from_numpy(np.ascontiguousarray(static, dtype=np.float32))
        self.forcings = forcings
        self.times = times
        self.lon = lon
        self.channels = channels
        self.nan_policy = nan_policy
        self.n_lat = len(reader.info.lat)
        self.n_lon = len(reader.info.lon)
        self.patch = patch
        self.seed = int(seed)
        self.fill = None if fill is None or not np.any(fill) else np.asarray(fill, np.float32)
        self._draws = 0  # windows drawn by this process (a fresh stream per epoch and worker)
        self.recycle_slots = 0  # buffers per worker to re-use; GriddedDataModule sets it for its loaders
        self._pools: dict[tuple[int, ...], _SlotPool] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pools"] = {}
        return state

    def __len__(self) -> int:
        return len(self.indices)

    def _fill(self, dst: np.ndarray, start: int, stop: int) -> None:
        """Write physical states ``start, start+stride, ... < stop`` into ``dst`` (T, C, H, W)."""
        for plan in self.reader.plans:
            view = dst[:, plan.channel_start : plan.channel_start + plan.n_channels]  # (T, L, H, W)
            if self.flip_lat:
                view = view[..., ::-1, :]
            if self.flip_lon:
                view = view[..., ::-1]
            self.reader.read(plan, start, stop, self.stride, out=view)

    def read_states(self, t: int) -> np.ndarray:
        """Physical-unit states ``t - (n_input-1)*stride .. t + n_lead*stride`` as (T, C, H, W) float32."""
        s = self.stride
        block = np.empty((self.n_input + self.n_lead, len(self.channels), self.n_lat, self.n_lon), np.float32)
        self._fill(block, t - (self.n_input - 1) * s, t + self.n_lead * s + 1)
        return block

    def __getitems__(self, positions: list[int]) -> dict[str, Any]:
        """A whole batch, built in place: the DataLoader hands it to :func:`collate_gridded` as it is.

        The states of every sample's window (``n_input`` past and ``n_lead`` future, one zarr read
        per variable) and the forcings are decoded straight into one (in a worker, shared-memory,
        re-used) buffer and normalised there, so a state is written once and the batch crosses
        to the training process as a single shared storage. What the training process already
        has is not sent: :meth:`complete` adds ``static``, the all-ones masks of a batch without
        missing values (broadcast views, stride 0) and ``meta`` there.
        """
        shared = torch.utils.data.get_worker_info() is not None
        n_b, n_in, n_ld, s = len(positions), self.n_input, self.n_lead, self.stride
        n_t, c, h, w = n_in + n_ld, len(self.channels), self.n_lat, self.n_lon
        if self.patch is not None:
            h, w = self.patch
        n_f = len(FORCING_NAMES) if self.forcings else 0
        size = n_b * n_t * (c + n_f) * h * w
        pool, slot = None, None
        if shared and self.recycle_slots > 0:
            pool = self._pools.get((size,))
            if pool is None:
                pool = self._pools[(size,)] = _SlotPool(self.recycle_slots, {"flat": (size,)})
            slot = pool.acquire()
        flat = pool.buffers[slot]["flat"] if pool is not None and slot is not None else _empty((size,), shared)
        n_states = n_b * n_t * c * h * w
        states = flat[:n_states].view(n_b, n_t, c, h, w)
        forcings = flat[n_states:].view(n_b, n_t, n_f, h, w)
        ss = states.numpy()
        ts = [int(self.indices[i]) for i in positions]
        origins: list[tuple[int, int]] = []
        scratch = None if self.patch is None else np.empty((n_t, c, self.n_lat, self.n_lon), np.float32)
        for b, t in enumerate(ts):
            # the whole window in one read per variable: zarr's per-call cost is paid once, not twice
            if scratch is None:
                self._fill(ss[b], t - (n_in - 1) * s, t + n_ld * s + 1)
                continue
            self._fill(scratch, t - (n_in - 1) * s, t + n_ld * s + 1)
            r0, c0 = self._window(scratch[n_in - 1], t, h, w)
            ss[b] = scratch[:, :, r0 : r0 + h, c0 : c0 + w]
            origins.append((r0, c0))
        ss -= self.mean
        ss *= self.inv_std
        batch: dict[str, Any] = {"_time_index": ts}  # plain ints: pickled inline, no shared tensor of its own
        if origins:
            batch["_patch_origin"] = origins
            if self.static.shape[0]:
                batch["static"] = torch.stack([self.static[:, r : r + h, q : q + w] for r, q in origins])
        if pool is not None and slot is not None:
            # x (B, n_input, C, H, W), y (B, n_lead, C, H, W) and forcings are views of the slot's
            # buffer, rebuilt from it by GriddedLoader: the storage crosses once per slot
            batch["_slot"] = _SlotRef(
                pool.key,
                slot,
                (n_b, n_in, n_ld, c, n_f, h, w),
                flat if slot not in pool.announced else None,
                pool.flags if not pool.flags_sent else None,
            )
            pool.announced.add(slot)
            pool.flags_sent = True
        else:
            batch.update(x=states[:, :n_in], y=states[:, n_in:])  # views of the one buffer
        for key, part, first in (("x_mask", ss[:, :n_in], -(n_in - 1)), ("mask", ss[:, n_in:], 1)):
            mask = self._mask(part, ts, first=first, shared=shared)
            if mask is not None:
                batch[key] = mask
        if self.forcings:
            fs = forcings.numpy()
            for b, t in enumerate(ts):
                lon = self.lon
                if origins:
                    r0, c0 = origins[b]
                    lon = lon[c0 : c0 + w] if lon.ndim == 1 else lon[r0 : r0 + h, c0 : c0 + w]
                time_forcings(self.times[t - (n_in - 1) * s : t + n_ld * s + 1 : s], lon, h, out=fs[b])
        if "_slot" not in batch:
            batch["forcings"] = forcings  # (B, T, F, H, W)
        return batch

    def complete(self, batch: dict[str, Any]) -> dict[str, Any]:
        """In the training process: add what :meth:`__getitems__` leaves out (see there)."""
        ts = batch.pop("_time_index", None)
        origins = batch.pop("_patch_origin", None)
        if ts is not None:
            batch["meta"] = {"time_index": torch.tensor(ts, dtype=torch.int64)}
            if origins is not None:
                batch["meta"]["patch_origin"] = torch.tensor(origins, dtype=torch.int64)  # (B, 2): row, column
        x, y = batch["x"], batch["y"]
        if "x_mask" not in batch:
            batch["x_mask"] = _ONE.expand(x.shape)
        if "mask" not in batch:
            batch["mask"] = _ONE.expand(y.shape)
        if "static" not in batch:
            h, w = x.shape[-2:]
            batch["static"] = self.static[None, :, :h, :w].expand(x.shape[0], -1, -1, -1)  # (B, S, H, W)
        return batch

    def _window(self, state: np.ndarray, t: int, h: int, w: int) -> tuple[int, int]:
        """Top-left corner of the ``h x w`` window cut from ``state`` (C, H, W): the one of
        :attr:`PATCH_CANDIDATES` random windows whose values vary most (summed normalised spread)."""
        rng = np.random.default_rng([self.seed, t, self._draws])
        self._draws += 1
        best, best_score = (0, 0), -1.0
        for _ in range(self.PATCH_CANDIDATES):
            r0 = int(rng.integers(0, self.n_lat - h + 1))
            c0 = int(rng.integers(0, self.n_lon - w + 1))
            part = state[:, r0 : r0 + h, c0 : c0 + w]
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN window
                spread = np.nanstd(part.reshape(part.shape[0], -1), axis=1) * self.inv_std[:, 0, 0]
            score = float(np.nansum(spread))
            if score > best_score:
                best, best_score = (r0, c0), score
        return best

    def _mask(self, arr: np.ndarray, ts: list[int], first: int, shared: bool) -> torch.Tensor | None:
        """1 where ``arr`` (B, T, C, H, W) is observed (None: everywhere); NaNs there become 0 (or an error)."""
        if not np.isnan(arr.min()):  # min propagates NaN, without a temporary the size of arr
            return None
        nan = np.isnan(arr)
        if self.nan_policy == "error":
            b, k, c = (int(v) for v in np.argwhere(nan)[0][:3])
            j = ts[b] + (first + k) * self.stride
            raise DataError(
                f"{self.reader.info.path}: NaN in channel {self.channels[c]!r} at time index {j} "
                f"({pd.Timestamp(self.times[j])}). Fix: {_NAN_FIX}"
            )
        if self.fill is None:
            arr[nan] = 0.0
        else:  # (B, T, C, H, W): each channel's own fill
            arr[nan] = self.fill[np.nonzero(nan)[2]]
        mask = _empty(arr.shape, shared)
        np.logical_not(nan, out=mask.numpy(), casting="unsafe")
        return mask

    def __getitem__(self, i: int) -> dict[str, Any]:
        """One sample: the entries of :meth:`__getitems__` without the batch axis."""
        batch = self.complete(self.__getitems__([i]))
        item = {k: v[0] for k, v in batch.items() if k != "meta"}
        item["meta"] = {"time_index": int(batch["meta"]["time_index"][0])}
        return item
