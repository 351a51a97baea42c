"""The wrapper registry: (method family, layer type) -> wrapper, and what it means for attach."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from sciadapt.errors import ConfigError
from sciadapt.peft import core
from sciadapt.peft.adapters import BottleneckLayer
from sciadapt.peft.bitfit import BitFitLayer, DiffFitLayer
from sciadapt.peft.ia3 import IA3Layer
from sciadapt.peft.lora import LoraLayer
from sciadapt.peft.norm_tuning import NormTuningLayer
from sciadapt.peft.ssf import SSFLayer
from sciadapt.peft.vpt import VptLayer
from sciadapt.registry import PEFT_METHODS

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class MyLinear(nn.Module):
    """A user's own projection: Linear's maths, but not an nn.Linear subclass."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) / d_in**0.5)
        self.bias = nn.Parameter(0.1 * torch.randn(d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T + self.bias


def _my_model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(MyLinear(6, 9), nn.Tanh(), MyLinear(9, 4)), torch.randn(3, 5, 6)


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(core, "WRAPPERS", {family: dict(table) for family, table in core.WRAPPERS.items()})


def test_builtin_families_register_the_layers_they_support() -> None:
    assert core.registered_types("lora") == (nn.Linear, *CONVS)
    assert core.registered_types(PEFT_METHODS.build("dora")) == (nn.Linear, *CONVS)
    assert core.registered_types("ssf") == (nn.Linear, *CONVS, nn.LayerNorm, *BNS)
    assert core.registered_types("bitfit") == core.registered_types("difffit") == (nn.Linear, *CONVS, nn.LayerNorm)
    assert core.registered_types("ia3") == (nn.Linear, *CONVS)
    assert core.registered_types("layernorm") == (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, *BNS)
    assert core.registered_types("bottleneck") == core.registered_types("vpt") == (nn.Module,)
    # fused-qkv slices are a property of the entry: only LoRA/DoRA on Linear
    assert [t for t, e in core.WRAPPERS["lora"].items() if e.slices] == [nn.Linear]
    assert not any(e.slices for f, table in core.WRAPPERS.items() if f != "lora" for e in table.values())
    wrappers = {
        ("lora", nn.Conv3d(2, 2, 1)): LoraLayer,
        ("ssf", nn.BatchNorm2d(2)): SSFLayer,
        ("bitfit", nn.LayerNorm(2)): BitFitLayer,
        ("difffit", nn.Linear(2, 2)): DiffFitLayer,
        ("ia3", nn.Conv1d(2, 2, 1)): IA3Layer,
        ("layernorm", nn.GroupNorm(1, 2)): NormTuningLayer,
        ("bottleneck", nn.GELU()): BottleneckLayer,
        ("vpt", nn.Sequential()): VptLayer,
    }
    for (family, module), cls in wrappers.items():
        assert core.wrapper_for(family, module) is cls, family


def test_lookup_follows_subclasses_and_sees_through_wrappers() -> None:
    # MultiheadAttention's out_proj is a Linear subclass: covered by the Linear entry
    sub = nn.modules.linear.NonDynamicallyQuantizableLinear(4, 4)
    assert core.wrapper_for("lora", sub) is LoraLayer
    # a layer already wrapped by another method is looked up by the base inside
    wrapped = SSFLayer(nn.Linear(4, 4))
    assert core.wrapper_for("ia3", wrapped) is IA3Layer
    with pytest.raises(ConfigError, match=r"ia3 has no wrapper for LayerNorm.*Linear, Conv1d, Conv2d, Conv3d"):
        core.wrapper_for("ia3", nn.LayerNorm(4))


def test_unregistered_layer_type_is_an_error_naming_module_type_and_registered_types() -> None:
    model, _ = _my_model()
    for method in ("lora", "dora"):
        with pytest.raises(ConfigError) as err:
            core.attach(model, PEFT_METHODS.build(method, r=2), targets=["0", "2"])
        msg = str(err.value)
        for piece in ("'0'", "0 (MyLinear)", "2 (MyLinear)", "Linear, Conv1d, Conv2d, Conv3d", "register_wrapper"):
            assert piece in msg, (piece, msg)
        assert not core.peft_layers(model)
    # the list comes from the registry, not from a fixed string
    with pytest.raises(ConfigError, match=r"ssf has wrappers registered only for Linear, .*BatchNorm3d"):
        core.attach(model, PEFT_METHODS.build("ssf"), targets=["0"])


@pytest.mark.usefixtures("scratch_registry")
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_registering_a_wrapper_makes_attach_work_on_a_custom_layer(method: str, tmp_path: Path) -> None:
    core.register_wrapper("lora", MyLinear)(LoraLayer)  # the whole change a new layer type needs
    assert core.registered_types("lora")[-1] is MyLinear
    model, x = _my_model()
    base = copy.deepcopy(model)
    base_out = model(x)
    names = core.attach(model, PEFT_METHODS.build(method, r=2, alpha=4), targets=["*"], layer_types=["MyLinear"])
    assert names == ["0", "2"] and isinstance(model[0], LoraLayer) and isinstance(model[0].base_layer, MyLinear)
    torch.testing.assert_close(model(x), base_out, rtol=0, atol=1e-6)  # identity at init
    with torch.no_grad():
        for n in core.adapter_param_names(model, "default"):
            p = model.get_parameter(n)
            p.add_(0.2 * torch.randn_like(p))
    out = model(x)
    assert not torch.allclose(out, base_out, atol=1e-4)
    core.merge(model)
    torch.testing.assert_close(model(x), out, rtol=1e-5, atol=1e-5)
    core.unmerge(model)
    for i in (0, 2):
        torch.testing.assert_close(model[i].base_layer.weight, base[i].weight, rtol=0, atol=1e-6)
    n_train, n_total = core.mark_trainable(model, "default")
    assert 0 < n_train < n_total
    model(x).square().mean().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in n), n
    core.save_adapter(model, tmp_path / "ad")
    fresh = copy.deepcopy(base)
    core.load_adapter(fresh, tmp_path / "ad")
    torch.testing.assert_close(fresh(x), model(x), rtol=1e-5, atol=1e-6)
    core.merge_and_unload(fresh)
    assert type(fresh[0]) is MyLinear


class Gate(nn.Module):
    """A module type no built-in method knows: ``y = x * sigmoid(w)``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.w)


class GateSSF(SSFLayer):
    """A wrapper subclass supplying the per-channel layout SSF's machinery needs for a Gate."""

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.inner.w.shape)

    def on_output(self, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return v.reshape(self.channels)


@pytest.mark.usefixtures("scratch_registry")
def test_a_wrapper_subclass_registered_for_a_new_type() -> None:
    core.register_wrapper("ssf", Gate)(GateSSF)
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(4, 4), Gate(4)), torch.randn(2, 4)
    base_out = model(x)
    core.attach(model, PEFT_METHODS.build("ssf"), "a", targets=["0", "1"])
    core.attach(model, PEFT_METHODS.build("ssf"), "b", targets=["1"])
    assert type(model[0]) is SSFLayer and type(model[1]) is GateSSF  # "b" joined "a"'s wrapper
    assert model[1].adapters == ["a", "b"]
    torch.testing.assert_close(model(x), base_out)
    with torch.no_grad():
        model[1].ssf_scale["b"].fill_(2.0)
        model[1].ssf_shift["a"].fill_(0.5)
    torch.testing.assert_close(model(x), 2 * (model[0](x) * torch.sigmoid(model[1].inner.w) + 0.5))


