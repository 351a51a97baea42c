"""Weight-space arithmetic on state dicts and LoRA adapters (pure torch: no runs, no files).

State dicts (``dict[str, Tensor]``) that share keys, shapes and dtypes are averaged tensor by
tensor: floating-point tensors are combined (in float64, cast back), integer and bool buffers
(BatchNorm's ``num_batches_tracked``) are taken from one input, as no average of them means anything.

- :func:`uniform_soup`: the mean (Wortsman et al. 2022, "Model soups").
- :func:`greedy_soup`: the model-soups recipe: candidates in order of their own held-out score, each
  added only when the soup's held-out score does not get worse.
- :func:`interpolate`: ``(1 - alpha) a + alpha b`` (WiSE-FT, Wortsman et al. 2022, with ``a`` the
  zero-shot/pretrained weights and ``b`` the fine-tuned ones).
- :func:`model_stock`: Model Stock (Jang et al. 2024): per tensor, the angle between the fine-tuned
  task vectors sets how far to move from the pretrained anchor towards their mean.
- :func:`linear_adapters`, :func:`ties_adapters`: weighted sums of LoRA adapters on one base, exact
  (a LoRA of summed rank) or TIES-merged (Yadav et al. 2023) and factored back by truncated SVD.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from sciadapt.errors import CheckpointError, ConfigError

State = dict[str, torch.Tensor]

#: how many differing tensors an incompatibility message names before it counts the rest
SHOWN = 4


def _listed(items: Sequence[str], what: str = "more") -> str:
    head = "; ".join(items[:SHOWN])
    return head + (f"; and {len(items) - SHOWN} {what}" if len(items) > SHOWN else "")


def check_compatible(states: Sequence[State], names: Sequence[str]) -> None:
    """Raise unless every state dict has the same keys, shapes and dtypes as the first.

    Args:
        states: The state dicts.
        names: One name per state dict (a run path), used in the message.

    Raises:
        CheckpointError: Naming the differing tensors and the inputs they differ in (a few, then a count).
    """
    if len(states) != len(names):
        raise ValueError("check_compatible: one name per state dict")
    ref, ref_name = states[0], names[0]
    problems: list[str] = []
    for state, name in zip(states[1:], names[1:], strict=True):
        missing = [k for k in ref if k not in state]
        extra = [k for k in state if k not in ref]
        if missing:
            problems.append(f"{name} lacks {len(missing)} tensor(s) of {ref_name}, e.g. {', '.join(missing[:3])}")
        if extra:
            problems.append(f"{name} has {len(extra)} tensor(s) {ref_name} lacks, e.g. {', '.join(extra[:3])}")
        for k, t in ref.items():
            other = state.get(k)
            if other is None:
                continue
            if tuple(other.shape) != tuple(t.shape):
                problems.append(f"{k}: shape {tuple(t.shape)} in {ref_name} vs {tuple(other.shape)} in {name}")
            elif other.dtype != t.dtype:
                problems.append(f"{k}: dtype {t.dtype} in {ref_name} vs {other.dtype} in {name}")
    if problems:
        raise CheckpointError(
            f"the weights to merge differ ({_listed(problems, 'more differences')}): merge only runs of the same "
            "architecture (same backbone, head, adapters and data geometry)"
        )


def _float(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _cast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(dtype=like.dtype).contiguous()


def uniform_soup(states: Sequence[State]) -> State:
    """The mean of state dicts (integer and bool buffers from the first).

    Raises:
        ConfigError: Fewer than two state dicts (a soup of one model is that model).
    """
    if len(states) < 2:
        raise ConfigError(f"a soup needs at least two models, got {len(states)}: give two or more runs")
    out: State = {}
    for k, t in states[0].items():
        if not _float(t):
            out[k] = t.clone()
            continue
        acc = torch.zeros(t.shape, dtype=torch.float64)
        for s in states:
            acc += s[k].detach().to("cpu", torch.float64)
        out[k] = _cast(acc / len(states), t)
    return out


def check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
        raise ConfigError(f"alpha={alpha} is outside [0, 1]: give interpolation weights between 0 and 1")


def interpolate(a: State, b: State, alpha: float) -> State:
    """``(1 - alpha) a + alpha b`` tensor by tensor (WiSE-FT); alpha 0 gives ``a`` and 1 gives ``b``
    exactly. Integer and bool buffers come from the input with the larger weight.

    Raises:
        ConfigError: ``alpha`` outside [0, 1].
    """
    check_alpha(alpha)
    out: State = {}
    for k, ta in a.items():
        tb = b[k]
        if alpha == 0.0 or alpha == 1.0 or not _float(ta):
            out[k] = (tb if alpha > 0.5 else ta).detach().clone()
            continue
        mixed = (1.0 - alpha) * ta.detach().to("cpu", torch.float64) + alpha * tb.detach().to("cpu", torch.float64)
        out[k] = _cast(mixed, ta)
    return out


def model_stock_ratio(anchor: torch.Tensor, finetuned: Sequence[torch.Tensor]) -> tuple[float, float]:
    """``(cos theta, t)`` of one tensor: the mean pairwise cosine between the task vectors
    ``w_i - w_0`` and the ratio ``t = k cos / ((k - 1) cos + 1)`` (Jang et al. 2024, eq. 2 and its
    k-model form). A negative mean cosine is clipped to 0 (then ``t = 0``: the anchor), as the ratio
    has a pole at ``cos = -1 / (k - 1)`` the paper does not consider; task vectors that are all zero
    give ``cos = 1`` (nothing moved, any ``t`` gives the anchor)."""
    k = len(finetuned)
    w0 = anchor.detach().to("cpu", torch.float64).flatten()
    vs = [w.detach().to("cpu", torch.float64).flatten() - w0 for w in finetuned]
    norms = [float(v.norm()) for v in vs]
    if all(n == 0.0 for n in norms):
        return 1.0, 1.0
    cosines = []
    for i in range(k):
        for j in range(i + 1, k):
            den = norms[i] * norms[j]
            cosines.append(float(vs[i] @ vs[j]) / den if den > 0 else 0.0)
    cos = min(1.0, max(0.0, sum(cosines) / len(cosines)))
    return cos, k * cos / ((k - 1) * cos + 1.0)


def model_stock(anchor: State, finetuned: Sequence[State]) -> State:
    """Model Stock: per tensor, ``t * mean(w_i) + (1 - t) * w_0`` with ``t`` from
    :func:`model_stock_ratio` (identical fine-tuned models: ``t = 1``, their weights; orthogonal
    task vectors: ``t = 0``, the anchor).

    Raises:
        ConfigError: Fewer than two fine-tuned models.
    """
    if len(finetuned) < 2:
        raise ConfigError(
            f"model_stock needs at least two fine-tuned models and the pretrained anchor, got {len(finetuned)} "
            "fine-tuned: give two or more runs and --anchor"
        )
    out: State = {}
    for k, t0 in anchor.items():
        if not _float(t0):
            out[k] = finetuned[0][k].clone()
            continue
        ws = [s[k] for s in finetuned]
        _, t = model_stock_ratio(t0, ws)
        mean = torch.stack([w.detach().to("cpu", torch.float64) for w in ws]).mean(0)
        out[k] = _cast(t * mean + (1.0 - t) * t0.detach().to("cpu", torch.float64), t0)
    return out


def greedy_soup(
    candidates: Sequence[tuple[str, State]], score: Callable[[State], float], higher_is_better: bool
) -> tuple[State, list[str], list[dict[str, Any]]]:
    """The greedy soup of the model-soups paper.

    Every candidate is scored alone; from the best, the next best is added to the soup (a uniform
    average of the kept models) only when the soup's score does not get worse.

    Args:
        candidates: ``(name, state dict)`` pairs.
        score: The held-out score of a state dict (e.g. the validation loss).
        higher_is_better: Whether a higher score is better.

    Returns:
        The soup, the names kept (in the order added) and the history: one entry per candidate with
        its own score, the score of the soup tried with it and whether it was kept.

    Raises:
        ConfigError: Fewer than two candidates.
    """
    if len(candidates) < 2:
        raise ConfigError(f"greedy_soup needs at least two models, got {len(candidates)}: give two or more runs")
    alone = [(name, state, float(score(state))) for name, state in candidates]
    alone.sort(key=lambda c: c[2], reverse=higher_is_better)
    name0, state0, best = alone[0]
    kept_names, kept = [name0], [state0]
    soup = {k: v.clone() for k, v in state0.items()}
    history: list[dict[str, Any]] = [{"name": name0, "score": best, "soup_score": best, "kept": True}]
    for name, state, own in alone[1:]:
        trial = uniform_soup([*kept, state])
        s = float(score(trial))
        keep = s >= best if higher_is_better else s <= best
        history.append({"name": name, "score": own, "soup_score": s, "kept": keep})
        if keep:
            kept_names.append(name)
            kept.append(state)
            soup, best = trial, s
    return soup, kept_names, history


# -- LoRA adapters ----------------------------------------------------------------------------
_A, _B = ".lora_A.weight", ".lora_B.weight"


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter in Hugging Face PEFT's on-disk key layout (``base_model.model.<module>.lora_A.weight``).

    Attributes:
        name: Where it came from (a directory), named in messages.
        method: The PEFT method (``lora``).
        config: The method's config (``r``, ``alpha``, ``rslora`` ...).
        targets: The targeted modules.
        fingerprint: The base-weights fingerprint (``sciadapt.peft.io.fingerprint``), or None.
        tensors: The adapter's tensors.
        meta: Other entries of sciadapt's description (``summaries``), and ``merge`` on a merged adapter.
    """

    name: str
    method: str
    config: dict[str, Any]
    targets: list[str]
    fingerprint: dict[str, Any] | None
    tensors: State
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def scaling(self) -> float:
        r, alpha = int(self.config["r"]), float(self.config["alpha"])
        return alpha / (math.sqrt(r) if self.config.get("rslora") else r)

    def modules(self) -> list[str]:
        """The modules holding a LoRA pair (their key prefix)."""
        return sorted(k[: -len(_A)] for k in self.tensors if k.endswith(_A))

    def delta(self, module: str) -> torch.Tensor:
        """``s * B A`` of a module, flattened to ``(out, in * kernel)`` in float64."""
        a, b = self._pair(module)
        return self.scaling * (_flat(b) @ _flat(a))

    def _pair(self, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tensors[module + _A], self.tensors[module + _B]


def _flat(w: torch.Tensor) -> torch.Tensor:
    return w.detach().to("cpu", torch.float64).reshape(w.shape[0], -1)


def _unit_scaling(config: dict[str, Any], r: int) -> dict[str, Any]:
    """A LoRA config of rank ``r`` whose scaling is 1 (the merged factors carry every scale)."""
    return {**config, "r": r, "alpha": math.sqrt(r) if config.get("rslora") else float(r)}


def check_adapters(adapters: Sequence[LoraAdapter]) -> None:
    """Raise unless the adapters are plain LoRA adapters of one method, on the same targets of the same base.

    Raises:
        ConfigError: Fewer than two adapters, another method than LoRA (DoRA's magnitude does not add).
        CheckpointError: Different methods, targets, modules or base fingerprints, naming the adapters.
    """
    if len(adapters) < 2:
        raise ConfigError(f"adapter arithmetic needs at least two adapters, got {len(adapters)}")
    first = adapters[0]
    problems: list[str] = []
    for ad in adapters:
        if ad.method != "lora":
            raise ConfigError(
                f"adapter {ad.name} is {ad.method!r}: adapter arithmetic adds LoRA updates B A, which is exact only "
                "for plain LoRA (DoRA rescales each column by a learned magnitude); merge the full weights instead"
            )
        if ad.meta.get("slices"):
            raise ConfigError(f"adapter {ad.name} adapts slices of fused layers, which adapter arithmetic does not yet")
    for ad in adapters[1:]:
        if ad.method != first.method:
            problems.append(f"method {first.method!r} in {first.name} vs {ad.method!r} in {ad.name}")
        if sorted(ad.targets) != sorted(first.targets):
            diff = sorted(set(ad.targets) ^ set(first.targets))
            problems.append(f"targets differ between {first.name} and {ad.name}: {', '.join(diff[:6])}")
        fa = (first.fingerprint or {}).get("sha256")
        fb = (ad.fingerprint or {}).get("sha256")
        if fa is None or fb is None:
            problems.append(f"{first.name if fa is None else ad.name} has no base fingerprint (not saved by sciadapt)")
        elif fa != fb:
            problems.append(f"{first.name} and {ad.name} were trained on different base weights (fingerprints differ)")
        mine, theirs = set(first.tensors), set(ad.tensors)
        if mine != theirs:
            diff = sorted(mine ^ theirs)
            problems.append(f"tensors differ between {first.name} and {ad.name}: {', '.join(diff[:4])}")
            continue
        for k, t in first.tensors.items():
            if k.endswith((_A, _B)) or tuple(t.shape) == tuple(ad.tensors[k].shape):
                continue
            problems.append(f"{k}: shape {tuple(t.shape)} in {first.name} vs {tuple(ad.tensors[k].shape)} in {ad.name}")
    if problems:
        raise CheckpointError(
            f"these adapters cannot be merged ({_listed(problems, 'more differences')}): merge adapters of one "
            "method, on the same targets of the same base model"
        )


def _weights(adapters: Sequence[LoraAdapter], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0 / len(adapters)] * len(adapters)
    if len(weights) != len(adapters):
        raise ConfigError(f"{len(weights)} weights for {len(adapters)} adapters: give one weight per adapter")
    return [float(w) for w in weights]


def _others(adapters: Sequence[LoraAdapter]) -> tuple[State, list[str]]:
    """The adapter files' non-LoRA tensors (BatchNorm statistics) from the first, and the names of
    those that differ between the adapters."""
    first = adapters[0]
    other = {k: v.clone() for k, v in first.tensors.items() if not k.endswith((_A, _B))}
    differ = [k for k in other if any(not torch.equal(other[k], ad.tensors[k]) for ad in adapters[1:])]
    return other, differ


def linear_adapters(adapters: Sequence[LoraAdapter], weights: Sequence[float] | None = None) -> LoraAdapter:
    """``sum_i w_i dW_i`` exactly, as one LoRA of rank ``sum_i r_i``: the A's stacked, the B's scaled
    by ``w_i * s_i`` side by side, so ``B_new A_new = sum_i w_i s_i B_i A_i`` (scaling 1).

    Args:
        adapters: LoRA adapters of one base (:func:`check_adapters`).
        weights: One weight per adapter (default: the mean, ``1 / n`` each).

    Returns:
        The merged adapter; its ``meta["merge"]`` records the method and weights, and the non-LoRA
        tensors (BatchNorm statistics) taken from the first adapter because they differ.
    """
    check_adapters(adapters)
    ws = _weights(adapters, weights)
    rank = sum(int(ad.config["r"]) for ad in adapters)
    tensors, differ = _others(adapters)
    for module in adapters[0].modules():
        pairs = [ad._pair(module) for ad in adapters]
        a_new = torch.cat([a.detach().to("cpu", torch.float64) for a, _ in pairs], dim=0)
        b_new = torch.cat(
            [
                w * ad.scaling * b.detach().to("cpu", torch.float64)
                for w, ad, (_, b) in zip(ws, adapters, pairs, strict=True)
            ],
            dim=1,
        )
        tensors[module + _A] = _cast(a_new, pairs[0][0])
        tensors[module + _B] = _cast(b_new, pairs[0][1])
    first = adapters[0]
    merge = {"method": "linear", "weights": ws, "inputs": [ad.name for ad in adapters], "from_first": differ}
    return replace(
        first, config=_unit_scaling(first.config, rank), tensors=tensors, meta={**first.meta, "merge": merge}
    )


def _trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """``delta`` with all but its top-``density`` fraction of magnitudes set to 0."""
    flat = delta.flatten()
    keep = max(1, math.ceil(density * flat.numel()))
    out = torch.zeros_like(flat)
    idx = flat.abs().topk(keep).indices
    out[idx] = flat[idx]
    return out.reshape(delta.shape)


def ties_delta(deltas: Sequence[torch.Tensor], weights: Sequence[float], density: float) -> torch.Tensor:
    """TIES-merging of dense updates: trim each to its top-``density`` magnitudes, elect each entry's
    sign as the sign of the weighted sum of the trimmed updates (the side with more total mass),
    then average the weighted entries that agree with it (over the weights of those that agree)."""
    trimmed = torch.stack([w * _trim(d, density) for w, d in zip(weights, deltas, strict=True)])  # (n, out, in)
    sign = torch.sign(trimmed.sum(0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    w = torch.tensor(weights, dtype=trimmed.dtype).abs().reshape(-1, *([1] * (trimmed.dim() - 1)))
    mass = (agree * w).sum(0)
    total = (trimmed * agree).sum(0)
    return torch.where(mass > 0, total / mass.clamp_min(1e-300), torch.zeros_like(total))


def ties_adapters(
    adapters: Sequence[LoraAdapter],
    weights: Sequence[float] | None = None,
    density: float = 0.2,
    rank: int | None = None,
) -> LoraAdapter:
    """TIES-merging of LoRA adapters (Yadav et al. 2023) on their dense updates ``s B A``, factored
    back into a LoRA of ``rank`` (default: the largest input rank) by truncated SVD.

    Args:
        adapters: LoRA adapters of one base (:func:`check_adapters`).
        weights: One weight per adapter (default 1 each: the paper's disjoint mean).
        density: The fraction of each update's entries kept (by magnitude), in (0, 1].
        rank: The merged adapter's rank.

    Returns:
        The merged adapter; ``meta["merge"]`` holds the truncation's relative error
        ``||D - B A||_F / ||D||_F`` over all modules (``svd_relative_error``) and per module.

    Raises:
        ConfigError: ``density`` outside (0, 1], or a rank above what a module allows.
    """
    check_adapters(adapters)
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"density={density} is outside (0, 1]: give the fraction of each update to keep")
    ws = [1.0] * len(adapters) if weights is None else _weights(adapters, weights)
    r = max(int(ad.config["r"]) for ad in adapters) if rank is None else int(rank)
    if r < 1:
        raise ConfigError(f"rank={r}: give a rank of at least 1")
    tensors, differ = _others(adapters)
    errors: dict[str, float] = {}
    num = den = 0.0
    for module in adapters[0].modules():
        a0, b0 = adapters[0]._pair(module)
        merged = ties_delta([ad.delta(module) for ad in adapters], ws, density)  # (out, in * kernel)
        if r > min(merged.shape):
            raise ConfigError(f"rank={r} exceeds the rank {module} allows ({min(merged.shape)}): lower the rank")
        u, s, vh = torch.linalg.svd(merged, full_matrices=False)
        root = s[:r].sqrt()
        b_new = u[:, :r] * root  # (out, r)
        a_new = root[:, None] * vh[:r]  # (r, in * kernel)
        resid = float((merged - b_new @ a_new).norm() ** 2)
        total = float(merged.norm() ** 2)
        num, den = num + resid, den + total
        errors[module.removeprefix("base_model.model.")] = math.sqrt(resid / total) if total > 0 else 0.0
        tensors[module + _A] = _cast(a_new.reshape(r, *a0.shape[1:]), a0)
        tensors[module + _B] = _cast(b_new.reshape(b0.shape[0], r, *b0.shape[2:]), b0)
    first = adapters[0]
    merge = {
        "method": "ties",
        "weights": ws,
        "density": density,
        "rank": r,
        "inputs": [ad.name for ad in adapters],
        "svd_relative_error": math.sqrt(num / den) if den > 0 else 0.0,
        "svd_relative_error_per_module": errors,
        "from_first": differ,
    }
    return replace(first, config=_unit_scaling(first.config, r), tensors=tensors, meta={**first.meta, "merge": merge})


def combine(
    method: str,
    named: Sequence[tuple[str, State]],
    anchor: State | None = None,
    alpha: float = 0.5,
    score: Callable[[State], float] | None = None,
) -> tuple[State, dict[str, Any]]:
    """One merge method over named state dicts, as a pipeline's ``merge:`` stage runs it.

    Args:
        method: ``soup``, ``greedy_soup`` (needs ``score``, lower is better), ``model_stock`` (needs
            ``anchor``) or ``wise_ft`` (one state dict and ``anchor``: ``(1 - alpha) anchor + alpha it``).
        named: ``(name, state dict)`` of the models merged.
        anchor: The pretrained/zero-shot weights of ``wise_ft`` and ``model_stock``.
        alpha: WiSE-FT's interpolation weight.
        score: The held-out score greedy soup chooses with (lower is better).

    Returns:
        The merged state dict and a record of the merge (``kept`` and ``history`` of greedy soup,
        Model Stock's per-tensor ``ratios``).

    Raises:
        ConfigError: What the method needs is missing.
        CheckpointError: The state dicts differ in keys, shapes or dtypes.
    """
    names = [n for n, _ in named]
    states = [s for _, s in named]
    anchors = [] if anchor is None else [anchor]
    check_compatible([*states, *anchors], [*names, *(["anchor"] * len(anchors))])
    record: dict[str, Any] = {"method": method, "stages": names}
    if method == "soup":
        return uniform_soup(states), record
    if method == "greedy_soup":
        if score is None:
            raise ConfigError("greedy_soup needs a held-out score to choose with")
        soup, kept, history = greedy_soup(list(named), score, higher_is_better=False)
        return soup, {**record, "kept": kept, "history": history}
    if anchor is None:
        raise ConfigError(f"{method} needs the pretrained/zero-shot anchor weights")
    if method == "model_stock":
        merged = model_stock(anchor, states)
        ratios = {k: model_stock_ratio(anchor[k], [s[k] for s in states]) for k in merged if _float(merged[k])}
        return merged, {**record, "ratios": {k: {"cos": c, "t": t} for k, (c, t) in ratios.items()}}
    if method == "wise_ft":
        if len(states) != 1:
            raise ConfigError(f"wise_ft interpolates one model with the anchor, got {len(states)}")
        return interpolate(anchor, states[0], alpha), {**record, "alpha": alpha}
    raise ConfigError(f"unknown merge method {method!r}: soup, greedy_soup, model_stock or wise_ft")
