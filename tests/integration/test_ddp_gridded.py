"""Two-process CPU DDP (gloo) of the gridded rollout pipeline from the CLI.

One run directory written once by rank 0, disjoint per-rank training samples (read back from
the real run), one ``final.ckpt`` per stage, and final WeatherBench-2 RMSEs that match a
single-process run with the same global batch and the same number of optimizer steps.

DDP re-launches the command for rank 1, so the run goes through the real CLI in a subprocess.
To see which samples each rank trained on, the subprocess runs *this module* as ``__main__``
(``python -m tests.integration.test_ddp_gridded fit ...``): Lightning re-launches the same module
for rank 1, so both ranks install the probe below, which records ``meta["time_index"]`` of every
training and test batch, then hand over to :func:`sciadapt.cli.main` unchanged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROBE_ENV = "SCIADAPT_TEST_DDP_PROBE"
REPO = Path(__file__).resolve().parents[2]

STAGES = ("single_step", "rollout2")
B = 4  # per-rank batch under DDP; the single-process run uses 2 * B
FIT_TIMEOUT_S = 240  # one run takes ~15 s on 2 busy cores
N_TIME = 72  # -> 40 train samples (n_input 2, n_lead 2): 2 * B divides it, so DDP and single see the same batches

PIPELINE = """
name: tiny_ddp_gridded
seed: 0
run_dir: {runs}
backbone: {{name: graphcast_tiny}}
head: {{name: grid}}
task: {{name: rollout}}
data:
  name: gridded
  path: {store}
  variables: [t2m, z]
  levels: [500]
  n_input: 2
  n_lead: 2
  split: fractions
  split_fractions: [0.6, 0.2, 0.2]
  batch_size: {batch}
  eval_batch_size: 4
  num_workers: 0
trainer: {{accelerator: cpu, enable_progress_bar: false, num_sanity_val_steps: 0}}
stages:
  - name: single_step
    rollout: {{steps: 1}}
    max_epochs: 2
    optim: {{lr: 3.0e-3}}
  - name: rollout2
    rollout: {{steps: 2}}
    max_epochs: 1
    optim: {{lr: 1.0e-3}}
evaluation:
  baselines: [persistence]
  metrics: [rmse]
