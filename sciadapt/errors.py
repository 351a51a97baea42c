"""User-facing errors. Every message says what is wrong *and* what to change.

The CLI catches :class:`SciadaptError` and prints the message without a traceback
(set ``SCIADAPT_DEBUG=1`` to see one) and exits with status 2.
"""

from __future__ import annotations


class SciadaptError(Exception):
    """Base class of errors caused by user input (config, data, checkpoints)."""

    exit_code = 2


class ConfigError(SciadaptError):
    """An invalid pipeline config. Holds every problem found, not just the first."""

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"invalid config{f' {source}' if source else ''}"
        if len(self.problems) == 1:
            msg = f"{head}: {self.problems[0]}"
        else:
            msg = f"{head}: {len(self.problems)} problems\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(msg)


class UnknownComponentError(SciadaptError):
    """A name that is not in a registry."""


class ShapeError(SciadaptError):
    """A tensor whose shape does not match the documented layout."""


class CheckpointError(SciadaptError):
    """A checkpoint that cannot be loaded into the requested model."""


class DataError(SciadaptError):
    """Input data that cannot be used as given (missing column, bad timestamps, NaNs...)."""
