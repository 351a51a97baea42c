"""LoRA/DoRA: parity with Hugging Face PEFT in both directions, merge, layers, slices, fingerprints."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from sciadapt.errors import CheckpointError, ConfigError
from sciadapt.peft import core
from sciadapt.registry import PEFT_METHODS

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "peft_golden"


class TinyNet(nn.Module):
    """The golden fixture's base model (see tests/data/peft_golden/README.md)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1)
        self.fc1 = nn.Linear(128, 32)
        self.fc2 = nn.Linear(32, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.conv(x)).flatten(1)
        h = F.gelu(self.fc1(h))
        return self.head(F.gelu(self.fc2(h)))


def golden_base() -> TinyNet:
    net = TinyNet()
    net.load_state_dict(load_file(str(GOLDEN / "base.safetensors")), strict=True)
    return net.eval()


def test_loads_hf_peft_adapter_and_reproduces_outputs() -> None:
    net = golden_base()
    x = load_file(str(GOLDEN / "inputs.safetensors"))["x"]
    ref = load_file(str(GOLDEN / "outputs.safetensors"))
    torch.testing.assert_close(net(x), ref["base_out"], rtol=1e-5, atol=1e-6)
    targets = core.load_adapter(net, GOLDEN / "adapter")
    assert sorted(targets) == ["conv", "fc1", "fc2"]  # the head is not adapted
    torch.testing.assert_close(net(x), ref["lora_out"], rtol=1e-5, atol=1e-6)
    core.merge(net)
    torch.testing.assert_close(net(x), ref["merged_out"], rtol=1e-5, atol=1e-6)
    merged = load_file(str(GOLDEN / "merged.safetensors"))
    for name in ("conv", "fc1", "fc2"):
        torch.testing.assert_close(getattr(net, name).base_layer.weight, merged[f"{name}.weight"], rtol=1e-5, atol=1e-6)
    core.unmerge(net)
    torch.testing.assert_close(net(x), ref["lora_out"], rtol=1e-5, atol=1e-6)


def test_saved_adapter_uses_peft_keys(tmp_path: Path) -> None:
    net = golden_base()
    core.load_adapter(net, GOLDEN / "adapter")
    core.save_adapter(net, tmp_path / "ad")
    ours = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    theirs = load_file(str(GOLDEN / "adapter" / "adapter_model.safetensors"))
    assert set(ours) == set(theirs)
    for k in theirs:
        assert torch.equal(ours[k], theirs[k]), k
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert sorted(cfg["target_modules"]) == ["conv", "fc1", "fc2"]


@pytest.mark.parametrize("dora", [False, True])
def test_hf_peft_loads_our_adapter(tmp_path: Path, dora: bool) -> None:
    peft = pytest.importorskip("peft", reason="peft is a benchmark-only extra")
    net = golden_base()
    method = PEFT_METHODS.build("dora" if dora else "lora", r=4, alpha=8)
    core.attach(net, method, targets=["conv", "fc1", "fc2"])
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_" in n:
                p.add_(0.05 * torch.randn_like(p))
    x = load_file(str(GOLDEN / "inputs.safetensors"))["x"]
    ours = net(x)
    core.save_adapter(net, tmp_path / "ad")
    theirs = peft.PeftModel.from_pretrained(golden_base(), str(tmp_path / "ad")).eval()
    torch.testing.assert_close(theirs(x), ours, rtol=1e-5, atol=1e-5)


