"""Training-step cost of sciadapt's PEFT methods on CPU, beside Hugging Face PEFT measured in the same run.

    python benchmarks/peft_overhead.py                         # both models, 5 pairs, 5 timed steps
    python benchmarks/peft_overhead.py --quick                 # smoke check: 2-block models, 1 pair
    python benchmarks/peft_overhead.py --models vit --pairs 7 --steps 6 --out results.json

Models (random init, no download; the geometry is what matters for cost):

* ``vit``: ``timm.create_model("vit_base_patch16_224", num_classes=10)``, batch 4 of 3 x 224 x 224
  (197 tokens).
* ``prithvi``: a ViT encoder of Prithvi-EO v1 geometry written below (embed 768, depth 12, 12 heads,
  MLP ratio 4, timm ``Block`` so names are ``blocks.N.attn.qkv``, ``blocks.N.mlp.fc1``..., Conv3d
  patch embed with kernel (1, 16, 16)) on B x 6 x 3 x 224 x 224 -> 3 * 196 patch tokens + cls, batch 1,
  with a mean-pool + Linear classification ``head`` so there is a loss to train.

A step is forward + cross-entropy + backward + AdamW step over the trainable parameters (the
``head`` always trains). Each configuration runs in a fresh subprocess (the script re-invokes
itself with ``--one <json>`` and reads one JSON line back) because ``ru_maxrss`` is a per-process
high-water mark. Peak memory is ``ru_maxrss`` after the steps minus the RSS right after the base model
is built, so it counts the adapters, gradients, optimiser state, activations and allocator slack;
``saved MB`` (first round and single runs) is the deterministic part: bytes of the tensors autograd saves for
backward in one forward (unique storages, parameters excluded). ``tracemalloc`` is
not used: it only sees allocations made through Python's allocator, and torch's CPU tensors are
allocated by its C++ allocator, so it would report almost nothing.

Pairs (ours vs Hugging Face PEFT ``target_modules=["qkv"]``, LoRA and DoRA at r=8, alpha=16) are
interleaved, each run a fresh subprocess, in rounds ``ours, theirs`` / ``theirs, ours`` (order flipped
every round so drift on a shared machine cancels); a ratio is the median over rounds of the per-round
ratio. HF PEFT cannot target q and v slices of a fused qkv Linear, so ``qkv[q,v]`` is reported unpaired.
The other single configurations (full fine-tuning, LoRA qkv[q,v], SSF, Houlsby) run once each,
spread over the rounds.

The merge check trains LoRA on ``qkv[q,v]`` for a few steps (lr 1e-3 so the adapter is not ~0),
compares ``core.merge``'d eval outputs with the unmerged ones and times merged vs base-model
inference in rounds ``base, merged, base`` (the two base timings give the A/A noise).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Spinning OpenMP workers crawl on a CPU shared with other jobs (see ltsf_nhits.py); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

THREADS = 2
RANK, ALPHA = 8, 16.0
LR = 1e-4

# config -> (label, paired with, our method or None for HF/full FT)
CONFIGS: dict[str, str] = {
    "full": "full fine-tuning",
    "lora_qv": "sciadapt LoRA r8 qkv[q,v]",
    "lora_qkv": "sciadapt LoRA r8 qkv",
    "hf_lora": "HF PEFT LoRA r8 qkv",
    "dora_qkv": "sciadapt DoRA r8 qkv",
    "hf_dora": "HF PEFT DoRA r8 qkv",
    "ssf": "sciadapt SSF (all Linear/LN/patch)",
    "houlsby": "sciadapt Houlsby b64 on mlp",
}
PAIRS = {"lora_qkv": "hf_lora", "dora_qkv": "hf_dora"}
SINGLES = ["full", "lora_qv", "ssf", "houlsby"]
NEEDS = {"ssf": "sciadapt.peft.ssf", "houlsby": "sciadapt.peft.adapters"}


# ---------------------------------------------------------------------------------------------
# models


class PatchEmbed3d(nn.Module):
    def __init__(self, in_chans: int, dim: int, tubelet: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, dim, (tubelet, patch, patch), stride=(tubelet, patch, patch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, T', H', W') -> (B, N, D)


class PrithviLike(nn.Module):
    """Prithvi-EO v1 encoder geometry (fine-tuning path, no masking) plus a classification head."""

    def __init__(self, depth: int = 12, dim: int = 768, heads: int = 12, in_chans: int = 6, frames: int = 3) -> None:
        from timm.models.vision_transformer import Block

        super().__init__()
        self.patch_embed = PatchEmbed3d(in_chans, dim, 1, 16)
        n = frames * (224 // 16) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # fixed sin-cos in Prithvi; only its shape matters here, so random and frozen
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, n + 1, dim), requires_grad=False)
        self.blocks = nn.Sequential(
            *[Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=nn.LayerNorm) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, N, D), N = T * 196
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 1:].mean(1))  # (B, 10)


def build(model: str, depth: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    if model == "vit":
        import timm

        m = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10, depth=depth)
        x = torch.randn(4, 3, 224, 224)
    elif model == "prithvi":
        m = PrithviLike(depth=depth)
        x = torch.randn(1, 6, 3, 224, 224)  # (B, C, T, H, W)
    else:
        raise SystemExit(f"unknown model {model!r}; use vit or prithvi")
    y = torch.randint(0, 10, (x.shape[0],))
    return m, x, y


# ---------------------------------------------------------------------------------------------
# one configuration (child process)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def apply_config(m: nn.Module, config: str) -> tuple[nn.Module, int, int]:
    """Attach the configuration's adapters; returns (module to call, trainable, total)."""
    if config == "full":
        n_train = sum(p.numel() for p in m.parameters() if p.requires_grad)
        return m, n_train, sum(p.numel() for p in m.parameters())
    if config.startswith("hf_"):
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["qkv"], use_dora=config == "hf_dora"
        )
        pm = get_peft_model(m, cfg)
        m.head.requires_grad_(True)  # same as ours' also=["head"]
        params = list(pm.parameters())
        return pm, sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    # The builders registered in PEFT_METHODS, imported from their files: PEFT_METHODS.build() first
    # imports every built-in component (lightning, datamodules, ...), ~4.5 s per subprocess here.
    from sciadapt.peft import core, lora

    if config == "lora_qv":
        method, targets = lora.build_lora(r=RANK, alpha=ALPHA), ["blocks.*.attn.qkv[q,v]"]
    elif config == "lora_qkv":
        method, targets = lora.build_lora(r=RANK, alpha=ALPHA), ["blocks.*.attn.qkv"]
    elif config == "dora_qkv":
        method, targets = lora.build_dora(r=RANK, alpha=ALPHA), ["blocks.*.attn.qkv"]
    elif config == "ssf":
        from sciadapt.peft.ssf import build_ssf

        # the paper scales and shifts after every op: patch embed, every Linear and LayerNorm, final norm
        method, targets = build_ssf(), ["patch_embed.proj", "blocks.*", "norm"]
    elif config == "houlsby":
        from sciadapt.peft.adapters import build_houlsby

        method, targets = build_houlsby(bottleneck=64), ["blocks.*.mlp"]
    else:
        raise SystemExit(f"unknown config {config!r}")
    core.attach(m, method, "default", targets=targets)
    n_train, n_total = core.mark_trainable(m, "default", also=["head"])
    return m, n_train, n_total


