"""Scene-scale prediction with a trained dense run: a whole (larger-than-memory) scene to one COG.

:func:`predict_scene_run` rebuilds the model of a run's last stage (its live PEFT adapters included),
loads the stage's final weights, and feeds the scene to :func:`sciadapt.predict.tiles.predict_scene`
tile by tile, normalised with the statistics the run trained with (``scaler.json``). The training
files are not needed: the run's data config is applied to the scene itself (same band names and
selection, frames, chip size, nodata), so a scene that lacks a band the model was trained on fails
with the band's name.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from sciadapt.errors import ConfigError
from sciadapt.registry import DATAMODULES

log = logging.getLogger("sciadapt")

COORDS = ("temporal_coords", "location_coords")


def predict_scene_run(
    run_dir: Path,
    images: list[str],
    out: Path,
    overlap: int = 32,
    batch_size: int = 8,
    device: str | None = None,
) -> dict[str, Any]:
    """Predict one scene with a finished dense run (segmentation or pixel regression) into a COG.

    Args:
        run_dir: A finished run directory (``runs/<pipeline>/<stamp>``) of a raster pipeline.
        images: The scene's image file(s): one file, or one per frame in time order (as the run's
            ``data.frames`` / ``data.frame_layout`` read them). Glob patterns are expanded.
        out: The Cloud-Optimized GeoTIFF to write: the class map (uint8, nodata 255) of a
            segmentation run, the ``n_outputs`` predicted bands (float32, nodata NaN) of a regression
            run; CRS and transform are the scene's.
        overlap: Pixels shared by neighbouring tiles, blended across the seam.
        batch_size: Tiles per model call.
        device: Where the model runs (``"cuda"``, ``"cpu"``); None: CUDA when available.

    Returns:
        :func:`sciadapt.predict.tiles.predict_scene`'s summary (``path``, ``tiles``, ``seconds``,
        ``tiles_per_s``, ``height``, ``width``, ``cog``) plus ``run``, ``stage`` and ``coords`` (whether
        the model got temporal/location coordinates).

    Raises:
        CheckpointError: The run is unfinished (no final weights or no ``scaler.json``).
        ConfigError: The run is not a raster run, or the arguments are invalid.
        DataError: The scene lacks a band of the run, is smaller than one chip, or its frames misalign.
    """
    from sciadapt.predict.tiles import predict_scene
    from sciadapt.runs import Run, check_output_location

    check_output_location(out, "--out")
    run = Run.open(run_dir)
    state = run.scaler()
    stage = run.plans[-1].name
    data = run.data_config(-1)
    if data["name"] != "raster" or "chip_size" not in state:
        raise ConfigError(
            f"{run_dir} is a run on {data['name']!r} data; scene prediction takes runs of raster pipelines "
            "(for forecasting runs use `sciadapt predict --run R --data FILE`)"
        )
    if isinstance(images, str | Path):
        images = [str(images)]
    if not images:
        raise ConfigError("predict_scene_run: give the scene's image file(s)")

    # The run's data settings applied to the scene itself: every pixel is "train" (nothing is split
    # off), no labels; the statistics come from the run, not from this scene.
    params = {
        **{k: v for k, v in data.items() if k != "name"},
        "images": [str(p) for p in images],
        "masks": None,
        "split": "scenes",
        "split_scenes": {"train": [0]},
        "augment": False,
    }
    dm = DATAMODULES.build("raster", **params)
    dm.load_scaler_state(state)
    if len(dm.scenes) != 1:
        raise ConfigError(
            f"the images {list(images)} make {len(dm.scenes)} scenes with data.frames={dm.frames}; "
            "give one scene's file(s) per call"
        )
    settings = dm.prediction_settings()

    task = run.task(-1, dm.facts())
    task.eval()
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task.to(dev)

    takes = [k for k in COORDS if k in task.backbone_inputs]
    with_coords = bool(takes) and dm.with_time and dm.with_location
    if takes and not with_coords:
        # predict_scene passes both coordinates or neither: a scene without dates gets none (a
        # backbone without coordinate encodings ignores them anyway)
        log.info("%s: the scene lacks acquisition dates or a CRS; predicting without %s", run_dir, " and ".join(takes))

    def model_fn(x: torch.Tensor, **coords: torch.Tensor) -> torch.Tensor:
        inputs = {k: v for k, v in coords.items() if k in takes}
        out: torch.Tensor = task(x, **inputs)  # (B, n_outputs, H, W): logits or regression values
        return out

    result = predict_scene(
        model_fn,
        params["images"],
        out,
        overlap=overlap,
        batch_size=batch_size,
        n_outputs=int(task.head.n_out),
        with_coords=with_coords,
        device=dev,
        **settings,
    )
    return {**result, "run": str(run_dir), "stage": stage, "coords": with_coords}
