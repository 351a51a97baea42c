"""Contract tests parametrised over the registries: a new entry is tested without editing this file."""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import json
import typing
from pathlib import Path
from typing import Any

import pytest
import torch

from sciadapt.config import argument_problems, builder_schema, call_builder, head_facts
from sciadapt.errors import ConfigError
from sciadapt.registry import BACKBONES, DATAMODULES, HEADS, PEFT_METHODS, TASKS
from sciadapt.types import IMAGE_SERIES, Backbone, Batch, DataModule
from tests.conftest import REPO


@pytest.mark.parametrize("registry", [BACKBONES, HEADS, DATAMODULES, TASKS, PEFT_METHODS], ids=lambda r: r.kind)
def test_builders_are_config_schemas(registry) -> None:  # type: ignore[no-untyped-def]
    for name in registry.list():
        fn = registry.get(name)
        params = inspect.signature(fn).parameters.values()
        assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params), f"{name}: no **kwargs"
        hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn)
        for p in params:
            if p.name in ("backbone", "head"):
                continue
            assert p.name in hints, f"{registry.kind} {name}: parameter {p.name} needs a type hint"
            assert not isinstance(p.default, (list, dict, set)), f"{name}.{p.name}: mutable default"
        assert fn.__doc__, f"{registry.kind} {name}: the builder needs a docstring"
        builder_schema(fn)  # resolvable


def test_every_backbone_family_ships_a_tiny_variant() -> None:
    """A family is the builders of one module (``unet_grid`` and ``unet_grid_tiny``; ``prithvi_v2_300m``
    and ``prithvi_tiny``): each module registers a ``*_tiny`` builder."""
    by_module: dict[str, list[str]] = {}
    for name in BACKBONES.list():
        by_module.setdefault(BACKBONES.get(name).__module__, []).append(name)
    missing = {m: names for m, names in by_module.items() if not any(n.endswith("_tiny") for n in names)}
    assert not missing, missing


# full-size variants (hundreds of millions of parameters) are covered by their family's own tests
TINY_BACKBONES = [n for n in BACKBONES.list() if n.endswith("_tiny")]


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_backbone_contract(name: str, tmp_path: Path) -> None:
    """Every tiny backbone builds with its defaults, runs on its own example inputs, and
    round-trips strictly through save_pretrained / load_pretrained with equal outputs."""
    torch.manual_seed(0)
    model = BACKBONES.build(name).eval()
    assert isinstance(model, Backbone), f"{name}: does not implement the Backbone protocol"
    assert model.input_layout in ("B T C", "B T C H W", "B C T H W"), model.input_layout
    assert isinstance(model.feature_info, list) and model.feature_info
    assert all({"layout", "channels"} <= set(level) for level in model.feature_info)
    inputs = model.example_inputs(2)
    assert "x" in inputs
    with torch.no_grad():
        out = model.forward_features(**inputs)
    # the default PEFT targets name real modules
    names = [n for n, _ in model.named_modules()]
    for pat in model.default_peft_targets:
        assert any(fnmatch.fnmatchcase(n, pat) for n in names), (name, pat)
    saved = model.save_pretrained(tmp_path / "saved")
    torch.manual_seed(1)  # another random init, so equal outputs prove the weights were loaded
    other = BACKBONES.build(name).eval()
    other.load_pretrained(str(saved))
    with torch.no_grad():
        again = other.forward_features(**inputs)
    flat_a = out if isinstance(out, list | tuple) else [out]
    flat_b = again if isinstance(again, list | tuple) else [again]
    assert len(flat_a) == len(flat_b)
    for x, y in zip(flat_a, flat_b, strict=True):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("name", PEFT_METHODS.list())
def test_peft_method_contract(name: str) -> None:
    """Every PEFT method is the identity at init (or with its adapter disabled), merges to the same
    outputs, and declares init_from_data."""
    from sciadapt.peft import core

    torch.manual_seed(0)
    model = BACKBONES.build("prithvi_tiny").eval()
    inputs = model.example_inputs(2)
    with torch.no_grad():
        base = model.forward_features(**inputs)[-1]
    method = PEFT_METHODS.build(name)
    assert callable(method.init_from_data)
    # the backbone's default targets (attention projections), else the modules methods of other
    # kinds adapt: width-preserving blocks (bottleneck adapters, prompts) or normalisation layers
    refusals = []
    for targets in (None, ["blocks.*.mlp"], ["blocks.*.norm1", "blocks.*.norm2"]):
        try:
            core.attach(model, method, "a", targets, None, where="test")
            break
        except ConfigError as e:  # a method refuses layers it cannot adapt, clearly
            refusals.append(str(e))
    else:
        pytest.fail(f"{name} adapts none of prithvi_tiny's attention, MLP or norm layers: {refusals}")
    model.eval()
    with torch.no_grad():
        core.enable(model, False)
        off = model.forward_features(**inputs)[-1]
        core.enable(model, True)
        on = model.forward_features(**inputs)[-1]
    torch.testing.assert_close(off, base)
    try:
        core.merge(model)
    except ConfigError as e:  # methods that add modules (bottleneck adapters, prompts) cannot merge
        assert "cannot be merged" in str(e)
        return
    with torch.no_grad():
        merged = model.forward_features(**inputs)[-1]
    torch.testing.assert_close(merged, on, rtol=1e-4, atol=1e-4)


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


