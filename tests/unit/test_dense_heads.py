"""Dense heads: the token-to-image neck, UPerNet/FCN/conv decoders, pixel regression, losses."""

from __future__ import annotations

import inspect
import typing
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from sciadapt.config import builder_schema, validate
from sciadapt.errors import ConfigError, DataError, ShapeError
from sciadapt.heads.regress import build_pixel_regression
from sciadapt.heads.segment import (
    TokensToImage,
    build_conv_decoder,
    build_fcn,
    build_upernet,
    default_indices,
)

SEG_BUILDERS = {"upernet": build_upernet, "fcn": build_fcn, "conv_decoder": build_conv_decoder}
ALL_BUILDERS = {**SEG_BUILDERS, "pixel_regression": build_pixel_regression}


def vit_info(levels: int, dim: int, grid: list[int], patch: int = 4) -> list[dict[str, Any]]:
    return [
        {"layout": "B N D", "channels": dim, "reduction": patch, "grid": list(grid), "cls_token": True}
        for _ in range(levels)
    ]


def cnn_info(channels: list[int], reductions: list[int]) -> list[dict[str, Any]]:
    return [{"layout": "B C H W", "channels": c, "reduction": r} for c, r in zip(channels, reductions, strict=True)]


def fake_features(info: list[dict[str, Any]], batch: int, img: int) -> list[torch.Tensor]:
    out = []
    for lvl in info:
        if lvl["layout"] == "B N D":
            t, h, w = lvl["grid"]
            out.append(torch.randn(batch, 1 + t * h * w, lvl["channels"]))
        else:
            side = img // lvl["reduction"]
            out.append(torch.randn(batch, lvl["channels"], side, side))
    return out


SMALL = {"upernet": {"channels": 8}, "fcn": {"channels": 8}, "conv_decoder": {"channels": 8}}


@pytest.mark.parametrize("grid", [[1, 4, 4], [3, 2, 2], [1, 3, 3]], ids=["T1", "T3", "odd"])
@pytest.mark.parametrize("name", list(SEG_BUILDERS))
def test_segmentation_heads_on_vit_tokens(name: str, grid: list[int]) -> None:
    torch.manual_seed(0)
    img = grid[1] * 4
    info = vit_info(4, 8, grid)
    head = SEG_BUILDERS[name](feature_info=info, n_classes=3, img_size=img, **SMALL[name])
    logits = head(fake_features(info, 2, img))
    assert logits.shape == (2, 3, img, img)
    assert head.point(logits).shape == (2, img, img)


@pytest.mark.parametrize("name", list(SEG_BUILDERS))
def test_segmentation_heads_on_cnn_pyramid(name: str) -> None:
    torch.manual_seed(0)
    info = cnn_info([4, 8, 12, 16], [4, 8, 16, 32])
    head = SEG_BUILDERS[name](feature_info=info, n_classes=2, img_size=64, **SMALL[name])
    assert head.neck.pyramid is None
    assert head(fake_features(info, 2, 64)).shape == (2, 2, 64, 64)


@pytest.mark.parametrize("decoder", ["conv", "fcn", "upernet"])
def test_pixel_regression_head_shapes(decoder: str) -> None:
    torch.manual_seed(0)
    info = vit_info(4, 8, [2, 2, 2])
    head = build_pixel_regression(feature_info=info, n_outputs=2, img_size=8, decoder=decoder, channels=8)
    pred = head(fake_features(info, 3, 8))
    assert pred.shape == (3, 2, 8, 8)
    assert head.point(pred) is pred
    cnn = cnn_info([4, 8], [8, 16])
    one = build_pixel_regression(feature_info=cnn, img_size=32, decoder=decoder, channels=8)
    p1 = one(fake_features(cnn, 2, 32))
    assert p1.shape == (2, 1, 32, 32)
    assert one.loss(p1, torch.randn(2, 32, 32)).dim() == 0  # (B, H, W) target with one output


