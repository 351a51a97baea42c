"""neuralforecast NHITS under the standard long-horizon protocol; runs INSIDE the neuralforecast venv.

Started by ``benchmarks/peers/nf.py`` (``run_neuralforecast``) with the interpreter of
``benchmarks/peers/.venvs/neuralforecast``; imports nothing from sciadapt. Prints one JSON object on the
last line of stdout (and writes it to ``--out`` if given).

Protocol, the same as sciadapt's ``timeseries`` datamodule (``data.split=ett_hourly`` / ``ett_minutely``):

* rows: train = the first 12 x 30 x 24 rows (x 4 for 15-minute data), validation the next 4 x 30 x 24,
  test the 4 x 30 x 24 after that; the rest of the file is not used;
* every channel z-scored with the mean and population std (ddof 0) of its train rows (a constant
  channel keeps std 1);
* channels are separate series (``unique_id`` = column name), forecast independently;
* training windows lie inside the train rows, validation windows forecast validation rows (their
  inputs may reach back into train), test windows forecast test rows at stride 1 with inputs reaching
  back: ``n_test - h + 1`` windows per channel, the first ending its input at the last validation row;
* MSE and MAE over every (window, step, channel) of the scaled test windows.

How: ``NeuralForecast.fit(train + validation rows, val_size=n_val)`` trains on windows inside the train
rows and validates on the validation rows; then ``cross_validation(train + validation + test rows,
n_windows=n_test - h + 1, step_size=1, refit=False, use_fitted=True)`` forecasts every test window with
the fitted weights, in one batched pass per series. The script checks that the forecast frame holds
exactly those windows (count, first and last cutoff) before scoring.

Settings:

* ``defaults``: ``NHITS(h, input_size)`` with every other argument at neuralforecast's documented
  default (3 identity stacks of 1 block, MLP 2 x 512, pools [2, 2, 1], downsample [4, 2, 1], MaxPool,
  linear interpolation, no dropout, MAE, Adam lr 1e-3 halved 3 times, 1000 steps, validation every 100
  steps without early stopping, 32 series x 1024 windows per batch, no scaler, seed 1 unless given);
  ``input_size`` has no default and is given (the caller's context length).
* ``ours``: the keyword arguments the caller passes in ``--params`` (a JSON file; ``nf.py`` derives
  them from sciadapt's ``nhits_ltsf`` pipeline), plus two things ``NHITS`` has no argument for: the
  cosine learning-rate schedule (``lr_schedule``) and restoring the weights of the best validation
  check before testing (``restore_best``), both done here with standard Lightning/torch pieces.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ETT_HOURS = (12 * 30 * 24, 4 * 30 * 24, 4 * 30 * 24)


def split_rows(split: str, n_rows: int) -> tuple[int, int, int]:
    """(train, validation, test) row counts of sciadapt's fixed ETT borders."""
    if split not in ("ett_hourly", "ett_minutely"):
        raise SystemExit(f"nf_nhits: split {split!r} is not supported (ett_hourly | ett_minutely)")
    per_hour = 1 if split == "ett_hourly" else 4
    n_train, n_val, n_test = (r * per_hour for r in ETT_HOURS)
    if n_rows < n_train + n_val + n_test:
        raise SystemExit(f"nf_nhits: {split} needs {n_train + n_val + n_test} rows, the file has {n_rows}")
    return n_train, n_val, n_test


def load_long_frame(path: Path, split: str) -> tuple[Any, list[str], tuple[int, int, int]]:
    """The used rows of the file, z-scored with train statistics, as a long (unique_id, ds, y) frame."""
    import numpy as np
    import pandas as pd

    wide = pd.read_csv(path)
    wide = wide.drop(columns=[c for c in ("date",) if c in wide.columns])
    wide = wide.select_dtypes("number")
    n_train, n_val, n_test = split_rows(split, len(wide))
    values = wide.to_numpy(dtype=np.float64)[: n_train + n_val + n_test]
    mean = values[:n_train].mean(axis=0)
    std = values[:n_train].std(axis=0, ddof=0)
    std[~(std > 0)] = 1.0
    scaled = ((values - mean) / std).astype(np.float32)
    columns = list(wide.columns)
    n = scaled.shape[0]
    frame = pd.DataFrame(
        {
            "unique_id": np.repeat(columns, n),
            "ds": np.tile(np.arange(n, dtype=np.int64), len(columns)),
            "y": scaled.T.reshape(-1),
        }
    )
    return frame, columns, (n_train, n_val, n_test)


