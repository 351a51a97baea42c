"""Datamodules, one file (or package) per data kind; importable as ``sciadapt.datamodules``."""

from sciadapt.registry import load_package

# every public module registers itself on import: a new file needs no edit here
load_package(__name__, __path__)
