"""Heads shared by every backbone of a kind."""

from sciadapt.heads import forecast  # noqa: F401
from sciadapt.heads import grid  # noqa: F401
