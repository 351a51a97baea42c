"""Autoregressive forecasts from a trained rollout run, written as CF-compliant netCDF or zarr."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sciadapt.config import build_datamodule
from sciadapt.errors import ConfigError, DataError
from sciadapt.predict.verbs import RUN_FLAGS, verb_keys
from sciadapt.runs import atomic_write_bytes
from sciadapt.tasks.rollout import RolloutTask


def predict_rollout_run(
    run_dir: Path,
    init_times: list[str],
    out: Path,
    n_lead: int | None = None,
    data: str | None = None,
    plot_variable: str | None = None,
) -> Path:
    """Roll the run's final model out from the states at ``init_times`` and write the forecast.

    Args:
        run_dir: A finished rollout run.
        init_times: Initial times (ISO strings) present in the data, each with ``n_lead`` later
            states (the truth is written beside the forecast for comparison).
        out: ``.nc`` (netCDF-4) or ``.zarr``; a ``.png`` map of forecast, truth and error at the
            last lead time is written beside it.
        n_lead: Rollout steps (default: the evaluation's, else the last stage's).
        data: Another store with the same variables and grid (default: the run's data).
        plot_variable: Variable of the map (default: the first).

    Returns:
        The written path.

    Raises:
        CheckpointError: The run is unfinished.
        DataError: An initial time not in the data, or one without ``n_lead`` following states.
    """
    import xarray as xr

    from sciadapt.runs import Run, check_output_location

    if out.suffix not in (".nc", ".zarr"):
        raise ConfigError(f"predict --out {out}: write a .nc (netCDF) or .zarr forecast")
    check_output_location(out, "--out", folder=out.suffix == ".zarr")
    run = Run.open(run_dir)
    run.require_final(-1)
    data_cfg = run.data_config(-1)
    steps = n_lead or (run.spec.evaluation.data or {}).get("n_lead") or data_cfg.get("n_lead") or 1
    data_cfg.update({"n_lead": int(steps), "num_workers": 0})
    if data:
        data_cfg["path"] = data
    with verb_keys("sciadapt predict --run", {**RUN_FLAGS, "data.n_lead": "--lead"}):
        dm = build_datamodule(data_cfg)
        dm.setup("test")
        task = run.task(-1, dm.facts())
    if not isinstance(task, RolloutTask):
        raise ConfigError(
            f"predict --init makes rollout forecasts, but {run_dir} trained a {type(task).__name__}: "
            "use `sciadapt predict --run RUN --data ...` (series) or `--scene` (rasters) for it"
        )
    task.eval()

    samples = []
    for text in init_times:
        when = pd.Timestamp(text)
        found = None
        for split in ("train", "val", "test"):
            times = dm.split_times(split)
            hit = np.flatnonzero(times == when)
            if hit.size:
                found = dm.dataset(split)[int(hit[0])]
                break
        if found is None:
            first, final = dm.store_times[0], dm.store_times[-1]
            raise DataError(
                f"initial time {when} has no sample in {data_cfg['path']} with {steps} following states "
                f"(the data covers {first} .. {final} every {dm.time_step}); pick a time at least "
                f"{steps} steps before the end"
            )
        samples.append(found)
    batch = {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in ("x", "y", "forcings", "static")}
    with torch.no_grad():
        pred = task.rollout(batch, int(steps)).numpy()  # (N, L, C, H, W) normalised
    forecast = dm.denormalise(pred)
    truth = dm.denormalise(batch["y"].numpy())
    ds = _cf_dataset(xr, forecast, truth, dm, [pd.Timestamp(t) for t in init_times])
    _write_atomic(ds, out)
    _plot(forecast, truth, dm, plot_variable or dm.variables[0], init_times[0], out.with_suffix(".png"))
    return out


def _cf_dataset(xr: Any, forecast: np.ndarray, truth: np.ndarray, dm: Any, inits: list[pd.Timestamp]) -> Any:
    """CF-1.8: dimensions (init_time, lead_time, latitude, longitude), valid time as a 2-D coordinate."""
    leads = pd.to_timedelta(dm.lead_hours(), unit="h")
    data_vars: dict[str, Any] = {}
    for c, name in enumerate(dm.variables):
        data_vars[name] = (("init_time", "lead_time", "latitude", "longitude"), forecast[:, :, c].astype(np.float32))
        data_vars[f"{name}_truth"] = (
            ("init_time", "lead_time", "latitude", "longitude"),
            truth[:, :, c].astype(np.float32),
            {"long_name": f"{name} verifying analysis"},
        )
    valid = np.array([[t + lead for lead in leads] for t in inits], dtype="datetime64[ns]")
    ds = xr.Dataset(
        data_vars,
        coords={
            "init_time": (
                "init_time",
                np.array(inits, dtype="datetime64[ns]"),
                {"standard_name": "forecast_reference_time"},
            ),
            "lead_time": ("lead_time", leads.values, {"standard_name": "forecast_period"}),
            "valid_time": (("init_time", "lead_time"), valid, {"standard_name": "time"}),
            "latitude": (
                "latitude",
                np.asarray(dm.lat, dtype=np.float64),
                {"units": "degrees_north", "standard_name": "latitude"},
            ),
            "longitude": (
                "longitude",
                np.asarray(dm.lon, dtype=np.float64),
                {"units": "degrees_east", "standard_name": "longitude"},
            ),
        },
        attrs={
            "Conventions": "CF-1.8",
            "source": "sciadapt rollout forecast",
            "history": f"sciadapt predict ({pd.Timestamp.now('UTC'):%Y-%m-%dT%H:%MZ})",
        },
    )
    return ds


def _write_atomic(ds: Any, out: Path) -> None:
    """Write to a temporary sibling, then rename: a killed write never leaves half a forecast."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    try:
        if out.suffix == ".zarr":
            ds.to_zarr(tmp, mode="w")
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        else:
            ds.to_netcdf(tmp, engine="h5netcdf")
            os.replace(tmp, out)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _plot(forecast: np.ndarray, truth: np.ndarray, dm: Any, variable: str, init: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if variable not in dm.variables:
        raise ConfigError(f"predict: no variable {variable!r}; the data has {', '.join(dm.variables)}")
    c = dm.variables.index(variable)
    f, t = forecast[0, -1, c], truth[0, -1, c]
    extent = [float(np.min(dm.lon)), float(np.max(dm.lon)), float(np.min(dm.lat)), float(np.max(dm.lat))]
    lo, hi = float(min(f.min(), t.min())), float(max(f.max(), t.max()))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    lead = dm.lead_hours()[-1]
    for ax, arr, title, kw in (
        (axes[0], f, f"forecast +{lead:g} h", {"vmin": lo, "vmax": hi, "cmap": "viridis"}),
        (axes[1], t, "truth", {"vmin": lo, "vmax": hi, "cmap": "viridis"}),
        (
            axes[2],
            f - t,
            "forecast - truth",
            {"cmap": "RdBu_r", "vmin": -np.abs(f - t).max(), "vmax": np.abs(f - t).max()},
        ),
    ):
        im = ax.imshow(arr, extent=extent, origin="upper", aspect="auto", **kw)
        ax.set_title(f"{variable}: {title}")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"initialised {init}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
