"""Heads shared by every backbone of a kind, one file per family registering in ``HEADS``."""

from sciadapt.registry import load_package

# every public module registers itself on import: a new file needs no edit here
load_package(__name__, __path__)
