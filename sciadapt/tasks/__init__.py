"""Tasks: LightningModules that own backbone + head + loss + metrics."""

from sciadapt.tasks import dense, forecasting, rollout  # noqa: F401
