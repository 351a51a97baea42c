"""Contract tests parametrised over the registries: a new entry is tested without editing this file."""

from __future__ import annotations

import fnmatch
import inspect
import typing

import pytest
import torch

from sciadapt.config import builder_schema
from sciadapt.registry import BACKBONES, DATAMODULES, HEADS, TASKS


@pytest.mark.parametrize("registry", [BACKBONES, HEADS, DATAMODULES, TASKS], ids=lambda r: r.kind)
def test_builders_are_config_schemas(registry) -> None:  # type: ignore[no-untyped-def]
    for name in registry.list():
        fn = registry.get(name)
        params = inspect.signature(fn).parameters.values()
        assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params), f"{name}: no **kwargs"
        hints = typing.get_type_hints(fn)
        for p in params:
            if p.name in ("backbone", "head"):
                continue
            assert p.name in hints, f"{registry.kind} {name}: parameter {p.name} needs a type hint"
            assert not isinstance(p.default, (list, dict, set)), f"{name}.{p.name}: mutable default"
        assert fn.__doc__, f"{registry.kind} {name}: the builder needs a docstring"
        builder_schema(fn)  # resolvable


def test_every_backbone_family_ships_a_tiny_variant() -> None:
    names = BACKBONES.list()
    families = {n.split("_")[0] for n in names}
    assert all(f"{f}_tiny" in names for f in families), sorted(f for f in families if f"{f}_tiny" not in names)


# full-size variants (hundreds of millions of parameters) are covered by their family's own tests
TINY_BACKBONES = [n for n in BACKBONES.list() if n.endswith("_tiny")]


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_backbone_contract(name: str) -> None:
    fn = BACKBONES.get(name)
    params = inspect.signature(fn).parameters
    if "context_length" in params:  # series backbones follow the data's window
        model = fn(**{k: v for k, v in {"context_length": 48, "horizon": 12, "n_exog": 1}.items() if k in params})
    else:
        model = fn()
    assert model.input_layout in ("B T C", "B T C H W", "B C T H W"), model.input_layout
    assert isinstance(model.feature_info, list) and model.feature_info
    assert all({"layout", "channels"} <= set(level) for level in model.feature_info)
    info = model.feature_info[-1]
    if model.input_layout == "B T C":
        feats = model.forward_features(torch.randn(3, 48, 2 + 1))
        if info["layout"] == "B L C D":
            assert feats.shape == (3, 12, 2, info["channels"])
    elif model.input_layout == "B T C H W":
        x = torch.randn(2, model.n_input, model.n_channels, *model.grid_shape)
        kwargs = {}
        if model.n_forcings:
            kwargs["forcings"] = torch.randn(2, (model.n_input + 1) * model.n_forcings, *model.grid_shape)
        if model.n_static:
            kwargs["static"] = torch.randn(1, model.n_static, *model.grid_shape)
        assert model.forward_features(x, **kwargs).shape == (2, model.n_channels, *model.grid_shape)
    else:  # image series B C T H W: one feature map or token set per feature_info level
        size = getattr(model, "img_size", None) or 64
        x = torch.randn(2, model.in_chans, getattr(model, "num_frames", None) or 1, size, size)
        feats = model.forward_features(x)
        assert len(feats) == len(model.feature_info)
        for f, level in zip(feats, model.feature_info, strict=True):
            assert f.shape[0] == 2 and level["channels"] in f.shape[1:], (f.shape, level)
    # the default PEFT targets name real modules
    names = [n for n, _ in model.named_modules()]
    for pat in model.default_peft_targets:
        assert any(fnmatch.fnmatchcase(n, pat) for n in names), (name, pat)
    assert callable(model.load_pretrained)


def _forecast_heads() -> list[str]:
    return [
        n
        for n in HEADS.list()
        if getattr(inspect.signature(HEADS.get(n)).parameters.get("in_layout"), "default", None) == "B L C D"
    ]


@pytest.mark.parametrize("name", _forecast_heads())
def test_forecast_head_contract(name: str) -> None:
    # D as the head expects it by default (a pass-through head takes a backbone's own forecast, D=1)
    d = inspect.signature(HEADS.get(name)).parameters["in_features"].default
    head = HEADS.get(name)(in_features=d, horizon=12, in_layout="B L C D")
    feats = torch.randn(3, 12, 2, d)
    pred = head(feats)
    y = torch.randn(3, 12, 2)
    loss = head.loss(pred, y, torch.ones_like(y))
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert head.point(pred).shape == (3, 12, 2)
