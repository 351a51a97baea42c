"""Seeded generators of tiny projected and curvilinear gridded files, and KNMI-like radar frames.

* :func:`make_projected` -- ``(time, y, x)`` precipitation-like fields on a projected grid (LAEA
  Europe, EPSG:3035, by default), with a CF ``crs`` grid-mapping variable or without any CRS.
* :func:`make_curvilinear` -- ``(time, y, x)`` fields with 2-D ``latitude``/``longitude`` only.
* :func:`write_frames` -- one netCDF file per time step, as archives usually come.
* :func:`write_knmi_frames` -- tiny HDF5 files laid out as KNMI's RAD_NL25 composites, read by
  ``pysteps.io.importers.import_knmi_hdf5`` (accumulations in 0.01 mm, 65535 = no data).

Run as a script to write a few of each next to this file for manual experiments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

KNMI_PROJ4 = "+proj=stere +lat_0=90 +lon_0=0.0 +lat_ts=60.0 +a=6378.137 +b=6356.752 +x_0=0 +y_0=0"


def _fields(n_time: int, ny: int, nx: int, seed: int) -> np.ndarray:
    """``(T, H, W)`` float32: a blob moving east over a small background, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    out = np.empty((n_time, ny, nx), np.float32)
    for t in range(n_time):
        cx = (t * 0.7) % nx
        out[t] = 2.0 * np.exp(-((xx - cx) ** 2 + (yy - ny / 2) ** 2) / 6.0) + 0.1 + rng.normal(0, 0.02, (ny, nx))
    return out


def make_projected(
    n_time: int = 12,
    ny: int = 6,
    nx: int = 5,
    crs: str | None = "EPSG:3035",
    y_ascending: bool = False,
    freq: str = "5min",
    start: str = "2021-07-14T00:00",
    spacing: float = 2000.0,
    seed: int = 0,
) -> xr.Dataset:
    """A dataset ``tp (time, y, x)`` in mm on a projected grid.

    Args:
        n_time / ny / nx: Sizes.
        crs: The CRS written as a CF ``crs`` grid-mapping variable (``crs_wkt`` + ``spatial_ref``);
            None: no CRS at all (the file a user must give ``--crs`` for).
        y_ascending: Rows south to north (flipped on read) instead of north to south.
        freq / start: The time axis.
        spacing: Cell size in metres.
        seed: Noise seed.
    """
    y = 3_200_000.0 - spacing * np.arange(ny)  # EPSG:3035 northings around 52N
    x = 4_000_000.0 + spacing * np.arange(nx)
    data = _fields(n_time, ny, nx, seed)
    if y_ascending:
        y, data = y[::-1].copy(), data[:, ::-1].copy()
    attrs = {"units": "mm", "long_name": "precipitation accumulation"}
    ds = xr.Dataset(
        {"tp": (("time", "y", "x"), data, attrs)},
        coords={
            "time": pd.date_range(start, periods=n_time, freq=freq),
            "y": ("y", y, {"standard_name": "projection_y_coordinate", "units": "m"}),
            "x": ("x", x, {"standard_name": "projection_x_coordinate", "units": "m"}),
        },
    )
    if crs is not None:
        import pyproj

        wkt = pyproj.CRS.from_user_input(crs).to_wkt()
        ds["crs"] = xr.DataArray(np.int32(0), attrs={"crs_wkt": wkt, "spatial_ref": wkt})
        ds["tp"].attrs["grid_mapping"] = "crs"
    return ds


def make_curvilinear(n_time: int = 12, ny: int = 6, nx: int = 5, rotate_deg: float = 20.0, seed: int = 0) -> xr.Dataset:
    """A dataset ``tp (time, y, x)`` whose cells are placed only by 2-D ``latitude``/``longitude``
    (a 1-degree grid around 50N 10E, rotated by ``rotate_deg``; ``rotate_deg=0`` is a regular grid)."""
    j, i = np.meshgrid(np.arange(nx, dtype=np.float64), np.arange(ny, dtype=np.float64))
    a = np.deg2rad(rotate_deg)
    lat = 52.0 - (i * np.cos(a) - j * np.sin(a))
    lon = 8.0 + (j * np.cos(a) + i * np.sin(a))
    return xr.Dataset(
        {"tp": (("time", "y", "x"), _fields(n_time, ny, nx, seed), {"units": "mm"})},
        coords={
            "time": pd.date_range("2021-07-14", periods=n_time, freq="1h"),
            "latitude": (("y", "x"), lat, {"standard_name": "latitude", "units": "degrees_north"}),
            "longitude": (("y", "x"), lon, {"standard_name": "longitude", "units": "degrees_east"}),
        },
    )


def write_frames(ds: xr.Dataset, folder: str | Path, prefix: str = "frame") -> list[Path]:
    """One netCDF file per time step (``<prefix>_YYYYmmddHHMM.nc``), in time order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(ds.sizes["time"]):
        stamp = pd.Timestamp(ds["time"].values[k]).strftime("%Y%m%d%H%M")
        path = folder / f"{prefix}_{stamp}.nc"
        ds.isel(time=slice(k, k + 1)).to_netcdf(path, engine="h5netcdf")
        paths.append(path)
    return paths


def write_knmi_frames(
    folder: str | Path,
    n_time: int = 6,
    ny: int = 8,
    nx: int = 7,
    start: str = "2010-08-26T00:00",
    seed: int = 0,
    missing_corner: bool = True,
) -> list[Path]:
    """Tiny RAD_NL25-like HDF5 frames (``RAD_NL25_RAP_5min_YYYYmmddHHMM.h5``) for pysteps' KNMI importer.

    Values are accumulations in hundredths of mm (uint16); ``missing_corner`` sets the top-left
    2 x 2 pixels to 65535 (no data), which the importer turns into NaN.
    """
    import h5py

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fields = _fields(n_time, ny, nx, seed)
    paths = []
    for k, t in enumerate(pd.date_range(start, periods=n_time, freq="5min")):
        raw = np.clip(np.round(fields[k] * 100.0), 0, 65000).astype(np.uint16)
        if missing_corner:
            raw[:2, :2] = 65535
        path = folder / f"RAD_NL25_RAP_5min_{t.strftime('%Y%m%d%H%M')}.h5"
        with h5py.File(path, "w") as f:
            f.create_group("image1").create_dataset("image_data", data=raw)
            geo = f.create_group("geographic")
            geo.attrs["geo_column_offset"] = np.array([0.0], np.float32)
            geo.attrs["geo_row_offset"] = np.array([3650.0], np.float32)
            geo.attrs["geo_pixel_size_x"] = np.array([1.0], np.float32)
            geo.attrs["geo_pixel_size_y"] = np.array([-1.0], np.float32)
            geo.attrs["geo_number_columns"] = np.array([nx], np.int32)
            geo.attrs["geo_number_rows"] = np.array([ny], np.int32)
            geo.attrs["geo_dim_pixel"] = np.bytes_("KM,KM")
            geo.create_group("map_projection").attrs["projection_proj4_params"] = np.bytes_(KNMI_PROJ4)
        paths.append(path)
    return paths


if __name__ == "__main__":
    here = Path(__file__).parent
    write_frames(make_projected(), here / "projected_frames")
    make_curvilinear().to_netcdf(here / "curvilinear.nc", engine="h5netcdf")
    write_knmi_frames(here / "knmi_frames")
