"""Heads shared by every backbone of a kind, one file per family registering in ``HEADS``.

A new file needs no edit here: :mod:`sciadapt.index` finds its ``register`` lines, and the registry
imports the file when a head of it is built (importing this package imports no module of it).
"""
