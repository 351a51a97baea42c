"""Tasks: LightningModules that own backbone + head + loss + metrics, one file per kind.

A new file needs no edit here: :mod:`sciadapt.index` finds its ``register`` lines, and the registry
imports the file when a task of it is built (importing this package imports no module of it).
"""
