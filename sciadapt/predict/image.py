"""Next-frame forecasts of a trained ``image_forecast`` run (SDO image series), in the data's units.

The forecast is written as the field reads images: FITS, one image HDU per channel (``EXTNAME`` the
channel), each with the valid time as ``DATE-OBS``, the channel's ``WAVELNTH`` and ``BUNIT``, and a
helioprojective WCS of the resampled image (disk centre, plate scale, ``RSUN_OBS``) taken from the last
input file's header, so ``sunpy.map.Map(path, hdus=...)``/astropy open it like an observation. ``.nc``
writes the same images as CF netCDF (one variable per channel, ``y``/``x`` pixel dimensions), for
gridded tooling. Values are the files' units after exposure normalisation: AIA/EIT ``DN/s``, HMI as
stored (gauss); the run's scaling (signed log or asinh) and per-channel standardisation are undone.
Pixels the data flags off the disk (``data.limb``), where the model never trained, are NaN.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sciadapt.datamodules.sdo import SdoDataModule, read_header
from sciadapt.errors import ConfigError, DataError
from sciadapt.predict.verbs import RUN_FLAGS, verb_keys
from sciadapt.runs import atomic_write_bytes, save_figure
from sciadapt.tasks.image_forecast import ImageForecastTask

SUFFIXES = (".fits", ".nc")
#: observer keys copied from the last input's header (where present), for a complete helioprojective WCS
_OBSERVER_KEYS = ("RSUN_OBS", "RSUN_REF", "DSUN_OBS", "HGLN_OBS", "HGLT_OBS", "CRLN_OBS", "CRLT_OBS", "TELESCOP")


def is_image_forecast_run(run_dir: Path) -> bool:
    """Whether the last stage of the run at ``run_dir`` trains the ``image_forecast`` task."""
    from sciadapt.runs import Run

    return str(Run.open(run_dir).plan_of(-1).model["task"]["name"]) == "image_forecast"


def predict_image_run(run_dir: Path, init: list[str] | None, out: Path, data: str | None = None) -> Path:
    """Forecast the frame ``lead`` steps after the inputs at ``init`` (default: the latest complete inputs).

    Args:
        run_dir: A finished ``image_forecast`` run.
        init: One ISO time of the last input frame (UTC unless it names a zone); None: the latest time
            with every input frame present.
        out: ``.fits`` (one image HDU per channel) or ``.nc``; a PNG per channel (last input, forecast,
            and the observed frame where the data holds it) is written beside it as ``<out>_<channel>.png``.
        data: Another folder of the run's channels (default: the run's data).

    Returns:
        The written path.

    Raises:
        ConfigError: Another output suffix, or more than one ``--init``.
        DataError: An initial time without its input frames (the message names the available range).
    """
    from sciadapt.runs import Run, check_output_location

    if out.suffix not in SUFFIXES:
        raise ConfigError(f"predict --out {out}: an image forecast is written as .fits (one HDU per channel) or .nc")
    if init is not None and len(init) != 1:
        raise ConfigError(f"predict --init: an image forecast starts from one time, got {len(init)}: {init}")
    check_output_location(out, "--out")
    run = Run.open(run_dir)
    run.require_final(-1, scaler=True)
    overrides: dict[str, Any] = {"num_workers": 0}
    if data:
        overrides["path"] = data
    with verb_keys("sciadapt predict --run", RUN_FLAGS):
        dm = run.datamodule(-1, **overrides)
        if not isinstance(dm, SdoDataModule):
            raise ConfigError(f"predict: {run_dir} trained on {type(dm).__name__} data, not SDO image series")
        dm.load_scaler_state(run.scaler())
        when = _initial_time(dm, init[0] if init else None)
        inputs = dm.forecast_inputs(when)
        task = run.task(-1, dm.facts())
    if not isinstance(task, ImageForecastTask):
        raise ConfigError(f"predict: {run_dir} trained a {type(task).__name__}, not an image forecast")
    task.eval()
    with torch.no_grad():
        pred = task(inputs["x"], **task.model_inputs(inputs))  # (1, C, H, W) scaled
    forecast = np.where(inputs["valid"], dm.physical(pred[0]).numpy(), np.nan).astype(np.float32)  # (C, H, W)
    names = dm.channel_names
    units = [_unit(f) for f in inputs["files"]]
    if out.suffix == ".fits":
        _write_fits(forecast, names, units, inputs, when, dm, out)
    else:
        _write_netcdf(forecast, names, units, inputs, when, dm, out)
    for c, name in enumerate(names):
        _plot(c, name, units[c], forecast, inputs, when, _png(out, name))
    return out


def _png(out: Path, channel: str) -> Path:
    return out.with_name(f"{out.stem}_{channel}.png")


def _initial_time(dm: SdoDataModule, text: str | None) -> int:
    """The grid time (ms since 1970, UTC) of ``--init``, or the latest with every input frame."""
    times = dm.input_times()
    if not len(times):
        raise DataError(
            f"{dm.path}: no time holds every input frame (steps {dm.time_steps} of {dm.cadence_minutes:g} min, "
            f"channels {', '.join(dm.channel_names)}). Fix: give a folder with complete frames (--data)"
        )
    if text is None:
        return int(times[-1])
    try:
        stamp = pd.Timestamp(text)
    except ValueError:
        raise ConfigError(f"predict --init {text!r}: not an ISO time (e.g. 2011-01-01T12:00)") from None
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    cad = round(dm.cadence_minutes * 60_000)
    ms = stamp.value // 1_000_000  # ns -> ms since 1970
    slot = ((ms + cad // 2) // cad) * cad
    if slot in set(times.tolist()) and abs(ms - slot) <= dm.tolerance_minutes * 60_000:
        return int(slot)
    first, last = (_iso(t)[:16] for t in (times[0], times[-1]))
    gaps = "" if len(times) == (times[-1] - times[0]) // cad + 1 else " (with gaps)"
    raise DataError(
        f"predict --init {text}: {dm.path} has no input frames at {_iso(slot)[:16]} UTC (steps "
        f"{dm.time_steps} of {dm.cadence_minutes:g} min, every channel); forecasts can start from {first} .. {last} "
        f"UTC{gaps}, every {dm.cadence_minutes:g} min. Fix: pick a time in that range, or leave --init out for the "
        "latest"
    )


def _unit(frame: Any) -> str:
    """The unit of a channel's values after exposure normalisation."""
    if frame.exposure is not None:
        return "DN/s"
    header, _ = read_header(frame.path)[:2]
    return str(header.get("BUNIT", "")).strip()


