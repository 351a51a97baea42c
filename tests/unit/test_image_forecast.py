"""The image-forecast task: the masked loss, per-channel RMSE and its per-image scores, the persistence
baseline, the checks of the builder, and the channel names after a backbone gains a channel."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from sciadapt.config import call_builder, head_facts
from sciadapt.errors import ConfigError, ShapeError
from sciadapt.metrics.bootstrap import metric_interval
from sciadapt.metrics.dense import regression_sums
from sciadapt.registry import BACKBONES
from sciadapt.tasks.image_forecast import ImageForecastTask, forecast_window_scores, masked_mse

NAMES = ["aia171", "aia193", "hmi_m"]


def _task(backbone: str = "surya_tiny", **backbone_args: Any) -> ImageForecastTask:
    torch.manual_seed(0)
    facts = {"channel_names": list(NAMES), "bands": list(NAMES), "num_frames": 2, "img_size": 16}
    model: dict[str, Any] = {
        "backbone": {"name": backbone, "head": "forecast", **backbone_args},
        "head": {"name": "grid"},
        "task": {"name": "image_forecast"},
    }
    bb = call_builder("backbone", model["backbone"], facts)
    head = call_builder("head", model["head"], head_facts(bb, facts))
    task: ImageForecastTask = call_builder("task", model["task"], facts, backbone=bb, head=head)
    return task.eval()


def _batch(n: int = 3, c: int = 3, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, 2, 16, 16, generator=g)
    y = x[:, :, -1] + 0.1 * torch.randn(n, c, 16, 16, generator=g)
    mask = torch.ones(n, c, 16, 16)
    mask[..., :4, :] = 0  # "off the disk"
    y[..., :4, :] = float("nan")  # whatever lies there never enters a score
    return {"x": x, "y": y, "mask": mask, "time_delta_input": torch.tensor([[1.0, 0.0]] * n), "meta": {}}


class _Data:
    """The part of a datamodule the baseline reads: the test batches, in time order."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches = batches

    def test_dataloader(self) -> list[dict[str, Any]]:
        return self.batches


# ------------------------------------------------------------------------------- loss and scores
def test_the_masked_loss_leaves_out_pixels_off_the_disk() -> None:
    b = _batch()
    pred = b["x"][:, :, -1]
    keep = b["mask"] > 0
    want = ((pred - b["y"])[keep] ** 2).mean()
    torch.testing.assert_close(masked_mse(pred, b["y"], b["mask"]), want)
    assert masked_mse(pred, b["y"], torch.zeros_like(b["mask"])) == 0  # nothing valid: 0, not NaN
    with pytest.raises(ShapeError, match=r"forecasts \(3, 6, 16, 16\) but the target y is \(3, 3, 16, 16\)"):
        masked_mse(pred.repeat(1, 2, 1, 1), b["y"], b["mask"])


def test_rmse_is_the_mean_of_per_channel_rmse_over_the_whole_split() -> None:
    rng = np.random.default_rng(0)
    pred, y = torch.from_numpy(rng.normal(size=(6, 3, 8, 8))), torch.from_numpy(rng.normal(size=(6, 3, 8, 8)))
    y[:, 1] *= 3.0  # channels of different error sizes
    mask = torch.from_numpy(rng.random((6, 3, 8, 8)) > 0.3).double()
    mask[:2, 2] = 0  # a channel with no valid pixel in two images
    scores = forecast_window_scores(regression_sums(pred, y, mask, per_sample=True).numpy(), NAMES)
    per_channel = []
    for c, name in enumerate(NAMES):
        keep = mask[:, c] > 0
        rmse = float(((pred[:, c] - y[:, c])[keep] ** 2).mean().sqrt())
        mae = float((pred[:, c] - y[:, c])[keep].abs().mean())
        assert math.isclose(scores[f"rmse/{name}"].value(), rmse, rel_tol=1e-9)
        assert math.isclose(scores[f"mae/{name}"].value(), mae, rel_tol=1e-9)
        per_channel.append(rmse)
    assert math.isclose(scores["rmse"].value(), float(np.mean(per_channel)), rel_tol=1e-9)
    assert scores["rmse"].n == 6  # one accumulator per test image
    # a channel never observed is NaN and left out of the mean
    mask[:, 2] = 0
    empty = forecast_window_scores(regression_sums(pred, y, mask, per_sample=True).numpy(), NAMES)
    assert math.isnan(empty["rmse/hmi_m"].value())
    assert math.isclose(empty["rmse"].value(), float(np.mean(per_channel[:2])), rel_tol=1e-9)


