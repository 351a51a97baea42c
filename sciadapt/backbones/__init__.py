"""Backbones: one file per family, each registering its builders in ``BACKBONES``."""

from sciadapt.backbones import graphcast, moment, nhits, ttm  # noqa: F401
