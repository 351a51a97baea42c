"""Datamodules, one file per data kind; importable as ``sciadapt.datamodules``."""

from sciadapt.datamodules import gridded, raster, timeseries  # noqa: F401
