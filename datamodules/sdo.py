"""Solar full-disk image series (SDO/AIA, SDO/HMI, SOHO/EIT) from FITS or JPEG 2000 files.

Files
    ``data.path`` is a folder; ``data.channels`` maps a channel name to a glob pattern under it,
    ``{aia171: "*171*.fits", hmi: "hmi*.fits"}`` (``**`` searches subfolders). One channel is one
    wavelength (or HMI observable); a file belongs to exactly one channel. FITS is read with
    astropy (``pip install 'sciadapt[solar]'``; a JSOC Rice-compressed image HDU works too, and keys
    of an empty primary HDU are read as well). JPEG 2000 files as Helioviewer writes them are read
    with Pillow's OpenJPEG and their FITS header from the file's XML box; their pixels are
    display-scaled bytes, used as they are. Every array is kept in FITS row order (row 0 is the
    bottom, ``y = 1``): JPEG 2000 rows are flipped on reading, as sunpy does.

Time index
    Each file's time is its header's ``DATE-OBS`` (else ``DATE_OBS``, else ``T_OBS``; JSOC's
    ``2014.03.01_00:01:25_TAI`` is converted to UTC). Times are laid on a grid of
    ``cadence_minutes`` (anchored at 1970-01-01 00:00 UTC); a file is that grid slot's image of its
    channel when it lies within ``tolerance_minutes`` of it (the closest one wins). A slot with an
    image of every channel is a frame. A sample needs the frames at ``time_steps`` (offsets in
    cadence steps, the last input is 0) and the one ``lead`` steps after the last input.

Per image
    1. Exposure (``exposure: auto``): AIA and EIT counts are divided by ``EXPTIME`` (seconds); HMI,
       images whose ``BUNIT`` is already a rate (``DN/s``) and JPEG 2000 bytes stay as they are.
    2. North up (``north_up``): HMI is stored upside down (``CROTA2`` near 180); such an image is
       turned by 180 degrees (exact, no interpolation). Other rotations above 2 degrees are an error.
    3. Resampling to ``image_size`` x ``image_size`` (antialiased bilinear; missing pixels are left
       out of the averages and stay missing where most of a target pixel was missing).
    4. Limb: the disk centre is where the header's world coordinates are (0, 0) (``CRPIX``,
       ``CRVAL``, ``CDELT``, ``CROTA2``), its radius ``RSUN_OBS / CDELT`` (else ``R_SUN`` or
       ``SOLAR_R`` in pixels) times ``limb_radius``. ``limb: mask`` zeroes the pixels outside in
       ``x`` and ``y`` and flags them 0 in ``mask``; ``flag`` only flags them; ``off`` ignores the disk.
    5. Scaling: ``log`` is sign(v) log(1 + |v|) (Surya's signed log, fine for signed magnetograms),
       ``asinh`` is asinh(v); then each channel is standardised with the mean and standard
       deviation of the scaled values over the valid pixels of (up to ``stats_frames``) train frames.

Splits
    Chronological: ``ratio`` cuts the frames at ``split_ratios`` (default 0.7/0.15/0.15), ``dates``
    starts val and test at ``split_dates: {val: 2011-03-01, test: 2011-04-01}``. A sample belongs to
    the split that holds every one of its frames; samples that would cross a border are dropped.

A sample is ``{"x": float32 (C, T, H, W), "y": float32 (C, H, W) the frame lead steps after the
last input, "mask": float32 (C, H, W) 1 where y is valid, "time_delta_input": float32 (T,) hours
from each input frame to the last one (Surya's convention: ``[1, 0]`` for hourly frames), "meta":
{"time": int64 seconds since 1970 of the last input's slot, "lead_hours": float32}}``. Batched,
``x`` is ``B C T H W``.
"""

from __future__ import annotations

import importlib
import math
import re
import struct
import warnings
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from sciadapt.config import check_arguments
from sciadapt.datamodules.sampling import EpochShuffleSampler, apply_resume
from sciadapt.errors import ConfigError, DataError
from sciadapt.registry import DATAMODULES
from sciadapt.spec import Ge, Gt

SPLITS = ("train", "val", "test")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
JP2_SUFFIXES = (".jp2", ".j2k", ".jpx")
INSTALL = "pip install 'sciadapt[solar]'"
TIME_KEYS = ("DATE-OBS", "DATE_OBS", "T_OBS")
_DEFAULT_RATIOS = (0.7, 0.15, 0.15)
_ROTATION_TOLERANCE = 2.0  # degrees from north-up (or from 180) that are left as they are
_MS_PER_HOUR = 3_600_000.0
_TIME = re.compile(r"^(\d{4})[-./](\d{2})[-./](\d{2})[T_ ](\d{2}):(\d{2}):(\d{2}(?:\.\d*)?)\s*(Z|_UTC|_TAI)?$", re.I)


# ---------------------------------------------------------------------------------------------
# reading one file


@dataclass(frozen=True)
class Disk:
    """The solar disk in 0-based pixel coordinates of an image in FITS row order."""

    cx: float
    cy: float
    rx: float
    ry: float


@dataclass(frozen=True)
class Frame:
    """One image file, as its header describes it (read once, when the time index is built)."""

    path: Path
    time_ms: int  # observation time, ms since 1970 (UTC)
    shape: tuple[int, int]  # rows, columns of the pixel array
    exposure: float | None  # seconds the values are divided by; None: used as they are
    wavelength: float | None
    disk: Disk | None  # after the north-up flip; None when the limb is not used
    flip: bool  # turned by 180 degrees to put solar north up


def _fits_module(path: Path) -> Any:
    try:
        return importlib.import_module("astropy.io.fits")
    except ImportError:
        raise DataError(
            f"{path}: reading FITS needs astropy, which is not installed. Fix: {INSTALL} (astropy and sunpy)"
        ) from None


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(FITS_SUFFIXES):
        return "fits"
    if name.endswith(JP2_SUFFIXES):
        return "jp2"
    raise DataError(
        f"{path}: not a FITS ({', '.join(FITS_SUFFIXES)}) or JPEG 2000 ({', '.join(JP2_SUFFIXES)}) file. "
        "Fix: narrow the data.channels pattern to the image files"
    )


