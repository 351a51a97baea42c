"""Heads shared by every backbone of a kind."""

from sciadapt.heads import (
    forecast,  # noqa: F401
    grid,  # noqa: F401
)
