"""Forecasts of every series of a panel, in the long layout forecasting users read back.

``unique_id, ds, y_hat`` (plus ``y_hat_q<level>`` per quantile of a probabilistic head), one row per
series and forecast step, in each series' original units, and a PNG of a few series (history and
forecast).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sciadapt.runs import atomic_write_text, save_figure

#: series drawn in the PNG
PLOTTED = 4
#: series per forward pass
CHUNK = 512


def forecast_panel(task: Any, inputs: dict[str, Any], out: Path) -> Path:
    """Run ``task`` on a panel's :meth:`~sciadapt.datamodules.panel.PanelDataModule.predict_inputs` and
    write the long-format CSV ``out`` and its plot (``out`` with ``.png``), together or not at all."""
    task.eval()
    quantiles: list[float] | None = getattr(task.head, "quantiles", None)
    x = inputs["x"]
    points, qparts = [], []
    with torch.no_grad():
        for a in range(0, len(x), CHUNK):
            batch = {"x": x[a : a + CHUNK], "x_mask": inputs["x_mask"][a : a + CHUNK]}
            if "future_exog" in inputs:
                batch["future_exog"] = inputs["future_exog"][a : a + CHUNK]
            pred = task(batch["x"], **task.model_inputs(batch))  # (B, L, 1) or (B, L, 1, Q)
            points.append(task.head.point(pred)[..., 0].numpy() if quantiles else pred[..., 0].numpy())
            if quantiles:
                qparts.append(pred[:, :, 0].numpy())  # (B, L, Q)
    mean, std = inputs["mean"][:, None], inputs["std"][:, None]
    point = np.concatenate(points) * std + mean  # (n, L)
    frame = pd.DataFrame(
        {
            "unique_id": np.repeat(inputs["ids"], point.shape[1]),
            "ds": np.concatenate([np.asarray(f) for f in inputs["future"]]),
            "y_hat": point.reshape(-1),
        }
    )
    if quantiles:
        q = np.concatenate(qparts) * std[..., None] + mean[..., None]  # (n, L, Q)
        for j, level in enumerate(quantiles):
            frame[f"y_hat_q{level:g}"] = q[:, :, j].reshape(-1)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, frame.to_csv(index=False))
    try:
        _plot(inputs, frame, quantiles, out.with_suffix(".png"))
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out


def _plot(inputs: dict[str, Any], frame: pd.DataFrame, quantiles: list[float] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = inputs["ids"][:PLOTTED]
    fig, axes = plt.subplots(len(ids), 1, figsize=(9, 2.4 * len(ids)), squeeze=False)
    for ax, sid, (stamps, target) in zip(axes[:, 0], ids, inputs["history"], strict=False):
        part = frame[frame["unique_id"] == sid]
        ax.plot(stamps, target, color="black", lw=1, label="history")
        ax.plot(part["ds"], part["y_hat"], color="tab:blue", lw=1.5, label="forecast")
        if quantiles and len(quantiles) >= 2:
            lo, hi = f"y_hat_q{quantiles[0]:g}", f"y_hat_q{quantiles[-1]:g}"
            ax.fill_between(part["ds"], part[lo], part[hi], color="tab:blue", alpha=0.25)
        ax.set_title(str(sid), fontsize=9, loc="left")
        ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    save_figure(fig, path)
