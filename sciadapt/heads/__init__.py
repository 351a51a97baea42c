"""Heads shared by every backbone of a kind."""

from sciadapt.heads import forecast, grid, regress, segment, unet  # noqa: F401
