"""Seeded generator of small synthetic SDO-like FITS series for the ``sdo`` datamodule tests.

The tests call these functions and write into their own temporary folders; nothing is committed.
Each frame is a solar disk with a few active regions that rotate with the Sun (``deg_per_hour``,
exaggerated so that an hour shows): AIA 171/193 are bright loops over a quiet disk with a faint
corona beyond the limb, stored as counts (rate x ``EXPTIME``; every seventh frame has a short
exposure, as AIA's automatic exposure control does in flares); HMI is a signed line-of-sight
magnetogram (bipolar regions, NaN off the disk) stored upside down with ``CROTA2 = 180``, as HMI
is. Headers carry what the real files do: TELESCOP, INSTRUME, WAVELNTH, EXPTIME, DATE-OBS (and
T_OBS, in TAI for HMI), CTYPE/CUNIT/CRPIX/CRVAL/CDELT/CROTA2, RSUN_OBS, R_SUN, DSUN_OBS, BUNIT.
The disk centre sits off the array centre, so a reader that ignores CRPIX is caught.

Run as a script to write a small example series::

    python tests/data/sdo/make.py /tmp/sdo-example
"""

from __future__ import annotations

import importlib.util
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RSUN_ARCSEC = 960.0
START = "2011-02-15T00:00:00"


@dataclass(frozen=True)
class Channel:
    """How one synthetic channel looks and is stored."""

    prefix: str  # file name prefix; the tests' glob is f"{prefix}_*.fits"
    telescope: str
    instrument: str
    wavelength: float
    quiet: float  # DN/s on the disk (AIA) or G noise (HMI)
    active: float  # DN/s or G at an active region's centre
    offset_s: float  # seconds after the slot its images are taken


CHANNELS = {
    "aia171": Channel("aia_171", "SDO/AIA", "AIA_3", 171, 300.0, 3000.0, 9.35),
    "aia193": Channel("aia_193", "SDO/AIA", "AIA_2", 193, 500.0, 4000.0, 4.84),
    "hmi": Channel("hmi_m", "SDO/HMI", "HMI_FRONT2", 6173.0, 10.0, 800.0, 27.9),
}


def geometry(size: int) -> tuple[float, float, float]:
    """Disk centre (0-based column, row, north up) and radius in pixels of a ``size`` image."""
    return (size - 1) / 2 + 0.8, (size - 1) / 2 - 0.6, 0.4 * size