def test_tokens_to_image_stacks_time_into_channels() -> None:
    t, h, w, d = 3, 2, 2, 5
    tokens = torch.randn(2, 1 + t * h * w, d)
    img = TokensToImage((t, h, w), cls_token=True, channels=d)(tokens)
    assert img.shape == (2, t * d, h, w)
    body = tokens[:, 1:].reshape(2, t, h, w, d)
    for ti, i, j in [(0, 0, 0), (1, 0, 1), (2, 1, 0)]:
        torch.testing.assert_close(img[:, ti * d : (ti + 1) * d, i, j], body[:, ti, i, j])
    with pytest.raises(ShapeError, match="grid"):
        TokensToImage((t, h, w), cls_token=True, channels=d)(tokens[:, 1:])  # cls already dropped


def test_default_indices_and_learned_pyramid() -> None:
    assert default_indices(vit_info(12, 8, [1, 2, 2]), 4) == [2, 5, 8, 11]
    assert default_indices(vit_info(24, 8, [1, 2, 2]), 4) == [5, 11, 17, 23]
    assert default_indices(vit_info(2, 8, [1, 2, 2]), 4) == [0, 0, 1, 1]
    assert default_indices(cnn_info([1] * 5, [2, 4, 8, 16, 32]), 4) == [1, 2, 3, 4]
    assert default_indices(vit_info(12, 8, [1, 2, 2]), 1) == [11]
    head = build_upernet(feature_info=vit_info(12, 16, [2, 4, 4]), img_size=16, channels=8)
    assert head.neck.indices == [2, 5, 8, 11]
    assert head.neck.pyramid is not None
    assert head.neck.out_channels == [8, 16, 32, 32]  # (T*D)/4, (T*D)/2, T*D, T*D
    assert head.neck.reductions == [1, 2, 4, 8]
    maps = head.neck(fake_features(vit_info(12, 16, [2, 4, 4]), 1, 16))
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 16), (8, 8), (4, 4), (2, 2)]


@pytest.mark.parametrize("name", list(ALL_BUILDERS))
def test_gradients_reach_every_head_parameter(name: str) -> None:
    torch.manual_seed(0)
    info = vit_info(4, 8, [1, 4, 4])
    kwargs = {"channels": 8} if name != "pixel_regression" else {"decoder": "conv", "channels": 8}
    head = ALL_BUILDERS[name](feature_info=info, img_size=16, **kwargs)
    pred = head(fake_features(info, 2, 16))
    y = torch.randint(0, 2, (2, 16, 16)) if name != "pixel_regression" else torch.randn(2, 1, 16, 16)
    head.loss(pred, y).backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert head.proj.weight.grad is not None and head.proj.weight.grad.abs().sum() > 0


def test_cross_entropy_ignores_ignore_index_and_mask() -> None:
    torch.manual_seed(0)
    info = vit_info(1, 8, [1, 2, 2])
    head = build_fcn(feature_info=info, n_classes=3, img_size=4, ignore_index=255, channels=4)
    pred = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = torch.randint(0, 3, (2, 4, 4))
    y[0, :2] = 255
    valid = y != 255
    expected = F.cross_entropy(pred[:, :, :, :].permute(0, 2, 3, 1)[valid], y[valid])
    torch.testing.assert_close(head.loss(pred, y), expected)
    # logits at ignored pixels do not matter
    other = pred.detach().clone()
    other[0, :, :2] = 100.0
    torch.testing.assert_close(head.loss(other, y), expected)
    # a mask of 0 acts like the ignore label
    mask = torch.ones(2, 4, 4)
    mask[1, 3] = 0
    both = valid & mask.bool()
    torch.testing.assert_close(head.loss(pred, y, mask), F.cross_entropy(pred.permute(0, 2, 3, 1)[both], y[both]))
    # nothing valid: loss 0 and zero gradient, never NaN
    empty = head.loss(pred, torch.full_like(y, 255))
    assert empty.item() == 0.0
    empty.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() == 0
    with pytest.raises(DataError, match="label 7"):
        head.loss(pred, torch.full_like(y, 7))


def test_class_weights_give_pytorchs_weighted_mean() -> None:
    torch.manual_seed(0)
    info = vit_info(1, 8, [1, 2, 2])
    w = [0.2, 1.0, 3.0]
    head = build_conv_decoder(feature_info=info, n_classes=3, img_size=4, ignore_index=-1, class_weights=w)
    pred = torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 4, 4))
    y[1, 0] = -1
    expected = F.cross_entropy(pred, y, weight=torch.tensor(w), ignore_index=-1)
    torch.testing.assert_close(head.loss(pred, y), expected)
    assert "class_weights" not in head.state_dict()