# ------------------------------------------------------------------------------- dense heads
DENSE_HEADS = [n for n in HEADS.list() if "feature_info" in inspect.signature(HEADS.get(n)).parameters]


@pytest.mark.parametrize("name", DENSE_HEADS)
def test_dense_head_contract(name: str) -> None:
    """Every dense head decodes the features of every tiny image backbone to full-size maps, and
    its loss is a finite scalar whose gradient reaches the head."""
    tried = 0
    for backbone_name in TINY_BACKBONES:
        torch.manual_seed(0)
        backbone = BACKBONES.build(backbone_name).eval()
        if backbone.input_layout != IMAGE_SERIES:
            continue
        tried += 1
        inputs = backbone.example_inputs(2)
        side = inputs["x"].shape[-1]
        facts = {"img_size": side, "n_classes": 3, "n_outputs": 3, "ignore_index": -1}
        head = call_builder("head", {"name": name}, head_facts(backbone, facts))
        with torch.no_grad():
            features = backbone.forward_features(**inputs)
        pred = head(features)
        assert pred.shape == (2, 3, side, side), (backbone_name, tuple(pred.shape))
        classes = "n_classes" in inspect.signature(HEADS.get(name)).parameters
        y = torch.randint(0, 3, (2, side, side)) if classes else torch.randn(2, 3, side, side)
        loss = head.loss(pred, y, torch.ones(2, side, side))
        assert loss.dim() == 0 and torch.isfinite(loss), (backbone_name, loss)
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters()), backbone_name
    assert tried, "no tiny image backbone to test the dense heads on"


# ------------------------------------------------------------------------------- datamodules
def _contract_data(name: str, folder: Path, seed: int) -> dict[str, Any]:
    maker = REPO / "tests" / "data" / name / "make.py"
    if not maker.is_file():
        pytest.fail(
            f"datamodule {name!r}: add {maker.relative_to(REPO)} with contract_config(folder, seed) returning the "
            "data keys of a small datamodule on data it writes to folder (see tests/data/timeseries/make.py)"
        )
    module = importlib.import_module(f"tests.data.{name}.make")
    folder.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = module.contract_config(folder, seed=seed)
    return cfg


@pytest.mark.parametrize("name", DATAMODULES.list())
def test_datamodule_contract(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every datamodule, on its tests/data/<name>/make.py data: a valid config, the DataModule
    protocol, JSON-able facts, batches of the Batch vocabulary, and a scaler that round-trips
    through JSON onto a datamodule of other data."""
    monkeypatch.setenv("SCIADAPT_CACHE_DIR", str(tmp_path / "cache"))
    fn = DATAMODULES.get(name)
    cfg = _contract_data(name, tmp_path / "a", seed=0)
    assert argument_problems(fn, cfg, "data") == []
    dm = DATAMODULES.build(name, **cfg)
    assert isinstance(dm, DataModule), f"{name}: does not implement the DataModule protocol"
    assert dm.train_resume is None
    dm.setup("fit")
    facts = dm.facts()
    assert facts and json.loads(json.dumps(facts)) == facts
    assert isinstance(dm.describe(), str) and dm.describe()
    allowed = set(Batch.__annotations__)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert {"x", "y", "mask", "meta"} <= set(batch) <= allowed, sorted(set(batch) - allowed)
        x, y, mask = batch["x"], batch["y"], batch["mask"]
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
        assert y.shape[0] == x.shape[0] and mask.shape == y.shape
    state = dm.scaler_state()
    text = json.dumps(state, sort_keys=True)
    other = DATAMODULES.build(name, **_contract_data(name, tmp_path / "b", seed=1))
    assert json.dumps(other.scaler_state(), sort_keys=True) != text, "the two data seeds must differ"
    other.load_scaler_state(json.loads(text))
    assert json.dumps(other.scaler_state(), sort_keys=True) == text
