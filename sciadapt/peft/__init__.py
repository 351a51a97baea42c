"""Parameter-efficient fine-tuning: the core, adapter I/O, and one file per method.

A new file needs no edit here: :mod:`sciadapt.index` finds its ``register`` lines, and the registry
imports the file when a method of it is built (importing this package imports no module of it).
"""