@pytest.mark.parametrize("loss", ["mse", "mae", "huber"])
def test_regression_loss_is_masked_and_survives_nan_nodata(loss: str) -> None:
    info = vit_info(1, 8, [1, 2, 2])
    head = build_pixel_regression(feature_info=info, img_size=4, loss=loss)
    pred = torch.randn(2, 1, 4, 4, requires_grad=True)
    y = torch.randn(2, 1, 4, 4)
    mask = torch.ones(2, 4, 4)
    mask[0, 1:] = 0
    y_nan = torch.where(mask.unsqueeze(1).bool(), y, torch.nan)
    keep = mask.unsqueeze(1).bool()
    a, b = pred[keep], y[keep]
    expected = {"mse": F.mse_loss(a, b), "mae": F.l1_loss(a, b), "huber": F.huber_loss(a, b)}[loss]
    got = head.loss(pred, y_nan, mask)
    torch.testing.assert_close(got, expected)
    got.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert head.loss(pred, y, torch.zeros(2, 4, 4)).item() == 0.0
    with pytest.raises(ShapeError, match="regression target"):
        head.loss(pred, torch.randn(2, 2, 4, 4))


def test_bad_settings_are_config_errors_listing_every_problem() -> None:
    with pytest.raises(ConfigError, match="feature_info"):
        build_upernet()
    info = vit_info(4, 8, [1, 2, 2])
    # the bounds are the signature's (checked by the config layer), the weights' count the builder's
    assert len(head_config_problems(name="upernet", n_classes=0, channels=0)) == 2
    with pytest.raises(ConfigError) as e:
        build_upernet(feature_info=info, n_classes=3, class_weights=[1.0])
    assert len(e.value.problems) == 1
    with pytest.raises(ConfigError, match="indices"):
        build_fcn(feature_info=info, indices=[4])
    with pytest.raises(ConfigError, match="layout"):
        build_fcn(feature_info=[{"layout": "B L C D", "channels": 4, "reduction": 1}])
    with pytest.raises(ConfigError, match="grid"):
        build_fcn(feature_info=[{"layout": "B N D", "channels": 4, "reduction": 4}])
    assert len(head_config_problems(name="pixel_regression", loss="l3", decoder="unet")) == 2


def test_wrong_feature_shapes_are_shape_errors() -> None:
    info = vit_info(2, 8, [1, 2, 2])
    head = build_fcn(feature_info=info, img_size=8, channels=4)
    feats = fake_features(info, 1, 8)
    with pytest.raises(ShapeError, match="2 feature levels"):
        head(feats[:1])
    with pytest.raises(ShapeError, match="D=8"):
        head([feats[0], torch.randn(1, 5, 6)])
    cnn = build_fcn(feature_info=cnn_info([4], [4]), img_size=8, channels=4)
    with pytest.raises(ShapeError, match="C=4"):
        cnn([torch.randn(1, 3, 2, 2)])


@pytest.mark.parametrize("name", list(ALL_BUILDERS))
def test_builders_are_config_schemas(name: str) -> None:
    fn = ALL_BUILDERS[name]
    params = inspect.signature(fn).parameters
    hints = typing.get_type_hints(fn)
    assert all(p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values())
    assert all(p in hints for p in params) and fn.__doc__
    assert all(not isinstance(p.default, list | dict | set) for p in params.values())
    assert {"feature_info", "img_size"} <= set(params)
    assert ("n_outputs" if name == "pixel_regression" else "n_classes") in params
    builder_schema(fn)
    # the defaults plus a feature_info build a working head
    info = vit_info(4, 8, [1, 2, 2])
    head = fn(feature_info=info)
    assert head(fake_features(info, 2, 8)).shape[-2:] == (224, 224)


def head_config_problems(**head: object) -> list[str]:
    """The problems the config layer finds in a ``head:`` section (the checks its signature declares)."""
    with pytest.raises(ConfigError) as e:
        validate({"head": head, "stages": [{"name": "s", "max_steps": 1}]})
    return [p for p in e.value.problems if p.startswith("head.")]