def make_callback(restore_best: bool) -> Any:
    """A Lightning callback that records the validation curve, the step count and (optionally) the best weights."""
    import pytorch_lightning as pl

    class Track(pl.Callback):
        def __init__(self) -> None:
            self.history: list[tuple[int, float]] = []
            self.best = math.inf
            self.best_step: int | None = None
            self.best_state: dict[str, Any] | None = None
            self.steps = 0

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking:
                return
            value = trainer.callback_metrics.get("ptl/val_loss")
            if value is None:
                return
            value = float(value)
            self.history.append((int(trainer.global_step), value))
            if value < self.best:
                self.best, self.best_step = value, int(trainer.global_step)
                if restore_best:
                    self.best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.steps = int(trainer.global_step)

    return Track()


def build_model(args: argparse.Namespace, params: dict[str, Any], n_series: int, track: Any) -> Any:
    import torch
    from neuralforecast.losses.pytorch import MAE, MSE
    from neuralforecast.models import NHITS

    trainer = {
        "accelerator": args.accelerator,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "callbacks": [track],
    }
    kwargs: dict[str, Any] = {"h": args.horizon, "input_size": args.input_size, "random_seed": args.seed}
    if args.setting == "ours":
        p = dict(params)
        losses = {"mae": MAE, "mse": MSE}
        kwargs["loss"] = losses[p.pop("loss")]()
        kwargs["windows_batch_size"] = p.pop("windows_per_series_batch") * n_series
        kwargs["batch_size"] = n_series  # every step draws its windows from all channels
        optimizer = p.pop("optimizer")
        weight_decay = p.pop("weight_decay", 0.0)
        if optimizer != "adam" or weight_decay:
            kwargs["optimizer"] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optimizer]
            kwargs["optimizer_kwargs"] = {"weight_decay": weight_decay}
        schedule = p.pop("lr_schedule")
        steps = args.max_steps or p["max_steps"]
        if schedule["name"] == "cosine":
            # sciadapt's cosine without warm-up: lr * (floor + (1 - floor) (1 + cos(pi t / T)) / 2)
            kwargs["lr_scheduler"] = torch.optim.lr_scheduler.CosineAnnealingLR
            kwargs["lr_scheduler_kwargs"] = {"T_max": steps, "eta_min": schedule.get("min_lr", 0.0)}
        elif schedule["name"] == "constant":
            kwargs["lr_scheduler"] = torch.optim.lr_scheduler.ConstantLR
            kwargs["lr_scheduler_kwargs"] = {"factor": 1.0, "total_iters": 0}
        else:
            raise SystemExit(f"nf_nhits: lr_schedule {schedule} has no mapping")
        clip = p.pop("gradient_clip_val", None)
        if clip:
            trainer["gradient_clip_val"] = clip
        p.pop("restore_best", None)
        if args.max_steps:
            p["max_steps"] = args.max_steps
            p["val_check_steps"] = min(p["val_check_steps"], args.max_steps)
        kwargs.update(p)
    elif args.max_steps:
        kwargs["max_steps"] = args.max_steps
    return NHITS(**kwargs, **trainer)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="ETT csv (or .csv.gz)")
    p.add_argument("--split", required=True, choices=["ett_hourly", "ett_minutely"])
    p.add_argument("--horizon", type=int, required=True)
    p.add_argument("--input-size", type=int, required=True)
    p.add_argument("--setting", required=True, choices=["defaults", "ours"])
    p.add_argument("--params", type=Path, help="JSON file of NHITS arguments for --setting ours")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None, help="override max_steps (smoke runs)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    warnings.filterwarnings("ignore")
    import logging

    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "neuralforecast"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import neuralforecast
    import numpy as np
    import torch
    from neuralforecast import NeuralForecast

    if args.threads:
        torch.set_num_threads(args.threads)
    params: dict[str, Any] = {}
    if args.setting == "ours":
        if args.params is None:
            raise SystemExit("nf_nhits: --setting ours needs --params")
        params = json.loads(args.params.read_text())
    restore_best = bool(params.get("restore_best", False))

    frame, columns, (n_train, n_val, n_test) = load_long_frame(args.data, args.split)
    n_series, h = len(columns), args.horizon
    track = make_callback(restore_best)
    model = build_model(args, params, n_series, track)
    nf = NeuralForecast(models=[model], freq=1)

    fit_rows = frame[frame["ds"] < n_train + n_val]
    start = time.perf_counter()
    nf.fit(df=fit_rows, val_size=n_val)
    train_seconds = time.perf_counter() - start
    # NeuralForecast trains a copy of the model it was given, with copies of its callbacks
    fitted = nf.models[0]
    track = next(cb for cb in fitted.trainer_kwargs["callbacks"] if type(cb).__name__ == "Track")
    restored = None
    if restore_best and track.best_state is not None:
        fitted.load_state_dict(track.best_state)
        restored = track.best_step

    n_windows = n_test - h + 1
    start = time.perf_counter()
    cv = nf.cross_validation(df=frame, n_windows=n_windows, step_size=1, refit=False, use_fitted=True)
    predict_seconds = time.perf_counter() - start

    # the windows must be exactly sciadapt's test windows
    cutoffs = np.sort(cv["cutoff"].unique())
    first, last = n_train + n_val - 1, n_train + n_val + n_test - h - 1
    problems = []
    if len(cv) != n_windows * h * n_series:
        problems.append(f"{len(cv)} forecast rows, expected {n_windows} windows x {h} steps x {n_series} series")
    if len(cutoffs) != n_windows or int(cutoffs[0]) != first or int(cutoffs[-1]) != last:
        problems.append(
            f"cutoffs {len(cutoffs)} from {cutoffs[0]} to {cutoffs[-1]}, expected {n_windows} from {first} to {last}"
        )
    if cv["ds"].max() != n_train + n_val + n_test - 1 or cv["ds"].min() != n_train + n_val:
        problems.append(f"forecast rows {cv['ds'].min()}..{cv['ds'].max()} are not the test rows")
    if problems:
        raise SystemExit("nf_nhits: test windows differ from the protocol: " + "; ".join(problems))

    err = cv["NHITS"].to_numpy(np.float64) - cv["y"].to_numpy(np.float64)
    hp = fitted.hparams
    result = {
        "peer": f"neuralforecast {neuralforecast.__version__}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dataset": args.data.name.split(".")[0],
        "split": args.split,
        "horizon": h,
        "input_size": args.input_size,
        "setting": args.setting,
        "seed": args.seed,
        "mse": float(np.mean(err**2)),
        "mae": float(np.mean(np.abs(err))),
        "test_windows": n_windows,
        "series": n_series,
        "test_values": int(err.size),
        # fingerprints of the scaled test targets, for the caller's value-level check against its own windows
        "y_sum": float(cv["y"].to_numpy(np.float64).sum()),
        "y_sq_sum": float(np.square(cv["y"].to_numpy(np.float64)).sum()),
        "first_cutoff_row": first,
        "train_seconds": round(train_seconds, 2),
        "predict_seconds": round(predict_seconds, 2),
        "steps": track.steps,
        "max_steps": int(hp.get("max_steps")),
        "val_history": track.history,
        "best_val": None if track.best_step is None else track.best,
        "restored_step": restored,
        "nhits_args": {
            k: hp.get(k)
            for k in (
                "n_blocks",
                "mlp_units",
                "n_pool_kernel_size",
                "n_freq_downsample",
                "pooling_mode",
                "interpolation_mode",
                "dropout_prob_theta",
                "learning_rate",
                "val_check_steps",
                "early_stop_patience_steps",
                "batch_size",
                "windows_batch_size",
                "scaler_type",
                "num_lr_decays",
            )
        },
        "params": params,
    }
    text = json.dumps(result, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    raise SystemExit(main())