def _iso(ms: int) -> str:
    """ISO text of a time in ms since 1970 (UTC)."""
    return str(np.datetime64(int(ms), "ms"))


def _wcs(frame: Any, size: int) -> dict[str, Any]:
    """Helioprojective WCS of the ``size`` x ``size`` resampled image of ``frame`` (north up, so CROTA2 0)."""
    header, shape = read_header(frame.path)[:2]
    keys: dict[str, Any] = {k: header[k] for k in _OBSERVER_KEYS if k in header}
    rows, cols = shape
    keys.update({"CTYPE1": "HPLN-TAN", "CTYPE2": "HPLT-TAN", "CUNIT1": "arcsec", "CUNIT2": "arcsec"})
    keys.update({"CRVAL1": 0.0, "CRVAL2": 0.0, "CROTA2": 0.0})
    for axis, n in ((1, cols), (2, rows)):
        if f"CDELT{axis}" in header:
            keys[f"CDELT{axis}"] = abs(float(header[f"CDELT{axis}"])) * n / size
    if frame.disk is not None:  # centre in 0-based pixels of the file, after the north-up turn
        keys["CRPIX1"] = (frame.disk.cx + 0.5) * size / cols + 0.5
        keys["CRPIX2"] = (frame.disk.cy + 0.5) * size / rows + 0.5
    return keys


def _write_fits(
    forecast: np.ndarray,
    names: list[str],
    units: list[str],
    inputs: dict[str, Any],
    when: int,
    dm: SdoDataModule,
    out: Path,
) -> None:
    from astropy.io import fits

    primary = fits.PrimaryHDU()
    primary.header["ORIGIN"] = ("sciadapt", "next-frame forecast of an image_forecast run")
    primary.header["DATE-OBS"] = (_iso(inputs["valid_time"]), "[UTC] valid time of the forecast")
    primary.header["INITTIME"] = (_iso(when), "[UTC] time of the last input frame")
    primary.header["LEADHRS"] = (dm.lead * dm.cadence_minutes / 60.0, "[h] forecast lead")
    hdus: list[Any] = [primary]
    for c, name in enumerate(names):
        hdu = fits.ImageHDU(forecast[c], name=name)  # rows in FITS order (row 0 at the bottom), as read
        hdu.header["DATE-OBS"] = (_iso(inputs["valid_time"]), "[UTC] valid time of the forecast")
        hdu.header["INITTIME"] = (_iso(when), "[UTC] time of the last input frame")
        hdu.header["BUNIT"] = units[c]
        wavelength = inputs["files"][c].wavelength
        if wavelength is not None:
            hdu.header["WAVELNTH"] = (float(wavelength), "[angstrom]")
        for key, value in _wcs(inputs["files"][c], forecast.shape[-1]).items():
            hdu.header[key] = value
        hdus.append(hdu)
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buf.getvalue())


def _write_netcdf(
    forecast: np.ndarray,
    names: list[str],
    units: list[str],
    inputs: dict[str, Any],
    when: int,
    dm: SdoDataModule,
    out: Path,
) -> None:
    import xarray as xr

    variables = {
        name: (("y", "x"), forecast[c], {"units": units[c], "long_name": f"{name} forecast"})
        for c, name in enumerate(names)
    }
    ds = xr.Dataset(
        variables,
        coords={"y": np.arange(forecast.shape[1]), "x": np.arange(forecast.shape[2])},
        attrs={
            "Conventions": "CF-1.8",
            "source": "sciadapt image forecast",
            "valid_time": _iso(inputs["valid_time"]),
            "init_time": _iso(when),
            "lead_hours": dm.lead * dm.cadence_minutes / 60.0,
            "comment": "row y=0 is the bottom of the image (FITS order), solar north up",
        },
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        ds.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _plot(c: int, name: str, unit: str, forecast: np.ndarray, inputs: dict[str, Any], when: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(inputs["last"][c], f"last input {_iso(when)[:16]}"), (forecast[c], "forecast")]
    if inputs["truth"] is not None:
        panels.append((inputs["truth"][c], "observed"))
    finite = np.concatenate([a[np.isfinite(a)] for a, _ in panels])
    lo, hi = np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, (arr, title) in zip(axes[0], panels, strict=True):
        im = ax.imshow(arr, origin="lower", cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(title)
        ax.set_axis_off()
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label=f"{name} [{unit}]" if unit else name)
    fig.suptitle(f"{name}: forecast valid {_iso(inputs['valid_time'])[:16]} UTC")
    save_figure(fig, path, dpi=90)
