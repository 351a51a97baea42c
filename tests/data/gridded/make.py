"""Seeded generator of tiny gridded stores in real formats (zarr, netCDF) for the gridded tests.

The fields are smooth (a diurnal wave moving west plus a latitude gradient) with a little noise,
so statistics, tendencies and forecasts behave like weather rather than white noise. Run as a
script to write ``tiny.zarr`` and ``tiny.nc`` next to this file for manual experiments; the tests
call :func:`make_dataset` and write into their own temporary folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr


def make_dataset(
    n_time: int = 48,
    n_lat: int = 6,
    n_lon: int = 8,
    levels: tuple[int, ...] = (850, 500),
    freq: str = "1h",
    lat_descending: bool = True,
    lon_start: float = 0.0,
    static: bool = True,
    members: int = 0,
    seed: int = 0,
) -> xr.Dataset:
    """A dataset with ``t2m`` (surface), ``z`` and ``t`` (on ``levels``), and optionally ``lsm``/``orography``.

    Args:
        n_time: Time steps from 2020-01-01T00.
        n_lat / n_lon: Grid size; latitudes span 60..-60 (or reversed), longitudes ``lon_start`` +
            ``360 / n_lon`` steps.
        levels: Pressure levels in store order (descending pressure, as GRIB writes them).
        freq: Spacing of the time axis.
        lat_descending: North to south (ERA5) or south to north.
        lon_start: First longitude (use -180 for a -180..180 grid).
        static: Add ``lsm`` and ``orography``.
        members: Add a ``number`` dimension of this size (0: none).
        seed: Noise seed.
    """
    rng = np.random.default_rng(seed)
    times = pd.date_range("2020-01-01", periods=n_time, freq=freq)
    lat = np.linspace(60.0, -60.0, n_lat) if lat_descending else np.linspace(-60.0, 60.0, n_lat)
    lon = lon_start + np.arange(n_lon) * (360.0 / n_lon)
    hours = ((times - times[0]) / pd.Timedelta(hours=1)).to_numpy()
    wave = np.sin(2 * np.pi * (hours[:, None, None] / 24.0 + np.deg2rad(lon)[None, None, :] / (2 * np.pi)))
    grad = np.cos(np.deg2rad(lat))[None, :, None]
    shape = (n_time, n_lat, n_lon)
    t2m = 270.0 + 20.0 * grad + 3.0 * wave + rng.normal(0.0, 0.3, shape)
    z = np.stack([5000.0 * (9.81 if lv == 500 else 1.4) + 50.0 * grad[0] + 20.0 * wave for lv in levels], axis=1)
    z = z + rng.normal(0.0, 5.0, z.shape)
    tl = np.stack([(255.0 if lv == 500 else 275.0) + 10.0 * grad[0] + 1.5 * wave for lv in levels], axis=1)
    tl = tl + rng.normal(0.0, 0.2, tl.shape)
    data = {
        "t2m": (("time", "latitude", "longitude"), t2m.astype(np.float32), {"units": "K"}),
        "z": (("time", "level", "latitude", "longitude"), z.astype(np.float32), {"units": "m**2 s**-2"}),
        "t": (("time", "level", "latitude", "longitude"), tl.astype(np.float32), {"units": "K"}),
    }
    ds = xr.Dataset(
        {k: xr.Variable(d, v, attrs=a) for k, (d, v, a) in data.items()},
        coords={"time": times, "level": np.asarray(levels, dtype=np.int64), "latitude": lat, "longitude": lon},
    )
    if members:
        ds = xr.concat([ds + 0.1 * m for m in range(members)], dim="number").assign_coords(number=np.arange(members))
        ds = ds.transpose("number", "time", ...)
    if static:
        lsm = (rng.random((n_lat, n_lon)) > 0.5).astype(np.float32)
        oro = (1000.0 * rng.random((n_lat, n_lon))).astype(np.float32)
        ds["lsm"] = (("latitude", "longitude"), lsm)
        ds["orography"] = (("latitude", "longitude"), oro)
    return ds


def write_zarr(ds: xr.Dataset, path: Path) -> Path:
    """Write ``ds`` as a zarr store with one time step per chunk."""
    encoding = {}
    for name, var in ds.data_vars.items():
        chunks = tuple(1 if d == "time" else s for d, s in zip(var.dims, var.shape, strict=True))
        encoding[name] = {"chunks": chunks}
    ds.to_zarr(path, mode="w", encoding=encoding, consolidated=False)
    return path


def write_netcdf(ds: xr.Dataset, path: Path) -> Path:
    """Write ``ds`` as a netCDF-4 file (h5netcdf)."""
    ds.to_netcdf(path, engine="h5netcdf")
    return path


if __name__ == "__main__":
    here = Path(__file__).parent
    tiny = make_dataset()
    print(write_zarr(tiny, here / "tiny.zarr"))
    print(write_netcdf(tiny, here / "tiny.nc"))


def contract_config(folder: Path, seed: int = 0) -> dict[str, Any]:
    """The ``data:`` keys (less ``name``) of a small datamodule on fresh data in ``folder``: what the
    contract tests in tests/unit/test_contracts.py build every registered datamodule from."""
    path = write_zarr(make_dataset(n_time=48, seed=seed), folder / "tiny.zarr")
    return {"path": str(path), "num_workers": 0, "batch_size": 4}
