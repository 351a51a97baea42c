"""Forecasts from a trained run, in original units, with timestamps and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sciadapt.config import build_datamodule, validate
from sciadapt.datamodules.panel import PanelDataModule
from sciadapt.datamodules.solar_formats import K_MAX
from sciadapt.datamodules.timeseries import TimeSeriesDataModule
from sciadapt.errors import CheckpointError, ConfigError
from sciadapt.metrics.solar import to_irradiance
from sciadapt.predict.verbs import RUN_FLAGS, ZERO_SHOT_FLAGS, verb_keys
from sciadapt.runs import atomic_write_text, save_figure


def predict_run(run_dir: Path, data: str | None, out: Path) -> Path:
    """Forecast the ``horizon`` steps after the last row of ``data`` with the run's final weights.

    Writes ``out`` (CSV: timestamp, one column per target, ``<target>_q<level>`` per quantile
    for probabilistic heads) and ``out`` with a ``.png`` suffix (history and forecast). A run that
    forecasts the clear-sky index (``data.target_transform=clear_sky_index``) writes irradiance in
    W/m^2: ``k`` times the clear-sky irradiance of the run's site at each forecast timestamp (never
    negative, zero with the sun below the horizon), with ``<target>_clear_sky_index`` and
    ``<target>_clear`` beside it; timestamps are on the file's clock.
    """
    from sciadapt.runs import Run, check_output_location

    check_output_location(out, "--out")
    run = Run.open(run_dir)
    dm = run.datamodule(-1)
    if isinstance(dm, PanelDataModule):
        from sciadapt.predict.panel import forecast_panel

        with verb_keys("sciadapt predict --run", RUN_FLAGS):
            dm.load_scaler_state(run.scaler())
            inputs = dm.predict_inputs(data)
            task = run.task(-1, dm.facts())
        return forecast_panel(task, inputs, out)
    if not isinstance(dm, TimeSeriesDataModule):
        raise ConfigError(
            f"predict --data forecasts series, but {run_dir} trained on {type(dm).__name__} data: use "
            "`sciadapt predict --run RUN --init TIME` (gridded) or `--scene` (rasters) for it"
        )
    with verb_keys("sciadapt predict --run", RUN_FLAGS):
        dm.load_scaler_state(run.scaler())
        inputs = dm.predict_inputs(data)
        task = run.task(-1, dm.facts())
    return _forecast_to_csv(task, dm, inputs, out)


def zero_shot_backbones() -> list[str]:
    """Registered backbones that build themselves from a checkpoint folder (``from_pretrained``) and
    forecast with their own head: the ones ``predict --backbone`` can run without a trained run."""
    import typing

    from sciadapt.registry import BACKBONES

    names = []
    for name in BACKBONES.list():
        fn = BACKBONES.get(name)
        cls = fn if isinstance(fn, type) else typing.get_type_hints(fn).get("return")
        if isinstance(cls, type) and callable(getattr(cls, "from_pretrained", None)):
            names.append(name)
    return names


def _checkpoint_config(folder: Path, weights: str) -> dict[str, Any]:
    """The ``config.json`` of a pretrained checkpoint folder; a damaged file is an error naming it."""
    path = folder / "config.json"
    fix = f"the checkpoint {weights} is damaged or incomplete: download it again (or restore the file)"
    from sciadapt.hub import read_json_object

    return read_json_object(path, "a JSON object of model settings", f"Fix: {fix}")


def predict_pretrained(
    backbone: str,
    weights: str,
    data: str,
    out: Path,
    horizon: int | None = None,
    context_length: int | None = None,
    target_columns: list[str] | None = None,
    timestamp_column: str = "date",
) -> Path:
    """Zero-shot forecast straight from pretrained weights, without a run directory.

    For backbones that forecast themselves (``ttm``, ``moment`` with a forecasting head). The
    context length and horizon come from the checkpoint's ``config.json`` unless given; the
    model's own instance scaling replaces a fitted scaler, so no training split is needed. A
    history shorter than the context is left-padded and masked.

    Raises:
        ConfigError: Unknown backbone, or a horizon/context the checkpoint does not state.
        CheckpointError: Weights missing, unreachable or not matching.
        DataError: Bad data file.
    """
    task, dm, inputs = zero_shot_task(
        backbone, weights, data, out, horizon, context_length, target_columns, timestamp_column
    )
    return _forecast_to_csv(task, dm, inputs, out)


def zero_shot_task(
    backbone: str,
    weights: str,
    data: str,
    out: Path,
    horizon: int | None = None,
    context_length: int | None = None,
    target_columns: list[str] | None = None,
    timestamp_column: str = "date",
) -> tuple[Any, Any, dict[str, Any]]:
    """(task, datamodule, model inputs) of a zero-shot forecast: the base read once, checked, unscaled
    data (see :func:`predict_pretrained`, which documents the arguments and errors)."""
    from sciadapt.config import build_task
    from sciadapt.hub import resolve_folder
    from sciadapt.registry import BACKBONES
    from sciadapt.runs import check_output_location

    BACKBONES.get(backbone)  # unknown name -> "did you mean"
    zero_shot = zero_shot_backbones()
    if backbone not in zero_shot:
        raise ConfigError(
            f"predict --backbone {backbone}: {backbone} is not a zero-shot backbone (those are: "
            f"{', '.join(zero_shot)}); it has no forecasting head of its own. Fix: fine-tune it first "
            f"(sciadapt fit <pipeline> backbone.name={backbone} ...) and predict with --run RUN"
        )
    check_output_location(out, "--out")
    folder = resolve_folder(weights, ["config.json"], ["model.safetensors", "pytorch_model.bin"])
    meta = _checkpoint_config(folder, weights)
    ctx = context_length or meta.get("context_length") or meta.get("seq_len")
    hor = horizon or meta.get("prediction_filter_length") or meta.get("prediction_length")
    hor = hor or meta.get("forecast_horizon")
    missing = [k for k, v in (("--context-length", ctx), ("--horizon", hor)) if not v]
    if missing:
        raise ConfigError(
            f"{weights}: config.json states no {' / '.join(m.lstrip('-') for m in missing)}; "
            f"pass {' and '.join(missing)}"
        )
    try:
        ctx, hor = int(ctx), int(hor)  # type: ignore[arg-type]  # a file's values: checked here
    except (TypeError, ValueError):
        raise CheckpointError(
            f"{folder / 'config.json'}: the context length {ctx!r} or horizon {hor!r} it states is not a whole "
            "number. Fix: pass --context-length and --horizon, or download the checkpoint again"
        ) from None
    data_cfg = {
        "name": "timeseries",
        "path": data,
        "timestamp_column": timestamp_column,
        "target_columns": target_columns,
        "context_length": ctx,
        "horizon": hor,
        "scale": False,
        "min_context": 1,
    }
    from sciadapt.stages.plan import model_of

    with verb_keys("sciadapt predict --backbone", ZERO_SHOT_FLAGS, retrain=False):
        cfg = validate(
            {
                "name": "predict",
                "data": data_cfg,
                "backbone": {"name": backbone, "weights": str(folder)},
                "head": {"name": "native"},
                "task": {"name": "forecasting"},
                "stages": [{"name": "zeroshot", "max_epochs": 0, "init_from": "pretrained"}],
            },
            source="sciadapt predict",
        )
        dm = build_datamodule(cfg.data)
        inputs = dm.predict_inputs()
        task = build_task(model_of(cfg, 0), dm.facts())
    return task, dm, inputs


def _forecast_to_csv(task: Any, dm: Any, inputs: dict[str, Any], out: Path) -> Path:
    """Run ``task`` on ``inputs`` and write the forecast CSV (original units) and its plot."""
    frame, quantiles = forecast_frame(task, dm, inputs)
    return write_forecast(frame, inputs, list(dm.target_columns), quantiles, out)


def forecast_frame(task: Any, dm: Any, inputs: dict[str, Any]) -> tuple[pd.DataFrame, list[float] | None]:
    """``task``'s forecast on ``inputs`` in original units (indexed by timestamp), and its quantile levels."""
    task.eval()
    with torch.no_grad():
        pred = task(inputs["x"], **task.model_inputs(inputs))[0].numpy()  # (L, C) or (L, C, Q)
    quantiles = getattr(task.head, "quantiles", None)
    targets = list(dm.target_columns)
    frame = pd.DataFrame(index=pd.Index(inputs["future_index"], name="timestamp"))
    clear = inputs.get("clear_sky")  # (L, C) W/m^2: the run forecasts the clear-sky index k
    if quantiles:
        point = dm.inverse_transform(task.head.point(torch.from_numpy(pred)[None])[0].numpy())
        qs = dm.inverse_transform(pred, quantile_axis=True)
        if clear is not None:
            qs = to_irradiance(qs, np.repeat(clear[:, :, None], qs.shape[-1], axis=2), K_MAX)
    else:
        point = dm.inverse_transform(pred)
    if clear is not None:
        k, point = point, to_irradiance(point, clear, K_MAX)  # the task's rule: k * clear sky, 0 at night
    for c, col in enumerate(targets):
        frame[col] = point[:, c]
        for j, q in enumerate(quantiles or []):
            frame[f"{col}_q{q:g}"] = qs[:, c, j]
        if clear is not None:
            frame[f"{col}_clear_sky_index"] = k[:, c]
            frame[f"{col}_clear"] = clear[:, c]
    return frame, quantiles


