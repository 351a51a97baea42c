"""The torchgeo adapter: a ``RasterDataset`` class named in the config finds the files, band names and dates."""

from __future__ import annotations

import datetime as dt
import os
import re

import pandas as pd

from sciadapt.datamodules.timeseries import resolve_path
from sciadapt.errors import ConfigError, DataError
from sciadapt.registry import suggest


def torchgeo_files(name: str, roots: list[str]) -> tuple[list[str], list[str] | None, dict[str, dt.date | None]]:
    """Files, band names and file-name dates found by the torchgeo ``RasterDataset`` class ``name``."""
    import torchgeo.datasets as tgd

    classes = sorted(
        n for n in dir(tgd) if isinstance(getattr(tgd, n), type) and issubclass(getattr(tgd, n), tgd.RasterDataset)
    )
    cls = getattr(tgd, name, None)
    if name not in classes or cls is None:
        raise ConfigError(
            f"data.torchgeo: {name!r} is not a torchgeo RasterDataset class.{suggest(name, classes)} "
            f"Available: {', '.join(classes)}"
        )
    if cls.separate_files:
        raise ConfigError(
            f"data.torchgeo: {name} stores one file per band (separate_files), which this datamodule does not "
            "read. Fix: stack the bands into one GeoTIFF per scene (`gdal_merge.py -separate`) and list the files "
            "in data.images without data.torchgeo"
        )
    paths = [str(resolve_path(r)) for r in roots]
    regex = re.compile(cls.filename_regex, re.VERBOSE)
    try:
        ds = cls(paths=paths)
    except tgd.DatasetNotFoundError as err:
        raise DataError(
            f"data.torchgeo={name}: no file under {', '.join(paths)} matches its pattern "
            f"{cls.filename_glob!r} / {cls.filename_regex.strip()[:80]!r}. Fix: point data.images at the folder "
            "holding the files"
        ) from err
    if isinstance(ds.index, pd.DataFrame) and "filepath" in ds.index.columns:  # torchgeo >= 0.8: a GeoDataFrame
        files = [str(p) for p in ds.index["filepath"]]
    else:  # older releases index an R-tree; the class's regex decides which files count
        files = [str(f) for f in sorted(ds.files) if regex.match(os.path.basename(f))]
    # Dates are parsed here from the class's own filename_regex/date_format, so they do not depend
    # on how a torchgeo release stores time in its index.
    dates: dict[str, dt.date | None] = {}
    for path in files:
        match = regex.match(os.path.basename(path))
        groups = match.groupdict() if match else {}
        stamp = groups.get("date") or groups.get("start")
        try:
            dates[path] = dt.datetime.strptime(stamp, cls.date_format).date() if stamp else None
        except ValueError:
            dates[path] = None
    return files, (list(cls.all_bands) or None), dates