@pytest.mark.usefixtures("scratch_registry")
def test_register_wrapper_guards() -> None:
    with pytest.raises(ValueError, match="already has a wrapper for Linear"):
        core.register_wrapper("lora", nn.Linear)(SSFLayer)
    core.register_wrapper("lora", nn.Linear)(LoraLayer)  # the same wrapper again is harmless
    with pytest.raises(TypeError, match="nn.Module subclasses"):
        core.register_wrapper("lora", int)(LoraLayer)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="at least one layer type"):
        core.register_wrapper("lora")(LoraLayer)

    def wrong(module: nn.Module) -> Any:
        return SSFLayer(module)  # method_name "ssf" cannot hold lora adapters

    core.register_wrapper("lora", MyLinear, replace=True)(wrong)
    model, _ = _my_model()
    with pytest.raises(TypeError, match="method_name = 'lora'"):
        core.attach(model, PEFT_METHODS.build("lora", r=2), targets=["0"])
    assert type(model[0]) is MyLinear  # rolled back


def test_slices_only_where_the_entry_allows_them() -> None:
    model = nn.Sequential(nn.Conv1d(3, 6, 1), nn.Linear(4, 6))
    with pytest.raises(
        ConfigError, match=r"0: lora adapts whole layers of type Conv1d \(it supports slices of Linear\)"
    ):
        core.attach(model, PEFT_METHODS.build("lora", r=1), targets=["0[q]"])
    with pytest.raises(ConfigError, match="1: ia3 adapts whole layers of type Linear; drop the"):
        core.attach(model, PEFT_METHODS.build("ia3"), targets=["1[q,v]"])
    assert not core.peft_layers(model)


def test_lora_on_a_layer_another_method_wrapped_is_a_config_error() -> None:
    # the registry finds LoraLayer through the SSF wrapper, but LoRA's maths needs the bare layer
    model = nn.Sequential(nn.Linear(4, 4))
    core.attach(model, PEFT_METHODS.build("ssf"), "s", targets=["0"])
    with pytest.raises(ConfigError, match="0: lora cannot wrap the ssf adapters already on this layer"):
        core.attach(model, PEFT_METHODS.build("lora", r=1), "l", targets=["0"])
    assert type(model[0]) is SSFLayer and type(model[0].base_layer) is nn.Linear
