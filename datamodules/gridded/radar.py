"""Radar composites (one frame per file) read through pysteps' importers, as a lazy xarray dataset.

``sciadapt data prepare --format knmi_hdf5 'RAD_NL25_*.h5' store.zarr`` reads each file with
``pysteps.io.get_method(format, "importer")`` inside a dask task (out of core), keeps what the
importer says of the data (``unit``, ``accutime``, ``transform``, ``zerovalue``, ``threshold``,
the institution) as attributes, the missing-value mask as NaN (the gridded datamodule turns NaN
into ``mask`` 0), and the projection (``projection`` proj4, ``x1``/``x2``/``y1``/``y2``,
``xpixelsize``/``ypixelsize``, ``yorigin``) as CF ``y``/``x`` cell centres plus a ``crs`` grid-mapping
variable and 2-D ``latitude``/``longitude``. Frame times come from the file names (pysteps' own
archives are named by time: ``..._201008260005.h5``), and frames are sorted by them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from sciadapt.datamodules.gridded.grids import CRS_HINT, GRID_MAPPING, crs_attrs, latlon_of, parse_crs
from sciadapt.errors import DataError

#: ODIM-like HDF5 formats whose missing-value code is read from each dataset's ``what/nodata``
#: attribute (pysteps falls back to a guess when it is absent)
_NODATA_FROM_FILE = ("odim_hdf5", "opera_hdf5")
_VARIABLE_BY_UNIT = {"mm": "precip_accum", "mm/h": "precip_rate", "dBZ": "reflectivity"}
_KEPT_META = ("unit", "accutime", "transform", "zerovalue", "threshold", "institution", "zr_a", "zr_b")


def radar_formats() -> list[str]:
    """The importer names pysteps offers (empty when pysteps is not installed)."""
    try:
        from pysteps.io import interface
    except ImportError:
        return []
    return sorted(interface._importer_methods)


def _importer(fmt: str) -> Any:
    try:
        from pysteps.io import get_method
    except ImportError as err:
        raise DataError(
            f"data prepare: --format {fmt} reads radar composites with pysteps, which is not installed. "
            "Fix: pip install 'sciadapt[nowcast]'"
        ) from err
    try:
        return get_method(fmt, "importer")
    except ValueError as err:
        raise DataError(
            f"data prepare: --format {fmt!r} is not a pysteps importer. Formats: netcdf, zarr, grib, "
            + ", ".join(radar_formats())
        ) from err


def frame_time(path: str) -> pd.Timestamp:
    """The time in a radar file's name: its last run of 12 (``%Y%m%d%H%M``) or 14 digits (with seconds)."""
    stamps = re.findall(r"(?<!\d)(\d{14}|\d{12})(?!\d)", Path(path).name)
    if stamps:
        text = stamps[-1]
        try:
            return pd.Timestamp(pd.to_datetime(text, format="%Y%m%d%H%M%S" if len(text) == 14 else "%Y%m%d%H%M"))
        except ValueError:
            pass
    raise DataError(
        f"data prepare: cannot read a time from the file name {Path(path).name!r} (expected YYYYmmddHHMM, as "
        "pysteps archives name frames, e.g. RAD_NL25_RAP_5min_201008260005.h5). Fix: rename the files"
    )


def sort_frames(files: list[str], times: list[pd.Timestamp]) -> tuple[list[str], list[pd.Timestamp]]:
    """Files and times in time order; a :class:`DataError` naming both files of a repeated time."""
    order = sorted(range(len(files)), key=lambda i: (times[i], files[i]))
    out_f, out_t = [files[i] for i in order], [times[i] for i in order]
    for a, b, ta, tb in zip(out_f, out_f[1:], out_t, out_t[1:], strict=False):
        if ta == tb:
            raise DataError(
                f"data prepare: {a} and {b} both hold time {ta}. Fix: give each time once (remove one of them)"
            )
    return out_f, out_t


def _check_nodata(path: str, fmt: str) -> None:
    """Refuse an ODIM-like file whose datasets do not say which value marks missing data."""
    if fmt not in _NODATA_FROM_FILE:
        return
    import h5py

    with h5py.File(path, "r") as f:
        for name in f:
            if not name.startswith("dataset"):
                continue
            for sub in f[name]:
                if sub.startswith("data") and "what" in f[name][sub] and "nodata" not in f[name][sub]["what"].attrs:
                    raise DataError(
                        f"data prepare: {path}: {name}/{sub}/what has no 'nodata' attribute, so missing pixels "
                        "cannot be told from measured ones. Fix: add it (h5py: f['"
                        f"{name}/{sub}/what'].attrs['nodata'] = <code>) or convert the file with its producer's tool"
                    )


