"""SSF, BitFit, DiffFit, (IA)^3 and LayerNorm tuning on every layer type each one supports.

Each case is a tiny model ``act(layer(x))``; the checks are the PEFT contract: identity at
init, merged == unmerged with exact restore, gradients only into the adapter, save/load
round-trips, fingerprint checks, and clear errors for unsupported targets.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from sciadapt.errors import CheckpointError, ConfigError
from sciadapt.peft import bitfit, core, ia3, norm_tuning, ssf  # noqa: F401  (imports register the methods)
from sciadapt.peft.ssf import innermost
from sciadapt.registry import PEFT_METHODS

# layer key -> (factory, input shape)
LAYERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "linear": (lambda: nn.Linear(6, 5), (3, 4, 6)),
    "linear_nobias": (lambda: nn.Linear(6, 5, bias=False), (3, 6)),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3, padding=1), (2, 3, 8)),
    "conv2d_groups": (lambda: nn.Conv2d(4, 6, 3, groups=2), (2, 4, 6, 6)),
    "conv3d_nobias": (lambda: nn.Conv3d(2, 3, 2, bias=False), (2, 2, 4, 4, 4)),
    "layernorm": (lambda: nn.LayerNorm(6), (3, 4, 6)),
    "layernorm_2d": (lambda: nn.LayerNorm((4, 6)), (2, 4, 6)),
    "layernorm_noaffine": (lambda: nn.LayerNorm(6, elementwise_affine=False), (3, 6)),
    "batchnorm1d": (lambda: nn.BatchNorm1d(4), (3, 4, 5)),
    "batchnorm2d": (lambda: nn.BatchNorm2d(4), (2, 4, 3, 3)),
    "batchnorm3d": (lambda: nn.BatchNorm3d(2), (2, 2, 3, 3, 3)),
    "groupnorm": (lambda: nn.GroupNorm(2, 4), (2, 4, 5)),
    "rmsnorm": (lambda: nn.RMSNorm(6), (3, 6)),
}
OUTPUT_LAYERS = ["linear", "linear_nobias", "conv1d", "conv2d_groups", "conv3d_nobias"]
BIAS_LAYERS = [*OUTPUT_LAYERS, "layernorm", "layernorm_2d", "layernorm_noaffine"]
# case id -> (registry name, builder kwargs, layer keys)
METHODS: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    "ssf": ("ssf", {}, [*BIAS_LAYERS, "batchnorm1d", "batchnorm2d", "batchnorm3d"]),
    # BitFit and DiffFit share SSF's machinery, so each covers one of the extra LayerNorm variants
    "bitfit": ("bitfit", {}, [*OUTPUT_LAYERS, "layernorm", "layernorm_noaffine"]),
    "difffit": ("difffit", {}, [*OUTPUT_LAYERS, "layernorm", "layernorm_2d"]),
    "ia3": ("ia3", {}, OUTPUT_LAYERS),
    "ia3_ff": ("ia3", {"feedforward": ["lay*"]}, OUTPUT_LAYERS),
    "layernorm": (
        "layernorm",
        {},
        ["layernorm", "layernorm_2d", "groupnorm", "rmsnorm", "batchnorm1d", "batchnorm2d", "batchnorm3d"],
    ),
}
CASES = [pytest.param(m, layer, id=f"{m}-{layer}") for m, (_, _, layers) in METHODS.items() for layer in layers]


class Tiny(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.act = nn.Tanh()  # not adaptable by any of these methods: the unsupported-target case

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.layer(x))


def _base(layer_key: str, seed: int = 0) -> tuple[Tiny, torch.Tensor]:
    torch.manual_seed(seed)
    factory, shape = LAYERS[layer_key]
    model = Tiny(factory())
    with torch.no_grad():  # away from the 1/0 defaults so a norm's affine actually matters
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_()
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    return model.eval(), torch.randn(shape)


def _attach(model: nn.Module, case: str, adapter: str = "default") -> None:
    name, kwargs, _ = METHODS[case]
    core.attach(model, PEFT_METHODS.build(name, **kwargs), adapter, targets=["layer"])


def _randomise(model: nn.Module, adapter: str, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n in core.adapter_param_names(model, adapter):
            p = model.get_parameter(n)
            p.add_(0.3 * torch.randn(p.shape, generator=gen))


def _inner_state(model: Tiny) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in innermost(model.layer).state_dict().items()}


def _assert_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float) -> None:
    assert sorted(got) == sorted(want)  # no parameter created by a merge is left behind
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=atol, rtol=0, msg=k)


@pytest.mark.parametrize(("case", "layer"), CASES)
def test_identity_at_init(case: str, layer: str) -> None:
    model, x = _base(layer)
    want = model(x)
    _attach(model, case)
    assert torch.equal(model(x), want)


@pytest.mark.parametrize(("case", "layer"), CASES)
def test_merge_equals_unmerged_and_unmerge_restores(case: str, layer: str) -> None:
    model, x = _base(layer)
    y0, state0 = model(x), _inner_state(model)
    _attach(model, case)
    _randomise(model, "default")
    y = model(x)
    assert not torch.allclose(y, y0, atol=1e-4)  # the adapter does something, so the test can fail
    core.merge(model)
    torch.testing.assert_close(model(x), y, atol=1e-5, rtol=0)
    core.unmerge(model)
    _assert_state(_inner_state(model), state0, atol=1e-6)
    torch.testing.assert_close(model(x), y, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("case", "layer"), CASES)
def test_gradients_reach_only_the_adapter(case: str, layer: str) -> None:
    model, x = _base(layer)
    _attach(model, case)
    _randomise(model, "default")
    own = set(core.adapter_param_names(model, "default"))
    n_train, _ = core.mark_trainable(model, "default")
    assert own and n_train == sum(model.get_parameter(n).numel() for n in own)
    (model(x) * torch.randn_like(model(x))).sum().backward()
    for name, p in model.named_parameters():
        if name in own:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize(("case", "layer"), CASES)
def test_save_load_round_trip(case: str, layer: str, tmp_path: Path) -> None:
    model, x = _base(layer)
    fresh = copy.deepcopy(model)
    _attach(model, case)
    _randomise(model, "default")
    core.save_adapter(model, tmp_path / "adapter")
    core.load_adapter(fresh, tmp_path / "adapter")
    assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize(("case", "layer"), CASES)
def test_load_onto_other_base_weights_fails(case: str, layer: str, tmp_path: Path) -> None:
    model, _ = _base(layer)
    other = copy.deepcopy(model)
    base = innermost(other.layer)
    if base.weight is None:
        pytest.skip("a norm without affine parameters has no weights to differ")
    _attach(model, case)
    core.save_adapter(model, tmp_path / "adapter")
    with torch.no_grad():
        base.weight.add_(1.0)
    with pytest.raises(CheckpointError, match=r"layer\.weight"):
        core.load_adapter(other, tmp_path / "adapter")


@pytest.mark.parametrize("case", list(METHODS))
def test_unsupported_layer_is_a_config_error(case: str) -> None:
    model, _ = _base(METHODS[case][2][0])
    name, kwargs, _ = METHODS[case]
    with pytest.raises(ConfigError, match=r"'act'.*Tanh"):
        core.attach(model, PEFT_METHODS.build(name, **kwargs), "default", targets=["act"])
    assert not core.peft_layers(model)  # nothing was wrapped


@pytest.mark.parametrize(("case", "layer"), CASES)
def test_two_adapters_compose_merge_and_unmerge_in_any_order(case: str, layer: str) -> None:
    model, x = _base(layer)
    state0 = _inner_state(model)
    _attach(model, case, "a")
    _attach(model, case, "b")
    _randomise(model, "a", seed=1)
    _randomise(model, "b", seed=2)
    y_ab = model(x)

    # which adapters apply is decided by `active`: only "a" equals a model that has only "a"
    only_a, _ = _base(layer)
    _attach(only_a, case, "a")
    only_a.load_state_dict(model.state_dict(), strict=False)
    core.set_active(model, ["a"])
    assert torch.equal(model(x), only_a(x))
    core.set_active(model, ["a", "b"])
    core.enable(model, False)
    assert torch.equal(model(x), _base(layer)[0](x))
    core.enable(model, True)

    merged_b_only = copy.deepcopy(model)
    core.merge(merged_b_only, "b")
    core.merge(model, "a")  # a prefix of `active`: the unmerged "b" still applies after "a"
    torch.testing.assert_close(model(x), y_ab, atol=1e-5, rtol=0)
    core.merge(model)
    torch.testing.assert_close(model(x), y_ab, atol=1e-5, rtol=0)
    core.unmerge(model, "a")  # out of merge order: the base must hold "b" alone
    _assert_state(_inner_state(model), _inner_state(merged_b_only), atol=1e-5)
    core.unmerge(model, "b")
    _assert_state(_inner_state(model), state0, atol=1e-6)
    torch.testing.assert_close(model(x), y_ab, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("case", "layer"), CASES)
def test_merge_and_drop(case: str, layer: str) -> None:
    model, x = _base(layer)
    _attach(model, case, "a")
    _attach(model, case, "b")
    _randomise(model, "a", seed=1)
    _randomise(model, "b", seed=2)
    y_ab = model(x)
    twin = copy.deepcopy(model)

    core.merge_and_drop(model, "a")  # "b" stays unmerged on top of the base that now holds "a"
    torch.testing.assert_close(model(x), y_ab, atol=1e-5, rtol=0)
    core.merge_and_drop(model, "b")
    torch.testing.assert_close(model(x), y_ab, atol=1e-5, rtol=0)
    assert not core.peft_layers(model) and type(model.layer) is type(_base(layer)[0].layer)

    core.merge(twin)  # both merged, then one dropped: unmerging the other keeps the dropped one
    core.merge_and_drop(twin, "a")
    core.unmerge(twin, "b")
    torch.testing.assert_close(twin(x), y_ab, atol=1e-5, rtol=0)


def test_nested_methods_merge_innermost_first() -> None:
    model, x = _base("linear")
    _attach(model, "bitfit", "inner")
    _attach(model, "ssf", "outer")
    assert [type(m).__name__ for m in core.peft_layers(model).values()] == ["SSFLayer", "BitFitLayer"]
    _randomise(model, "inner", seed=1)
    _randomise(model, "outer", seed=2)
    y = model(x)
    with pytest.raises(ConfigError, match="inside it are not merged"):
        model.layer.merge()
    model.layer.base_layer.merge()
    model.layer.merge()
    torch.testing.assert_close(model(x), y, atol=1e-5, rtol=0)


def test_ia3_feedforward_scales_the_input_and_maps_to_peft_config() -> None:
    model, x = _base("linear")
    _attach(model, "ia3_ff")
    layer = model.layer
    assert isinstance(layer, ia3.IA3Layer) and layer.ia3_l["default"].shape == (1, 6)
    with torch.no_grad():
        layer.ia3_l["default"].copy_(torch.arange(1.0, 7.0).reshape(1, 6))
        want = torch.tanh(innermost(layer)(x * torch.arange(1.0, 7.0)))
    torch.testing.assert_close(model(x), want)
    method = PEFT_METHODS.build("ia3", feedforward=["*.fc2"])
    cfg = method.hf_config(["blk.fc1", "blk.fc2"])
    assert cfg["peft_type"] == "IA3" and cfg["feedforward_modules"] == ["blk.fc2"]
    with pytest.raises(ConfigError, match=r"peft.feedforward: expected list\[str\] or null, got 'fc2'"):
        PEFT_METHODS.build("ia3", feedforward="fc2")
    fresh, _ = _base("linear")
    with pytest.raises(ConfigError, match=r"\['fc2'\] match none of the targeted layers"):
        core.attach(fresh, PEFT_METHODS.build("ia3", feedforward=["fc2"]), "default", targets=["layer"])
    assert not core.peft_layers(fresh)


def test_zero_scale_cannot_be_unmerged() -> None:
    model, _ = _base("linear")
    _attach(model, "ia3")
    with torch.no_grad():
        model.layer.ia3_l["default"][0] = 0.0
    core.merge(model)
    with pytest.raises(ConfigError, match="exact zeros"):
        core.unmerge(model)


def test_module_specific_config_errors() -> None:
    model, _ = _base("layernorm_noaffine")
    with pytest.raises(ConfigError, match="layer: this LayerNorm has no affine parameters"):
        _attach(model, "layernorm")
    qkv = Tiny(nn.Linear(4, 6))
    with pytest.raises(ConfigError, match="layer: ssf adapts whole layers"):
        core.attach(qkv, PEFT_METHODS.build("ssf"), "default", targets=["layer[q,v]"])


def test_registered_and_configs_round_trip() -> None:
    for name in ("ssf", "bitfit", "difffit", "ia3", "layernorm"):
        method = PEFT_METHODS.build(name)
        assert method.name == name and method.family == name
        assert PEFT_METHODS.build(name, **method.config()).config() == method.config()
