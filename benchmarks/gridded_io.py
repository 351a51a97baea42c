"""Streaming throughput of the gridded datamodule against naive xarray+dask, xbatcher and raw zarr.

    python benchmarks/gridded_io.py                 # a >= 4 GB synthetic store in a temp dir, deleted after
    python benchmarks/gridded_io.py --quick         # ~200 MB smoke check
    python benchmarks/gridded_io.py --dir /scratch --keep     # keep (and re-use) the store

The store is what ``sciadapt data prepare`` writes for a WeatherBench-2-like 1.5 degree grid:
variables ``t, z, u, v`` on 13 pressure levels over a 121 x 240 global grid, float32, one time step
per chunk (1, 13, 121, 240) = 1.5 MB, zstd level 3, zarr format 3. The fields are smooth large-scale
patterns plus noise, so zstd compresses them about as little as real reanalysis floats.

Every method streams the whole store as samples of two consecutive states (``n_input=1,
n_lead=1``: the chunks of ``t`` and ``t + 1`` of every variable), in ``--workers`` processes, each
with zarr's decoding thread pool set to its share of the cores (cores // processes):

* ``sciadapt``: ``GriddedDataModule.train_dataloader()`` (worker processes, prefetch, shuffled
  order, normalisation, NaN masks, forcings, shared-memory batch buffers), the way training reads;
* ``xarray+dask``: a Dataset whose items are ``ds[v].isel(time=slice(t, t + 2)).values`` on
  ``xr.open_zarr`` (dask arrays, one graph per item), in a DataLoader with the same workers (dask's
  synchronous scheduler in each: its thread pool deadlocks in forked workers);
* ``xbatcher``: ``xbatcher.BatchGenerator`` windows of 2 time steps (overlap 1) over the same dask
  dataset, through ``xbatcher.loaders.torch.MapDataset`` in the same DataLoader (skipped with a note
  when xbatcher is not installed);
* ``raw zarr``: ``--workers`` processes reading ``array[t:t + 2]`` of every variable with zarr and
  returning nothing: the issue's reference for the ratios;
* ``bare decode``: ``--workers`` processes reading the same chunk files and zstd-decompressing
  each into a re-used buffer with numcodecs, no zarr, returning nothing: the floor under every
  reader. zarr's own machinery (event loop, thread hops, a copy out of each decoded chunk) costs
  about a fifth on top of it, which the datamodule's direct chunk path
  (``datamodules/zarr_chunks.py``) avoids; so the table shows both ratios.

The first batch of each pass (worker start-up) is not timed. MB/s counts decoded state bytes
delivered (2 states per sample). Each method runs ``--rounds`` passes in alternating order (load
from other processes on a shared machine then hits all alike); the table shows the median rate,
the median of the per-round ratios to raw zarr, and the peak memory: the largest sum over the
process tree (main process and workers) of PSS (resident pages, those shared between processes
split among them), sampled every 50 ms in one extra, untimed pass per method (the sampler costs
about a quarter of the rate, so timed passes run without it). It ends with the issue's targets: sciadapt >= 0.8x raw
zarr, faster than xarray+dask and xbatcher, peak memory < 1.5 GB.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

VARIABLES = ("t", "z", "u", "v")
LEVELS = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)
N_LAT, N_LON = 121, 240
STORE_NAME = "gridded_io.zarr"


# ------------------------------------------------------------------------------------------ store


def step_bytes(n_vars: int) -> int:
    """Decoded bytes of one time step of the store."""
    return n_vars * len(LEVELS) * N_LAT * N_LON * 4


def write_store(path: Path, n_time: int, n_vars: int, seed: int = 0) -> None:
    """Write the synthetic store: metadata through xarray, then one chunk per (variable, time) via zarr."""
    import dask.array as da
    import zarr
    from zarr.codecs import ZstdCodec

    names = VARIABLES[:n_vars]
    shape = (n_time, len(LEVELS), N_LAT, N_LON)
    chunks = (1, len(LEVELS), N_LAT, N_LON)
    coords = {
        "time": pd.date_range("2000-01-01", periods=n_time, freq="6h"),
        "level": np.array(LEVELS, dtype=np.int64),
        "latitude": np.linspace(90.0, -90.0, N_LAT),
        "longitude": np.arange(N_LON) * 1.5,
    }
    dims = ("time", "level", "latitude", "longitude")
    template = xr.Dataset({n: (dims, da.zeros(shape, chunks=chunks, dtype=np.float32)) for n in names}, coords=coords)
    encoding = {n: {"chunks": chunks, "compressors": [ZstdCodec(level=3)]} for n in names}
    template.to_zarr(path, mode="w", compute=False, encoding=encoding, consolidated=False)

    rng = np.random.default_rng(seed)
    lat = np.deg2rad(coords["latitude"])[:, None]
    lon = np.deg2rad(coords["longitude"])[None, :]
    base = {
        n: np.stack([np.cos(lat) * (10 + k) + np.sin(2 * lon) * (k % 3) for k in range(len(LEVELS))]) for n in names
    }
    noise = [rng.normal(0.0, 1.0, chunks[1:]).astype(np.float32) for _ in range(7)]
    arrays = {n: zarr.open_array(str(path / n), mode="r+") for n in names}
    t0 = time.perf_counter()
    for t in range(n_time):
        phase = np.sin(2 * np.pi * t / 4.0 + lon)  # a diurnal wave moving west
        for i, n in enumerate(names):
            field = base[n] * (1 + 0.1 * i) + 2.0 * phase + 0.5 * noise[(t + 3 * i) % len(noise)]
            arrays[n][t] = field.astype(np.float32)
        if t % 50 == 0:
            done = (t + 1) * step_bytes(n_vars) / 2**30
            print(
                f"  writing store: {t + 1}/{n_time} steps ({done:.2f} GB, {time.perf_counter() - t0:.0f} s)", flush=True
            )


def store_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------ measuring


class PeakRSS:
    """Largest memory of this process plus its children (PSS where the OS gives it), sampled in a thread."""

    def __init__(self, every: float = 0.05) -> None:
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:  # fall back to the high-water marks the OS keeps
            return
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    # PSS splits pages shared by forked workers (torch, shared-memory batches)
                    # between them instead of counting them once per process as RSS does
                    mem = p.memory_full_info()
                    total += getattr(mem, "pss", mem.rss)
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.peak == 0:
            import resource

            kb = (
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            )
            self.peak = kb * 1024


def time_loader(batches: Iterable[Any], count: Callable[[Any], int]) -> tuple[int, float]:
    """Samples after the first batch and the seconds they took."""
    it = iter(batches)
    next(it)  # worker start-up, not timed
    n, t0 = 0, time.perf_counter()
    for batch in it:
        n += count(batch)
    return n, time.perf_counter() - t0


def run_sciadapt(path: Path, workers: int, batch_size: int, stats: Path) -> tuple[int, float]:
    from sciadapt.datamodules.gridded import GriddedDataModule

    dm = GriddedDataModule(
        str(path),
        split_fractions=[1.0, 0.0, 0.0],
        batch_size=batch_size,
        num_workers=workers,
        stats_path=str(stats),
    )
    dm.setup()
    loader = dm.train_dataloader()
    try:
        return time_loader(loader, lambda b: int(b["x"].shape[0]))
    finally:
        del loader
        gc.collect()


class NaiveXarray(torch.utils.data.Dataset):
    """What a first attempt looks like: dask-backed ``open_zarr``, ``isel(...).values`` per item."""

    def __init__(self, path: Path, names: list[str], n: int) -> None:
        self.path, self.names, self.n = path, names, n
        self._ds: xr.Dataset | None = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, t: int) -> torch.Tensor:
        if self._ds is None:
            self._ds = xr.open_zarr(self.path, consolidated=False)
        ds = self._ds
        return torch.from_numpy(np.stack([ds[v].isel(time=slice(t, t + 2)).values for v in self.names]))


def _share_cores(n_procs: int) -> None:
    """Give zarr's decoding thread pool this process's share of the cores (as the datamodule does)."""
    import zarr

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    zarr.config.set({"threading.max_workers": max(1, cores // n_procs)})


def _dask_in_worker(_: int) -> None:
    """Dask's threaded scheduler deadlocks in a forked DataLoader worker once the parent has used it
    (its thread pool is copied without its threads); the usual fix is one synchronous scheduler per
    worker process, which also keeps every method at ``--workers`` busy processes."""
    import dask

    dask.config.set(scheduler="synchronous")
    info = torch.utils.data.get_worker_info()
    _share_cores(info.num_workers if info is not None else 1)


def _loader(dataset: torch.utils.data.Dataset, workers: int, batch_size: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        prefetch_factor=2 if workers else None,
        worker_init_fn=_dask_in_worker,
    )


def run_naive(path: Path, names: list[str], n: int, workers: int, batch_size: int) -> tuple[int, float]:
    loader = _loader(NaiveXarray(path, names, n), workers, batch_size)
    return time_loader(loader, lambda b: int(b.shape[0]))


def run_xbatcher(path: Path, names: list[str], workers: int, batch_size: int) -> tuple[int, float]:
    import xbatcher
    from xbatcher.loaders.torch import MapDataset

    data = xr.open_zarr(path, consolidated=False)[names].to_array("variable")
    dims = {"time": 2, "level": len(LEVELS), "latitude": N_LAT, "longitude": N_LON}
    gen = xbatcher.BatchGenerator(data, input_dims=dims, input_overlap={"time": 1})
    loader = _loader(MapDataset(gen), workers, batch_size)
    return time_loader(loader, lambda b: int(b.shape[0]))


def _raw_worker(path: str, names: list[str], indices: list[int], n_procs: int, go: Any, out: Any) -> None:
    import zarr

    _share_cores(n_procs)
    arrays = [zarr.open_array(f"{path}/{n}", mode="r") for n in names]
    go.wait()
    total = 0
    for t in indices:
        for a in arrays:
            total += np.asarray(a[t : t + 2]).nbytes
    out.put(total)


def _run_procs(target: Callable[..., None], args: Callable[[list[int]], tuple], n: int, workers: int) -> float:
    """Seconds for ``workers`` forked processes to run ``target(*args(indices), go, out)`` over
    every ``workers``-th sample each; start-up (imports, opening the store) is not timed."""
    ctx = mp.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args(list(range(r, n, workers))), go, out)) for r in range(workers)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let them import and open the store: start-up is not timed for anyone
    t0 = time.perf_counter()
    go.set()
    for _ in procs:
        out.get()
    seconds = time.perf_counter() - t0
    for p in procs:
        p.join()
    return seconds


def run_raw(path: Path, names: list[str], n: int, workers: int) -> tuple[int, float]:
    return n, _run_procs(_raw_worker, lambda idx: (str(path), names, idx, workers), n, workers)


def _decode_worker(path: str, names: list[str], indices: list[int], go: Any, out: Any) -> None:
    import numcodecs

    codec = numcodecs.Zstd()
    bufs = [np.empty((len(LEVELS), N_LAT, N_LON), np.float32) for _ in range(2)]
    go.wait()
    total = 0
    for t in indices:
        for n in names:
            for k in range(2):
                with open(f"{path}/{n}/c/{t + k}/0/0/0", "rb") as fh:
                    codec.decode(fh.read(), out=bufs[k].reshape(-1))
                total += bufs[k].nbytes
    out.put(total)


def run_decode(path: Path, names: list[str], n: int, workers: int) -> tuple[int, float]:
    """The floor under every reader: chunk files read and zstd-decompressed into re-used buffers
    with numcodecs, no zarr (the store's key layout, ``<var>/c/<t>/0/0/0``, hard-coded)."""
    return n, _run_procs(_decode_worker, lambda idx: (str(path), names, idx), n, workers)


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=None, help="folder for the store (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the store (a later run with --dir re-uses it)")
    parser.add_argument("--quick", action="store_true", help="a ~200 MB store with two variables (smoke check)")
    parser.add_argument("--size-gb", type=float, default=None, help="decoded store size (default 4.0, --quick 0.2)")
    parser.add_argument("--workers", type=int, default=2, help="processes per method (default 2)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument(
        "--skip", nargs="*", default=[], help="methods to leave out: sciadapt naive xbatcher raw decode"
    )
    parser.add_argument("--rounds", type=int, default=3, help="passes per method, alternating order (default 3)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    n_vars = 2 if args.quick else len(VARIABLES)
    size_gb = args.size_gb if args.size_gb is not None else (0.2 if args.quick else 4.0)
    n_time = max(8, int(np.ceil(size_gb * 2**30 / step_bytes(n_vars))))
    names = list(VARIABLES[:n_vars])
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="gridded_io-"))
    root.mkdir(parents=True, exist_ok=True)
    path = root / STORE_NAME
    stats = root / "gridded_io_stats.json"
    results: list[dict[str, Any]] = []
    try:
        reuse = path.is_dir() and xr.open_zarr(path, consolidated=False).sizes.get("time") == n_time
        if not reuse:
            shutil.rmtree(path, ignore_errors=True)
            stats.unlink(missing_ok=True)
            print(f"writing {n_time} steps x {n_vars} variables x {len(LEVELS)} levels x {N_LAT} x {N_LON} to {path}")
            write_store(path, n_time, n_vars)
        decoded = n_time * step_bytes(n_vars)
        print(
            f"store: {decoded / 2**30:.2f} GB decoded, {store_size(path) / 2**30:.2f} GB on disk (zstd), {n_time} steps"
        )
        if "sciadapt" not in args.skip and not stats.exists():
            from sciadapt.datamodules.gridded import GriddedDataModule

            t0 = time.perf_counter()
            GriddedDataModule(str(path), split_fractions=[1.0, 0.0, 0.0], stats_path=str(stats), num_workers=0).setup()
            print(f"statistics (one dask pass, cached for later runs): {time.perf_counter() - t0:.1f} s")

        n_samples = n_time - 1
        per_sample = 2 * step_bytes(n_vars)
        methods: dict[str, Callable[[], tuple[int, float]]] = {
            "raw zarr": lambda: run_raw(path, names, n_samples, args.workers),
            "sciadapt": lambda: run_sciadapt(path, args.workers, args.batch_size, stats),
            "xarray+dask": lambda: run_naive(path, names, n_samples, args.workers, args.batch_size),
            "xbatcher": lambda: run_xbatcher(path, names, args.workers, args.batch_size),
            "bare decode": lambda: run_decode(path, names, n_samples, args.workers),
        }
        skip = {"raw": "raw zarr", "naive": "xarray+dask", "decode": "bare decode"}
        for s in args.skip:
            methods.pop(skip.get(s, s), None)
        if "xbatcher" in methods and importlib.util.find_spec("xbatcher") is None:
            print("xbatcher: not installed (pip install xbatcher); left out")
            methods.pop("xbatcher")
        # Rounds in alternating order, so that load from other processes on a shared machine
        # hits every method alike; the table shows medians over rounds.
        # Timed passes carry no memory sampler: reading the process tree's smaps every 50 ms cost
        # 25 % of every method's rate here. Peak memory comes from one more, untimed pass each.
        runs: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
        peaks: dict[str, float] = {}
        for k in range(args.rounds + 1):
            order = list(methods) if k % 2 == 0 else list(reversed(methods))
            for name in order:
                if k == args.rounds:
                    print(f"memory pass: {name} ...", flush=True)
                    with PeakRSS() as rss:
                        methods[name]()
                    peaks[name] = rss.peak / 2**20
                else:
                    print(f"round {k + 1}/{args.rounds}: {name} ...", flush=True)
                    n, seconds = methods[name]()
                    runs[name].append({"samples": n, "seconds": seconds, "rate": n / seconds})
                gc.collect()
        for name, rs in runs.items():
            rate = float(np.median([r["rate"] for r in rs]))
            entry = {
                "method": name,
                "samples": int(rs[0]["samples"]),
                "samples_per_s": rate,
                "mb_per_s": rate * per_sample / 1e6,
                "peak_rss_mb": peaks[name],
                "rates": [r["rate"] for r in rs],
            }
            for ref, key in (("raw zarr", "vs_raw"), ("bare decode", "vs_decode")):
                if ref in runs and name != ref:
                    entry[key] = float(np.median([r["rate"] / q["rate"] for r, q in zip(rs, runs[ref], strict=True)]))
            results.append(entry)
    finally:
        if args.keep:
            print(f"store kept at {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)
            stats.unlink(missing_ok=True)
            if not args.dir:
                shutil.rmtree(root, ignore_errors=True)

    raw: dict[str, Any] | None = next((r for r in results if r["method"] == "raw zarr"), None)
    print()
    print(
        f"Streaming {n_time - 1} samples of 2 x {step_bytes(n_vars) / 2**20:.1f} MB, {args.workers} processes, "
        f"batch {args.batch_size}, median of {args.rounds} round(s)"
    )
    print("| method | samples/s | MB/s | vs raw zarr | vs bare decode | peak memory (MB, PSS) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        ratio = "1.00x" if r is raw else (f"{r['vs_raw']:.2f}x" if "vs_raw" in r else "-")
        floor = "1.00x" if r["method"] == "bare decode" else (f"{r['vs_decode']:.2f}x" if "vs_decode" in r else "-")
        print(
            f"| {r['method']} | {r['samples_per_s']:.1f} | {r['mb_per_s']:.0f} | {ratio} | {floor} "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    ours: dict[str, Any] | None = next((r for r in results if r["method"] == "sciadapt"), None)
    if ours is not None:
        print()
        for r in results:
            if r is not ours:
                print(f"sciadapt / {r['method']}: {ours['samples_per_s'] / r['samples_per_s']:.2f}x")
        checks = []
        if raw:
            checks.append(f">= 0.8x raw zarr: {'yes' if ours['vs_raw'] >= 0.8 else 'NO'}")
        for other in ("xarray+dask", "xbatcher"):
            peer = next((x for x in results if x["method"] == other), None)
            if peer:
                checks.append(
                    f"faster than {other}: {'yes' if ours['samples_per_s'] > peer['samples_per_s'] else 'NO'}"
                )
        checks.append(f"peak memory < 1.5 GB: {'yes' if ours['peak_rss_mb'] < 1536 else 'NO'}")
        print("targets: " + "; ".join(checks))
    if args.json:
        Path(args.json).write_text(json.dumps({"n_time": n_time, "n_vars": n_vars, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
