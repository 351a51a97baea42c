"""Backbones: one file per family, each registering its builders in ``BACKBONES``."""

from sciadapt.backbones import graphcast, moment, nhits, prithvi, timm_vision, ttm  # noqa: F401
