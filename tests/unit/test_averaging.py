"""Weight-space arithmetic (soups, WiSE-FT, Model Stock, LoRA adapter merges) checked exactly on tiny
modules, and ``sciadapt merge`` on two tiny runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sciadapt.averaging import arith
from sciadapt.averaging.arith import LoraAdapter
from sciadapt.errors import CheckpointError, ConfigError
from tests.conftest import TINY_SERIES_PIPELINE


def _states(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(n):
        torch.manual_seed(seed + i)
        m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        m.train()
        m(torch.randn(8, 4))  # moves the running statistics, counts a batch
        out.append({k: v.detach().clone() for k, v in m.state_dict().items()})
    return out


def test_uniform_soup_is_the_mean() -> None:
    states = _states(3)
    soup = arith.uniform_soup(states)
    for k, v in soup.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, torch.stack([s[k] for s in states]).mean(0), rtol=0, atol=1e-7)
        else:  # num_batches_tracked: from the first
            assert torch.equal(v, states[0][k])
    with pytest.raises(ConfigError, match="at least two"):
        arith.uniform_soup(states[:1])


def test_wise_ft_endpoints_and_midpoint() -> None:
    a, b = _states(2)
    for k, v in arith.interpolate(a, b, 0.0).items():
        assert torch.equal(v, a[k])
    for k, v in arith.interpolate(a, b, 1.0).items():
        assert torch.equal(v, b[k])
    mid = arith.interpolate(a, b, 0.25)
    torch.testing.assert_close(mid["0.weight"], 0.75 * a["0.weight"] + 0.25 * b["0.weight"])
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="outside \\[0, 1\\]"):
            arith.interpolate(a, b, bad)


def test_model_stock_limits() -> None:
    w0 = {"w": torch.zeros(4), "n": torch.tensor(3)}
    same = {"w": torch.tensor([1.0, 2.0, 0.0, 0.0]), "n": torch.tensor(5)}
    merged = arith.model_stock(w0, [same, dict(same)])  # cos = 1 -> t = 1: the fine-tuned weights
    torch.testing.assert_close(merged["w"], same["w"])
    assert arith.model_stock_ratio(w0["w"], [same["w"], same["w"]]) == pytest.approx((1.0, 1.0))
    ortho = [{"w": torch.tensor([1.0, 0.0, 0.0, 0.0])}, {"w": torch.tensor([0.0, 1.0, 0.0, 0.0])}]
    # cos = 0 -> t = 2 * 0 / (0 + 1) = 0: the anchor, not the mean
    torch.testing.assert_close(arith.model_stock({"w": w0["w"]}, ortho)["w"], w0["w"])
    # cos = 0.5, k = 2: t = 1 / 1.5 = 2/3 of the way from the anchor to the mean
    v1, v2 = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 3**0.5 / 2])
    cos, t = arith.model_stock_ratio(torch.zeros(2), [v1, v2])
    assert cos == pytest.approx(0.5) and t == pytest.approx(2 / 3)
    out = arith.model_stock({"w": torch.zeros(2)}, [{"w": v1}, {"w": v2}])["w"]
    torch.testing.assert_close(out, (2 / 3) * (v1 + v2) / 2)
    # k = 3 with mean pairwise cosine c: t = 3c / (2c + 1)
    vs = [1.0 - torch.eye(3)[i] for i in range(3)]  # (0,1,1), (1,0,1), (1,1,0): pairwise cos = 1 / 2
    cos, t = arith.model_stock_ratio(torch.zeros(3), vs)
    assert cos == pytest.approx(0.5) and t == pytest.approx(1.5 / 2)
    with pytest.raises(ConfigError, match="at least two fine-tuned"):
        arith.model_stock(w0, [same])


def test_greedy_soup_never_worsens_the_held_out_score() -> None:
    target = torch.tensor([1.0, 1.0])
    cands = [
        ("good", {"w": torch.tensor([1.2, 0.8])}),
        ("also_good", {"w": torch.tensor([0.8, 1.2])}),  # the mean with "good" is exactly the target
        ("bad", {"w": torch.tensor([9.0, -7.0])}),  # adding it would hurt
    ]

    def loss(state: dict[str, torch.Tensor]) -> float:
        return float(((state["w"] - target) ** 2).sum())

    soup, kept, history = arith.greedy_soup(cands, loss, higher_is_better=False)
    assert kept == ["good", "also_good"] or kept == ["also_good", "good"]
    assert [h["kept"] for h in history] == [True, True, False]
    best = min(loss(s) for _, s in cands)
    running = [h["soup_score"] for h in history if h["kept"]]
    assert all(b <= a for a, b in zip(running, running[1:], strict=False)) and loss(soup) <= best
    torch.testing.assert_close(soup["w"], target)
    # higher is better: the same candidates, scored by the negative loss
    _, kept_hi, _ = arith.greedy_soup(cands, lambda s: -loss(s), higher_is_better=True)
    assert "bad" not in kept_hi
    with pytest.raises(ConfigError, match="at least two"):
        arith.greedy_soup(cands[:1], loss, higher_is_better=False)


def test_incompatible_states_name_the_tensors() -> None:
    a, b = _states(2)
    b = dict(b)
    b["0.weight"] = torch.zeros(5, 4)
    del b["1.bias"]
    with pytest.raises(CheckpointError) as e:
        arith.check_compatible([a, b], ["runA", "runB"])
    msg = str(e.value)
    assert "0.weight: shape (3, 4) in runA vs (5, 4) in runB" in msg and "runB lacks" in msg and "1.bias" in msg
    c = {k: v.double() if v.is_floating_point() else v for k, v in a.items()}
    with pytest.raises(CheckpointError, match="dtype"):
        arith.check_compatible([a, c], ["runA", "runC"])
    many = {f"t{i}": torch.zeros(1) for i in range(10)}
    other = {f"t{i}": torch.zeros(2) for i in range(10)}
    with pytest.raises(CheckpointError, match="and 6 more differences"):
        arith.check_compatible([many, other], ["x", "y"])


# -- LoRA adapters -----------------------------------------------------------------------------
P = "base_model.model."


def _adapter(name: str, r: int, seed: int, alpha: float = 8.0, sha: str = "base", conv: bool = False) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    tensors = {
        f"{P}fc.lora_A.weight": torch.randn(r, 6, generator=g),
        f"{P}fc.lora_B.weight": torch.randn(5, r, generator=g),
    }
    if conv:
        tensors[f"{P}conv.lora_A.weight"] = torch.randn(r, 2, 3, 3, generator=g)
        tensors[f"{P}conv.lora_B.weight"] = torch.randn(4, r, 1, 1, generator=g)
    return LoraAdapter(
        name=name,
        method="lora",
        config={"r": r, "alpha": alpha, "dropout": 0.0, "rslora": False, "init": "default", "eva_batches": 4},
        targets=["fc", "conv"] if conv else ["fc"],
        fingerprint={"sha256": sha, "tensors": {}},
        tensors=tensors,
    )


def test_linear_adapter_merge_is_exact() -> None:
    ads = [_adapter("a", 2, 0, conv=True), _adapter("b", 3, 1, alpha=3.0, conv=True)]
    weights = [0.7, -0.4]
    merged = arith.linear_adapters(ads, weights)
    assert merged.config["r"] == 5 and merged.scaling == pytest.approx(1.0)
    for module in (f"{P}fc", f"{P}conv"):
        want = sum(w * ad.delta(module) for w, ad in zip(weights, ads, strict=True))
        torch.testing.assert_close(merged.delta(module), want, rtol=0, atol=1e-6)
    assert merged.tensors[f"{P}conv.lora_A.weight"].shape == (5, 2, 3, 3)
    assert merged.meta["merge"]["weights"] == weights


def test_ties_keeps_the_elected_sign() -> None:
    a, b = _adapter("a", 1, 0), _adapter("b", 1, 1)
    # a: +2 everywhere, b: -1 everywhere on fc (rank-1 updates); the elected sign is +
    ta = dict(a.tensors)
    ta[f"{P}fc.lora_A.weight"], ta[f"{P}fc.lora_B.weight"] = torch.ones(1, 6), torch.full((5, 1), 2.0 / a.scaling)
    tb = dict(b.tensors)
    tb[f"{P}fc.lora_A.weight"], tb[f"{P}fc.lora_B.weight"] = torch.ones(1, 6), torch.full((5, 1), -1.0 / b.scaling)
    a = LoraAdapter(**{**a.__dict__, "tensors": ta})
    b = LoraAdapter(**{**b.__dict__, "tensors": tb})
    merged = arith.ties_adapters([a, b], density=1.0, rank=1)
    delta = merged.delta(f"{P}fc")
    torch.testing.assert_close(delta, torch.full((5, 6), 2.0, dtype=torch.float64), rtol=0, atol=1e-5)
    assert merged.meta["merge"]["svd_relative_error"] < 1e-6  # a rank-1 result: exact at rank 1
    # trimming: with density 0.2 only the top 20 % of each update survive, the rest is 0
    c = _adapter("c", 2, 3)
    d = _adapter("d", 2, 4)
    full = arith.ties_delta([c.delta(f"{P}fc"), d.delta(f"{P}fc")], [1.0, 1.0], 0.2)
    assert int((full != 0).sum()) <= 2 * 6  # at most ceil(0.2 * 30) = 6 entries from each
    ties = arith.ties_adapters([c, d], density=0.2)
    assert ties.config["r"] == 2 and 0.0 <= ties.meta["merge"]["svd_relative_error"] < 1.0


def test_adapter_incompatibility_errors() -> None:
    a = _adapter("runs/a/adapters/ft", 2, 0)
    with pytest.raises(CheckpointError, match="different base weights"):
        arith.linear_adapters([a, _adapter("runs/b/adapters/ft", 2, 1, sha="other")])
    with pytest.raises(CheckpointError, match="targets differ"):
        arith.linear_adapters([a, _adapter("runs/c", 2, 1, conv=True)])
    dora = LoraAdapter(**{**_adapter("runs/d", 2, 1).__dict__, "method": "dora"})
    with pytest.raises(ConfigError, match="'dora'"):
        arith.linear_adapters([a, dora])
    with pytest.raises(ConfigError, match="at least two"):
        arith.ties_adapters([a])
    with pytest.raises(ConfigError, match="density"):
        arith.ties_adapters([a, _adapter("b", 2, 1)], density=0.0)


# -- the verb ------------------------------------------------------------------------------------
def _one_stage_pipeline(path: Path, data: Path, runs: Path) -> Path:
    path.write_text(
        TINY_SERIES_PIPELINE.format(name="tiny", run_dir=runs, data=data)
        + """stages:
  - name: finetune
    max_epochs: 1
    limit_train_batches: 3
    limit_val_batches: 2
    optim: {lr: 3.0e-3}
