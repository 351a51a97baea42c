"""Dense tasks and their scores: confusion-matrix metrics by hand, bounded test accumulation,
baselines, and tiny end-to-end training of segmentation and pixel regression."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from sciadapt.errors import ConfigError, DataError
from sciadapt.heads.regress import build_pixel_regression
from sciadapt.heads.segment import build_conv_decoder, build_fcn, build_upernet
from sciadapt.metrics.dense import (
    confusion_matrix,
    f1_per_class,
    index_threshold_confusion,
    iou_per_class,
    regression_scores,
    regression_sums,
    segmentation_scores,
)
from sciadapt.spec import OptimSpec, StageSpec
from sciadapt.tasks.dense import (
    PixelRegressionTask,
    SegmentationTask,
    build_pixel_regression_task,
    build_segmentation,
)
from sciadapt.types import Batch

PATCH, IMG, DIM = 4, 16, 8


# -- metrics by hand ---------------------------------------------------------------------------
def test_confusion_and_scores_match_hand_computation() -> None:
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 255, 255, 1])
    p = torch.tensor([0, 1, 0, 1, 1, 2, 0, 2, 0, 1])
    conf = confusion_matrix(p, y, 4, ignore_index=255)
    expected = torch.tensor([[2, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(conf, expected)
    # class 0: tp 2 fp 1 fn 1; class 1: tp 3 fp 1 fn 0; class 2: tp 1 fp 0 fn 1; class 3 absent
    iou = iou_per_class(conf)
    assert iou[:3].tolist() == [2 / 4, 3 / 4, 1 / 2] and math.isnan(iou[3])
    f1 = f1_per_class(conf)
    assert f1[:3].tolist() == [4 / 6, 6 / 7, 2 / 3] and math.isnan(f1[3])
    s = segmentation_scores(conf, ["land", "water", "cloud", "snow"])
    assert s["miou"] == pytest.approx((0.5 + 0.75 + 0.5) / 3)  # absent class left out
    assert s["mean_f1"] == pytest.approx((4 / 6 + 6 / 7 + 2 / 3) / 3)
    assert s["accuracy"] == 6 / 8 and s["n_pixels"] == 8
    assert s["iou/water"] == 0.75 and math.isnan(s["iou/snow"]) and s["f1/cloud"] == pytest.approx(2 / 3)
    # a class predicted but never true scores 0 and counts
    only_fp = confusion_matrix(torch.tensor([1, 1]), torch.tensor([0, 0]), 2)
    assert iou_per_class(only_fp).tolist() == [0.0, 0.0]
    # a mask removes pixels like the ignore label
    masked = confusion_matrix(p, y, 4, ignore_index=255, mask=(torch.arange(10) != 1))
    assert masked[0, 1] == 0 and masked.sum() == 7
    with pytest.raises(DataError, match="label value 5"):
        confusion_matrix(torch.zeros(2, dtype=torch.long), torch.tensor([0, 5]), 3)


def test_regression_scores() -> None:
    torch.manual_seed(0)
    y = torch.randn(3, 2, 4, 4)
    perfect = regression_scores(regression_sums(y, y))
    assert perfect["r2"] == 1.0 and perfect["rmse"] == 0.0 and perfect["mae"] == 0.0
    assert perfect["n_pixels"] == 3 * 2 * 16 and perfect["r2/0"] == 1.0
    pred = y + 0.5
    s = regression_scores(regression_sums(pred, y))
    assert s["rmse"] == pytest.approx(0.5) and s["mae"] == pytest.approx(0.5)
    r2 = [1 - 0.25 * 48 / float(((y[:, c] - y[:, c].mean()) ** 2).sum()) for c in range(2)]
    assert s["r2"] == pytest.approx(sum(r2) / 2)
    # masked-out pixels (NaN nodata) do not count; sums of batches equal the whole
    mask = torch.ones(3, 1, 4, 4)
    mask[0] = 0
    y_nan = torch.where(mask.bool(), y, torch.nan)
    parts = regression_sums(pred[:2], y_nan[:2], mask[:2]) + regression_sums(pred[2:], y_nan[2:], mask[2:])
    whole = regression_sums(pred[1:], y[1:])
    torch.testing.assert_close(parts, whole)
    assert math.isnan(regression_scores(regression_sums(y, torch.ones_like(y)))["r2"])  # constant truth


def test_index_threshold_baseline_confusion() -> None:
    score = torch.tensor([[0.5, -0.2], [0.0, torch.nan]])
    y = torch.tensor([[1, 1], [0, -1]])
    conf = index_threshold_confusion(score, y, threshold=0.0, ignore_index=-1)
    assert conf.tolist() == [[1, 0], [1, 1]]
    nan_counts = index_threshold_confusion(score, torch.tensor([[1, 1], [0, 1]]))
    assert nan_counts[1, 0] == 2  # NaN score -> negative prediction, still scored


# -- a tiny ViT-like backbone and datasets ---------------------------------------------------
class TinyViT(nn.Module):
    """Patch embedding + two token-mixing MLP levels; ``forward_features`` returns tokens with cls."""

    input_layout = "B C T H W"

    def __init__(self, in_chans: int = 2, frames: int = 1) -> None:
        super().__init__()
        self.frames = frames
        self.embed = nn.Conv3d(in_chans, DIM, (1, PATCH, PATCH), (1, PATCH, PATCH))
        self.cls = nn.Parameter(torch.zeros(1, 1, DIM))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(DIM), nn.Linear(DIM, DIM), nn.GELU()) for _ in range(2))
        grid = [frames, IMG // PATCH, IMG // PATCH]
        self.feature_info = [
            {"layout": "B N D", "channels": DIM, "reduction": PATCH, "grid": grid, "cls_token": True} for _ in range(2)
        ]

    def forward_features(self, x: Tensor) -> list[Tensor]:
        tokens = rearrange(self.embed(x), "b d t h w -> b (t h w) d")  # (B, T*h*w, D)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)  # (B, 1 + T*h*w, D)
        out = []
        for block in self.blocks:
            tokens = tokens + block(tokens)
            out.append(tokens)
        return out


class Chips(Dataset):
    """Seeded chips whose per-patch label is the sign of the first band's patch mean."""

    def __init__(self, n: int, seed: int, regression: bool = False, frames: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        level = torch.randn(n, 1, 1, IMG // PATCH, IMG // PATCH, generator=g)
        level = level.repeat_interleave(PATCH, -1).repeat_interleave(PATCH, -2)  # (n, 1, 1, H, W)
        self.x = torch.cat([level, torch.randn(n, 1, 1, IMG, IMG, generator=g)], 1) + 0.1 * torch.randn(
            n, 2, 1, IMG, IMG, generator=g
        )
        self.x = self.x.repeat(1, 1, frames, 1, 1)
        self.y = 2.0 * level[:, 0, 0] + 1.0 if regression else (level[:, 0, 0] > 0).long()
        self.mask = torch.ones(n, IMG, IMG)
        self.mask[:, 0, :] = 0  # one nodata row per chip
        if not regression:
            self.y[:, -1, :] = 255  # and one ignore-labelled row

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.x[i], "y": self.y[i], "mask": self.mask[i]}


class ChipsDM(pl.LightningDataModule):
    def __init__(self, regression: bool = False, frames: int = 1) -> None:
        super().__init__()
        self.sets = {
            s: Chips(n, seed, regression, frames) for s, n, seed in [("train", 32, 0), ("val", 8, 1), ("test", 12, 2)]
        }

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["train"], batch_size=8, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["val"], batch_size=8)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["test"], batch_size=5)


