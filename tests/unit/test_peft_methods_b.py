"""Bottleneck adapters (houlsby, adaptformer) and visual prompt tuning on a tiny ViT-like model."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sciadapt.errors import ConfigError
from sciadapt.peft import core
from sciadapt.peft.adapters import BottleneckLayer, build_adaptformer, build_houlsby
from sciadapt.peft.vpt import VptLayer, build_vpt

BLOCKS = r"re:blocks\.\d+"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # these tensors are tiny: extra threads only add contention on a busy CI box
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Block(nn.Module):
    """Pre-norm self-attention + MLP, (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(self, in_dim: int = 12, dim: int = 16, depth: int = 3, n_classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)  # (B, N, D)
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.norm(h).mean(1))  # (B, classes)


def base_model() -> TinyViT:
    torch.manual_seed(0)
    return TinyViT().eval()


def tokens(b: int = 4, n: int = 7) -> torch.Tensor:
    return torch.randn(b, n, 12, generator=torch.Generator().manual_seed(1))


def prompt(model: nn.Module, block: int, adapter: str = "default") -> torch.Tensor:
    layer = model.get_submodule(f"blocks.{block}")
    assert isinstance(layer, VptLayer)
    return layer.vpt_prompts[adapter]  # (P, D)


def randomise(model: nn.Module, adapter: str = "default") -> None:
    """Move an adapter off its init so tests see it act."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in core.adapter_param_names(model, adapter):
            params[n].normal_(std=0.3)


BOTTLENECK = {"houlsby": build_houlsby, "adaptformer": build_adaptformer}
ALL = [
    ("houlsby", lambda: build_houlsby(bottleneck=4), ["blocks.*.mlp"]),
    ("adaptformer", lambda: build_adaptformer(bottleneck=4, scale=0.5), ["blocks.*.mlp"]),
    ("vpt_deep", lambda: build_vpt(n_prompts=3), [BLOCKS]),
    ("vpt_shallow", lambda: build_vpt(n_prompts=3, deep=False), [BLOCKS]),
]


# -- houlsby / adaptformer -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("houlsby", "blocks.*.mlp"),
        ("houlsby", "blocks.*.mlp.2"),  # a Linear (32 -> 16)
        ("houlsby", BLOCKS),
        ("houlsby", "blocks.*.attn"),  # returns a tuple (out, weights)
        ("adaptformer", "blocks.*.mlp"),
        ("adaptformer", BLOCKS),
    ],
)
def test_bottleneck_equals_base_at_init_then_differs(name: str, target: str) -> None:
    model, x = base_model(), tokens()
    ref = model(x)
    names = core.attach(model, BOTTLENECK[name](bottleneck=4), targets=[target])
    assert len(names) == 3
    assert torch.equal(model(x), ref)
    with torch.no_grad():
        for layer in core.peft_layers(model).values():
            assert isinstance(layer, BottleneckLayer)
            up = layer.adapter_up["default"]
            assert isinstance(up, nn.Linear)
            up.weight.normal_()
    assert not torch.allclose(model(x), ref)


def test_houlsby_and_adaptformer_maths() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(8, 8)
    x = torch.randn(5, 8)
    wrapped = nn.Sequential(lin)
    core.attach(wrapped, build_houlsby(bottleneck=3, activation="relu"), "h", targets=["0"])
    core.attach(wrapped, build_adaptformer(bottleneck=2, scale=0.25), "a", targets=["0"])
    randomise(wrapped, "h")
    randomise(wrapped, "a")
    layer = wrapped[0]
    assert isinstance(layer, BottleneckLayer) and layer.active == ["h", "a"]  # one wrapper, both adapters
    d, u = layer.adapter_down, layer.adapter_up
    h = lin(x)
    h = h + u["h"](F.relu(d["h"](h)))  # sequential on the output
    h = h + 0.25 * u["a"](F.relu(d["a"](x)))  # parallel on the input
    torch.testing.assert_close(wrapped(x), h)
    core.set_active(wrapped, ["a"])
    torch.testing.assert_close(wrapped(x), lin(x) + 0.25 * u["a"](F.relu(d["a"](x))))


def test_two_houlsby_adapters_compose_in_active_order() -> None:
    model = base_model()
    core.attach(model, build_houlsby(bottleneck=4), "a", targets=["blocks.0.mlp"])
    core.attach(model, build_houlsby(bottleneck=4), "b", targets=["blocks.0.mlp"])
    randomise(model, "a")
    randomise(model, "b")
    layer = model.blocks[0].mlp
    assert isinstance(layer, BottleneckLayer) and layer.unmerged_active() == ["a", "b"]
    z = torch.randn(2, 5, 16)
    h = layer.base_layer(z)
    for n in ("a", "b"):
        h = h + layer.adapter_up[n](F.gelu(layer.adapter_down[n](h)))
    torch.testing.assert_close(layer(z), h)
    core.enable(model, False)
    assert torch.equal(layer(z), layer.base_layer(z))


def test_adaptformer_refuses_width_changing_module() -> None:
    model = base_model()
    with pytest.raises(ConfigError, match=r"blocks\.0\.mlp\.0.*16 -> 32"):
        core.attach(model, build_adaptformer(), targets=["blocks.0.mlp.0"])


def check_peft(block: dict[str, object]) -> None:
    """What the config layer says of a stage's ``peft:`` block (choices and bounds live in the builder signature)."""
    from sciadapt.config import _check_peft

    problems: list[str] = []
    _check_peft(block, "peft", problems)
    if problems:
        raise ConfigError(problems)