def _models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    return {
        "Linear": (nn.Sequential(nn.Linear(12, 10), nn.GELU(), nn.Linear(10, 6)), torch.randn(5, 12)),
        "Conv1d": (nn.Sequential(nn.Conv1d(3, 6, 3, padding=1), nn.GELU(), nn.Conv1d(6, 4, 3)), torch.randn(2, 3, 16)),
        "Conv2d": (nn.Sequential(nn.Conv2d(3, 6, 3, stride=2), nn.GELU(), nn.Conv2d(6, 4, 1)), torch.randn(2, 3, 9, 9)),
        "Conv3d": (
            nn.Sequential(nn.Conv3d(2, 6, (2, 3, 3)), nn.GELU(), nn.Conv3d(6, 4, 1)),
            torch.randn(2, 2, 4, 7, 7),
        ),
    }


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("layer", ["Linear", "Conv1d", "Conv2d", "Conv3d"])
def test_init_identity_merge_grads_roundtrip(method: str, layer: str, tmp_path: Path) -> None:
    model, x = _models()[layer]
    base = copy.deepcopy(model)
    base_out = model(x)
    core.attach(model, PEFT_METHODS.build(method, r=2, alpha=4), targets=["0", "2"])
    torch.testing.assert_close(model(x), base_out, rtol=0, atol=1e-6)  # identity at init
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(0.1 * torch.randn_like(p))
    unmerged = model(x)
    assert not torch.allclose(unmerged, base_out, atol=1e-4)
    core.merge(model)
    torch.testing.assert_close(model(x), unmerged, rtol=1e-5, atol=1e-5)
    core.unmerge(model)
    for n, p in model.named_parameters():
        if "base_layer" in n:
            ref = dict(base.named_parameters())[n.replace(".base_layer", "")]
            torch.testing.assert_close(p, ref, rtol=0, atol=1e-6)
    # only adapter tensors get gradients
    n_train, n_total = core.mark_trainable(model, "default")
    assert 0 < n_train < n_total
    model(x).square().mean().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in n), n
    # save/load round trip onto a fresh copy of the base: adapter tensors are copied exactly; the
    # outputs differ only by the last bits the merge/unmerge above left in `model`'s base weights
    core.save_adapter(model, tmp_path / "ad")
    fresh = copy.deepcopy(base)
    core.load_adapter(fresh, tmp_path / "ad")
    for n, p in fresh.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, dict(model.named_parameters())[n]), n
    torch.testing.assert_close(fresh(x), model(x), rtol=1e-5, atol=1e-6)


def test_dora_norm_matches_materialised_weight() -> None:
    torch.manual_seed(1)
    lin = nn.Linear(20, 7)
    model = nn.Sequential(lin)
    core.attach(model, PEFT_METHODS.build("dora", r=3, alpha=6), targets=["0"])
    lay = model[0]
    with torch.no_grad():
        lay.lora_B["default"].weight.normal_()
    full = lay.base_layer.weight + lay.delta_weight("default")
    torch.testing.assert_close(lay._row_norm("default"), full.norm(dim=1), rtol=1e-5, atol=1e-6)


def test_fused_qkv_slices() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict({"attn": nn.ModuleDict({"qkv": nn.Linear(8, 24)})})
    x = torch.randn(3, 8)
    base_out = model["attn"]["qkv"](x)
    core.attach(model, PEFT_METHODS.build("lora", r=2, alpha=2), targets=["attn.qkv[q,v]"])
    qkv = model["attn"]["qkv"]
    with torch.no_grad():
        for p in qkv.lora_B.parameters():
            p.normal_()
    out = qkv(x)
    torch.testing.assert_close(out[:, 8:16], base_out[:, 8:16])  # k untouched
    assert not torch.allclose(out[:, :8], base_out[:, :8])
    core.merge(model)
    torch.testing.assert_close(qkv(x), out, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="fused qkv"):
        core.attach(nn.ModuleDict({"p": nn.Linear(8, 10)}), PEFT_METHODS.build("lora"), targets=["p[q]"])