def _fit(task: Any, dm: ChipsDM, steps: int, lr: float = 1e-2) -> list[float]:
    task.stage = StageSpec(name="t", optim=OptimSpec(name="adamw", lr=lr))
    losses: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[Record()],
        accelerator="cpu",
    )
    trainer.fit(task, datamodule=dm)
    task.trainer_metrics = dict(trainer.callback_metrics)  # before test() replaces them
    trainer.test(task, datamodule=dm, verbose=False)
    return losses


def test_segmentation_task_trains_and_scores() -> None:
    torch.manual_seed(0)
    backbone = TinyViT(frames=2)
    head = build_fcn(
        feature_info=backbone.feature_info, n_classes=2, img_size=IMG, ignore_index=255, channels=16, n_convs=1
    )
    task = build_segmentation(backbone, head, n_classes=2, ignore_index=255, class_names=["land", "water"])
    losses = _fit(task, ChipsDM(frames=2), steps=40)
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4
    res = task.test_results
    assert set(res) == {"miou", "mean_f1", "accuracy", "n_pixels", "iou/land", "iou/water", "f1/land", "f1/water"}
    assert res["n_pixels"] == 12 * (IMG - 2) * IMG  # nodata row and ignore row excluded
    assert res["accuracy"] > 0.8 and res["iou/water"] > 0.6
    assert {"val/miou", "val/accuracy", "val/loss"} <= set(task.trainer_metrics)
    assert 0.5 < float(task.trainer_metrics["val/miou"]) <= 1.0
    # the test split's confusion matrix rebuilt in one go gives the same scores
    dm = ChipsDM(frames=2)
    task.eval()
    with torch.no_grad():
        xs, ys, ms = dm.sets["test"].x, dm.sets["test"].y, dm.sets["test"].mask
        pred = task.point(task(xs))
    whole = segmentation_scores(confusion_matrix(pred, ys, 2, 255, ms), ["land", "water"])
    assert whole == pytest.approx(res, nan_ok=True)
    # majority baseline from the training labels, scored by the same code
    base = task.baseline("majority", dm)
    assert base["accuracy"] < res["accuracy"] and min(base["iou/land"], base["iou/water"]) == 0.0
    ndwi_like = task.score_index_baseline(dm, lambda b: b["x"][:, 0, 0], threshold=0.0)
    assert ndwi_like["iou/water"] > 0.9  # band 0 *is* the signal here
    with pytest.raises(ConfigError, match="majority"):
        task.baseline("ndvi", dm)