def test_bottleneck_config_errors() -> None:
    with pytest.raises(ConfigError, match="activation"):
        check_peft({"method": "houlsby", "activation": "swish"})
    with pytest.raises(ConfigError, match="bottleneck"):
        check_peft({"method": "adaptformer", "bottleneck": 0})
    with pytest.raises(ConfigError, match="output width.*GELU"):
        core.attach(base_model(), build_houlsby(), targets=["blocks.0.mlp.1"])


def test_block_glob_targets_the_blocks_only() -> None:
    # '*' matches dots, so 'blocks.*' names blocks.0 and blocks.0.attn alike; whole-module
    # methods keep the outermost matches
    names = core.attach(base_model(), build_vpt(), targets=["blocks.*"])
    assert names == ["blocks.0", "blocks.1", "blocks.2"]


# -- shared properties -----------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "make", "targets"), ALL, ids=[a[0] for a in ALL])
def test_gradients_reach_only_adapter_params(label: str, make, targets: list[str]) -> None:  # type: ignore[no-untyped-def]
    model, x = base_model(), tokens()
    core.attach(model, make(), targets=targets)
    randomise(model)  # zero-initialised up projections would block the gradient to down
    n_train, n_total = core.mark_trainable(model, "default")
    own = set(core.adapter_param_names(model, "default"))
    assert own and 0 < n_train < n_total
    model(x).square().sum().backward()
    for name, p in model.named_parameters():
        if name in own:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize(("label", "make", "targets"), ALL, ids=[a[0] for a in ALL])
