"""Windowed raster reads: GeoTIFF (and anything else GDAL reads) through rasterio, eo-learn ``.npy`` arrays
through a memory map, and a per-process cache of open files."""

from __future__ import annotations

import datetime as dt
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine, from_bounds
from rasterio.windows import Window

from sciadapt.errors import DataError

#: GeoTIFF tags read as the acquisition date of a file (first one present wins).
DATE_TAGS = ("ACQUISITION_DATE", "DATE_ACQUIRED", "acquisition_date", "date")
_MAX_OPEN = 64  # open files kept per process


def _parse_date(value: str) -> dt.date | None:
    """An ISO date/datetime or a TIFF ``YYYY:MM:DD HH:MM:SS`` stamp; None when unparseable."""
    text = value.strip()
    if len(text) >= 10 and text[4] == ":" and text[7] == ":":
        text = f"{text[:4]}-{text[5:7]}-{text[8:]}"
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError:
        try:
            return dt.datetime.strptime(text[:8], "%Y%m%d").date()
        except ValueError:
            return None


class RasterReader:
    """One open raster: windowed reads plus the metadata the alignment checks need.

    Attributes:
        path: The file.
        height: Rows.
        width: Columns.
        count: Bands per time step.
        n_times: Time steps stored in the file (T of a ``(T, H, W, C)`` array; 1 for GeoTIFF).
        crs: Coordinate reference system, None when the file has none.
        transform: Pixel-to-CRS affine transform (identity without georeferencing).
        descriptions: Band names stored in the file (None where a band has none).
        nodata: The file's nodata value, or None.
        dates: Acquisition date per time step (None where unknown).
    """

    path: str
    height: int
    width: int
    count: int
    n_times: int
    crs: CRS | None
    transform: Affine
    descriptions: list[str | None]
    nodata: float | None
    dates: list[dt.date | None]

    def read(self, indexes: Sequence[int], row: int, col: int, height: int, width: int, time: int = 0) -> np.ndarray:
        """Bands ``indexes`` (0-based) of time step ``time`` in a window, native dtype, ``(k, h, w)``."""
        raise NotImplementedError

    def read_decimated(
        self,
        indexes: Sequence[int],
        row: int,
        col: int,
        height: int,
        width: int,
        out_shape: tuple[int, int],
        time: int = 0,
    ) -> np.ndarray:
        """Like :meth:`read` but nearest-neighbour subsampled to ``out_shape`` (for statistics)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""


class _GdalReader(RasterReader):
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with warnings.catch_warnings():
                # A file without georeferencing is legal here (no location_coords, no CRS checks).
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                self._src = rasterio.open(path)
        except rasterio.errors.RasterioIOError as err:
            raise DataError(
                f"cannot open raster {path}: {err}. Fix: check that it is a complete GeoTIFF "
                f"(`gdalinfo {path}`), re-create or re-download it, or remove it from the config"
            ) from err
        src = self._src
        self.height, self.width, self.count, self.n_times = src.height, src.width, src.count, 1
        self.crs = src.crs
        self.transform = src.transform
        self.descriptions = list(src.descriptions)
        self.nodata = src.nodata
        tags = src.tags()
        stamp = next((tags[k] for k in DATE_TAGS if k in tags), None)
        self.dates = [_parse_date(stamp) if stamp else None]

    def _fail(self, err: Exception, row: int, col: int, height: int, width: int) -> DataError:
        return DataError(
            f"cannot read rows {row}..{row + height}, columns {col}..{col + width} of {self.path}: {err}. "
            "Fix: the file is corrupt or truncated; re-create it (`gdalinfo -checksum` finds bad blocks)"
        )

    def read(self, indexes: Sequence[int], row: int, col: int, height: int, width: int, time: int = 0) -> np.ndarray:
        try:
            # rasterio is untyped; its read returns an ndarray
            block: np.ndarray = self._src.read([i + 1 for i in indexes], window=Window(col, row, width, height))
            return block
        except (rasterio.errors.RasterioError, OSError) as err:
            raise self._fail(err, row, col, height, width) from err

    def read_decimated(
        self,
        indexes: Sequence[int],
        row: int,
        col: int,
        height: int,
        width: int,
        out_shape: tuple[int, int],
        time: int = 0,
    ) -> np.ndarray:
        try:
            block: np.ndarray = self._src.read(
                [i + 1 for i in indexes],
                window=Window(col, row, width, height),
                out_shape=(len(indexes), *out_shape),
                resampling=Resampling.nearest,
            )
            return block
        except (rasterio.errors.RasterioError, OSError) as err:
            raise self._fail(err, row, col, height, width) from err

    def close(self) -> None:
        self._src.close()


class _NpyReader(RasterReader):
    """An eo-learn style feature array, memory-mapped; georeferenced by a sibling ``bbox.geojson``."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as err:
            raise DataError(
                f"cannot read array {path}: {err}. Fix: check that it is a complete .npy file (np.load) "
                "or remove it from the config"
            ) from err
        if arr.ndim == 2:
            arr = arr[None, :, :, None]
        elif arr.ndim == 3:
            arr = arr[None]
        elif arr.ndim != 4:
            raise DataError(
                f"array {path} has shape {arr.shape}; expected (T, H, W, C), (H, W, C) or (H, W) as eo-learn "
                "stores features. Fix: reshape it or convert it to GeoTIFF"
            )
        self._arr = arr  # (T, H, W, C)
        self.n_times, self.height, self.width, self.count = (int(s) for s in arr.shape)
        self.descriptions = [None] * self.count
        self.nodata = None
        self.crs, self.transform = self._georef(Path(path).parent)
        self.dates = self._dates(Path(path).parent)

    def _georef(self, folder: Path) -> tuple[CRS | None, Affine]:
        box = folder / "bbox.geojson"
        if not box.is_file():
            return None, Affine.identity()
        try:
            geo = json.loads(box.read_text())
            crs = CRS.from_user_input(geo["crs"]["properties"]["name"])
            xs = [p[0] for ring in geo["coordinates"] for p in ring]
            ys = [p[1] for ring in geo["coordinates"] for p in ring]
        except (ValueError, KeyError, TypeError, IndexError, rasterio.errors.CRSError) as err:
            raise DataError(
                f"{box}: cannot read the patch bounds ({type(err).__name__}: {err}); expected a GeoJSON polygon "
                "with a named crs as eo-learn writes it. Fix: repair or delete the file (without it the patch "
                "has no CRS)"
            ) from err
        return crs, from_bounds(min(xs), min(ys), max(xs), max(ys), self.width, self.height)

    def _dates(self, folder: Path) -> list[dt.date | None]:
        stamps = folder / "timestamps.json"
        if stamps.is_file():
            try:
                values = json.loads(stamps.read_text())
            except ValueError:
                values = None
            # The file lists the dates of the patch's time-dependent features; only an array with
            # exactly that many time steps is dated by it (eo-learn's REFERENCE_SCENES are not).
            if isinstance(values, list) and len(values) == self.n_times and self.n_times > 1:
                return [_parse_date(str(v)) for v in values]
        return [None] * self.n_times

    def read(self, indexes: Sequence[int], row: int, col: int, height: int, width: int, time: int = 0) -> np.ndarray:
        block = self._arr[time, row : row + height, col : col + width][..., list(indexes)]  # (h, w, k)
        return np.ascontiguousarray(np.moveaxis(block, -1, 0))

    def read_decimated(
        self,
        indexes: Sequence[int],
        row: int,
        col: int,
        height: int,
        width: int,
        out_shape: tuple[int, int],
        time: int = 0,
    ) -> np.ndarray:
        rows = np.linspace(row, row + height - 1, out_shape[0]).round().astype(int)
        cols = np.linspace(col, col + width - 1, out_shape[1]).round().astype(int)
        block = self._arr[time][np.ix_(rows, cols, np.asarray(indexes, np.intp))]
        return np.ascontiguousarray(np.moveaxis(block, -1, 0))


_OPEN: OrderedDict[tuple[int, str], RasterReader] = OrderedDict()


def open_raster(path: str) -> RasterReader:
    """The reader of ``path``, opened once per process (a small LRU of open files).

    Keyed by process id too: rasterio handles must not cross a fork into DataLoader workers.
    """
    key = (os.getpid(), path)
    reader = _OPEN.get(key)
    if reader is not None:
        _OPEN.move_to_end(key)
        return reader
    if not os.path.exists(path):
        raise DataError(f"raster file {path} does not exist. Fix: check data.images / data.masks")
    reader = _NpyReader(path) if path.lower().endswith(".npy") else _GdalReader(path)
    _OPEN[key] = reader
    while len(_OPEN) > _MAX_OPEN:
        _, old = _OPEN.popitem(last=False)
        old.close()
    return reader


def close_rasters() -> None:
    """Close every file this process opened (tests call it before deleting their folders)."""
    while _OPEN:
        _, reader = _OPEN.popitem()
        reader.close()