def test_collect_test_outputs_is_bounded_by_classes() -> None:
    backbone = TinyViT()
    head = build_conv_decoder(feature_info=backbone.feature_info, n_classes=3, img_size=IMG, ignore_index=255)
    task = SegmentationTask(backbone, head, n_classes=3, ignore_index=255)
    big: Batch = {"y": torch.randint(0, 3, (6, 64, 64)), "mask": torch.ones(6, 64, 64)}
    out = task.collect_test_outputs(torch.randn(6, 3, 64, 64), big)
    assert set(out) == {"acc"} and out["acc"].shape == (1, 3, 3) and out["acc"].sum() == 6 * 64 * 64
    parts = [
        task.collect_test_outputs(torch.randn(2, 3, 8, 8), {"y": torch.randint(0, 3, (2, 8, 8))})["acc"]
        for _ in range(3)
    ]
    res = task.evaluate_outputs({"acc": torch.cat(parts)})
    assert res["n_pixels"] == 3 * 2 * 64


def test_pixel_regression_task_trains_and_scores() -> None:
    torch.manual_seed(0)
    backbone = TinyViT()
    head = build_pixel_regression(
        feature_info=backbone.feature_info, img_size=IMG, decoder="fcn", channels=16, n_convs=1
    )
    task = build_pixel_regression_task(backbone, head)
    dm = ChipsDM(regression=True)
    losses = _fit(task, dm, steps=40)
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4
    res = task.test_results
    assert set(res) == {"rmse", "mae", "r2", "n_pixels"} and res["n_pixels"] == 12 * (IMG - 1) * IMG
    assert res["r2"] > 0.5
    assert {"val/rmse", "val/mae"} <= set(task.trainer_metrics)
    base = task.baseline("mean", dm)
    assert abs(base["r2"]) < 0.3 and base["rmse"] > res["rmse"]
    out = task.collect_test_outputs(torch.randn(2, 1, 8, 8), {"y": torch.randn(2, 8, 8)})
    assert out["acc"].shape == (1, 1, 5)


def test_task_builders_check_the_head() -> None:
    backbone = TinyViT()
    seg = build_upernet(feature_info=backbone.feature_info, n_classes=3, img_size=IMG, channels=8)
    reg = build_pixel_regression(feature_info=backbone.feature_info, img_size=IMG)
    with pytest.raises(ConfigError, match="3 classes"):
        build_segmentation(backbone, seg, n_classes=2)
    with pytest.raises(ConfigError, match="segmentation head"):
        build_segmentation(backbone, reg)
    with pytest.raises(ConfigError, match="class_names"):
        build_segmentation(backbone, seg, n_classes=3, class_names=["a"])
    with pytest.raises(ConfigError, match="ignore_index"):
        build_segmentation(backbone, seg, n_classes=3, ignore_index=0)
    with pytest.raises(ConfigError, match="pixel_regression head"):
        build_pixel_regression_task(backbone, seg)
    assert isinstance(build_pixel_regression_task(backbone, reg), PixelRegressionTask)
