"""Reading ``(T, L, H, W)`` blocks of the planned variables, straight into batch buffers."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from sciadapt.datamodules.gridded.store import StoreInfo, VarPlan, open_xarray
from sciadapt.datamodules.gridded.transforms import RainTransform
from sciadapt.datamodules.zarr_chunks import ChunkDecoder, chunk_decoder, decode_all
from sciadapt.errors import DataError


def _nd_buffer(array: np.ndarray) -> Any:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype().nd_buffer.from_numpy_array(array)


def _level_selector(index: list[int]) -> tuple[slice | np.ndarray, bool]:
    """How to read level positions: a forward slice when they are evenly spaced (and whether to
    reverse it afterwards: zarr slices only step forward), else the positions themselves."""
    if len(index) == 1:
        return slice(index[0], index[0] + 1), False
    step = index[1] - index[0]
    if step != 0 and all(b - a == step for a, b in zip(index, index[1:], strict=False)):
        lo, hi = min(index[0], index[-1]), max(index[0], index[-1])
        return slice(lo, hi + 1, abs(step)), step < 0
    return np.asarray(index), False


class StoreReader:
    """Reads ``(T, L, H, W)`` float32 blocks of the planned variables; picklable, opened lazily.

    Each process (the main one, every DataLoader worker) opens its own handle on first read, so
    no file handle or zarr event loop crosses a fork.

    Args:
        info: The store layout.
        plans: What to read of each variable.
        member: Ensemble member index, used when the store has a member dimension.
        in_memory: Load the selected data once per process (small non-zarr files).
        transform: Applied to every block read (``data.transform``); None: values as stored.
    """

    def __init__(
        self,
        info: StoreInfo,
        plans: list[VarPlan],
        member: int,
        in_memory: bool,
        transform: RainTransform | None = None,
    ) -> None:
        self.info = info
        self.plans = plans
        self.member = member
        self.in_memory = in_memory
        self.transform = transform
        self._handle: dict[str, Any] | None = None
        self._dataset: xr.Dataset | None = None
        self._pid = -1
        # name -> (decoder, level positions or None for all in order) for zarr arrays whose
        # chunks decode straight into our buffers
        self._direct: dict[str, tuple[ChunkDecoder, list[int] | None]] = {}
        self._threads = 1  # decoding threads of this process

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"], state["_dataset"], state["_pid"], state["_direct"] = None, None, -1, {}
        return state

    def _open(self) -> dict[str, Any]:
        if self._handle is not None and self._pid == os.getpid():
            return self._handle
        info = self.info
        if info.kind == "zarr":
            import zarr

            worker = torch.utils.data.get_worker_info()
            if worker is not None:
                # zarr decodes in a thread pool as large as the machine; with several worker
                # processes that oversubscribes the cores, so each takes its share of them
                cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
                zarr.config.set({"threading.max_workers": max(1, cores // worker.num_workers)})
            try:
                group = zarr.open_group(info.path, mode="r")
                handle: dict[str, Any] = {p.name: group[p.name] for p in self.plans}
            except Exception as err:
                raise DataError(f"cannot open zarr store {info.path}: {type(err).__name__}: {err}") from err
            self._direct = {}
            for p in self.plans:
                decoder = chunk_decoder(handle[p.name]) if self._whole_steps(p) else None
                if decoder is not None:
                    every = p.level_index is None or p.level_index == list(range(handle[p.name].shape[1]))
                    self._direct[p.name] = (decoder, None if every else p.level_index)
            self._threads = int(zarr.config.get("threading.max_workers") or os.cpu_count() or 1)
        else:
            ds = open_xarray(info.path, info.kind, info.engine, chunks=None)
            handle = {}
            for p in self.plans:
                da = self._select(ds[p.name], p)
                handle[p.name] = np.asarray(da.values) if self.in_memory else da
            if self.in_memory:
                ds.close()
            else:
                self._dataset = ds
        self._handle, self._pid = handle, os.getpid()
        return handle

    def _whole_steps(self, plan: VarPlan) -> bool:
        """Whether ``plan``'s variable is stored as (time, [level,] lat, lon), without a member axis."""
        info = self.info
        levels = (info.level_dim,) if plan.level_index is not None else ()
        return bool(plan.dims == (info.time_dim, *levels, info.lat_dim, info.lon_dim))

    def _select(self, da: xr.DataArray, plan: VarPlan) -> xr.DataArray:
        """The variable as (time, level, lat, lon) (or without level), member chosen; lazy."""
        info = self.info
        if info.member_dim is not None and info.member_dim in da.dims:
            da = da.isel({info.member_dim: self.member})
        if plan.level_index is not None:
            da = da.isel({info.level_dim: plan.level_index})  # type: ignore[dict-item]
            return da.transpose(info.time_dim, info.level_dim, info.lat_dim, info.lon_dim)  # type: ignore[arg-type]
        return da.transpose(info.time_dim, info.lat_dim, info.lon_dim)

    def lazy(self, da: xr.DataArray, plan: VarPlan) -> xr.DataArray:
        """:meth:`_select` with the transform applied (the statistics and climatology passes)."""
        da = self._select(da, plan)
        return da if self.transform is None else self.transform.apply_lazy(plan.name, da)

    def read(self, plan: VarPlan, start: int, stop: int, step: int, out: np.ndarray | None = None) -> np.ndarray:
        """States ``start, start+step, ... < stop`` of one variable as (T, L, H, W), decoded.

        Args:
            plan: The variable.
            start / stop / step: The time indices.
            out: Where to write them, a float32 (T, L, H, W) view (any strides: a flipped or
                channel-sliced view of a batch buffer); zarr then decodes straight into it.

        Returns:
            ``out``, or a new array in store orientation when ``out`` is None.

        Raises:
            DataError: If the data cannot be read or decoded (a corrupt or truncated chunk).
        """
        try:
            block = self._read_raw(plan, start, stop, step, out)
            if self.transform is not None:
                if block.dtype != np.float32:
                    block = block.astype(np.float32)
                self.transform.apply(plan.name, block)
            return block
        except DataError:
            raise
        except Exception as err:  # codec errors, truncated files, HDF5 errors...
            bad = self._first_unreadable(plan, start, stop, step)
            raise DataError(
                f"{self.info.path}: cannot read variable {plan.name!r} at time index {bad} "
                f"({pd.Timestamp(self.info.times[bad])}): {type(err).__name__}: {err}. The chunk holding it is "
                "corrupt or truncated. Fix: re-create the store (sciadapt data prepare) or restore that file"
            ) from err

    def _read_raw(self, plan: VarPlan, start: int, stop: int, step: int, out: np.ndarray | None) -> np.ndarray:
        handle = self._open()
        info = self.info
        src = handle[plan.name]
        if info.kind != "zarr":
            block = (
                src[start:stop:step]
                if isinstance(src, np.ndarray)
                else src.isel({info.time_dim: slice(start, stop, step)}).values
            )
            block = np.asarray(block)
            block = block[:, None] if plan.level_index is None else block
            if out is None:
                return block
            out[...] = block
            return out
        plain = self.info.decode.get(plan.name) == (None, None, None)
        direct = self._direct.get(plan.name)
        if out is not None and plain and direct is not None:
            # whole chunks, one per time step, decoded straight into place (see zarr_chunks);
            # ``pick``: a subset or another order of the levels, copied from a scratch chunk
            decoder, pick = direct
            ts = range(start, stop, step)
            steps = [out[k] if plan.level_index is not None else out[k, 0] for k in range(len(ts))]
            tail = (0,) * (src.ndim - 1)
            jobs = [((t, *tail), o) for t, o in zip(ts, steps, strict=True)]
            for (t, _), o, ok in zip(jobs, steps, decode_all(decoder, jobs, self._threads, pick), strict=True):
                if not ok:  # no chunk file (zarr's fill value) or a frame without its size
                    block = np.asarray(src[t])
                    o[...] = block if pick is None else block[pick]
            return out
        sel: list[Any] = []
        reverse = False
        for d in plan.dims:
            if d == info.time_dim:
                sel.append(slice(start, stop, step))
            elif d == info.level_dim:
                level_sel, reverse = _level_selector(plan.level_index or [])
                sel.append(level_sel)
            elif d == info.member_dim:
                sel.append(self.member)
            else:
                sel.append(slice(None))
        kept = [d for d in plan.dims if d != info.member_dim]
        order = [kept.index(d) for d in (info.time_dim, info.level_dim, info.lat_dim, info.lon_dim) if d in kept]
        # slices and integers take zarr's basic selection, much faster than an orthogonal one
        basic = all(isinstance(v, slice | int) for v in sel)
        if out is not None and basic and src.dtype == np.float32 and plain:
            # Decode straight into the caller's buffer: ``out`` viewed in the store's axis order.
            target = out[:, 0] if plan.level_index is None else (out[:, ::-1] if reverse else out)
            src.get_basic_selection(tuple(sel), out=_nd_buffer(target.transpose(np.argsort(order))))
            return out
        block = np.asarray(src[tuple(sel)] if basic else src.oindex[tuple(sel)]).transpose(order)
        block = self._decode(plan.name, block[:, ::-1] if reverse else block)
        block = block[:, None] if plan.level_index is None else block
        if out is None:
            return block
        out[...] = block
        return out

    def _first_unreadable(self, plan: VarPlan, start: int, stop: int, step: int) -> int:
        """The first time index of ``range(start, stop, step)`` that fails to read on its own."""
        for t in range(start, min(stop, len(self.info.times)), step):
            try:
                self._read_raw(plan, t, t + 1, 1, None)
            except Exception:
                return t
        return start

    def _decode(self, name: str, block: np.ndarray) -> np.ndarray:
        fill, scale, offset = self.info.decode.get(name, (None, None, None))
        if fill is None and scale is None and offset is None:
            return block
        out = block.astype(np.float32)
        if fill is not None:
            out[block == fill] = np.nan
        if scale is not None:
            out *= np.float32(scale)
        if offset is not None:
            out += np.float32(offset)
        return out
