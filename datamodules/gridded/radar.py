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
#: attribute: pysteps takes none when it is absent (missing pixels decode as values), so such a
#: file is refused unless ``nodata`` gives the code
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


def _odim_what(group: Any, dataset: Any) -> Any:
    """The ``what`` group pysteps reads for a ``dataN`` group: its own, else its dataset's (ODIM allows both)."""
    if "what" in group:
        return group["what"]
    return dataset["what"] if "what" in dataset else None


def _inspect_odim(path: str, nodata: float | None) -> tuple[str, np.ndarray | None, float | None]:
    """What pysteps cannot tell of an ODIM file: the quantity to read, where it is missing, its accumulation.

    Returns the quantity (``RATE``, else ``ACRR``, else ``DBZH``), the mask of missing pixels when
    the file declares no ``nodata`` code and ``nodata`` gives it (else None: the importer's own
    NaN are right), and the minutes between ``dataset1/what`` start and end (None when absent).
    A file without ``undetect`` is read as it is: pysteps then takes raw 0 for "no rain", which
    for ``RATE``/``ACRR`` decodes to ``offset``, the value raw 0 has anyway.

    Raises:
        DataError: No dataset of a quantity pysteps reads, or one whose missing-value code is
            unknown (no ``what/nodata`` and no ``nodata`` given), naming the file and the fix.
    """
    import h5py

    with h5py.File(path, "r") as f:
        found: dict[str, tuple[str, Any, Any]] = {}
        for name in sorted(k for k in f if k.startswith("dataset")):
            for sub in sorted(k for k in f[name] if k.startswith("data")):
                what = _odim_what(f[name][sub], f[name])
                if what is None or "quantity" not in what.attrs or "data" not in f[name][sub]:
                    continue
                qty = what.attrs["quantity"]
                qty = qty.decode() if isinstance(qty, bytes) else str(qty)
                found.setdefault(qty, (f"{name}/{sub}", what, f[name][sub]["data"]))
        qty = next((q for q in ("RATE", "ACRR", "DBZH") if q in found), None)
        if qty is None:
            raise DataError(
                f"data prepare: {path} holds no ODIM dataset of quantity RATE, ACRR or DBZH (found: "
                f"{', '.join(sorted(found)) or 'none'}), the quantities pysteps' odim_hdf5 importer reads. "
                "Fix: give files of rain rate, accumulation or reflectivity"
            )
        group, what, data = found[qty]
        mask = None
        if "nodata" not in what.attrs:
            if nodata is None:
                hint = ""
                if np.issubdtype(data.dtype, np.integer):
                    hint = f" (the data are {data.dtype}; ODIM producers often use {np.iinfo(data.dtype).max})"
                group_what = what.name.lstrip("/")
                raise DataError(
                    f"data prepare: {path}: {group_what} has no 'nodata' attribute (quantity {qty}), so missing "
                    "pixels cannot be told from measured ones (pysteps would read them as values). Fix: give the raw "
                    f"code of missing pixels with --nodata VALUE{hint}, or add it to the file (h5py: "
                    f"f['{group_what}'].attrs['nodata'] = VALUE)"
                )
            mask = np.asarray(data[...]) == nodata
        accutime = None
        dwhat = f[group.split("/")[0]].get("what")
        if dwhat is not None and all(k in dwhat.attrs for k in ("startdate", "starttime", "enddate", "endtime")):
            stamp = [
                (dwhat.attrs[d].decode() if isinstance(dwhat.attrs[d], bytes) else str(dwhat.attrs[d]))
                + (dwhat.attrs[t].decode() if isinstance(dwhat.attrs[t], bytes) else str(dwhat.attrs[t]))
                for d, t in (("startdate", "starttime"), ("enddate", "endtime"))
            ]
            try:
                start, end = (pd.to_datetime(s, format="%Y%m%d%H%M%S") for s in stamp)
                accutime = (end - start).total_seconds() / 60.0
            except ValueError:
                accutime = None
    return qty, mask, (accutime if accutime is not None and accutime > 0 else None)


def _read(
    path: str, fmt: str, ref: dict[str, Any] | None, nodata: float | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """One frame ``(H, W)`` float32 (NaN where missing) and its metadata; checked against ``ref``."""
    kwargs: dict[str, Any] = {}
    missing, accutime = None, None
    if fmt in _NODATA_FROM_FILE:
        kwargs["qty"], missing, accutime = _inspect_odim(path, nodata)
    try:
        precip, _, meta = _importer(fmt)(path, **kwargs)
    except DataError:
        raise
    except Exception as err:  # importers raise IOError, KeyError, OSError ... on a bad file
        raise DataError(
            f"data prepare: pysteps' {fmt} importer cannot read {path}: {type(err).__name__}: {err}"
        ) from err
    arr = np.asarray(precip, dtype=np.float32)
    if np.ma.isMaskedArray(precip):
        arr = np.ma.filled(precip.astype(np.float32), np.nan)
    if missing is not None:
        arr[missing] = np.nan
    if accutime is not None:  # pysteps' odim importer says 15 (OPERA's cadence) whatever the file's times
        meta["accutime"] = accutime
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


def open_radar(files: list[str], fmt: str, crs: str | None, nodata: float | None = None) -> xr.Dataset:
    """The frames of ``files`` as a lazy dataset ``(time, y, x)`` with the projection (see the module).

    The first frame is read here (metadata); every frame is read again inside dask, checked
    against the first (shape, projection, extent, unit), when the store is written. ``nodata`` is
    the raw missing-value code of ODIM files (``odim_hdf5``, ``opera_hdf5``) that declare none.

    Raises:
        DataError: No pysteps, an unknown format, a file name without a time, a repeated time, no
            CRS, an unreadable file, an ODIM file without a missing-value code (and no ``nodata``);
            later (while writing) a frame that does not match the first.
    """
    import dask
    import dask.array as da

    _importer(fmt)
    if nodata is not None and fmt not in _NODATA_FROM_FILE:
        raise DataError(
            "data prepare: --nodata is for ODIM files that declare no missing-value code "
            f"({', '.join(_NODATA_FROM_FILE)}); pysteps' {fmt} importer knows its own. Fix: leave --nodata out"
        )
    files, times = sort_frames(files, [frame_time(f) for f in files])
    first, meta = _read(files[0], fmt, None, nodata)
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
        return _read(path, fmt, ref, nodata)[0]

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
