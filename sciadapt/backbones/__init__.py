"""Backbones: one file per family, each registering its builders in ``BACKBONES``.

A new file needs no edit here: :mod:`sciadapt.index` finds its ``register`` lines, and the registry
imports the file when a backbone of it is built (importing this package imports no module of it).
"""