def step_fn(fwd: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(fwd(x), y)
    loss.backward()
    opt.step()


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(nn.Module())
        self.blocks[0].attn = nn.Module()
        self.blocks[0].attn.qkv = nn.Linear(8, 24)
        self.blocks[0].mlp = nn.Sequential(nn.Linear(24, 8))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.blocks[0]
        return self.head(self.norm(b.mlp(b.attn.qkv(self.patch_embed.proj(x)))))


def warm_up(config: str) -> None:
    """The configuration once on a tiny model, so lazy imports (``peft`` imports transformers on first
    use) and torch's one-time allocations happen before the memory baseline and are not charged."""
    if config == "merge":
        config = "lora_qv"
    t = Tiny()
    fwd, _, _ = apply_config(t, config)
    opt = torch.optim.AdamW([p for p in fwd.parameters() if p.requires_grad], lr=LR)
    step_fn(fwd, opt, torch.randn(2, 8), torch.tensor([0, 1]))


def saved_mb(fwd: nn.Module, x: torch.Tensor) -> float:
    """MB of tensors autograd keeps for backward in one forward (unique storages, parameters excluded).

    Deterministic, unlike RSS on a shared machine: it is the activation memory a method adds.
    """
    params = {p.untyped_storage().data_ptr() for p in fwd.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fwd(x)
    del out
    return sum(seen.values()) / 2**20


def source_hash() -> str:
    """Short hash of sciadapt's PEFT sources, to catch the library changing during a long run."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((Path(__file__).resolve().parents[1] / "sciadapt" / "peft").glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:10]


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(THREADS)
    spec = {**spec, "src": source_hash()}
    warm_up(spec["config"])
    if spec["config"] == "merge":
        return merge_check(spec)
    m, x, y = build(spec["model"], spec["depth"])
    m.train()
    gc.collect()
    base_rss, base_max = rss_mb(), maxrss_mb()
    torch.manual_seed(1)
    fwd, n_train, n_total = apply_config(m, spec["config"])
    opt = torch.optim.AdamW([p for p in fwd.parameters() if p.requires_grad], lr=LR)
    times = []
    for i in range(spec["warmup"] + spec["steps"]):
        t0 = time.perf_counter()
        step_fn(fwd, opt, x, y)
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
    end_max = maxrss_mb()
    saved = saved_mb(fwd, x) if spec["round"] == 0 or spec["config"] in SINGLES else None
    return {
        **spec,
        "trainable": n_train,
        "total": n_total,
        "step_s": statistics.median(times),
        "step_times": times,
        "peak_mb": end_max - base_rss,
        "saved_mb": saved,
        "base_rss_mb": base_rss,
        "build_transient_mb": base_max - base_rss,  # >0: the build peaked above its final RSS
    }


def merge_check(spec: dict[str, Any]) -> dict[str, Any]:
    from sciadapt.peft import core

    m, x, y = build(spec["model"], spec["depth"])
    base = copy.deepcopy(m).eval()
    torch.manual_seed(1)
    fwd, _, _ = apply_config(m, "lora_qv")
    opt = torch.optim.AdamW([p for p in fwd.parameters() if p.requires_grad], lr=1e-3)
    m.train()
    for _ in range(3):
        step_fn(fwd, opt, x, y)
    m.eval()
    with torch.inference_mode():
        core.enable(m, False)
        no_adapter = m(x)
        core.enable(m, True)
        unmerged = m(x)
        core.merge(m)
        merged = m(x)
        base_t, merged_t, aa = [], [], []
        for _ in range(spec["rounds"]):
            t = []
            for mod in (base, m, base):
                t0 = time.perf_counter()
                mod(x)
                t.append(time.perf_counter() - t0)
            base_t.append((t[0] + t[2]) / 2)
            merged_t.append(t[1])
            aa.append(t[2] / t[0])
    return {
        **spec,
        "adapter_effect": (unmerged - no_adapter).abs().max().item(),
        "max_abs_diff": (merged - unmerged).abs().max().item(),
        "out_scale": unmerged.abs().max().item(),
        "base_infer_s": statistics.median(base_t),
        "merged_infer_s": statistics.median(merged_t),
        "time_ratio": statistics.median(mt / bt for mt, bt in zip(merged_t, base_t, strict=True)),
        "aa_ratio": statistics.median(aa),
    }


# ---------------------------------------------------------------------------------------------
# the driver (parent process)


def available(config: str) -> str | None:
    """None when the configuration can run, else why not."""
    mod = NEEDS.get(config)
    if mod is None:
        return None
    try:
        __import__(mod)
    except Exception as e:  # being written concurrently: skip, and say so
        return f"{mod} failed to import: {type(e).__name__}: {e}"
    return None


def spawn(spec: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--one", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{spec} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    what = spec["config"]
    if what == "merge":
        detail = f"diff {out['max_abs_diff']:.2e} time x{out['time_ratio']:.3f}"
    else:
        detail = f"step {out['step_s']:.3f}s peak {out['peak_mb']:.0f}MB"
    print(f"  [{spec['model']}] {what:9s} {detail}  ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    return out


def schedule(pairs: int, singles: list[str]) -> list[list[str]]:
    """Rounds of paired runs (order flipped each round), singles and the merge check spread over them."""
    rounds = []
    extra = [*singles, "merge"]
    for k in range(max(pairs, 1)):
        order = (
            ["lora_qkv", "hf_lora", "dora_qkv", "hf_dora"]
            if k % 2 == 0
            else ["hf_lora", "lora_qkv", "hf_dora", "dora_qkv"]
        )
        rounds.append(order if k < pairs else [])
    for i, name in enumerate(extra):
        rounds[i % len(rounds)].insert(0, name)
    return rounds


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarise(model: str, runs: list[dict[str, Any]], skipped: dict[str, str]) -> tuple[str, dict[str, Any]]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["config"], []).append(r)
    merge = by.pop("merge", [None])[0]
    step = {c: med([r["step_s"] for r in rs]) for c, rs in by.items()}
    peak = {c: med([r["peak_mb"] for r in rs]) for c, rs in by.items()}

    # per-round ratios: runs of the same round index k
    def per_round(a: str, b: str, key: str) -> list[float]:
        ra = {r["round"]: r[key] for r in by.get(a, [])}
        rb = {r["round"]: r[key] for r in by.get(b, [])}
        return [ra[k] / rb[k] for k in sorted(ra) if k in rb]

    ratios = {
        f"{a}/{b}:{key}": per_round(a, b, key)
        for a, b in [("lora_qkv", "hf_lora"), ("dora_qkv", "hf_dora"), ("dora_qkv", "lora_qkv")]
        for key in ("step_s", "peak_mb")
    }

    def rfmt(a: str, b: str) -> str:
        s, mm = ratios[f"{a}/{b}:step_s"], ratios[f"{a}/{b}:peak_mb"]
        if not s:
            return ""
        return f"{med(s):.3f} [{min(s):.2f}-{max(s):.2f}] / {med(mm):.3f}"

    hdr = f"{'configuration':36s} {'trainable':>10s} {'train %':>8s} {'step s':>7s} {'peak MB':>8s} {'saved MB':>8s} {'vs full':>8s}  {'vs HF PEFT: step [range] / peak':>32s} {'runs':>4s}"
    lines = [hdr, "-" * len(hdr)]
    for c, label in CONFIGS.items():
        if c in skipped:
            lines.append(f"{label:36s} skipped: {skipped[c]}")
            continue
        if c not in by:
            continue
        r0 = by[c][0]
        vs_full = step[c] / step["full"] if "full" in step else float("nan")
        sv = next((r["saved_mb"] for r in by[c] if r.get("saved_mb") is not None), float("nan"))
        paired = rfmt(c, PAIRS[c]) if c in PAIRS else ""
        lines.append(
            f"{label:36s} {r0['trainable']:>10,d} {100 * r0['trainable'] / r0['total']:>7.3f}% "
            f"{step[c]:>7.3f} {peak[c]:>8.0f} {sv:>8.0f} {vs_full:>7.3f}x  {paired:>32s} {len(by[c]):>4d}"
        )

    def saved(c: str) -> float:
        return next((r["saved_mb"] for r in by.get(c, []) if r.get("saved_mb") is not None), float("nan"))

    checks = []

    def check(name: str, ok: bool | None, detail: str) -> None:
        checks.append({"target": name, "pass": ok, "detail": detail})

    s = ratios["lora_qkv/hf_lora:step_s"]
    check(
        "our LoRA step time <= 1.0x HF PEFT LoRA",
        med(s) <= 1.0 if s else None,
        f"median ours/theirs {med(s):.3f} over {len(s)} pairs (range {min(s, default=0):.3f}-{max(s, default=0):.3f})",
    )
    s, mm = ratios["dora_qkv/lora_qkv:step_s"], ratios["dora_qkv/lora_qkv:peak_mb"]
    check(
        "our DoRA step time <= 1.05x our LoRA",
        med(s) <= 1.05 if s else None,
        f"median DoRA/LoRA {med(s):.3f} over {len(s)} rounds (range {min(s, default=0):.3f}-{max(s, default=0):.3f})",
    )
    check(
        "our DoRA peak memory <= 1.1x our LoRA",
        med(mm) <= 1.1 if mm else None,
        f"median DoRA/LoRA {med(mm):.3f} ({peak.get('dora_qkv', 0):.0f} vs {peak.get('lora_qkv', 0):.0f} MB); "
        f"saved-for-backward {saved('dora_qkv'):.0f} vs {saved('lora_qkv'):.0f} MB "
        f"(HF DoRA {saved('hf_dora'):.0f}, HF LoRA {saved('hf_lora'):.0f})",
    )
    if merge is not None:
        tol = 1e-4 * max(1.0, merge["out_scale"])
        ok = merge["max_abs_diff"] <= tol and merge["time_ratio"] <= 1.05
        check(
            "merged inference equal to base within noise",
            ok,
            f"max|merged-unmerged| {merge['max_abs_diff']:.2e} (tol {tol:.0e}; adapter effect "
            f"{merge['adapter_effect']:.2e}); merged/base time {merge['time_ratio']:.3f} "
            f"(base A/A {merge['aa_ratio']:.3f}, {merge['rounds']} rounds, limit 1.05)",
        )
    for c in checks:
        verdict = "n/a " if c["pass"] is None else ("PASS" if c["pass"] else "FAIL")
        lines.append(f"{verdict}  {c['target']}: {c['detail']}")
    hf_d = ratios["dora_qkv/hf_dora:step_s"]
    if hf_d:
        lines.append(
            f"info  our DoRA / HF PEFT DoRA: step {med(hf_d):.3f}, peak {med(ratios['dora_qkv/hf_dora:peak_mb']):.3f}"
        )
    versions = sorted({r["src"] for r in runs if "src" in r})
    if len(versions) > 1:
        lines.append(
            f"WARN  sciadapt/peft/*.py changed during this model's runs ({len(versions)} versions: {versions})"
        )
    transient = max((r["build_transient_mb"] for r in runs if "build_transient_mb" in r), default=0.0)
    lines.append(f"info  largest build transient above post-build RSS: {transient:.0f} MB (peak MB is a floor of that)")
    summary = {"step_s": step, "peak_mb": peak, "ratios": ratios, "merge": merge, "checks": checks, "skipped": skipped}
    return "\n".join(lines), summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vit,prithvi")
    ap.add_argument("--pairs", type=int, default=5, help="interleaved ours/HF rounds per model")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per run (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--merge-rounds", type=int, default=7, help="base/merged/base inference rounds")
    ap.add_argument("--quick", action="store_true", help="2-block models, 1 pair, 2 steps: checks it runs")
    ap.add_argument("--out", default=None, help="write all runs and summaries as JSON")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(json.loads(args.one))), flush=True)
        return
    depth, pairs, steps, warmup = 12, args.pairs, args.steps, args.warmup
    if args.quick:
        depth, pairs, steps, warmup = 2, 1, 2, 1
    skipped = {c: why for c in SINGLES if (why := available(c))}
    singles = [c for c in SINGLES if c not in skipped]
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "args": vars(args),
        "env": {
            "torch": torch.__version__,
            "threads": THREADS,
            "depth": depth,
            "cpus": os.cpu_count(),
            "git_head": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip(),
            "peft_src_start": source_hash(),
        },
        "models": {},
    }
    try:
        import peft
        import timm

        results["env"].update(peft=peft.__version__, timm=timm.__version__)
    except ImportError as e:
        raise SystemExit(f"this benchmark needs timm and peft: {e}") from None
    tables = []
    for model in args.models.split(","):
        print(f"{model}: {pairs} rounds, {warmup}+{steps} steps per run", file=sys.stderr, flush=True)
        runs = []
        for k, rnd in enumerate(schedule(pairs, singles)):
            for config in rnd:
                spec = {"model": model, "config": config, "depth": depth, "steps": steps, "warmup": warmup, "round": k}
                if config == "merge":
                    spec["rounds"] = 3 if args.quick else args.merge_rounds
                runs.append(spawn(spec))
        table, summary = summarise(model, runs, skipped)
        head = (
            f"== {model}: {'ViT-B/16 timm, batch 4 x 3x224x224' if model == 'vit' else 'Prithvi-EO v1 geometry, batch 1 x 6x3x224x224 (589 tokens)'}"
            f", depth {depth}, {THREADS} threads, {warmup}+{steps} steps/run, {pairs} pairs =="
        )
        tables.append(f"{head}\n{table}")
        print(f"\n{tables[-1]}\n", flush=True)
        results["models"][model] = {"runs": runs, "summary": summary}
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    results["env"]["peft_src_end"] = source_hash()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(
        f"total wall time {time.perf_counter() - t_start:.0f} s; git HEAD {results['env']['git_head']}, "
        f"sciadapt/peft sources {results['env']['peft_src_start']} -> {results['env']['peft_src_end']}",
        flush=True,
    )
    if args.quick:
        print("(--quick: 2-block models and too few steps; the numbers only show that it runs)")


if __name__ == "__main__":
    main()
