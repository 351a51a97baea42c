"""Tasks: LightningModules that own backbone + head + loss + metrics."""

from sciadapt.tasks import (
    forecasting,  # noqa: F401
    rollout,  # noqa: F401
)