def regions(seed: int, n: int = 3) -> np.ndarray:
    """``(n, 3)`` active regions: longitude at t=0 (deg), latitude (deg), strength in 0.5..1."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-70, 20, n), rng.uniform(-30, 30, n), rng.uniform(0.5, 1.0, n)], axis=1)


def sun(name: str, size: int, hours: float, seed: int = 0, deg_per_hour: float = 3.0) -> np.ndarray:
    """The north-up image (FITS row order: row 0 is south) of channel ``name`` at ``hours`` after the start:
    DN/s for AIA, gauss (NaN off the disk) for HMI."""
    ch = CHANNELS[name]
    cx, cy, r = geometry(size)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    rho = np.hypot(u - cx, v - cy) / r
    out = np.zeros((size, size))
    width = 0.09 * r
    for lon0, lat, strength in regions(seed):
        lon = np.radians(lon0 + deg_per_hour * hours)
        if np.cos(lon) * np.cos(np.radians(lat)) <= 0.05:
            continue  # behind the limb
        x = cx + r * np.sin(lon) * np.cos(np.radians(lat))
        y = cy + r * np.sin(np.radians(lat))
        if name == "hmi":  # leading positive, trailing negative polarity
            dx = 0.08 * r
            out += strength * ch.active * np.exp(-((u - x - dx) ** 2 + (v - y) ** 2) / (2 * width**2))
            out -= strength * ch.active * np.exp(-((u - x + dx) ** 2 + (v - y) ** 2) / (2 * width**2))
        else:
            out += strength * ch.active * np.exp(-((u - x) ** 2 + (v - y) ** 2) / (2 * width**2))
    noise = np.random.default_rng([seed, round(hours * 3600), int(ch.wavelength)]).normal(size=out.shape)
    if name == "hmi":
        out += ch.quiet * noise
        out[rho > 1.0] = np.nan
    else:
        quiet = np.where(rho <= 1.0, ch.quiet * (1 + 0.3 * rho**2), 0.5 * ch.quiet * np.exp(-(rho - 1) / 0.08))
        out = (out * (rho <= 1.0) + quiet) * (1 + 0.02 * noise)
    return out


def header_for(name: str, size: int, time: np.datetime64, exptime: float | None) -> dict[str, Any]:
    """FITS keys of one image, as SDO writes them (HMI's stored 180 degrees turned)."""
    ch = CHANNELS[name]
    cx, cy, r = geometry(size)
    hmi = name == "hmi"
    if hmi:  # the array is stored turned by 180 degrees: the centre moves with it
        cx, cy = size - 1 - cx, size - 1 - cy
    iso = str(time.astype("datetime64[ms]"))
    keys: dict[str, Any] = {
        "TELESCOP": ch.telescope,
        "INSTRUME": ch.instrument,
        "WAVELNTH": ch.wavelength,
        "WAVEUNIT": "angstrom",
        "DATE-OBS": iso,
        "CTYPE1": "HPLN-TAN",
        "CTYPE2": "HPLT-TAN",
        "CUNIT1": "arcsec",
        "CUNIT2": "arcsec",
        "CRPIX1": cx + 1,
        "CRPIX2": cy + 1,
        "CRVAL1": 0.0,
        "CRVAL2": 0.0,
        "CDELT1": RSUN_ARCSEC / r,
        "CDELT2": RSUN_ARCSEC / r,
        "CROTA2": 180.0 if hmi else 0.02,
        "RSUN_OBS": RSUN_ARCSEC,
        "R_SUN": r,
        "RSUN_REF": 696_000_000.0,
        "DSUN_OBS": 1.4959787e11,
        "QUALITY": 0,
    }
    if hmi:
        tai = time + np.timedelta64(34, "s")  # TAI - UTC in 2011
        keys["T_OBS"] = str(tai.astype("datetime64[ms]")).replace("-", ".").replace("T", "_") + "_TAI"
        keys["BUNIT"] = "Gauss"
        keys["CONTENT"] = "MAGNETOGRAM"
    else:
        keys["T_OBS"] = str((time + np.timedelta64(1, "s")).astype("datetime64[ms]")) + "Z"
        keys["EXPTIME"] = exptime
        keys["BUNIT"] = "DN"
    return keys


def write_fits(path: Path, data: np.ndarray, keys: dict[str, Any]) -> Path:
    """One FITS image (float32) with ``keys`` in its primary header."""
    from astropy.io import fits

    hdu = fits.PrimaryHDU(np.asarray(data, np.float32))
    for k, v in keys.items():
        if v is not None:
            hdu.header[k] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    hdu.writeto(path, overwrite=True)
    return path


def write_jp2(path: Path, data: np.ndarray, keys: dict[str, Any]) -> Path:
    """A Helioviewer-style JPEG 2000 file: 8-bit pixels (lossless) plus the FITS keys in an XML box.

    ``data`` is in FITS row order (row 0 at the bottom); JPEG 2000 stores rows top-down.
    """
    from PIL import Image

    pixels = np.clip(np.nan_to_num(np.asarray(data, np.float64)), 0, 255).astype(np.uint8)[::-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, "JPEG2000", irreversible=False)
    cards = "".join(f"<{k}>{v}</{k}>" for k, v in {"NAXIS1": data.shape[1], "NAXIS2": data.shape[0], **keys}.items())
    xml = f"<?xml version='1.0' encoding='utf-8'?><meta><fits>{cards}</fits></meta>".encode()
    with path.open("ab") as f:  # a top-level box after the codestream, where Helioviewer puts it
        f.write(struct.pack(">I4s", 8 + len(xml), b"xml ") + xml)
    return path


def write_series(
    folder: Path,
    n_frames: int = 24,
    size: int = 32,
    seed: int = 0,
    channels: Sequence[str] = ("aia171", "aia193", "hmi"),
    cadence_minutes: float = 60.0,
    start: str = START,
    sizes: dict[str, int] | None = None,
    skip: dict[str, Sequence[int]] | None = None,
    deg_per_hour: float = 3.0,
) -> dict[str, list[Path]]:
    """Write ``n_frames`` images per channel into ``folder``; returns the files per channel, in time order.

    Args:
        folder: Output folder.
        n_frames: Frames per channel, one per ``cadence_minutes``.
        size: Image side in pixels.
        seed: Seed of the active regions and the noise.
        channels: Names from :data:`CHANNELS`.
        cadence_minutes: Time between frames.
        start: Time of the first slot (UTC).
        sizes: Other image sides per channel (``{"hmi": 40}``).
        skip: Frame indexes left out per channel (gaps).
        deg_per_hour: Rotation rate of the active regions (the Sun's is 0.55).
    """
    t0 = np.datetime64(start, "ms")
    jitter = np.random.default_rng(seed + 101).uniform(-20, 20, size=(len(channels), n_frames))
    out: dict[str, list[Path]] = {}
    for c, name in enumerate(channels):
        ch = CHANNELS[name]
        side = (sizes or {}).get(name, size)
        files = []
        for i in range(n_frames):
            if i in (skip or {}).get(name, ()):
                continue
            hours = i * cadence_minutes / 60
            time = t0 + np.timedelta64(round((hours * 3600 + ch.offset_s + jitter[c, i]) * 1000), "ms")
            rate = sun(name, side, hours, seed, deg_per_hour)
            if name == "hmi":
                data, exptime = rate[::-1, ::-1], None
            else:
                exptime = 0.5 if i % 7 == 3 else 2.0
                data = rate * exptime
            stamp = str(time.astype("datetime64[s]")).replace("-", "").replace(":", "")
            path = folder / f"{ch.prefix}_{stamp}.fits"
            files.append(write_fits(path, data, header_for(name, side, time, exptime)))
        out[name] = files
    return out


def patterns(channels: Sequence[str] = ("aia171", "aia193", "hmi")) -> dict[str, str]:
    """``data.channels`` for the files :func:`write_series` writes."""
    return {name: f"{CHANNELS[name].prefix}_*.fits" for name in channels}


def contract_config(folder: Path, seed: int = 0) -> dict[str, Any]:
    """The ``data:`` keys (less ``name``) of a small datamodule on fresh data in ``folder``: what the
    contract tests in tests/unit/test_contracts.py build every registered datamodule from."""
    if importlib.util.find_spec("astropy") is None:
        import pytest

        pytest.skip("the sdo datamodule reads FITS with astropy: pip install 'sciadapt[solar]'")
    write_series(folder, n_frames=20, size=24, seed=seed)
    return {
        "path": str(folder),
        "channels": patterns(),
        "image_size": 16,
        "time_steps": [-1, 0],
        "lead": 1,
        "split_ratios": [0.6, 0.2, 0.2],
        "batch_size": 4,
        "num_workers": 0,
    }


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "sdo-example")
    written = write_series(target, n_frames=48, size=64)
    print(f"wrote {sum(len(v) for v in written.values())} files to {target}; data.channels={patterns()}")