"""
    )
    return path


def test_merge_soup_cli_and_test_of_the_merged_run(tmp_path: Path, series_csv: Path) -> None:
    from sciadapt.cli import main
    from sciadapt.runs import Run, load_weights

    pipe = _one_stage_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    for seed in (0, 1):
        assert main(["fit", str(pipe), f"seed={seed}", f"run_dir={tmp_path / f'runs{seed}'}"]) == 0
    (r0,) = (tmp_path / "runs0").glob("tiny/*")
    (r1,) = (tmp_path / "runs1").glob("tiny/*")
    out = tmp_path / "soup"
    assert main(["merge", "soup", str(r0), str(r1), "--out", str(out)]) == 0
    rec = json.loads((out / "merge.json").read_text())
    assert rec["method"] == "soup" and [i["run"] for i in rec["inputs"]] == [str(r0), str(r1)]
    assert set(rec["scores"]) == {f"{r0}:finetune", f"{r1}:finetune"} and "mse" in rec["merged"]["test"]
    a, b = (load_weights(Run.open(r).final_ckpt("finetune")) for r in (r0, r1))
    merged = load_weights(out / "checkpoints" / "finetune" / "final.ckpt")
    for k, v in merged.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (a[k] + b[k]) / 2)
    assert main(["test", "--run", str(out)]) == 0

    # bad input: one clear line, exit 2, nothing written
    bad = tmp_path / "bad"
    assert main(["merge", "soup", str(r0), "--out", str(bad)]) == 2  # a soup of one model
    assert main(["merge", "wise_ft", str(r1), "--anchor", str(r0), "--alpha", "0,1.5", "--out", str(bad)]) == 2
    assert main(["merge", "wise_ft", str(r1), "--out", str(bad)]) == 2  # no anchor
    assert main(["merge", "model_stock", str(r0), str(r1), "--out", str(bad)]) == 2
    assert main(["merge", "soup", str(r0), str(r1), "--out", str(out)]) == 2  # the output exists
    assert not bad.exists() and not list(tmp_path.glob(".bad.*"))
