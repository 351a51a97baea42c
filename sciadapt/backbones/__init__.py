"""Backbones: one file per family, each registering its builders in ``BACKBONES``."""

from sciadapt.backbones import moment, nhits  # noqa: F401