def test_save_load_round_trip_is_exact(label: str, make, targets: list[str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fresh = copy.deepcopy(base_model())
    model, x = base_model(), tokens()
    core.attach(model, make(), targets=targets)
    randomise(model)
    want = model(x)
    core.save_adapter(model, tmp_path / "ad")
    loaded = core.load_adapter(fresh, tmp_path / "ad")
    assert loaded == core.adapters(model)["default"]["targets"]
    assert torch.equal(fresh(x), want)


@pytest.mark.parametrize(("label", "make", "targets"), ALL, ids=[a[0] for a in ALL])
def test_merge_is_refused(label: str, make, targets: list[str]) -> None:  # type: ignore[no-untyped-def]
    model = base_model()
    core.attach(model, make(), targets=targets)
    with pytest.raises(ConfigError, match="cannot be merged"):
        core.merge(model)
    with pytest.raises(ConfigError, match="cannot be merged"):
        core.merge_and_drop(model, "default")


# -- VPT ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("deep", [True, False])
def test_vpt_keeps_shape_and_disables_to_exact_base(deep: bool) -> None:
    model, x = base_model(), tokens()
    ref = model(x)
    core.attach(model, build_vpt(n_prompts=4, deep=deep), targets=[BLOCKS])
    h = model.embed(x)
    for blk in model.blocks:
        h = blk(h)
    assert h.shape == (4, 7, 16)  # (B, N, D) as the caller passed it
    assert model(x).shape == ref.shape
    assert not torch.allclose(model(x), ref)  # the prompts attend from the start
    core.enable(model, False)
    assert torch.equal(model(x), ref)
    core.enable(model, True)
    assert not torch.allclose(model(x), ref)


def test_vpt_deep_and_shallow_maths() -> None:
    x = tokens()
    deep = base_model()
    base = copy.deepcopy(deep)
    core.attach(deep, build_vpt(n_prompts=2, deep=True), targets=[BLOCKS])
    shallow = copy.deepcopy(base)
    core.attach(shallow, build_vpt(n_prompts=2, deep=False), targets=[BLOCKS])
    # deep: a fresh P in every block; shallow: only blocks.0 owns P, blocks.2 drops it
    assert len(core.adapter_param_names(deep, "default")) == 3
    assert core.adapter_param_names(shallow, "default") == ["blocks.0.vpt_prompts.default"]
    roles = [(b.prepends["default"], b.strips["default"]) for b in shallow.blocks if isinstance(b, VptLayer)]
    assert roles == [(True, False), (False, False), (False, True)]

    def cat(p: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([p.expand(h.shape[0], -1, -1), h], dim=1)

    h = base.embed(x)
    for i, blk in enumerate(base.blocks):
        h = blk(cat(prompt(deep, i), h))[:, 2:]
    torch.testing.assert_close(deep.blocks[2](deep.blocks[1](deep.blocks[0](base.embed(x)))), h)

    h = cat(prompt(shallow, 0), base.embed(x))
    for blk in base.blocks:
        h = blk(h)
    torch.testing.assert_close(shallow.blocks[2](shallow.blocks[1](shallow.blocks[0](base.embed(x)))), h[:, 2:])


def test_vpt_adapters_compose() -> None:
    model, x = base_model(), tokens()
    base = copy.deepcopy(model)
    core.attach(model, build_vpt(n_prompts=2), "a", targets=[BLOCKS])
    core.attach(model, build_vpt(n_prompts=3, deep=False), "b", targets=[BLOCKS])
    core.attach(model, build_vpt(n_prompts=1, deep=False), "c", targets=[BLOCKS])
    blk = model.blocks[0]
    assert isinstance(blk, VptLayer) and blk.unmerged_active() == ["a", "b", "c"]

    def cat(p: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([p.expand(h.shape[0], -1, -1), h], dim=1)

    # layout per block: [deep a | shallow c | shallow b | tokens]; c and b span the same blocks
    h = cat(prompt(model, 0, "b"), base.embed(x))
    h = cat(prompt(model, 0, "c"), h)
    for i, base_blk in enumerate(base.blocks):
        h = base_blk(cat(prompt(model, i, "a"), h))[:, 2:]
    assert model(x).shape == (4, 3)
    torch.testing.assert_close(
        model.norm(model.blocks[2](model.blocks[1](model.blocks[0](model.embed(x))))), base.norm(h[:, 4:])
    )
    core.set_active(model, ["b"])
    assert [layer.unmerged_active() for layer in core.peft_layers(model).values()] == [["b"]] * 3
    core.enable(model, False)
    assert torch.equal(model(x), base(x))


@pytest.mark.parametrize("deep", [True, False])
def test_vpt_training_prompts_and_head_lowers_loss(deep: bool) -> None:
    model = base_model().train()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, 6, 12, generator=g)
    y = (x[:, :, 0].mean(1) > 0).long() + (x[:, :, 1].mean(1) > 0.3).long()  # 3 classes
    core.attach(model, build_vpt(n_prompts=4, deep=deep), targets=[BLOCKS])
    core.mark_trainable(model, "default", also=["head"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(
        core.adapter_param_names(model, "default") + ["head.weight", "head.bias"]
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.Adam(trainable, lr=3e-2)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_vpt_patch_size_init_and_config_errors() -> None:
    model = base_model()
    core.attach(model, build_vpt(n_prompts=50, patch_size=4), targets=["blocks.0"])
    p = prompt(model, 0)
    bound = (6.0 / (3 * 16 + 16)) ** 0.5
    assert p.abs().max() <= bound and p.abs().max() > 0.8 * bound
    # targets are applied in module order whatever order the patterns list them in
    assert core.attach(base_model(), build_vpt(deep=False), targets=["blocks.2", "blocks.0"]) == [
        "blocks.0",
        "blocks.2",
    ]
    with pytest.raises(ConfigError, match="n_prompts"):
        check_peft({"method": "vpt", "n_prompts": 0})
    with pytest.raises(ConfigError, match=r"blocks\.0\.mlp\.0.*16 -> 32"):
        core.attach(base_model(), build_vpt(), targets=["blocks.0.mlp.0"])
