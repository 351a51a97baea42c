"""Backbones: one file per family, each registering its builders in ``BACKBONES``."""

from sciadapt.backbones import nhits  # noqa: F401