def test_named_adapters_switch_and_disable() -> None:
    model, x = _models()["Linear"]
    base_out = model(x)
    core.attach(model, PEFT_METHODS.build("lora", r=2), "a", targets=["0"])
    core.attach(model, PEFT_METHODS.build("lora", r=2), "b", targets=["0"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    both = model(x)
    core.set_active(model, ["a"])
    only_a = model(x)
    core.enable(model, False)
    torch.testing.assert_close(model(x), base_out)
    core.enable(model, True)
    assert not torch.allclose(only_a, both)
    with pytest.raises(ConfigError, match="did you mean 'a'"):
        core.set_active(model, ["aa"])


def test_bad_targets_and_rank() -> None:
    model, _ = _models()["Linear"]
    with pytest.raises(ConfigError, match="matches no module"):
        core.attach(model, PEFT_METHODS.build("lora"), targets=["fc9"])
    with pytest.raises(ConfigError, match="GELU"):
        core.attach(model, PEFT_METHODS.build("lora"), targets=["1"])
    with pytest.raises(ConfigError, match="exceeds the rank"):
        core.attach(model, PEFT_METHODS.build("lora", r=64), targets=["2"])
    assert not core.peft_layers(model), "a failed attach must leave the model unchanged"


def test_fingerprint_refuses_other_base(tmp_path: Path) -> None:
    model, x = _models()["Linear"]
    other = copy.deepcopy(model)
    core.attach(model, PEFT_METHODS.build("lora", r=2), targets=["0", "2"])
    core.save_adapter(model, tmp_path / "ad")
    with torch.no_grad():
        other[2].weight.add_(1.0)
    with pytest.raises(CheckpointError, match=r"different base model.*2\.weight"):
        core.load_adapter(other, tmp_path / "ad")


def test_eva_init_uses_activation_directions() -> None:
    from sciadapt.peft.lora import eva_init

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6))
    base = copy.deepcopy(model)
    core.attach(model, PEFT_METHODS.build("lora", r=1, init="eva"), targets=["0"])
    # inputs vary almost only along one direction: A must align with it
    direction = torch.tensor([1.0, 2.0, 0.0, 0.0, -1.0, 0.0])
    batches = [torch.randn(64, 1) * direction + 0.01 * torch.randn(64, 6) for _ in range(3)]
    assert eva_init(model, "default", batches, model) == 1
    a = model[0].lora_A["default"].weight[0]
    cos = torch.nn.functional.cosine_similarity(a, direction, dim=0).abs()
    assert cos > 0.99
    x = torch.randn(4, 6)
    torch.testing.assert_close(model(x), base(x))  # B = 0: outputs unchanged


def test_lora_fa_trains_only_b(tmp_path: Path, series_csv: Path) -> None:
    from sciadapt.cli import main
    from tests.conftest import tiny_pipeline

    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    peft = "{method: lora, r: 2, init: lora_fa}"
    assert main(["fit", str(pipe), "stages.*.max_epochs=1", f"stages.finetune.peft={peft}"]) == 0
    (run,) = (tmp_path / "runs").glob("tiny/*")
    state = torch.load(run / "checkpoints" / "finetune" / "final.ckpt", weights_only=True)["state_dict"]
    adapter = load_file(str(run / "adapters" / "finetune" / "adapter_model.safetensors"))
    assert any(".lora_A." in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if ".lora_B." in k)  # B trained from zero
    summary = json.loads((run / "summary.json").read_text())
    b_params = sum(v.numel() for k, v in adapter.items() if ".lora_B." in k)
    head = sum(v.numel() for k, v in state.items() if k.startswith("head."))
    assert summary["stages"]["finetune"]["trainable_params"] == b_params + head


def test_targets_by_layer_type_and_predicate() -> None:
    model, x = _models()["Linear"]
    names = core.attach(model, PEFT_METHODS.build("lora", r=2), targets=["*"], layer_types=["Linear"])
    assert names == ["0", "2"]
    other, _ = _models()["Linear"]
    names = core.attach(
        other, PEFT_METHODS.build("lora", r=2), predicate=lambda n, m: getattr(m, "out_features", 0) == 6
    )
    assert names == ["2"]
    with pytest.raises(ConfigError, match="cannot adapt"):
        core.attach(_models()["Linear"][0], PEFT_METHODS.build("lora"), targets=["*"], layer_types=["LayerNorm"])


