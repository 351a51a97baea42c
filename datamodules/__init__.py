"""Datamodules, one file (or package) per data kind; importable as ``sciadapt.datamodules``.

A new file needs no edit here: :mod:`sciadapt.index` finds its ``register`` lines, and the registry
imports the file when a datamodule of it is built (importing this package imports no module of it).
"""