def write_forecast(
    frame: pd.DataFrame, inputs: dict[str, Any], targets: list[str], quantiles: list[float] | None, out: Path
) -> Path:
    """Write a forecast (:func:`forecast_frame`) to ``out`` and its plot beside it, both or neither."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, frame.to_csv())
    try:
        _plot(inputs["history"], frame, targets, quantiles, out.with_suffix(".png"))
    except BaseException:
        out.unlink(missing_ok=True)  # the forecast and its plot are written together or not at all
        raise
    return out


def _plot(
    history: pd.DataFrame,
    forecast: pd.DataFrame,
    targets: list[str],
    quantiles: list[float] | None,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(targets)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.6 * n), squeeze=False, sharex=True)
    for ax, col in zip(axes[:, 0], targets, strict=True):
        ax.plot(history.index, history[col], color="black", lw=1, label="history")
        ax.plot(forecast.index, forecast[col], color="tab:blue", lw=1.5, label="forecast")
        if quantiles and len(quantiles) >= 2:
            lo, hi = f"{col}_q{quantiles[0]:g}", f"{col}_q{quantiles[-1]:g}"
            ax.fill_between(
                forecast.index,
                forecast[lo],
                forecast[hi],
                color="tab:blue",
                alpha=0.25,
                label=f"{quantiles[0]:g}-{quantiles[-1]:g} interval",
            )
        ax.set_ylabel(col)
        ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    save_figure(fig, path)