@pytest.mark.parametrize("layer", ["Linear", "Conv2d"])
def test_pissa_moves_principal_part_into_adapter(layer: str) -> None:
    model, x = _models()[layer]
    original = copy.deepcopy(model)
    core.attach(model, PEFT_METHODS.build("lora", r=2, alpha=4, init="pissa"), targets=["0"])
    torch.testing.assert_close(model(x), original(x), rtol=1e-5, atol=1e-5)  # unchanged at init
    lay = model[0]
    w0 = original[0].weight.reshape(original[0].weight.shape[0], -1)
    sv = torch.linalg.svdvals(w0)
    res = lay.base_layer.weight.reshape(w0.shape)
    # the residual keeps exactly the singular values beyond the rank
    torch.testing.assert_close(torch.linalg.svdvals(res)[: len(sv) - 2], sv[2:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer", ["Linear", "Conv2d"])
def test_dora_gradients_match_the_plain_formula(layer: str) -> None:
    """The memory-saving backward (z recovered from the output) gives autograd's gradients."""
    model, x = _models()[layer]
    core.attach(model, PEFT_METHODS.build("dora", r=2, alpha=4), targets=["0"])
    lay = model[0]
    with torch.no_grad():
        for p in lay.lora_B.parameters():
            p.normal_()
        lay.lora_magnitude_vector["default"].weight.mul_(1.3)
    base = lay.base_layer
    base.bias.requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    lay(xr).pow(2).sum().backward()
    ours = [
        p.grad.clone() for p in (lay.lora_magnitude_vector["default"].weight, lay.lora_A["default"].weight, base.bias)
    ]
    ours_x = xr.grad.clone()
    for p in (lay.lora_magnitude_vector["default"].weight, lay.lora_A["default"].weight, base.bias):
        p.grad = None
    # reference: the textbook formula with a detached norm, through plain autograd
    m = lay.lora_magnitude_vector["default"].weight.reshape(-1)
    full = base.weight + lay.delta_weight("default")
    norm = full.reshape(full.shape[0], -1).norm(dim=1).detach()
    w = full * (m / norm).reshape(-1, *([1] * (full.dim() - 1)))
    xr2 = x.clone().requires_grad_(True)
    ref = F.linear(xr2, w, base.bias) if layer == "Linear" else F.conv2d(xr2, w, base.bias, stride=base.stride)
    ref.pow(2).sum().backward()
    refs = [p.grad for p in (lay.lora_magnitude_vector["default"].weight, lay.lora_A["default"].weight, base.bias)]
    for a, b in zip(ours, refs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours_x, xr2.grad, rtol=1e-4, atol=1e-5)


def test_merge_and_unload_restores_the_plain_architecture() -> None:
    model, x = _models()["Conv2d"]
    core.attach(model, PEFT_METHODS.build("lora", r=2), "a", targets=["0"])
    core.attach(model, PEFT_METHODS.build("dora", r=2), "b", targets=["2"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    out = model(x)
    core.merge_and_unload(model)
    assert not core.peft_layers(model) and isinstance(model[0], nn.Conv2d) and isinstance(model[2], nn.Conv2d)
    torch.testing.assert_close(model(x), out, rtol=1e-5, atol=1e-5)


def test_dora_norm_cache_follows_a_merged_lora_on_the_same_layer() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 16))
    core.attach(m, PEFT_METHODS.build("lora", r=4, alpha=8), "a", targets=["0"])
    core.attach(m, PEFT_METHODS.build("dora", r=4, alpha=8), "b", targets=["0"])
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_()
    x = torch.randn(5, 16)
    m(x)  # fills the norm cache
    core.merge(m, "a")
    after = m(x)
    m[0]._w_norm_sq = None
    torch.testing.assert_close(after, m(x))


# -- DoRA (and LoRA) on fused-qkv slices ------------------------------------------------------


def _qkv_model(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.ModuleDict({"attn": nn.ModuleDict({"qkv": nn.Linear(8, 24)})})
    return model, torch.randn(3, 5, 8)  # (B, N, D)


def _perturb_adapter(model: nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n in core.adapter_param_names(model, "default"):
            p = model.get_parameter(n)
            scale = 0.3 if "magnitude" in n else 0.5
            p.add_(scale * torch.randn(p.shape, generator=gen))


def _textbook_sliced_dora_weight(lay: nn.Module, name: str = "default") -> torch.Tensor:
    """W' with each adapted slice's rows m * (W + sBA) / ||W + sBA|| (norm detached), the rest W."""
    full = lay.base_layer.weight + lay.delta_weight(name)
    d = full.shape[0] // 3
    rows = []
    for i, sl in enumerate("qkv"):
        part = full[i * d : (i + 1) * d]
        if sl in lay.slices[name]:
            m = lay.lora_magnitude_vector[name][sl].weight
            part = part * (m / part.norm(dim=1).detach())[:, None]
        rows.append(part)
    return torch.cat(rows)


@pytest.mark.parametrize("slices", ["q,v", "k", "q,k,v"])
def test_dora_on_fused_qkv_slices(slices: str, tmp_path: Path) -> None:
    model, x = _qkv_model()
    base = copy.deepcopy(model)
    base_out = model["attn"]["qkv"](x)
    core.attach(model, PEFT_METHODS.build("dora", r=2, alpha=4), targets=[f"attn.qkv[{slices}]"])
    qkv = model["attn"]["qkv"]
    chosen = slices.split(",")
    # one magnitude per adapted slice, over that slice's 8 output rows
    mags = {n: p.shape for n, p in qkv.named_parameters() if "magnitude" in n}
    assert mags == {f"lora_magnitude_vector.default.{s}.weight": (8,) for s in chosen}
    torch.testing.assert_close(qkv(x), base_out, rtol=0, atol=1e-6)  # identity at init

    _perturb_adapter(model)
    out = qkv(x)
    w = qkv.base_layer.weight
    # the efficient per-slice norm equals the norm of the materialised W + sBA
    torch.testing.assert_close(qkv._row_norm("default"), (w + qkv.delta_weight("default")).norm(dim=1))
    with torch.no_grad():
        ref = F.linear(x, _textbook_sliced_dora_weight(qkv), qkv.base_layer.bias)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for i, sl in enumerate("qkv"):
        part = slice(8 * i, 8 * (i + 1))
        if sl in chosen:
            assert not torch.allclose(out[..., part], base_out[..., part], atol=1e-3), sl
        else:
            torch.testing.assert_close(out[..., part], base_out[..., part], rtol=1e-6, atol=1e-6)

    core.merge(model)
    torch.testing.assert_close(qkv(x), out, rtol=1e-5, atol=1e-5)
    core.unmerge(model)
    torch.testing.assert_close(qkv.base_layer.weight, base["attn"]["qkv"].weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(qkv(x), out, rtol=1e-5, atol=1e-6)

    n_train, n_total = core.mark_trainable(model, "default")
    assert 0 < n_train < n_total
    qkv(x).square().mean().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in n), n

    core.save_adapter(model, tmp_path / "ad")
    fresh = copy.deepcopy(base)
    core.load_adapter(fresh, tmp_path / "ad")
    for n, p in fresh.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, model.get_parameter(n)), n
    torch.testing.assert_close(fresh["attn"]["qkv"](x), qkv(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_sliced_adapters_round_trip_and_do_not_claim_peft_compatibility(method: str, tmp_path: Path) -> None:
    model, x = _qkv_model()
    fresh = copy.deepcopy(model)
    core.attach(model, PEFT_METHODS.build(method, r=2), targets=["attn.qkv[q,v]"])
    _perturb_adapter(model)
    core.save_adapter(model, tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    # PEFT cannot express per-slice adapters: no LORA config that `peft` would misread
    assert cfg["peft_type"] is None and cfg["sciadapt_method"] == method
    assert cfg["sciadapt_slices"] == {"attn.qkv": ["q", "v"]}
    keys = set(load_file(str(tmp_path / "ad" / "adapter_model.safetensors")))
    assert "base_model.model.attn.qkv.lora_A.q.weight" in keys
    assert ("base_model.model.attn.qkv.lora_magnitude_vector.v.weight" in keys) == (method == "dora")
    assert core.load_adapter(fresh, tmp_path / "ad") == ["attn.qkv"]
    assert fresh["attn"]["qkv"].slices["default"] == ("q", "v")
    assert torch.equal(fresh["attn"]["qkv"](x), model["attn"]["qkv"](x))


def test_dora_slice_gradients_match_the_plain_formula() -> None:
    """Per-slice efficient norm + memory-saving backward give autograd's textbook gradients."""
    model, x = _qkv_model(seed=3)
    core.attach(model, PEFT_METHODS.build("dora", r=2, alpha=4), targets=["attn.qkv[q,v]"])
    qkv = model["attn"]["qkv"]
    _perturb_adapter(model, seed=4)
    params = dict(qkv.named_parameters())  # adapters, base weight and bias: all require grad here
    xr = x.clone().requires_grad_(True)
    qkv(xr).pow(3).sum().backward()
    ours = {n: p.grad.clone() for n, p in params.items()}
    ours_x = xr.grad.clone()
    for p in params.values():
        p.grad = None
    xr2 = x.clone().requires_grad_(True)
    F.linear(xr2, _textbook_sliced_dora_weight(qkv), qkv.base_layer.bias).pow(3).sum().backward()
    assert len(ours) == 2 + 3 * 2  # base weight, bias; A, B, m for q and v
    for n, p in params.items():
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-4, atol=1e-5, msg=n)
    torch.testing.assert_close(ours_x, xr2.grad, rtol=1e-4, atol=1e-5)


def test_dora_slices_with_a_second_adapter_merge_in_any_order() -> None:
    model, x = _qkv_model()
    w0 = model["attn"]["qkv"].weight.detach().clone()
    core.attach(model, PEFT_METHODS.build("dora", r=2), "a", targets=["attn.qkv[q,v]"])
    core.attach(model, PEFT_METHODS.build("lora", r=2), "b", targets=["attn.qkv[k]"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(0.3 * torch.randn_like(p))
    qkv = model["attn"]["qkv"]
    out = qkv(x)
    core.merge(model, "b")
    torch.testing.assert_close(qkv(x), out, rtol=1e-5, atol=1e-5)
    core.merge(model, "a")
    torch.testing.assert_close(qkv(x), out, rtol=1e-5, atol=1e-5)
    core.unmerge(model)
    torch.testing.assert_close(qkv.base_layer.weight, w0, rtol=0, atol=1e-6)


def test_init_from_data_runs_eva_on_its_own_batches() -> None:
    from sciadapt.peft.lora import eva_init

    torch.manual_seed(0)
    batches = [{"x": torch.randn(32, 6), "y": torch.zeros(1)} for _ in range(5)]
    via_method, via_eva = nn.Sequential(nn.Linear(6, 6)), nn.Sequential(nn.Linear(6, 6))
    via_eva.load_state_dict(via_method.state_dict())
    for model in (via_method, via_eva):
        torch.manual_seed(1)
        core.attach(model, PEFT_METHODS.build("lora", r=2, init="eva", eva_batches=3), targets=["0"])
    method = PEFT_METHODS.build("lora", r=2, init="eva", eva_batches=3)
    method.init_from_data(via_method, "default", iter(batches))
    eva_init(via_eva, "default", (b["x"] for b in batches[:3]), via_eva)
    assert torch.equal(via_method[0].lora_A["default"].weight, via_eva[0].lora_A["default"].weight)
    untouched = copy.deepcopy(via_method)
    PEFT_METHODS.build("lora", r=2).init_from_data(via_method, "default", iter(batches))  # not eva: no-op
    assert torch.equal(via_method[0].lora_A["default"].weight, untouched[0].lora_A["default"].weight)
