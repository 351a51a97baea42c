"""sciadapt: adapt pretrained scientific and time-series foundation models to new domains."""

from sciadapt._process import tune_allocator

__version__ = "0.1.0"

tune_allocator()  # before any tensor exists (see sciadapt._process)
