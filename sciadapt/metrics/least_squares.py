"""The closed-form least-squares forecaster: the linear baseline every forecasting table carries.

One linear map with an intercept, shared by every target channel, from a channel's context window to
its horizon, fitted by ordinary least squares on the train windows (in the data's scaled space, as
the model sees them). The normal equations are accumulated batch by batch in float64, so a train
split of any length costs one pass and ``(T + 1)^2`` numbers of memory; a tiny ridge term (relative
to the mean diagonal) keeps the solve defined when windows are collinear.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

#: ridge added to the normal equations, relative to their mean diagonal
RIDGE = 1e-6


class LeastSquaresForecaster:
    """``predict(past) = past @ W + b`` per channel, with ``W, b`` from :meth:`fit`.

    Args:
        n_targets: Target channels (the first ``n_targets`` of ``x``; covariates are not used).
        ridge: Relative ridge term.
    """

    def __init__(self, n_targets: int, ridge: float = RIDGE) -> None:
        self.n_targets = n_targets
        self.ridge = ridge
        self.weight: np.ndarray | None = None  # (T + 1, L): the last row is the intercept

    def fit(self, batches: Iterable[Mapping[str, Any]]) -> LeastSquaresForecaster:
        """Fit on ``{"x": (B, T, C_in), "y": (B, L, C), "mask"?: (B, L, C)}`` batches.

        A window whose target is missing anywhere (``mask`` 0) is left out for that channel.

        Raises:
            ValueError: If no complete window was seen.
        """
        gram: np.ndarray | None = None
        cross: np.ndarray | None = None
        rows = 0
        for batch in batches:
            past = _numpy(batch["x"])[..., : self.n_targets]  # (B, T, C)
            future = _numpy(batch["y"])  # (B, L, C)
            design = np.moveaxis(past, 2, 1).reshape(-1, past.shape[1])  # (B C, T)
            target = np.moveaxis(future, 2, 1).reshape(-1, future.shape[1])  # (B C, L)
            keep = np.isfinite(design).all(axis=1) & np.isfinite(target).all(axis=1)
            if batch.get("mask") is not None:
                mask = np.moveaxis(_numpy(batch["mask"]), 2, 1).reshape(-1, future.shape[1])
                keep &= (mask > 0).all(axis=1)
            if batch.get("x_mask") is not None:
                x_mask = np.moveaxis(_numpy(batch["x_mask"])[..., : self.n_targets], 2, 1).reshape(design.shape)
                keep &= (x_mask > 0).all(axis=1)
            design = np.concatenate([design[keep], np.ones((int(keep.sum()), 1))], axis=1).astype(np.float64)
            target = target[keep].astype(np.float64)
            gram = design.T @ design if gram is None else gram + design.T @ design
            cross = design.T @ target if cross is None else cross + design.T @ target
            rows += len(design)
        if gram is None or cross is None or rows == 0:
            raise ValueError("least squares: no complete train window to fit on")
        ridge = self.ridge * float(np.trace(gram)) / len(gram)
        self.weight = np.linalg.solve(gram + ridge * np.eye(len(gram)), cross)
        return self

    def predict(self, past: np.ndarray) -> np.ndarray:
        """Forecast ``(B, L, C)`` from the target context ``past`` of shape ``(B, T, C)``."""
        if self.weight is None:
            raise RuntimeError("least squares: call fit() first")
        b, t, c = past.shape
        design = np.moveaxis(past, 2, 1).reshape(-1, t).astype(np.float64)  # (B C, T)
        out: np.ndarray = design @ self.weight[:-1] + self.weight[-1]  # (B C, L)
        forecast: np.ndarray = np.moveaxis(out.reshape(b, c, -1), 1, 2).astype(np.float32)  # (B, L, C)
        return forecast


def _numpy(value: Any) -> np.ndarray:
    """A tensor or array as a NumPy array (no torch import here)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
