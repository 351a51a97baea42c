"""sciadapt: adapt pretrained scientific and time-series foundation models to new domains."""

__version__ = "0.1.0"
