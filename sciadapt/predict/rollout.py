"""Autoregressive forecasts from a trained rollout run, written as CF-compliant netCDF or zarr."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sciadapt.config import build_datamodule
from sciadapt.datamodules.gridded.grids import GRID_MAPPING, crs_attrs
from sciadapt.datamodules.gridded.store import open_xarray
from sciadapt.errors import ConfigError, DataError
from sciadapt.predict.verbs import RUN_FLAGS, verb_keys
from sciadapt.runs import save_figure
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
        out: ``.nc`` (netCDF-4) or ``.zarr``, on the data's grid: 1-D latitude/longitude on a
            lat-lon grid; the store's y/x dimensions with their projection coordinates, a CF
            grid-mapping variable and 2-D latitude/longitude on a projected grid; 2-D
            latitude/longitude on a curvilinear one. A ``.png`` of forecast, truth and error at the
            first, middle and last lead is written beside it.
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
    # the units forecasts are written in (e.g. rain rate for radar reflectivity in dBR)
    forecast = dm.to_output_units(dm.denormalise(pred))
    truth = dm.to_output_units(dm.denormalise(batch["y"].numpy()))
    ds = _cf_dataset(xr, forecast, truth, dm, [pd.Timestamp(t) for t in init_times])
    _write_atomic(ds, out)
    _plot(forecast, truth, dm, plot_variable or dm.variables[0], init_times[0], out.with_suffix(".png"))
    return out


def _cf_dataset(xr: Any, forecast: np.ndarray, truth: np.ndarray, dm: Any, inits: list[pd.Timestamp]) -> Any:
    """CF-1.8: dimensions (init_time, lead_time, row, column), valid time as a 2-D coordinate."""
    # whole multiples of the step: float hours would put a 5-minute lead at 4:59.999999998
    leads = pd.TimedeltaIndex([dm.time_step * (k + 1) for k in range(forecast.shape[1])])
    dims, grid_coords, grid_attrs = _grid_coords(dm)
    units = dm.output_units
    data_vars: dict[str, Any] = {}
    for c, name in enumerate(dm.variables):
        attrs = {**grid_attrs, **({} if units[c] is None else {"units": units[c]})}
        data_vars[name] = (("init_time", "lead_time", *dims), forecast[:, :, c].astype(np.float32), attrs)
        data_vars[f"{name}_truth"] = (
            ("init_time", "lead_time", *dims),
            truth[:, :, c].astype(np.float32),
            {"long_name": f"{name} verifying analysis", **attrs},
        )
    if dm.grid_kind == "projected":
        # the CF grid-mapping variable the data variables name; the WKT keeps what CF parameters cannot
        data_vars[GRID_MAPPING] = ((), np.int32(0), crs_attrs(dm.crs_wkt))
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
            **grid_coords,
        },
        attrs={
            "Conventions": "CF-1.8",
            "source": "sciadapt rollout forecast",
            "history": f"sciadapt predict ({pd.Timestamp.now('UTC'):%Y-%m-%dT%H:%MZ})",
        },
    )
    return ds


def _grid_coords(dm: Any) -> tuple[tuple[str, str], dict[str, Any], dict[str, str]]:
    """The horizontal dimensions, their coordinates and the data variables' grid attributes.

    Lat-lon: 1-D ``latitude``/``longitude`` dimensions. Projected: the store's row/column dimensions
    (``y``/``x``) with projection coordinates and 2-D ``latitude``/``longitude`` auxiliary
    coordinates, the data placed by ``grid_mapping``. Curvilinear: the store's row/column dimensions
    with 2-D ``latitude``/``longitude`` only. xarray writes the ``coordinates`` attribute itself.
    """
    lat_attrs = {"units": "degrees_north", "standard_name": "latitude"}
    lon_attrs = {"units": "degrees_east", "standard_name": "longitude"}
    if dm.grid_kind == "latlon":
        return (
            ("latitude", "longitude"),
            {
                "latitude": ("latitude", np.asarray(dm.lat, dtype=np.float64), lat_attrs),
                "longitude": ("longitude", np.asarray(dm.lon, dtype=np.float64), lon_attrs),
            },
            {},
        )
    row, col = str(dm.info.lat_dim), str(dm.info.lon_dim)
    # a store may name its projected rows "latitude": the 2-D coordinates then take the short names
    lat_name, lon_name = ("lat", "lon") if {row, col} & {"latitude", "longitude"} else ("latitude", "longitude")
    coords: dict[str, Any] = {
        lat_name: ((row, col), np.asarray(dm.lat, dtype=np.float64), lat_attrs),
        lon_name: ((row, col), np.asarray(dm.lon, dtype=np.float64), lon_attrs),
    }
    if dm.grid_kind != "projected":
        return (row, col), coords, {}
    y_units, x_units = _axis_units(dm, row, col)
    coords = {
        row: (row, np.asarray(dm.y, dtype=np.float64), _axis_attrs("y", y_units)),
        col: (col, np.asarray(dm.x, dtype=np.float64), _axis_attrs("x", x_units)),
        **coords,
    }
    return (row, col), coords, {"grid_mapping": GRID_MAPPING}


def _axis_attrs(axis: str, units: str) -> dict[str, str]:
    return {"standard_name": f"projection_{axis}_coordinate", "units": units, "axis": axis.upper()}


def _axis_units(dm: Any, row: str, col: str) -> tuple[str, str]:
    """The units of the store's projected row/column coordinates (metres unless it says otherwise:
    radar composites often count kilometres)."""
    ds = open_xarray(dm.path, dm.kind, dm.engine, chunks=None)
    try:
        found = [ds[d].attrs.get("units") if d in ds.variables else None for d in (row, col)]
    finally:
        ds.close()
    y_units, x_units = (u if isinstance(u, str) and u.strip() else "m" for u in found)
    return y_units, x_units


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


def _lead_label(hours: float) -> str:
    """``+5 min`` under an hour, else ``+6 h``."""
    return f"+{hours * 60:g} min" if hours < 1 else f"+{hours:g} h"


def _plot(forecast: np.ndarray, truth: np.ndarray, dm: Any, variable: str, init: str, path: Path) -> None:
    """Forecast, truth and their difference at the first, middle and last lead of the first initial
    time: a 3 x 3 grid of maps in grid orientation (north up), one colour scale per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if variable not in dm.variables:
        raise ConfigError(f"predict: no variable {variable!r}; the data has {', '.join(dm.variables)}")
    c = dm.variables.index(variable)
    n_lead = forecast.shape[1]
    picks = sorted({0, (n_lead - 1) // 2, n_lead - 1})
    f, t = forecast[0, picks, c], truth[0, picks, c]  # (3, H, W) at most
    err = f - t
    hours = dm.lead_hours()
    extent: list[float] | None = None
    if dm.grid_kind != "curvilinear":  # lon/lat or projected x/y; curvilinear cells by index
        x, y = np.asarray(dm.x, np.float64), np.asarray(dm.y, np.float64)
        extent = [float(x.min()), float(x.max()), float(y.min()), float(y.max())]
    lo, hi = _finite_range(np.concatenate([f.ravel(), t.ravel()]))
    big = max(abs(v) for v in _finite_range(err.ravel())) or 1.0
    units = dm.output_units[c]
    rows = (
        ("forecast", f, {"vmin": lo, "vmax": hi, "cmap": "viridis"}),
        ("observed", t, {"vmin": lo, "vmax": hi, "cmap": "viridis"}),
        ("forecast - observed", err, {"vmin": -big, "vmax": big, "cmap": "RdBu_r"}),
    )
    fig, axes = plt.subplots(3, 3, figsize=(12, 10), squeeze=False, layout="constrained")
    for r, (what, arr, kw) in enumerate(rows):
        im = None
        for k in range(3):
            ax = axes[r, k]
            if k >= len(picks):
                ax.set_visible(False)
                continue
            im = ax.imshow(arr[k], extent=extent, origin="upper", aspect="auto", **kw)
            ax.set_title(f"{what} {_lead_label(hours[picks[k]])}")
        if im is not None:
            label = variable if units is None else f"{variable} [{units}]"
            fig.colorbar(im, ax=list(axes[r]), shrink=0.8, label=label)
    fig.suptitle(f"{variable}, initialised {init}")
    save_figure(fig, path, dpi=90)


def _finite_range(values: np.ndarray) -> tuple[float, float]:
    """The finite minimum and maximum (radar fields hold NaN where there is no data); 0, 1 when none."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    return float(finite.min()), float(finite.max())