def _image_hdu(hdul: Any, fits: Any, path: Path) -> int:
    for i, hdu in enumerate(hdul):
        image = isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU)
        if image and int(hdu.header.get("NAXIS", 0)) >= 2:
            return i
    raise DataError(f"{path}: no image HDU (a 2-D array) in this FITS file. Fix: remove it from data.path")


def read_fits_header(path: Path) -> tuple[dict[str, Any], tuple[int, int]]:
    """The header keys (those of an empty primary HDU under the image HDU's) and the image shape."""
    fits = _fits_module(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-standard cards (HMI's float BLANK) are not our concern
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                i = _image_hdu(hdul, fits, path)
                hdu = hdul[i]
                header = {k: v for k, v in hdul[0].header.items() if k not in ("COMMENT", "HISTORY", "")}
                header.update({k: v for k, v in hdu.header.items() if k not in ("COMMENT", "HISTORY", "")})
                shape = (int(hdu.header["NAXIS2"]), int(hdu.header["NAXIS1"]))
                if not isinstance(hdu, fits.CompImageHDU):
                    expected = hdul.fileinfo(i)["datLoc"] + abs(int(hdu.header["BITPIX"])) // 8 * shape[0] * shape[1]
                    if path.stat().st_size < expected:
                        raise DataError(
                            f"{path}: truncated FITS file ({path.stat().st_size:,} bytes, the header announces "
                            f"{expected:,}). Fix: download it again or remove it from data.path"
                        )
    except DataError:
        raise
    except Exception as e:
        raise DataError(
            f"{path}: not a readable FITS file ({type(e).__name__}: {e}). Fix: download it again or remove it "
            "from data.path"
        ) from None
    return header, shape


def _jp2_xml(path: Path) -> bytes:
    """The payload of the first ``xml `` box of a JP2 file (Helioviewer keeps the FITS header there)."""
    data = path.read_bytes()
    pos = 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        head = 8
        if length == 1:
            length, head = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        elif length == 0:
            length = len(data) - pos
        if length < head:
            break
        if kind == b"xml ":
            return data[pos + head : pos + length]
        pos += length
    raise DataError(
        f"{path}: this JPEG 2000 file carries no XML box with a FITS header (Helioviewer's files do). "
        "Fix: use the FITS file, or a JPEG 2000 file from Helioviewer"
    )


def _value(text: str | None) -> Any:
    text = (text or "").strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def read_jp2_header(path: Path) -> tuple[dict[str, Any], tuple[int, int]]:
    """The FITS header of a Helioviewer JPEG 2000 file (keys upper-cased) and its image shape."""
    try:
        root = ET.fromstring(_jp2_xml(path).strip(b"\x00 \r\n\t"))
    except ET.ParseError as e:
        raise DataError(f"{path}: the XML header box does not parse ({e}). Fix: download the file again") from None
    node = root if root.tag.lower() == "fits" else next((n for n in root.iter() if n.tag.lower() == "fits"), None)
    if node is None:
        raise DataError(f"{path}: the XML box holds no <fits> header. Fix: use the FITS file instead")
    header = {child.tag.upper(): _value(child.text) for child in node if len(child) == 0}
    shape = _jp2_pixels(path, decode=False).shape
    return header, (shape[0], shape[1])


def _jp2_pixels(path: Path, decode: bool = True) -> np.ndarray:
    """The pixels (``decode``), or a zero-memory array of the image's shape (the codestream header only)."""
    from PIL import Image, features

    if decode and not features.check("jpg_2000"):
        raise DataError(
            f"{path}: this Pillow was built without JPEG 2000 (OpenJPEG) support. Fix: pip install --force-reinstall "
            f"pillow (PyPI's wheels bundle OpenJPEG), or use the FITS files ({INSTALL})"
        )
    try:
        with Image.open(path) as im:
            if not decode:
                return np.broadcast_to(np.float64(0.0), (im.size[1], im.size[0]))
            arr = np.asarray(im, dtype=np.float64)
    except Exception as e:
        raise DataError(
            f"{path}: not a readable JPEG 2000 file ({type(e).__name__}: {e}). Fix: download it again or remove it"
        ) from None
    if arr.ndim == 3:  # a colour-mapped JPEG 2000: its first component
        arr = arr[..., 0]
    return arr[::-1]  # top-down rows -> FITS row order (row 0 at the bottom)


def read_header(path: Path) -> tuple[dict[str, Any], tuple[int, int], str]:
    """Header keys, image shape (rows, columns) and kind (``fits`` or ``jp2``) of one image file."""
    kind = _kind(path)
    header, shape = read_fits_header(path) if kind == "fits" else read_jp2_header(path)
    return header, shape, kind


def read_pixels(path: Path) -> np.ndarray:
    """The image of one file as float64 ``(rows, columns)`` in FITS row order (missing pixels NaN)."""
    if _kind(path) == "jp2":
        return _jp2_pixels(path)
    fits = _fits_module(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False) as hdul:
                data = np.asarray(hdul[_image_hdu(hdul, fits, path)].data, dtype=np.float64)
    except DataError:
        raise
    except Exception as e:
        raise DataError(
            f"{path}: cannot read the image ({type(e).__name__}: {e}). Fix: download it again or remove it"
        ) from None
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise DataError(f"{path}: the image is {data.ndim}-D {data.shape}; one 2-D image per file is read")
    return data


def parse_time(value: Any, key: str, path: Path) -> int:
    """Milliseconds since 1970 (UTC) of a header time: ISO (``Z`` optional) or JSOC's ``..._TAI``/``_UTC``."""
    m = _TIME.match(str(value).strip())
    if m is None:
        raise DataError(
            f"{path}: {key}={value!r} is not a time this reader knows (e.g. 2011-02-15T00:00:00.34). "
            "Fix: write DATE-OBS as an ISO time in UTC"
        )
    y, mo, d, h, mi, s, zone = m.groups()
    iso = f"{y}-{mo}-{d}T{h}:{mi}:{s}"
    try:
        if (zone or "").upper() == "_TAI":
            time = importlib.import_module("astropy.time")  # leap seconds: TAI - UTC is 34..37 s since 2009
            iso = time.Time(iso, scale="tai").utc.isot
        return int(np.datetime64(iso, "ms").astype(np.int64))
    except ValueError as e:
        raise DataError(f"{path}: {key}={value!r} is not a valid time ({e}). Fix: correct the header") from None


def _number(header: dict[str, Any], key: str, path: Path, why: str, fix: str) -> float:
    value = header.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if value is None:
        raise DataError(f"{path}: the header has no {key} key, needed {why}. Fix: {fix}")
    raise DataError(f"{path}: header key {key}={value!r} is not a number, needed {why}. Fix: {fix}")


def _arcsec(header: dict[str, Any], axis: int) -> float:
    unit = str(header.get(f"CUNIT{axis}", "arcsec")).strip().lower()
    return {"deg": 3600.0, "arcmin": 60.0}.get(unit, 1.0)


def _rotation(header: dict[str, Any]) -> float:
    """The image rotation (degrees, -180..180]: ``CROTA2`` (or ``CROTA``), else from a ``PC`` matrix."""
    for key in ("CROTA2", "CROTA"):
        if isinstance(header.get(key), int | float):
            rho = float(header[key])
            break
    else:
        rho = math.degrees(math.atan2(float(header.get("PC2_1", 0.0)), float(header.get("PC1_1", 1.0))))
    return -((-rho + 180.0) % 360.0 - 180.0)


def disk_of(header: dict[str, Any], shape: tuple[int, int], path: Path) -> Disk:
    """Centre (where the world coordinates are 0, 0) and radii of the solar disk, in pixels of the image.

    The radius is ``RSUN_OBS / CDELT`` (arcsec), else ``R_SUN`` or ``SOLAR_R`` (pixels). A header
    written for another image size (Helioviewer JPEG 2000: ``NAXIS1`` of the full image) is scaled.
    """
    fix = "add it to the files' headers, or set data.limb=off (no limb mask)"
    why = "for the limb mask"
    crpix1 = _number(header, "CRPIX1", path, why, fix)
    crpix2 = _number(header, "CRPIX2", path, why, fix)
    rsun = header.get("RSUN_OBS")
    if isinstance(rsun, int | float) and rsun > 0:
        c1 = _number(header, "CDELT1", path, why, fix) * _arcsec(header, 1)
        c2 = _number(header, "CDELT2", path, why, fix) * _arcsec(header, 2)
        rx, ry = float(rsun) / abs(c1), float(rsun) / abs(c2)
    else:
        key = next((k for k in ("R_SUN", "SOLAR_R") if isinstance(header.get(k), int | float)), None)
        if key is None:
            raise DataError(
                f"{path}: the header has no solar radius (RSUN_OBS with CDELT1/CDELT2, or R_SUN / SOLAR_R in "
                f"pixels), needed {why}. Fix: {fix}"
            )
        rx = ry = float(header[key])
        c1 = float(header.get("CDELT1", 1.0)) * _arcsec(header, 1)
        c2 = float(header.get("CDELT2", 1.0)) * _arcsec(header, 2)
    # world (0, 0) solves CDELT * R(rho) (p - CRPIX) + CRVAL = 0 (FITS CROTA2 convention)
    rho = math.radians(_rotation(header))
    d1 = -float(header.get("CRVAL1", 0.0)) * _arcsec(header, 1) / c1
    d2 = -float(header.get("CRVAL2", 0.0)) * _arcsec(header, 2) / c2
    cx = crpix1 - 1.0 + math.cos(rho) * d1 + math.sin(rho) * d2
    cy = crpix2 - 1.0 - math.sin(rho) * d1 + math.cos(rho) * d2
    n1, n2 = header.get("NAXIS1"), header.get("NAXIS2")
    if isinstance(n1, int) and isinstance(n2, int) and (n2, n1) != shape and n1 > 0 and n2 > 0:
        fx, fy = shape[1] / n1, shape[0] / n2
        cx, cy, rx, ry = (cx + 0.5) * fx - 0.5, (cy + 0.5) * fy - 0.5, rx * fx, ry * fy
    return Disk(cx, cy, rx, ry)


def _is_hmi(header: dict[str, Any]) -> bool:
    fields = (header.get("INSTRUME"), header.get("TELESCOP"), header.get("DETECTOR"))
    return any("HMI" in str(f).upper() for f in fields if f is not None)


def exposure_of(header: dict[str, Any], kind: str, path: Path) -> float | None:
    """Seconds to divide the values by: ``EXPTIME`` for counts (AIA, EIT); None for HMI, rates, JPEG 2000."""
    unit = str(header.get("BUNIT", "")).replace(" ", "").lower()
    if kind == "jp2" or _is_hmi(header) or re.search(r"/s(ec)?\b|s\^?-1", unit):
        return None
    fix = "add EXPTIME (seconds) to the headers, or set data.exposure=none to use the values as they are"
    seconds = _number(header, "EXPTIME", path, "to divide AIA/EIT counts by the exposure time", fix)
    if seconds <= 0:
        raise DataError(f"{path}: EXPTIME={seconds} (a dark or failed exposure). Fix: remove the file from data.path")
    return seconds


def _channel_wavelength(name: str) -> int | None:
    m = re.search(r"(\d{2,5})$", name)
    return int(m.group(1)) if m else None


def _time_of(header: dict[str, Any], path: Path) -> int:
    key = next((k for k in TIME_KEYS if header.get(k) not in (None, "")), None)
    if key == "DATE-OBS" and "T" not in str(header[key]) and header.get("TIME-OBS"):  # the old two-key form
        return parse_time(f"{header[key]}T{header['TIME-OBS']}", "DATE-OBS + TIME-OBS", path)
    if key is None:
        raise DataError(
            f"{path}: the header has no observation time (none of {', '.join(TIME_KEYS)}). "
            "Fix: add DATE-OBS (ISO time, UTC) or remove the file from data.path"
        )
    return parse_time(header[key], key, path)


# ---------------------------------------------------------------------------------------------
# preparing images


def resample(img: np.ndarray, size: int) -> np.ndarray:
    """``img`` (NaN = missing) resized to ``size`` x ``size``, antialiased; missing pixels are left out
    of the averages, and a target pixel most of which was missing is missing."""
    valid = np.isfinite(img)
    # (1, 2, H, W): values with the missing ones at 0, and the weight of valid pixels
    stack = torch.from_numpy(np.stack([np.where(valid, img, 0.0), valid]).astype(np.float32))[None]
    out = F.interpolate(stack, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    weight = out[1]
    values = out[0] / weight.clamp_min(1e-6)
    return np.where((weight > 0.5).numpy(), values.numpy(), np.nan).astype(np.float32)


def disk_mask(disk: Disk, shape: tuple[int, int], size: int, limb_radius: float) -> np.ndarray:
    """Pixels of a ``size`` x ``size`` resampling of an image of ``shape`` inside ``limb_radius`` solar radii."""
    fy, fx = size / shape[0], size / shape[1]
    cx, cy = (disk.cx + 0.5) * fx - 0.5, (disk.cy + 0.5) * fy - 0.5
    rx, ry = disk.rx * fx * limb_radius, disk.ry * fy * limb_radius
    v, u = np.ogrid[0:size, 0:size]
    inside: np.ndarray = ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 <= 1.0
    return inside


class FrameReader:
    """Reads, normalises by exposure, turns north up and resamples images, keeping the last
    ``capacity`` prepared ones (a worker process keeps its own copies)."""

    def __init__(self, size: int, limb: str, limb_radius: float, capacity: int) -> None:
        self.size = size
        self.limb = limb
        self.limb_radius = limb_radius
        self.capacity = capacity
        self._cache: OrderedDict[Path, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()

    def read(self, frame: Frame) -> tuple[np.ndarray, np.ndarray | None]:
        """``(image, on_disk)``: float32 ``(size, size)`` physical values with NaN where missing, and the
        limb mask (None with ``limb: off``)."""
        hit = self._cache.get(frame.path)
        if hit is not None:
            self._cache.move_to_end(frame.path)
            return hit
        raw = read_pixels(frame.path)
        if raw.shape != frame.shape:
            raise DataError(
                f"{frame.path}: the image is {raw.shape[0]} x {raw.shape[1]} but its header says "
                f"{frame.shape[0]} x {frame.shape[1]}. Fix: download the file again"
            )
        if frame.exposure is not None:
            raw = raw / frame.exposure
        if frame.flip:
            raw = raw[::-1, ::-1]
        img = raw.astype(np.float32)
        img[~np.isfinite(img)] = np.nan
        if img.shape != (self.size, self.size):
            img = resample(img, self.size)
        disk = None
        if self.limb != "off" and frame.disk is not None:
            disk = disk_mask(frame.disk, frame.shape, self.size, self.limb_radius)
        if self.capacity:
            self._cache[frame.path] = (img, disk)
            if len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return img, disk


def scale(values: np.ndarray, scaling: str) -> np.ndarray:
    """The ``scaling`` transform: ``log`` sign(v) log1p(|v|), ``asinh``, or ``none``."""
    if scaling == "log":
        out: np.ndarray = np.sign(values) * np.log1p(np.abs(values))
        return out
    if scaling == "asinh":
        return np.asarray(np.arcsinh(values))
    return values


# ---------------------------------------------------------------------------------------------
# samples


@dataclass(frozen=True)
class SampleSpec:
    """What turns frames into a sample (shared by the split datasets)."""

    channels: tuple[str, ...]
    time_steps: tuple[int, ...]
    lead: int
    limb: str
    scaling: str
    mean: np.ndarray  # (C,) of the scaled values
    std: np.ndarray  # (C,)
    cadence_s: float


class SdoDataset(Dataset):
    """Samples of one split: ``starts`` holds the grid slot of each sample's last input frame."""

    def __init__(
        self,
        table: dict[str, dict[int, Frame]],
        slot_ms: dict[int, float],
        starts: np.ndarray,
        spec: SampleSpec,
        reader: FrameReader,
    ) -> None:
        self.table = table
        self.slot_ms = slot_ms
        self.starts = starts
        self.spec = spec
        self.reader = reader

    def __len__(self) -> int:
        return len(self.starts)

    def _frame(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """Scaled, standardised ``(C, H, W)`` image of one slot and its validity (finite, on the disk)."""
        s = self.spec
        imgs, valid = [], []
        for c, name in enumerate(s.channels):
            img, disk = self.reader.read(self.table[name][slot])
            ok = np.isfinite(img)
            if disk is not None and s.limb == "mask":
                ok &= disk
            out = (scale(np.nan_to_num(img, nan=0.0), s.scaling) - s.mean[c]) / s.std[c]
            imgs.append(np.where(ok, out, 0.0))
            valid.append(ok & disk if disk is not None else ok)
        return np.stack(imgs).astype(np.float32), np.stack(valid)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.spec
        start = int(self.starts[i])
        frames = [self._frame(start + k)[0] for k in s.time_steps]
        x = np.stack(frames, axis=1)  # (C, T, H, W)
        y, valid = self._frame(start + s.lead)
        last = self.slot_ms[start]
        deltas = [(last - self.slot_ms[start + k]) / _MS_PER_HOUR for k in s.time_steps]
        return {
            "x": torch.from_numpy(x),
            "y": torch.from_numpy(y),
            "mask": torch.from_numpy(valid.astype(np.float32)),
            "time_delta_input": torch.tensor(deltas, dtype=torch.float32),
            "meta": {
                "time": torch.tensor(round(start * s.cadence_s), dtype=torch.int64),
                "lead_hours": torch.tensor((self.slot_ms[start + s.lead] - last) / _MS_PER_HOUR, dtype=torch.float32),
            },
        }


# ---------------------------------------------------------------------------------------------
# the datamodule


class SdoDataModule(L.LightningDataModule):
    """Series of solar full-disk images (SDO/AIA, HMI, SOHO/EIT; FITS or JPEG 2000) as ``B C T H W`` samples.

    The folder is indexed (headers only) on first use; :meth:`setup` fits the per-channel
    statistics on the train split and is idempotent. See the module docstring for every step.

    Args:
        path: Folder of the image files.
        channels: Channel name -> glob pattern under ``path``, in channel order, e.g.
            ``{aia171: "*171*.fits", hmi: "hmi*.fits"}``. A name ending in a wavelength (``aia171``)
            is checked against the files' ``WAVELNTH``.
        time_steps: Input frames, in cadence steps relative to the last input (which is 0), increasing;
            default ``[-1, 0]``.
        lead: The target frame, in cadence steps after the last input.
        cadence_minutes: The time grid the files are laid on.
        tolerance_minutes: How far a file may lie from its grid slot; default half the cadence.
        image_size: Side of the square images after resampling; None keeps the files' size (which must
            then be one square size).
        exposure: ``"auto"`` divides AIA/EIT counts by ``EXPTIME``; ``"none"`` uses the values as they are.
        limb: ``"mask"`` zeroes and flags pixels outside the disk, ``"flag"`` only flags them (``mask``
            is 0 there), ``"off"`` ignores the disk.
        limb_radius: Radius of the kept disk in solar radii (1.1 keeps the low corona).
        north_up: Turn images stored upside down (``CROTA2`` near 180, HMI) by 180 degrees.
        scaling: ``"log"`` (signed log1p), ``"asinh"`` or ``"none"``, before standardising.
        normalise: ``"compute"`` standardises each channel with train-split statistics; ``"none"`` does not.
        stats_frames: Train frames (evenly spaced) the statistics are computed on.
        split: ``"ratio"`` (``split_ratios`` of the frames, in time order) or ``"dates"`` (``split_dates``).
        split_ratios: ``[train, val, test]`` fractions; default ``[0.7, 0.15, 0.15]``.
        split_dates: ``{val: <ISO date>, test: <ISO date>}``: the first times of the val and test splits.
        cache_frames: Prepared images kept in memory per process (0: none).
        batch_size: Train batch size.
        eval_batch_size: Validation/test batch size.
        num_workers: DataLoader worker processes.
        seed: Seed of the train order.

    Raises:
        ConfigError: If settings contradict each other.
    """

    # set by @check_arguments on every instance before __init__ runs
    _argument_problems: list[str]

    @check_arguments("data")
    def __init__(
        self,
        path: str,
        channels: dict[str, str],
        time_steps: list[int] | None = None,
        lead: Annotated[int, Ge(1)] = 1,
        cadence_minutes: Annotated[float, Gt(0)] = 60.0,
        tolerance_minutes: Annotated[float | None, Gt(0)] = None,
        image_size: Annotated[int | None, Ge(4)] = None,
        exposure: Literal["auto", "none"] = "auto",
        limb: Literal["mask", "flag", "off"] = "mask",
        limb_radius: Annotated[float, Gt(0)] = 1.0,
        north_up: bool = True,
        scaling: Literal["none", "log", "asinh"] = "log",
        normalise: Literal["compute", "none"] = "compute",
        stats_frames: Annotated[int, Ge(1)] = 64,
        split: Literal["ratio", "dates"] = "ratio",
        split_ratios: list[float] | None = None,
        split_dates: dict[str, str] | None = None,
        cache_frames: Annotated[int, Ge(0)] = 4096,
        batch_size: Annotated[int, Ge(1)] = 4,
        eval_batch_size: Annotated[int, Ge(1)] = 8,
        num_workers: Annotated[int, Ge(0)] = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.path = path
        self.channel_patterns = dict(channels) if isinstance(channels, dict) else {}
        self.time_steps = list(time_steps) if time_steps is not None else [-1, 0]
        self.lead = int(lead)
        self.cadence_minutes = float(cadence_minutes)
        self.tolerance_minutes = float(tolerance_minutes) if tolerance_minutes is not None else cadence_minutes / 2
        self.requested_size = image_size
        self.exposure = exposure
        self.limb = limb
        self.limb_radius = float(limb_radius)
        self.north_up = bool(north_up)
        self.scaling = scaling
        self.normalise = normalise
        self.stats_frames = int(stats_frames)
        self.split = split
        self.split_ratios = list(split_ratios) if split_ratios is not None else list(_DEFAULT_RATIOS)
        self.split_dates = dict(split_dates) if split_dates is not None else None
        self.cache_frames = int(cache_frames)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.shuffle_seed = 0  # set per stage by the stage runner
        # (epoch, batches done) of a run preempted mid-epoch, for the next train sampler
        self.train_resume: tuple[int, int] | None = None
        self._check_config()

        self._table: dict[str, dict[int, Frame]] | None = None
        self._slot_ms: dict[int, float] = {}
        self._frames: np.ndarray = np.zeros(0, np.int64)  # slots holding every channel, in time order
        self._unmatched = 0
        self._native = 0  # side of the files' images
        self._starts: dict[str, np.ndarray] | None = None
        self._mean: np.ndarray | None = None
        self._std: np.ndarray | None = None
        self._reader: FrameReader | None = None

    def _check_config(self) -> None:
        problems = list(self._argument_problems)
        if not self.channel_patterns:
            problems.append('data.channels: give at least one channel, e.g. {aia171: "*171*.fits"}')
        for name, pattern in self.channel_patterns.items():
            if not isinstance(pattern, str) or not pattern:
                problems.append(f"data.channels.{name}: expected a glob pattern (text), got {pattern!r}")
        steps = self.time_steps
        if not steps or steps[-1] != 0 or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            problems.append(
                f"data.time_steps: expected increasing cadence steps ending at 0 (the last input), e.g. [-2, -1, 0]; "
                f"got {steps}"
            )
        if self.tolerance_minutes > self.cadence_minutes / 2:
            problems.append(
                f"data.tolerance_minutes={self.tolerance_minutes:g} exceeds half the cadence "
                f"({self.cadence_minutes / 2:g} min); a file would fit two slots"
            )
        r = self.split_ratios
        if len(r) != 3 or any(v < 0 for v in r) or r[0] <= 0 or not math.isclose(sum(r), 1.0, abs_tol=1e-6):
            problems.append(f"data.split_ratios: expected [train, val, test] >= 0 summing to 1 with train > 0, got {r}")
        if self.split == "dates":
            dates = self.split_dates or {}
            if set(dates) != {"val", "test"}:
                problems.append(
                    f"data.split=dates needs data.split_dates with val and test, e.g. {{val: 2011-03-01, test: "
                    f"2011-04-01}}; got {self.split_dates}"
                )
            else:
                try:
                    val, test = (np.datetime64(str(dates[k]), "ms") for k in ("val", "test"))
                except ValueError as e:
                    problems.append(f"data.split_dates: {e}; write ISO dates such as 2011-03-01T00:00")
                else:
                    if test < val:
                        problems.append(f"data.split_dates: test ({dates['test']}) starts before val ({dates['val']})")
        elif self.split_dates is not None:
            problems.append("data.split_dates is set but data.split=ratio ignores it. Fix: set data.split=dates")
        if problems:
            raise ConfigError(problems)

    # ------------------------------------------------------------------ time index
    @property
    def channel_names(self) -> list[str]:
        """Channel names in ``x``'s channel order."""
        return list(self.channel_patterns)

    def _files(self) -> dict[str, list[Path]]:
        root = Path(self.path).expanduser()
        if not root.is_dir():
            raise DataError(f"data.path {self.path} is not a folder. Fix: set data.path to the folder of the images")
        found: dict[str, list[Path]] = {}
        owner: dict[Path, str] = {}
        for name, pattern in self.channel_patterns.items():
            files = sorted(p for p in root.glob(pattern) if p.is_file())
            if not files:
                sample = ", ".join(sorted(p.name for p in root.iterdir())[:5]) or "nothing"
                raise DataError(
                    f"data.channels.{name}: pattern {pattern!r} matches no file in {root} (it holds: {sample}). "
                    "Fix: correct the pattern or data.path"
                )
            for p in files:
                if p in owner:
                    raise DataError(
                        f"{p} matches both data.channels.{owner[p]} ({self.channel_patterns[owner[p]]!r}) and "
                        f"data.channels.{name} ({pattern!r}). Fix: make the patterns exclusive"
                    )
                owner[p] = name
            found[name] = files
        return found

    def _frame_of(self, path: Path) -> Frame:
        header, shape, kind = read_header(path)
        exposure = exposure_of(header, kind, path) if self.exposure == "auto" else None
        disk = disk_of(header, shape, path) if self.limb != "off" else None
        rho, flip = _rotation(header), False
        if self.north_up and abs(rho) > _ROTATION_TOLERANCE:
            if abs(rho) < 180.0 - _ROTATION_TOLERANCE:
                raise DataError(
                    f"{path}: the image is rotated by {rho:.2f} degrees (CROTA2); only images within "
                    f"{_ROTATION_TOLERANCE:g} degrees of north-up or of 180 are turned. Fix: rotate it north-up first "
                    "(sunpy: Map(file).rotate()), or set data.north_up=false"
                )
            flip = True
            if disk is not None:
                disk = replace(disk, cx=shape[1] - 1 - disk.cx, cy=shape[0] - 1 - disk.cy)
        wave = header.get("WAVELNTH")
        wavelength = float(wave) if isinstance(wave, int | float) else None
        return Frame(path, _time_of(header, path), shape, exposure, wavelength, disk, flip)

    def _check_frames(self, name: str, frames: list[Frame]) -> None:
        first = frames[0]
        want = _channel_wavelength(name)
        for f in frames:
            if want is not None and f.wavelength is not None and round(f.wavelength) != want:
                raise DataError(
                    f"{f.path} matched data.channels.{name} ({self.channel_patterns[name]!r}) but its header says "
                    f"WAVELNTH={f.wavelength:g}. Fix: narrow the pattern to the {want} files, or rename the channel"
                )
            if f.wavelength != first.wavelength:
                raise DataError(
                    f"data.channels.{name} mixes wavelengths: {first.path} has WAVELNTH={first.wavelength} and "
                    f"{f.path} has {f.wavelength}. Fix: give each wavelength its own channel pattern"
                )
            if (f.exposure is None) != (first.exposure is None):
                raise DataError(
                    f"data.channels.{name} mixes units: {first.path} and {f.path} are not both counts (divided by "
                    "EXPTIME) or both rates / JPEG 2000 bytes. Fix: match FITS and JPEG 2000 files in separate channels"
                )

    def _index(self) -> dict[str, dict[int, Frame]]:
        if self._table is not None:
            return self._table
        cad = round(self.cadence_minutes * 60_000)
        tol = self.tolerance_minutes * 60_000
        table: dict[str, dict[int, Frame]] = {}
        first: Frame | None = None
        unmatched = 0
        for name, files in self._files().items():
            frames = [self._frame_of(p) for p in files]
            self._check_frames(name, frames)
            slots: dict[int, Frame] = {}
            for f in frames:
                if first is None:
                    first = f
                elif self.requested_size is None and f.shape != first.shape:
                    raise DataError(
                        f"images of different sizes in one stack: {first.path} is {first.shape[0]} x {first.shape[1]}, "
                        f"{f.path} is {f.shape[0]} x {f.shape[1]}. Fix: set data.image_size (e.g. 256) to resample "
                        "every image to one size"
                    )
                slot = (f.time_ms + cad // 2) // cad
                off = abs(f.time_ms - slot * cad)
                if off > tol:
                    unmatched += 1
                    continue
                held = slots.get(slot)
                if held is None or off < abs(held.time_ms - slot * cad):
                    unmatched += held is not None
                    slots[slot] = f
                else:
                    unmatched += 1
            table[name] = slots
        assert first is not None
        if self.requested_size is None and first.shape[0] != first.shape[1]:
            raise DataError(
                f"{first.path} is {first.shape[0]} x {first.shape[1]}, not square. Fix: set data.image_size to "
                "resample the images to a square size"
            )
        complete = set.intersection(*(set(s) for s in table.values()))
        self._frames = np.asarray(sorted(complete), np.int64)
        self._slot_ms = {int(s): float(np.mean([table[c][s].time_ms for c in table])) for s in self._frames}
        self._unmatched = unmatched
        self._native = first.shape[0]
        self._table = table
        return table

    @property
    def image_size(self) -> int:
        """Side of the images in samples (``data.image_size``, or the files' own)."""
        if self.requested_size is not None:
            return int(self.requested_size)
        self._index()
        return self._native

    @property
    def wavelengths(self) -> list[float | None]:
        """Each channel's ``WAVELNTH`` (angstrom; HMI 6173), None where the headers give none."""
        table = self._index()
        return [next(iter(table[c].values())).wavelength if table[c] else None for c in self.channel_names]

    # ------------------------------------------------------------------ splits
    def _bounds(self) -> list[tuple[float, float]]:
        """``[start, end)`` grid slots of train, val and test."""
        inf = float("inf")
        if self.split == "dates":
            assert self.split_dates is not None
            cad = round(self.cadence_minutes * 60_000)
            v, t = (
                math.ceil(int(np.datetime64(str(self.split_dates[k]), "ms").astype(np.int64)) / cad)
                for k in ("val", "test")
            )
            return [(-inf, v), (v, t), (t, inf)]
        n = len(self._frames)
        i1 = round(n * self.split_ratios[0])
        i2 = round(n * (self.split_ratios[0] + self.split_ratios[1]))
        cut = [float(self._frames[i]) if i < n else inf for i in (i1, i2)]
        return [(-inf, cut[0]), (cut[0], cut[1]), (cut[1], inf)]

    def _samples(self) -> dict[str, np.ndarray]:
        if self._starts is not None:
            return self._starts
        self._index()
        have = set(self._frames.tolist())
        offsets = [*self.time_steps, self.lead]
        out: dict[str, np.ndarray] = {}
        for split, (lo, hi) in zip(SPLITS, self._bounds(), strict=True):
            starts = [
                s
                for s in self._frames.tolist()
                if all(s + k in have for k in offsets) and lo <= s + offsets[0] and s + offsets[-1] < hi
            ]
            out[split] = np.asarray(starts, np.int64)
        if not len(out["train"]):
            raise DataError(
                f"no train sample in {self.path}: {len(self._frames)} frame(s) hold every channel, and a sample needs "
                f"frames at steps {self.time_steps} and +{self.lead} of {self.cadence_minutes:g} min inside one split. "
                "Fix: check data.cadence_minutes / data.tolerance_minutes against the files' times, or shorten "
                "data.time_steps / data.lead"
            )
        ratios = dict(zip(SPLITS, self.split_ratios, strict=True))
        for split in ("val", "test"):
            if not len(out[split]) and (self.split == "dates" or ratios[split] > 0):
                raise DataError(
                    f"the {split} split holds no complete sample ({len(self._frames)} frames in all). Fix: give it a "
                    f"longer period (data.split_ratios / data.split_dates) or more files"
                )
        self._starts = out
        return out

    # ------------------------------------------------------------------ statistics
    def _reader_of(self) -> FrameReader:
        if self._reader is None:
            self._reader = FrameReader(self.image_size, self.limb, self.limb_radius, self.cache_frames)
        return self._reader

    def _fit_stats(self) -> tuple[np.ndarray, np.ndarray]:
        table, starts = self._index(), self._samples()["train"]
        slots = sorted({int(s) + k for s in starts for k in self.time_steps})
        pick = np.unique(np.linspace(0, len(slots) - 1, min(self.stats_frames, len(slots))).round().astype(int))
        reader = self._reader_of()
        sums = np.zeros((len(table), 3))  # count, sum, sum of squares per channel
        for c, name in enumerate(self.channel_names):
            for i in pick:
                img, disk = reader.read(table[name][slots[i]])
                ok = np.isfinite(img)
                if disk is not None and self.limb == "mask":
                    ok &= disk
                v = scale(img[ok].astype(np.float64), self.scaling)
                sums[c] += (v.size, v.sum(), (v * v).sum())
        if (sums[:, 0] == 0).any():
            empty = [n for n, s in zip(self.channel_names, sums[:, 0], strict=True) if s == 0]
            raise DataError(
                f"channel(s) {empty} have no valid pixel in the train frames (all missing or off the disk). "
                "Fix: check data.limb / data.limb_radius and the files' headers"
            )
        mean = sums[:, 1] / sums[:, 0]
        std = np.sqrt(np.maximum(sums[:, 2] / sums[:, 0] - mean**2, 0.0))
        return mean, np.where(std > 0, std, 1.0)

    def setup(self, stage: str | None = None) -> None:
        """Index the files, lay out the samples of each split and fit the statistics (idempotent)."""
        self._samples()
        if self._mean is None:
            if self.normalise == "none":
                self._mean, self._std = np.zeros(len(self.channel_names)), np.ones(len(self.channel_names))
            else:
                self._mean, self._std = self._fit_stats()

    def statistics(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and standard deviation of the scaled values (``x = (scaled - mean) / std``)."""
        if self._mean is None:  # loaded statistics (a run's) need no train split
            self.setup()
        assert self._mean is not None and self._std is not None
        return [float(v) for v in self._mean], [float(v) for v in self._std]

    # ------------------------------------------------------------------ contract
    def facts(self) -> dict[str, Any]:
        """What the backbone, head and task must agree with (passed to builders by parameter name)."""
        names = self.channel_names
        return {
            "channels": len(names),
            "in_chans": len(names),
            "channel_names": names,
            "bands": names,  # what image-series backbones that name their channels (swin3d) follow
            "wavelengths": self.wavelengths,
            "time_steps": list(self.time_steps),
            "num_frames": len(self.time_steps),
            "lead": self.lead,
            "lead_hours": self.lead * self.cadence_minutes / 60.0,
            "cadence_minutes": self.cadence_minutes,
            "image_size": self.image_size,
            "img_size": self.image_size,
        }

    def describe(self) -> str:
        """One line for logs and tables: channels, files, frames, geometry, samples per split."""
        names = ", ".join(self.channel_names)
        head = f"{len(self.channel_names)} channel(s) ({names}) from {self.path}"
        if self._table is None:
            return f"{head}; steps {self.time_steps} lead {self.lead} every {self.cadence_minutes:g} min"
        files = sum(len(s) for s in self._table.values())
        span = ""
        if len(self._frames):
            a, b = (np.datetime64(int(self._slot_ms[int(s)]), "ms") for s in (self._frames[0], self._frames[-1]))
            span = f" {str(a)[:16]} .. {str(b)[:16]}"
        text = (
            f"{head}; {files} images ({self._unmatched} off the grid), {len(self._frames)} complete frames{span} every "
            f"{self.cadence_minutes:g} min; steps {self.time_steps} lead {self.lead}; {self.image_size} px; "
            f"limb {self.limb}; {self.scaling} scaling"
        )
        if self._starts is None:
            return text
        n = {k: len(v) for k, v in self._starts.items()}
        return f"{text}; samples train {n['train']:,} / val {n['val']:,} / test {n['test']:,} ({self.split} split)"

    # ------------------------------------------------------------------ loaders
    def dataset(self, split: str) -> SdoDataset:
        """The samples of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.setup()
        return SdoDataset(self._index(), self._slot_ms, self._samples()[split], self._spec(), self._reader_of())

    def _spec(self) -> SampleSpec:
        mean, std = self.statistics()
        return SampleSpec(
            channels=tuple(self.channel_names),
            time_steps=tuple(self.time_steps),
            lead=self.lead,
            limb=self.limb,
            scaling=self.scaling,
            mean=np.asarray(mean),
            std=np.asarray(std),
            cadence_s=self.cadence_minutes * 60.0,
        )

    def _loader(self, split: str, batch_size: int) -> DataLoader:
        ds = self.dataset(split)
        sampler = None
        if split == "train":
            sampler = apply_resume(
                EpochShuffleSampler(len(ds), seed=self.seed * 1_000_003 + self.shuffle_seed), self, batch_size
            )
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Train samples in a fresh seeded order each epoch."""
        return self._loader("train", self.batch_size)

    def val_dataloader(self) -> DataLoader:
        """Validation samples in time order."""
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        """Test samples in time order."""
        return self._loader("test", self.eval_batch_size)

    # ------------------------------------------------------------------ state for prediction
    def physical(self, values: torch.Tensor, channel_axis: int = -3) -> torch.Tensor:
        """Values in the files' units (after exposure normalisation) of standardised, scaled ``values``
        whose channels lie on ``channel_axis`` (-3 for ``y``, -4 for ``x``)."""
        shape = [1] * values.dim()
        shape[channel_axis] = -1
        mean, std = (
            torch.as_tensor(v, dtype=values.dtype, device=values.device).view(shape) for v in self.statistics()
        )
        v = values * std + mean
        if self.scaling == "log":
            return torch.sign(v) * torch.expm1(v.abs())
        if self.scaling == "asinh":
            return torch.sinh(v)
        return v

    def input_times(self) -> np.ndarray:
        """Grid times (int64 ms since 1970, UTC) whose input frames (``time_steps``) are all present: the
        times a forecast can start from (the time of the last input frame), in order."""
        self._index()
        have = set(self._frames.tolist())
        slots = [s for s in self._frames.tolist() if all(s + k in have for k in self.time_steps)]
        return np.asarray(slots, np.int64) * round(self.cadence_minutes * 60_000)

    def forecast_inputs(self, time_ms: int) -> dict[str, Any]:
        """The model input of a forecast from grid time ``time_ms`` (one of :meth:`input_times`).

        Returns:
            ``{"x": (1, C, T, H, W), "time_delta_input": (1, T)}`` as in training, ``"last"`` ``(C, H, W)``
            the last input frame and ``"truth"`` the frame ``lead`` steps later (None when the data
            has none) in the files' units (after exposure normalisation), NaN where not valid,
            ``"files"`` the last input's file of each channel and ``"valid_time"`` the forecast's time (ms).
        """
        cad = round(self.cadence_minutes * 60_000)
        slot = int(time_ms) // cad
        table = self._index()
        ds = SdoDataset(table, self._slot_ms, np.asarray([slot], np.int64), self._spec(), self._reader_of())
        frames = [ds._frame(slot + k)[0] for k in self.time_steps]
        last, valid = ds._frame(slot)
        deltas = [(self._slot_ms[slot] - self._slot_ms[slot + k]) / _MS_PER_HOUR for k in self.time_steps]
        truth = None
        if slot + self.lead in self._slot_ms:
            y, ok = ds._frame(slot + self.lead)
            truth = np.where(ok, self.physical(torch.from_numpy(y)).numpy(), np.nan)
        return {
            "x": torch.from_numpy(np.stack(frames, axis=1)).unsqueeze(0),  # (1, C, T, H, W)
            "time_delta_input": torch.tensor([deltas], dtype=torch.float32),  # (1, T)
            "last": np.where(valid, self.physical(torch.from_numpy(last)).numpy(), np.nan),  # (C, H, W)
            "valid": valid,
            "truth": truth,
            "files": [table[c][slot] for c in self.channel_names],
            "valid_time": (slot + self.lead) * cad,
        }

    def scaler_state(self) -> dict[str, Any]:
        """Channels, scaling and statistics a trained model depends on (JSON-serialisable)."""
        mean, std = self.statistics()
        return {
            "channel_names": self.channel_names,
            "wavelengths": self.wavelengths,
            "scaling": self.scaling,
            "normalise": self.normalise,
            "exposure": self.exposure,
            "mean": mean,
            "std": std,
            "image_size": self.image_size,
        }

    def load_scaler_state(self, state: dict[str, Any]) -> None:
        """Use stored statistics (from :meth:`scaler_state`) instead of computing them.

        Raises:
            DataError: If the state is for other channels or another scaling than this data's.
        """
        theirs = list(state.get("channel_names", []))
        if theirs != self.channel_names:
            raise DataError(
                f"the model was trained on channels {theirs} but this data has {self.channel_names}. Fix: give "
                "data.channels the same names in the same order (a model knows only the wavelengths it was trained on)"
            )
        for key in ("scaling", "normalise", "exposure"):
            if key in state and state[key] != getattr(self, key):
                raise DataError(
                    f"the stored statistics are for data.{key}={state[key]} but this data has "
                    f"data.{key}={getattr(self, key)}. Fix: use the run's data settings"
                )
        self._mean = np.asarray(state["mean"], np.float64)
        self._std = np.asarray(state["std"], np.float64)


# the class is the registered builder: its __init__ is the config schema of `data: {name: sdo}`
DATAMODULES.register("sdo")(SdoDataModule)