def _read(path: str, fmt: str, ref: dict[str, Any] | None) -> tuple[np.ndarray, dict[str, Any]]:
    """One frame ``(H, W)`` float32 (NaN where missing) and its metadata; checked against ``ref``."""
    _check_nodata(path, fmt)
    try:
        precip, _, meta = _importer(fmt)(path)
    except DataError:
        raise
    except Exception as err:  # importers raise IOError, KeyError, OSError ... on a bad file
        raise DataError(
            f"data prepare: pysteps' {fmt} importer cannot read {path}: {type(err).__name__}: {err}"
        ) from err
    arr = np.asarray(precip, dtype=np.float32)
    if np.ma.isMaskedArray(precip):
        arr = np.ma.filled(precip.astype(np.float32), np.nan)
    if ref is not None:
        if arr.shape != ref["shape"]:
            raise DataError(
                f"data prepare: {path} is {arr.shape[0]}x{arr.shape[1]} but {ref['file']} is "
                f"{ref['shape'][0]}x{ref['shape'][1]}; frames of one store share one grid. Fix: prepare them "
                "separately or regrid them first"
            )
        for key in ("projection", "x1", "x2", "y1", "y2", "xpixelsize", "ypixelsize", "yorigin", "unit"):
            if meta.get(key) != ref["meta"].get(key):
                raise DataError(
                    f"data prepare: {path} has {key}={meta.get(key)!r} but {ref['file']} has "
                    f"{ref['meta'].get(key)!r}; frames of one store share one projection, extent and unit. "
                    "Fix: prepare them separately"
                )
    return arr, meta


def open_radar(files: list[str], fmt: str, crs: str | None) -> xr.Dataset:
    """The frames of ``files`` as a lazy dataset ``(time, y, x)`` with the projection (see the module).

    The first frame is read here (metadata); every frame is read again inside dask, checked
    against the first (shape, projection, extent, unit), when the store is written.

    Raises:
        DataError: No pysteps, an unknown format, a file name without a time, a repeated time, no
            CRS, an unreadable file; later (while writing) a frame that does not match the first.
    """
    import dask
    import dask.array as da

    _importer(fmt)
    files, times = sort_frames(files, [frame_time(f) for f in files])
    first, meta = _read(files[0], fmt, None)
    ref = {"file": files[0], "shape": first.shape, "meta": meta}
    proj = crs if crs is not None else meta.get("projection")
    if not proj:
        raise DataError(f"data prepare: {files[0]}: pysteps' {fmt} importer gives no projection. {CRS_HINT}")
    crs_obj = parse_crs(str(proj), f"{files[0]} (projection)")
    h, w = first.shape
    xs, ys = float(meta["xpixelsize"]), float(meta["ypixelsize"])
    x = float(meta["x1"]) + (np.arange(w) + 0.5) * xs
    # pysteps' yorigin "upper": row 0 is the northern edge y2
    upper = meta.get("yorigin", "upper") == "upper"
    y = float(meta["y2"]) - (np.arange(h) + 0.5) * ys if upper else float(meta["y1"]) + (np.arange(h) + 0.5) * ys

    def frame(path: str) -> np.ndarray:
        return _read(path, fmt, ref)[0]

    frames = [da.from_delayed(dask.delayed(frame)(f), (h, w), np.float32) for f in files]
    data = da.stack(frames)  # (T, H, W), one chunk per frame
    name = _VARIABLE_BY_UNIT.get(str(meta.get("unit")), "precip")
    attrs: dict[str, Any] = {"grid_mapping": GRID_MAPPING, "missing": "NaN where the radar has no data"}
    for key in _KEPT_META:
        value = meta.get(key)
        if value is not None:
            attrs["units" if key == "unit" else key] = value.item() if isinstance(value, np.generic) else value
    lat2d, lon2d = latlon_of(crs_obj, x, y)
    unit = str(meta.get("cartesian_unit", "m"))
    ds = xr.Dataset(
        {name: (("time", "y", "x"), data, attrs), GRID_MAPPING: ((), np.int32(0), crs_attrs(crs_obj.to_wkt()))},
        coords={
            "time": pd.DatetimeIndex(times).values.astype("datetime64[ns]"),
            "y": ("y", y, {"standard_name": "projection_y_coordinate", "units": unit, "axis": "Y"}),
            "x": ("x", x, {"standard_name": "projection_x_coordinate", "units": unit, "axis": "X"}),
            "latitude": (("y", "x"), lat2d, {"standard_name": "latitude", "units": "degrees_north"}),
            "longitude": (("y", "x"), lon2d, {"standard_name": "longitude", "units": "degrees_east"}),
        },
        attrs={"source_format": fmt, "source_first_file": Path(files[0]).name},
    )
    return ds
