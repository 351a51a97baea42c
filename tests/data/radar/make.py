"""Seeded generator of a short archive of synthetic ODIM_H5 radar composites (a second, unseen radar).

The only real radar we have is KNMI's (HDF5 of its own layout, polar stereographic, 1 km). This one
differs in format, projection, pixel size and quantity: ODIM_H5 composites (``object=COMP``, the
OPERA layout that ``pysteps.io.importers.import_odim_hdf5`` reads) on a spherical Lambert azimuthal
equal-area grid (``+proj=laea``) of 2 km pixels, 96 x 128 by default, one 5-minute frame per file
named ``SYNR_COMP_<QTY>_YYYYmmddHHMM.h5``.

Content: a few rain cells (Gaussian blobs with log-normal peak intensities, at most ~30 mm/h)
advected by one steady wind with a slow exponential growth or decay each, a dry background
(``undetect``) and no data (the ``nodata`` code) outside the radar's circular range. Values are
stored as uint16 with ``gain`` 0.01 and ``offset`` 0: rain rate in mm/h (``RATE``) or the 5-minute
accumulation in mm (``ACRR``).

Only numpy and h5py are needed: the corner longitudes/latitudes come from the spherical LAEA
inverse written out below (Snyder 1987, eq. 24-16 ...), which pyproj reproduces to < 1 mm.

Run ``python tests/data/radar/make.py OUT_DIR [--frames N] [--seed S] [--quantity RATE|ACRR]``.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

#: the radar site and projection centre (a fictitious radar in central Europe)
LAT0, LON0 = 47.5, 13.0
#: sphere radius of the projection (``+R``): the corner inverse below is exact on a sphere
RADIUS = 6371000.0
PROJ4 = f"+proj=laea +lat_0={LAT0} +lon_0={LON0} +x_0=0 +y_0=0 +R={RADIUS:.0f} +units=m +no_defs"
PIXEL = 2000.0  # m
NY, NX = 96, 128
RANGE_M = 110_000.0  # the radar sees this far from the projection centre
GAIN, OFFSET = 0.01, 0.0
NODATA, UNDETECT = 65535, 0
STEP = timedelta(minutes=5)
START = datetime(2024, 6, 15, 12, 0)
#: the steady wind that carries the cells (m/s, towards east and north)
WIND = (11.0, 4.0)


def laea_inverse(x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (degrees) of projected ``x``/``y`` (m) on the spherical LAEA of :data:`PROJ4`."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    phi1, lam0 = np.deg2rad(LAT0), np.deg2rad(LON0)
    rho = np.hypot(x, y)
    c = 2.0 * np.arcsin(np.clip(rho / (2.0 * RADIUS), -1.0, 1.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        sin_phi = np.cos(c) * np.sin(phi1) + np.where(rho > 0, y * np.sin(c) * np.cos(phi1) / rho, 0.0)
    phi = np.arcsin(np.clip(sin_phi, -1.0, 1.0))
    lam = lam0 + np.arctan2(x * np.sin(c), rho * np.cos(phi1) * np.cos(c) - y * np.sin(phi1) * np.sin(c))
    return np.rad2deg(lam), np.rad2deg(phi)


def grid(ny: int = NY, nx: int = NX) -> tuple[np.ndarray, np.ndarray]:
    """Cell-centre ``x`` (west to east) and ``y`` (north to south, ODIM's first row) in m; centred on the radar."""
    x = (np.arange(nx) + 0.5 - nx / 2) * PIXEL
    y = (ny / 2 - np.arange(ny) - 0.5) * PIXEL
    return x, y


def rain_fields(frames: int, seed: int, ny: int = NY, nx: int = NX) -> np.ndarray:
    """``(T, H, W)`` float64 rain rate in mm/h (0 where dry), row 0 north; NaN outside the radar range."""
    rng = np.random.default_rng(seed)
    x, y = grid(ny, nx)
    xx, yy = np.meshgrid(x, y)  # (H, W)
    n_cells = int(rng.integers(4, 7))
    half_w, half_h = nx * PIXEL / 2, ny * PIXEL / 2
    dt = STEP.total_seconds()
    # cells start spread over the domain and a bit upwind of it, so some enter while others leave
    cx = rng.uniform(-half_w - 40_000, half_w - 20_000, n_cells)
    cy = rng.uniform(-half_h - 20_000, half_h - 10_000, n_cells)
    sigma = rng.uniform(6_000, 18_000, n_cells)  # m
    peak = np.minimum(rng.lognormal(np.log(8.0), 0.8, n_cells), 30.0)  # mm/h
    growth = rng.uniform(-0.03, 0.03, n_cells)  # per frame
    out = np.zeros((frames, ny, nx))
    for t in range(frames):
        field = np.zeros((ny, nx))
        for k in range(n_cells):
            px, py = cx[k] + WIND[0] * dt * t, cy[k] + WIND[1] * dt * t
            amp = min(peak[k] * np.exp(growth[k] * t), 30.0)
            field += amp * np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * sigma[k] ** 2))
        field = np.minimum(field, 30.0)
        field[field < 0.1] = 0.0  # dry background below the radar's detection threshold
        out[t] = field
    out[:, np.hypot(xx, yy) > RANGE_M] = np.nan
    return out


