"""neuralforecast's NHITS as a peer of sciadapt's N-HiTS, run in its side venv (see ``envs.py``).

``run_neuralforecast`` builds (once) ``benchmarks/peers/.venvs/neuralforecast``, runs ``nf_nhits.py``
there on the same file, split, horizon and context as our benchmark cell and returns its JSON::

    from peers.nf import run_neuralforecast      # with benchmarks/ on sys.path
    row = run_neuralforecast("../shared/data/ett/ETTh1.csv", "ett_hourly", 96, 512, "ours", seed=1)
    row["mse"], row["mae"], row["train_seconds"], row["steps"], row["test_windows"]

Settings:

* ``"defaults"``: neuralforecast's documented ``NHITS`` defaults; only ``h`` and ``input_size`` (=
  ``context_length``, which NHITS requires) are given, plus the seed.
* ``"ours"``: the settings of sciadapt's bundled ``nhits_ltsf`` pipeline (``load_config`` with the same
  data overrides the benchmark uses, plus ``overrides``), translated by :func:`nhits_arguments`: stacks,
  blocks, MLP widths, pool kernels, downsample ratios, pooling, interpolation, dropout, loss, optimiser
  and lr, cosine schedule, max steps, validation interval, early-stopping patience, restore-best, the
  number of windows per step and per-window standardisation (``task.instance_norm`` -> ``scaler_type
  "standard"``). What has no NHITS counterpart is listed under ``not_mapped`` in the result.

Both train on the train rows, validate on the validation rows and score the stride-1 test windows of
sciadapt's ``timeseries`` datamodule (``nf_nhits.py`` checks the window count and cutoffs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:  # imported as peers.nf (benchmarks/ on sys.path) or run from this folder
    from .envs import PeerEnvError, caller_torch_version, ensure_env
except ImportError:  # pragma: no cover
    from envs import PeerEnvError, caller_torch_version, ensure_env  # type: ignore[no-redef]

SCRIPT = Path(__file__).resolve().parent / "nf_nhits.py"
SETTINGS = ("defaults", "ours")
PIPELINE = "nhits_ltsf"


class PeerRunError(RuntimeError):
    """The peer script ran but failed or printed no result."""


def nhits_arguments(cfg: Any) -> tuple[dict[str, Any], list[str]]:
    """neuralforecast ``NHITS`` arguments equivalent to a sciadapt N-HiTS pipeline config.

    Returns:
        ``(arguments, not_mapped)``: JSON-serialisable keyword arguments for ``nf_nhits.py``
        (``loss``, ``optimizer``, ``lr_schedule``, ``windows_per_series_batch`` and ``restore_best``
        are turned into objects / behaviour there) and the settings that have no NHITS equivalent.
    """
    bb = dict(cfg.backbone)
    if bb.get("name") != "nhits":
        raise ValueError(f"pipeline backbone is {bb.get('name')!r}, not nhits")
    if len(cfg.stages) != 1:
        raise ValueError(f"expected one training stage, the pipeline has {len(cfg.stages)}")
    stage = cfg.stages[0]
    task = dict(cfg.task or {}) if getattr(cfg, "task", None) is not None else {}
    data = dict(cfg.data)
    not_mapped: list[str] = []
    n_stacks = len(bb["n_blocks"])
    pooling = {"max": "MaxPool1d", "avg": "AvgPool1d"}
    activations = {"relu": "ReLU", "gelu": "GELU", "tanh": "Tanh", "selu": "SELU", "leaky_relu": "LeakyReLU"}
    if int(bb.get("feature_dim", 1)) != 1:
        not_mapped.append(
            f"backbone.feature_dim={bb['feature_dim']} (NHITS emits one forecast curve per block, i.e. feature_dim=1)"
        )
    if stage.schedule.name not in ("cosine", "constant") or stage.schedule.warmup_steps:
        not_mapped.append(f"schedule {stage.schedule.name} with warm-up {stage.schedule.warmup_steps}")
    if stage.early_stopping is not None and stage.early_stopping.monitor != "val/loss":
        not_mapped.append(f"early stopping on {stage.early_stopping.monitor} (NHITS monitors its validation loss)")
    if stage.early_stopping is not None and stage.early_stopping.min_delta:
        not_mapped.append(f"early_stopping.min_delta={stage.early_stopping.min_delta}")
    val_every = stage.limit_train_batches
    if val_every is None or not isinstance(val_every, int):
        not_mapped.append(f"limit_train_batches={val_every!r}: validation every 100 steps instead")
        val_every = 100
    args = {
        "stack_types": ["identity"] * n_stacks,
        "n_blocks": list(bb["n_blocks"]),
        "mlp_units": [list(bb["mlp_units"])] * n_stacks,
        "n_pool_kernel_size": list(bb["pool_kernel_sizes"]),
        "n_freq_downsample": list(bb["downsample_freqs"]),
        "pooling_mode": pooling[bb.get("pooling", "max")],
        "interpolation_mode": bb.get("interpolation", "linear"),
        "dropout_prob_theta": float(bb.get("dropout", 0.0)),
        "activation": activations.get(str(bb.get("activation", "relu")).lower(), bb.get("activation")),
        "loss": dict(cfg.head).get("loss", "mae"),
        "learning_rate": stage.optim.lr,
        "optimizer": stage.optim.name,
        "weight_decay": stage.optim.weight_decay,
        "lr_schedule": {"name": stage.schedule.name, "min_lr": stage.schedule.min_lr},
        "max_steps": stage.max_steps,
        "val_check_steps": val_every,
        "early_stop_patience_steps": stage.early_stopping.patience if stage.early_stopping is not None else -1,
        "restore_best": bool(stage.restore_best),
        "gradient_clip_val": stage.gradient_clip_val,
        # sciadapt draws batch_size multivariate windows per step (batch_size x channels series)
        "windows_per_series_batch": int(data["batch_size"]),
        "scaler_type": "standard" if task.get("instance_norm") else "identity",
        # our train windows lie wholly inside the train rows; NHITS by default also takes the last
        # h - 1 windows whose horizon runs past them (padded and masked out of the loss)
        "training_data_availability_threshold": [0.0, 1.0],
    }
    if stage.optim.name == "sgd" or stage.optim.betas:
        not_mapped.append(f"optimizer {stage.optim.name} betas={stage.optim.betas}")
    if stage.max_steps is None:
        not_mapped.append("max_epochs (NHITS counts steps): 1000 steps")
        args["max_steps"] = 1000
    return args, not_mapped


def our_test_targets(cfg: Any) -> dict[str, Any]:
    """Count and fingerprints (sum, sum of squares) of the scaled targets of our test windows.

    Built by sciadapt's own datamodule from the same config, so equal fingerprints mean the peer scored
    the same windows with the same scaling, value for value (up to float32 rounding).
    """
    import numpy as np

    from sciadapt.config import build_datamodule

    dm = build_datamodule(dict(cfg.data))
    ds = dm.dataset("test")
    y = np.asarray(ds.values, dtype=np.float64)[:, : ds.n_targets]
    first = np.asarray(ds.starts, dtype=np.int64) + ds.context_length
    sums = []
    for v in (y, y * y):
        prefix = np.concatenate([np.zeros((1, v.shape[1])), np.cumsum(v, axis=0)])
        sums.append(float((prefix[first + ds.horizon] - prefix[first]).sum()))
    return {"test_windows": len(ds), "y_sum": sums[0], "y_sq_sum": sums[1]}


def _pipeline_config(
    dataset_path: Path, split: str, horizon: int, context_length: int, seed: int, overrides: list[str]
):
    from sciadapt.config import load_config

    return load_config(
        PIPELINE,
        [
            f"data.path={dataset_path}",
            f"data.split={split}",
            f"data.horizon={horizon}",
            f"data.context_length={context_length}",
            f"seed={seed}",
            *overrides,
        ],
    )


def run_neuralforecast(
    dataset_path: str | os.PathLike[str],
    split: str,
    horizon: int,
    context_length: int,
    setting: str = "defaults",
    seed: int = 1,
    *,
    max_steps: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    threads: int | None = None,
    match_torch: bool = False,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Train and test neuralforecast ``NHITS`` on one benchmark cell in the side venv.

    Args:
        dataset_path: The ETT csv (``.csv`` or ``.csv.gz``).
        split: ``"ett_hourly"`` or ``"ett_minutely"`` (sciadapt's ``data.split``).
        horizon: Forecast length ``h``.
        context_length: Input length (NHITS ``input_size``).
        setting: ``"defaults"`` (neuralforecast's) or ``"ours"`` (the ``nhits_ltsf`` pipeline's).
        seed: NHITS ``random_seed`` (and the pipeline's ``seed`` for ``"ours"``).
        max_steps: Override the number of training steps (smoke runs); validation then runs at
            least once, at the end, in the ``"ours"`` setting.
        overrides: Extra ``key=value`` pipeline overrides applied before translating (``"ours"``).
        threads: torch threads in the peer process (default: this process's ``torch.get_num_threads()``).
        match_torch: Build the venv with this interpreter's torch release instead of the pinned CPU build.
        timeout: Seconds before the peer process is killed.

    Returns:
        The peer's JSON: ``dataset``, ``horizon``, ``setting``, ``mse``, ``mae``, ``train_seconds``,
        ``predict_seconds``, ``steps``, ``test_windows``, ``val_history``, ... plus ``not_mapped``
        (``"ours"``), ``wall_seconds`` and ``env`` (venv path).

    Raises:
        PeerEnvError: If the venv cannot be built (e.g. offline); the message says why.
        PeerRunError: If the peer script fails.
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    dataset_path = Path(dataset_path).resolve()
    if not dataset_path.is_file():
        raise FileNotFoundError(dataset_path)
    try:
        python = ensure_env("neuralforecast", caller_torch_version() if match_torch else None, verbose=True)
    except PeerEnvError as err:
        raise PeerEnvError(f"neuralforecast peer unavailable: {err}") from err
    if threads is None:
        try:
            import torch

            threads = torch.get_num_threads()
        except ImportError:
            threads = os.cpu_count() or 1
    not_mapped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="peer_nf_") as tmp:
        cmd = [
            str(python),
            str(SCRIPT),
            "--data",
            str(dataset_path),
            "--split",
            split,
            "--horizon",
            str(horizon),
            "--input-size",
            str(context_length),
            "--setting",
            setting,
            "--seed",
            str(seed),
            "--threads",
            str(threads),
            "--out",
            str(Path(tmp) / "result.json"),
        ]
        if max_steps is not None:
            cmd += ["--max-steps", str(max_steps)]
        cfg = _pipeline_config(dataset_path, split, horizon, context_length, seed, list(overrides))
        if setting == "ours":
            params, not_mapped = nhits_arguments(cfg)
            params_file = Path(tmp) / "params.json"
            params_file.write_text(json.dumps(params))
            cmd += ["--params", str(params_file)]
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        env.pop("PYTHONPATH", None)  # nothing of ours leaks into the peer's interpreter
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - start
        out = Path(tmp) / "result.json"
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise PeerRunError(f"nf_nhits.py failed (exit {proc.returncode}):\n  {' '.join(cmd)}\n{tail}")
        result: dict[str, Any] = json.loads(out.read_text())
    ours = our_test_targets(cfg)
    same = ours["test_windows"] == result["test_windows"] and all(
        abs(ours[k] - result[k]) <= 1e-6 * max(1.0, abs(ours[k])) for k in ("y_sum", "y_sq_sum")
    )
    result["windows_check"] = {**ours, "same_windows_and_values": same}
    if not same:
        raise PeerRunError(f"neuralforecast scored other test windows than ours: ours {ours}, peer {result}")
    result["not_mapped"] = not_mapped
    result["wall_seconds"] = round(wall, 1)
    result["env"] = str(python.parent.parent)
    return result


if __name__ == "__main__":  # smoke: python benchmarks/peers/nf.py [max_steps]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    data = Path(__file__).resolve().parents[3] / "shared" / "data" / "ett" / "ETTh1.csv"
    for s in SETTINGS:
        r = run_neuralforecast(data, "ett_hourly", 96, 512, s, seed=1, max_steps=steps)
        r.pop("params", None)
        print(json.dumps(r, default=str))