# ------------------------------------------------------------------------------- the task
def test_the_task_forecasts_with_the_backbone_decoder_and_scores_like_persistence() -> None:
    task = _task()
    batches = [_batch(seed=s) for s in range(3)]
    with torch.no_grad():
        pred = task(batches[0]["x"], time_delta_input=batches[0]["time_delta_input"])
        loss, _ = task._loss(batches[0])  # type: ignore[arg-type]
    assert pred.shape == (3, 3, 16, 16) and torch.isfinite(loss)
    assert torch.isfinite(task.validation_metrics(pred, batches[0])["mae"])  # type: ignore[arg-type]

    # the test: per-image sums, scored once over the split; a perfect forecast scores 0
    outs = [task.collect_test_outputs(b["x"][:, :, -1], b) for b in batches]  # type: ignore[arg-type]
    as_persistence = task.evaluate_outputs({"sums": torch.cat([o["sums"] for o in outs])})
    ref = dict(task.test_window_scores)
    baseline = task.baseline("persistence", _Data(batches))
    assert baseline == pytest.approx(as_persistence)
    assert {"rmse", "mae", "rmse/aia171", "rmse/aia193", "rmse/hmi_m", "n_pixels"} <= set(baseline)
    assert baseline["n_pixels"] == 9 * 3 * 12 * 16
    assert 0.09 < baseline["rmse"] < 0.11  # the target is the last frame plus noise of std 0.1
    perfect = [task.collect_test_outputs(torch.nan_to_num(b["y"]), b) for b in batches]  # type: ignore[arg-type]
    assert task.evaluate_outputs({"sums": torch.cat([o["sums"] for o in perfect])})["rmse"] == 0.0
    # paired rows: the interval of the difference comes from the same images
    iv = metric_interval(task.test_window_scores["rmse"], ref["rmse"], replicates=200)
    assert iv.n == 9 and iv.high < 0 and iv.diff == pytest.approx(-baseline["rmse"])
    with pytest.raises(ConfigError, match="'climatology' is not an image-forecast baseline"):
        task.baseline("climatology", _Data(batches))


@pytest.mark.parametrize("backbone", ["surya_tiny", "swin3d_tiny"])
def test_channel_names_and_the_head_follow_a_backbone_that_gains_a_channel(backbone: str) -> None:
    task = _task(backbone)
    assert task.names(3) == NAMES
    task.backbone.extend_input_channels(["aia304"], "copy:aia171")  # type: ignore[attr-defined]
    b = _batch(c=4)
    with torch.no_grad():
        pred = task(b["x"], **task.model_inputs(b))
    assert pred.shape == (3, 4, 16, 16) and task.head.in_features == 4
    outs = task.collect_test_outputs(pred, b)  # type: ignore[arg-type]
    assert "rmse/aia304" in task.evaluate_outputs(outs)
    assert task.names(2) == ["0", "1"]  # names that do not fit are never guessed


def test_the_builder_names_what_to_change() -> None:
    from sciadapt.heads.grid import GridHead
    from sciadapt.tasks.image_forecast import build_image_forecast

    encoder = BACKBONES.build("surya_tiny", img_size=16)
    with pytest.raises(ConfigError, match="set backbone.head=forecast"):
        build_image_forecast(encoder, GridHead(3))
    two = BACKBONES.build("swin3d_tiny", bands=NAMES, img_size=16, head="forecast", forecast_frames=2)
    with pytest.raises(ConfigError, match="forecasts 6 maps for its 3 channels: set backbone.forecast_frames=1"):
        build_image_forecast(two, GridHead(6))
    series = BACKBONES.build("nhits_tiny")
    with pytest.raises(ConfigError, match="needs an image-series backbone"):
        build_image_forecast(series, GridHead(1))
    forecaster = BACKBONES.build("surya_tiny", img_size=16, head="forecast")
    with pytest.raises(ConfigError, match="set head.name=grid"):
        build_image_forecast(forecaster, torch.nn.Identity())
    task = _task()
    with pytest.raises(ShapeError, match=r"image_forecast input: expected B C T H W"):
        task(torch.zeros(2, 3, 16, 16))