"""


# ------------------------------------------------------------------------------------------ probe


def _install_probe(out_dir: Path) -> None:
    """Record, per process, the store time indices of every training and test batch."""
    import torch

    from sciadapt.tasks.rollout import RolloutTask

    def rank() -> int:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return int(torch.distributed.get_rank())
        return 0

    def record(kind: str, task: Any, batch: Any) -> None:
        row = {
            "kind": kind,
            "rank": rank(),
            "world": int(task.trainer.world_size),
            "stage": task.stage.name,
            "epoch": int(task.current_epoch),
            "step": int(task.global_step),
            "time_index": [int(t) for t in batch["meta"]["time_index"]],
        }
        with open(out_dir / f"pid{os.getpid()}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    train_step, test_step = RolloutTask.training_step, RolloutTask.test_step

    def training_step(self: Any, batch: Any, batch_idx: int) -> Any:
        record("train", self, batch)
        return train_step(self, batch, batch_idx)

    def test_step_(self: Any, batch: Any, batch_idx: int) -> Any:
        record("test", self, batch)
        return test_step(self, batch, batch_idx)

    RolloutTask.training_step = training_step  # type: ignore[method-assign]
    RolloutTask.test_step = test_step_  # type: ignore[method-assign]


def _read_probe(out_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(out_dir.glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line]
    return rows


if __name__ == "__main__":  # the CLI with the probe; rank 1 is re-launched as this module too
    if os.environ.get(PROBE_ENV):
        _install_probe(Path(os.environ[PROBE_ENV]))
    from sciadapt.cli import main

    sys.exit(main(sys.argv[1:]))


# ------------------------------------------------------------------------------------------ tests

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.data.gridded.make import make_dataset, write_zarr  # noqa: E402


def _sampling() -> tuple[Any, Any]:
    # they live in sciadapt.datamodules.sampling now; the gridded datamodule keeps re-exporting them
    from sciadapt.datamodules.gridded import ShardedEpochSampler, shard_indices

    return ShardedEpochSampler, shard_indices


def _fit(args: list[str], probe: Path | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.pop(PROBE_ENV, None)
    if probe is not None:
        probe.mkdir(parents=True, exist_ok=True)
        env[PROBE_ENV] = str(probe)
    cmd = [
        sys.executable,
        "-m",
        "tests.integration.test_ddp_gridded",
        "fit",
        *args,
        "trainer.enable_progress_bar=false",
    ]
    t0 = time.perf_counter()
    # its own session, so that a hung run is ended with every rank it launched (ranks are grandchildren)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=FIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"`{' '.join(cmd)}` ran over {FIT_TIMEOUT_S} s\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), time.perf_counter() - t0


def _rmse_by_lead(row: dict[str, Any]) -> dict[str, float]:
    return {f"{v}@{lead}h": float(x) for v, m in row["by_variable"].items() for lead, x in m["rmse"].items()}


def test_shards_are_disjoint_for_the_train_split_size(tmp_path: Path) -> None:
    from sciadapt.config import build_datamodule, load_config
    from sciadapt.stages.plan import plan

    sampler_cls, shard_indices = _sampling()
    store = write_zarr(make_dataset(n_time=N_TIME, n_lat=8, n_lon=12), tmp_path / "tiny.zarr")
    pipe = tmp_path / "p.yaml"
    pipe.write_text(PIPELINE.format(runs=tmp_path / "runs", store=store, batch=B))
    n = len(build_datamodule(plan(load_config(str(pipe)))[0].data).dataset("train"))
    assert n == 40 and n % (2 * B) == 0  # the size the DDP test below relies on
    for stage in range(len(STAGES)):
        seed = 0 * 131 + stage  # the runner's shuffle seed: cfg.seed * 131 + stage index
        for epoch in range(3):
            a, b = (shard_indices(n, epoch, seed, r, 2, True) for r in (0, 1))
            assert len(a) == len(b) == n // 2
            assert not set(a) & set(b) and set(a) | set(b) == set(range(n))
            # the sampler Lightning keeps under DDP yields exactly these shards
            for r, shard in ((0, a), (1, b)):
                s = sampler_cls(n, seed=seed, shuffle=True, num_replicas=2, rank=r)
                s.set_epoch(epoch)
                assert list(s) == shard and len(s) == len(shard)
    # an odd count: one padded repeat so both ranks take the same number of steps
    a, b = (shard_indices(n + 1, 0, 0, r, 2, True) for r in (0, 1))
    assert len(a) == len(b) and len(set(a) & set(b)) == 1


@pytest.mark.slow  # 25 s; tests/integration/test_ddp.py keeps two-process DDP in the default run
@pytest.mark.timeout(600)
def test_two_process_ddp_gridded_matches_single_process(tmp_path: Path) -> None:
    from sciadapt.config import build_datamodule, load_config
    from sciadapt.stages.plan import plan

    _, shard_indices = _sampling()
    store = write_zarr(make_dataset(n_time=N_TIME, n_lat=8, n_lon=12), tmp_path / "tiny.zarr")
    pipe_ddp, pipe_single = tmp_path / "ddp.yaml", tmp_path / "single.yaml"
    pipe_ddp.write_text(PIPELINE.format(runs=tmp_path / "ddp", store=store, batch=B))
    pipe_single.write_text(PIPELINE.format(runs=tmp_path / "single", store=store, batch=2 * B))

    ddp, ddp_s = _fit([str(pipe_ddp), "trainer.devices=2", "trainer.strategy=ddp"], probe=tmp_path / "probe")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single, single_s = _fit([str(pipe_single)])
    assert single.returncode == 0, single.stderr[-3000:]

    # 1. one run (rank 1 joined rank 0's), finished, summary printed once
    runs = list((tmp_path / "ddp").glob("*/*"))
    assert len(runs) == 1, runs
    run = runs[0]
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "done" and state["completed"] == list(STAGES), state
    assert ddp.stdout.count("summary:") == 1, ddp.stdout[-2000:]
    (single_run,) = (tmp_path / "single").glob("*/*")

    # 4. checkpoints written once: one final.ckpt per stage, nothing rank-suffixed, no leftovers
    ckpts = sorted(p.relative_to(run).as_posix() for p in run.rglob("*.ckpt"))
    assert ckpts == sorted(f"checkpoints/{s}/final.ckpt" for s in STAGES), ckpts
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in single_run.iterdir())

    # 2. disjoint training samples, read back from the real run; exactly the pure-function shards
    dm = build_datamodule(plan(load_config(str(pipe_ddp)))[0].data)
    times = [int(t) for t in dm.dataset("train").indices]  # dataset position -> store time index
    n = len(times)
    rows = _read_probe(tmp_path / "probe")
    train = [r for r in rows if r["kind"] == "train"]
    assert {r["rank"] for r in train} == {0, 1} and {r["world"] for r in train} == {2}
    for i, stage in enumerate(STAGES):
        epochs = sorted({r["epoch"] for r in train if r["stage"] == stage})
        assert epochs, stage
        for epoch in epochs:
            seen = {}
            for rank in (0, 1):
                got = [
                    t
                    for r in train
                    if (r["stage"], r["epoch"], r["rank"]) == (stage, epoch, rank)
                    for t in r["time_index"]
                ]
                want = [times[p] for p in shard_indices(n, epoch, 0 * 131 + i, rank, 2, True)]
                assert got == want, (stage, epoch, rank)
                seen[rank] = got
            assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == set(times), (stage, epoch)

    # the same number of optimizer steps as the single-process run with batch 2B
    ddp_sum = json.loads((run / "summary.json").read_text())
    single_sum = json.loads((single_run / "summary.json").read_text())
    for s in STAGES:
        assert ddp_sum["stages"][s]["steps"] == single_sum["stages"][s]["steps"], s

    # measured values first (printed with -s), then the assertions on them
    def rows_by_model(summary: dict[str, Any]) -> dict[str, Any]:
        return {r["model"]: r for r in summary["evaluation"]["rows"]}

    weight_diff = {}
    for s in STAGES:
        wa = torch.load(run / "checkpoints" / s / "final.ckpt", weights_only=True)["state_dict"]
        wb = torch.load(single_run / "checkpoints" / s / "final.ckpt", weights_only=True)["state_dict"]
        assert wa.keys() == wb.keys()
        weight_diff[s] = max(float((wa[k] - wb[k]).abs().max() / wb[k].abs().max().clamp_min(1e-12)) for k in wb)
    pers_a, pers_b = (_rmse_by_lead(rows_by_model(x)["persistence"]) for x in (ddp_sum, single_sum))
    a, b = _rmse_by_lead(ddp_sum["final"]), _rmse_by_lead(single_sum["final"])
    rel = {k: abs(a[k] - b[k]) / b[k] for k in b}
    print(f"\nwall: DDP run {ddp_s:.1f} s, single-process run {single_s:.1f} s")
    print(f"final weights, max |ddp - single| / max |single| per tensor: {weight_diff}")
    for k in b:
        print(
            f"final RMSE {k}: ddp {a[k]:.6g}  single {b[k]:.6g}  rel diff {rel[k]:.2e}  (persistence {pers_b[k]:.4g})"
        )

    # gradients are averaged over the ranks: 2 x B per rank trains exactly like 2B in one process
    # (the same global batches, see N_TIME), up to float summation order in the all-reduce
    assert max(weight_diff.values()) < 1e-4, weight_diff

    # evaluation scores the whole test split on every rank, not this rank's shard of it
    test_times = sorted(int(t) for t in dm.dataset("test").indices)
    tested = [r for r in rows if r["kind"] == "test" and r["rank"] == 0]
    for s in STAGES:
        got = sorted(t for r in tested if r["stage"] == s for t in r["time_index"])
        assert got == test_times, f"stage {s}: rank 0 scored test times {got}, the test split is {test_times}"
    # the persistence baseline trains nothing: it must be equal to the single-process score
    assert pers_a == pytest.approx(pers_b, rel=1e-6)

    # 3. final test RMSE by lead within 1e-4 (relative) of the single-process run. Measured: <= 1e-7
    # (float summation order in the all-reduce; weights differ by ~3e-6). A real divergence moves it by
    # 1e-2 or more: with the test split sharded over the ranks it was 0.5-2 %.
    assert a.keys() == b.keys() and len(a) == 4
    assert max(rel.values()) < 1e-4, rel
    # and training under DDP learned something: better than persistence at every lead
    assert all(a[k] < pers_b[k] for k in a), (a, pers_b)