def _bytes(text: str) -> np.bytes_:
    # ODIM strings are fixed-length byte strings (pysteps calls .decode() on them)
    return np.bytes_(text)


def write_frame(path: Path, values: np.ndarray, when: datetime, quantity: str = "RATE") -> Path:
    """One ODIM_H5 composite of ``values`` (``(H, W)``, physical units, NaN = no data) valid at ``when``."""
    import h5py

    ny, nx = values.shape
    raw = np.where(np.isnan(values), NODATA, np.clip(np.round((values - OFFSET) / GAIN), 0, NODATA - 1))
    raw = raw.astype(np.uint16)
    x, y = grid(ny, nx)
    west, east = x[0] - PIXEL / 2, x[-1] + PIXEL / 2
    north, south = y[0] + PIXEL / 2, y[-1] - PIXEL / 2
    start = when - STEP
    with h5py.File(path, "w") as f:
        f.attrs["Conventions"] = _bytes("ODIM_H5/V2_2")
        what = f.create_group("what")
        what.attrs["object"] = _bytes("COMP")
        what.attrs["version"] = _bytes("H5rad 2.2")
        what.attrs["date"] = _bytes(when.strftime("%Y%m%d"))
        what.attrs["time"] = _bytes(when.strftime("%H%M%S"))
        what.attrs["source"] = _bytes("ORG:999,CMT:sciadapt synthetic radar")
        where = f.create_group("where")
        where.attrs["projdef"] = _bytes(PROJ4)
        where.attrs["xsize"] = np.int64(nx)
        where.attrs["ysize"] = np.int64(ny)
        where.attrs["xscale"] = np.float64(PIXEL)
        where.attrs["yscale"] = np.float64(PIXEL)
        for corner, (cx, cy) in {
            "LL": (west, south),
            "UL": (west, north),
            "UR": (east, north),
            "LR": (east, south),
        }.items():
            lon, lat = laea_inverse(cx, cy)
            where.attrs[f"{corner}_lon"] = np.float64(lon)
            where.attrs[f"{corner}_lat"] = np.float64(lat)
        how = f.create_group("how")
        how.attrs["nodes"] = _bytes("'xxsyn'")
        ds_what = f.create_group("dataset1/what")
        ds_what.attrs["product"] = _bytes("COMP")
        ds_what.attrs["startdate"] = _bytes(start.strftime("%Y%m%d"))
        ds_what.attrs["starttime"] = _bytes(start.strftime("%H%M%S"))
        ds_what.attrs["enddate"] = _bytes(when.strftime("%Y%m%d"))
        ds_what.attrs["endtime"] = _bytes(when.strftime("%H%M%S"))
        d_what = f.create_group("dataset1/data1/what")
        d_what.attrs["quantity"] = _bytes(quantity)
        d_what.attrs["gain"] = np.float64(GAIN)
        d_what.attrs["offset"] = np.float64(OFFSET)
        d_what.attrs["nodata"] = np.float64(NODATA)
        d_what.attrs["undetect"] = np.float64(UNDETECT)
        data = f["dataset1/data1"].create_dataset("data", data=raw, compression="gzip", compression_opts=4)
        data.attrs["CLASS"] = _bytes("IMAGE")
        data.attrs["IMAGE_VERSION"] = _bytes("1.2")
    return path


def write_archive(
    out_dir: str | Path,
    frames: int = 12,
    seed: int = 0,
    quantity: str = "RATE",
    start: datetime = START,
) -> list[Path]:
    """Write ``frames`` 5-minute composites to ``out_dir`` (created); return their paths in time order.

    Args:
        out_dir: The folder of the archive.
        frames: Number of frames.
        seed: Seed of the rain cells (same seed, same files).
        quantity: ``RATE`` (rain rate, mm/h) or ``ACRR`` (accumulation over the 5 minutes, mm).
        start: Time of the first frame.
    """
    if quantity not in ("RATE", "ACRR"):
        raise ValueError(f"quantity must be RATE or ACRR, got {quantity!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rates = rain_fields(frames, seed)
    values = rates if quantity == "RATE" else rates * STEP.total_seconds() / 3600.0
    paths = []
    for t in range(frames):
        when = start + t * STEP
        paths.append(write_frame(out / f"SYNR_COMP_{quantity}_{when:%Y%m%d%H%M}.h5", values[t], when, quantity))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", help="folder to write the frames to")
    parser.add_argument("--frames", type=int, default=12, help="number of 5-minute frames (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--quantity", choices=("RATE", "ACRR"), default="RATE", help="mm/h or mm per 5 min")
    args = parser.parse_args(argv)
    paths = write_archive(args.out_dir, frames=args.frames, seed=args.seed, quantity=args.quantity)
    print(f"wrote {len(paths)} frames to {args.out_dir} ({paths[0].name} ... {paths[-1].name})")


if __name__ == "__main__":
    main()
