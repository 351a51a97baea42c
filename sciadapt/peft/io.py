"""Adapters on disk: save/load, the Hugging Face PEFT file layout, and base-model fingerprints.

An adapter directory holds ``adapter_config.json`` + ``adapter_model.safetensors``, as Hugging
Face PEFT writes them: for methods PEFT has (LoRA, DoRA, (IA)^3, LN tuning) the config is PEFT's
own and the tensor keys are PEFT's (``base_model.model.<module>.lora_A.weight``), so ``peft``
loads the directory; sciadapt's description (method, config, targets, slices and a fingerprint
of the base weights the adapter was trained on) rides in the safetensors header, which PEFT
ignores. Loading refuses an adapter whose fingerprint does not match the model's base weights.

The public calls are re-exported by :mod:`sciadapt.peft.core` (``core.save_adapter``,
``core.load_adapter``), where user code has always found them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sciadapt.errors import CheckpointError, ConfigError
from sciadapt.peft.core import (
    HF_PREFIX,
    PeftLayer,
    adapter_param_names,
    adapters,
    attach,
    logical_modules,
    peft_layers,
)
from sciadapt.registry import PEFT_METHODS, suggest


def fingerprint(model: nn.Module, targets: list[str]) -> dict[str, Any]:
    """Names, shapes and a checksum of the targeted base weights an adapter was trained on."""
    tensors: dict[str, list[int]] = {}
    digest = hashlib.sha256()
    for name in sorted(targets):
        for pname, p in _base_params(logical_modules(model)[name]):
            key = f"{name}.{pname}"
            tensors[key] = list(p.shape)
            digest.update(key.encode())
            digest.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return {"tensors": tensors, "sha256": digest.hexdigest()}


def _base_params(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The base tensors under a (possibly wrapped) module, named without ``.base_layer``,
    excluding every adapter's own tensors — what an adapter's fingerprint covers."""
    adapter_owned: set[int] = set()
    for m in module.modules():
        if isinstance(m, PeftLayer):
            for pname, p in m.named_parameters():
                if not pname.startswith("base_layer."):
                    adapter_owned.add(id(p))
    out = []
    for pname, p in module.named_parameters():
        if id(p) not in adapter_owned:
            out.append((pname.replace("base_layer.", ""), p))
    return sorted(out, key=lambda kv: kv[0])


def _summaries(model: nn.Module, targets: list[str]) -> dict[str, list[float]]:
    """Per-tensor summaries (mean, std, max |w|, 16 strided values) for a tolerant comparison.

    A merge/unmerge round trip changes the last bits of the base weights; the exact checksum
    then differs although the base is the same, so values are compared with a tolerance.
    """
    out = {}
    for name in sorted(targets):
        for pname, p in _base_params(logical_modules(model)[name]):
            w = p.detach().to("cpu", torch.float64).flatten()
            idx = torch.linspace(0, w.numel() - 1, min(16, w.numel())).long()
            stats = [w.mean().item(), w.std().item() if w.numel() > 1 else 0.0, w.abs().max().item()]
            out[f"{name}.{pname}"] = stats + w[idx].tolist()
    return out


def _same(a: list[float], b: list[float], tol: float = 1e-4) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol * (1 + abs(y)) for x, y in zip(a, b, strict=True))


def _hf_key(model_key: str, adapter: str) -> str:
    """``fc1.lora_A.default.weight`` -> ``base_model.model.fc1.lora_A.weight`` (PEFT's on-disk key)."""
    parts = model_key.split(".")
    idx = len(parts) - 1 - parts[::-1].index(adapter)
    del parts[idx]
    key = ".".join(parts)
    if key.endswith("lora_magnitude_vector.weight"):
        key = key[: -len(".weight")]  # PEFT stores the DoRA magnitude without ".weight"
    return HF_PREFIX + key


def adapter_state_dict(model: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """One adapter's tensors under PEFT's on-disk keys, plus BatchNorm statistics if they train."""
    params = dict(model.named_parameters())
    sd = {_hf_key(n, adapter): params[n].detach().cpu().contiguous() for n in adapter_param_names(model, adapter)}
    # BatchNorm layers that train, or that an adapter of this name wraps, keep running statistics
    # the adapter depends on
    wrapped_bn = {
        f"{n}.base_layer"
        for n, m in peft_layers(model).items()
        if adapter in m.adapters and isinstance(m.base_layer, nn.modules.batchnorm._BatchNorm)
    }
    for mname, mod in model.named_modules():
        if not isinstance(mod, nn.modules.batchnorm._BatchNorm):
            continue
        if mname in wrapped_bn:
            for bname, buf in mod.named_buffers(recurse=False):
                if buf is not None:
                    sd[f"{HF_PREFIX}{mname}.{bname}"] = buf.detach().cpu().contiguous()
            continue
        if mod.weight is not None and mod.weight.requires_grad:
            for bname, buf in mod.named_buffers(recurse=False):
                if buf is not None:
                    sd[f"{HF_PREFIX}{mname}.{bname}"] = buf.detach().cpu().contiguous()
            for pname, p in mod.named_parameters(recurse=False):
                sd[f"{HF_PREFIX}{mname}.{pname}"] = p.detach().cpu().contiguous()
    return sd


def save_adapter(model: nn.Module, directory: str | Path, adapter: str = "default") -> Path:
    """``adapter_config.json`` + ``adapter_model.safetensors``, written atomically."""
    from safetensors.torch import save

    from sciadapt.runs import atomic_write_bytes, atomic_write_text

    info = adapters(model).get(adapter)
    if info is None:
        raise ConfigError(f"no adapter named {adapter!r} to save.{suggest(adapter, list(adapters(model)))}")
    if any(adapter in layer.merged for layer in peft_layers(model).values()):
        # the fingerprint would describe the merged weights, not the base the adapter belongs on
        raise ConfigError(f"adapter {adapter!r} is merged; unmerge(model, {adapter!r}) before saving it")
    method = PEFT_METHODS.build(info["method"], **info["config"])
    slices = info.get("slices")
    # PEFT has no per-slice targets: a sliced adapter is sciadapt-only (peft_type null below)
    hf = None if slices else method.hf_config(info["targets"])
    ours = {
        "method": info["method"],
        "config": info["config"],
        "targets": info["targets"],
        "fingerprint": fingerprint(model, info["targets"]),
        "summaries": _summaries(model, info["targets"]),
    }
    if slices:
        ours["slices"] = slices
    # PEFT's own adapter_config.json where PEFT has the method (so `peft` loads it without
    # warnings); sciadapt's description rides in the safetensors header, which PEFT ignores.
    cfg = hf if hf is not None else {"peft_type": None, "sciadapt_method": info["method"], **info["config"]}
    if slices:
        cfg["sciadapt_slices"] = slices
    d = Path(directory)
    blob = save(adapter_state_dict(model, adapter), metadata={"sciadapt": json.dumps(ours)})
    atomic_write_bytes(d / "adapter_model.safetensors", blob)
    atomic_write_text(d / "adapter_config.json", json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return d


_DAMAGED = "The file is damaged: save the adapter again (or restore the file from a copy)"


def _read_meta(path: Path) -> dict[str, Any] | None:
    """sciadapt's description of an adapter (the safetensors header entry), None in a PEFT-only file."""
    from safetensors import safe_open

    from sciadapt.hub import unreadable_checkpoint

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise unreadable_checkpoint(path, e) from None
    if "sciadapt" not in meta:
        return None
    try:
        ours = json.loads(meta["sciadapt"])
    except ValueError as e:
        raise CheckpointError(f"{path}: its `sciadapt` header entry is not valid JSON ({e}). {_DAMAGED}") from None
    if not isinstance(ours, dict):
        raise CheckpointError(f"{path}: its `sciadapt` header entry is not a mapping. {_DAMAGED}")
    return ours


def adapter_meta(directory: str | Path) -> dict[str, Any] | None:
    """sciadapt's description of a saved adapter (method, config, targets, base fingerprint), None
    for an adapter saved by Hugging Face PEFT alone."""
    return _read_meta(Path(directory) / "adapter_model.safetensors")


def _read_config(path: Path) -> dict[str, Any]:
    """``adapter_config.json``; a damaged file is an error naming it."""
    from sciadapt.hub import read_json_object

    return read_json_object(path, "an adapter config (a JSON object)", _DAMAGED)


def _method_of(
    cfg: dict[str, Any], ours: dict[str, Any] | None, model: nn.Module, d: Path
) -> tuple[Any, list[str], list[str]]:
    """(method, target modules, attach patterns) of a saved adapter."""
    where = d / ("adapter_model.safetensors" if ours else "adapter_config.json")
    try:
        if ours:
            method = PEFT_METHODS.build(ours["method"], **ours["config"])
            targets = [str(t) for t in ours["targets"]]
            slices = ours.get("slices") or {}
            patterns = [f"{t}[{','.join(slices[t])}]" if t in slices else t for t in targets]
            return method, targets, patterns
        from sciadapt.peft.lora import from_hf_config

        method, targets = from_hf_config(cfg, model)
        return method, targets, list(targets)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(
            f"{where} does not describe an adapter sciadapt can load ({type(e).__name__}: {e}). {_DAMAGED}"
        ) from None


def load_adapter(
    model: nn.Module, directory: str | Path, adapter: str = "default", check_base: bool = True
) -> list[str]:
    """Attach and fill an adapter saved by sciadapt or by Hugging Face PEFT (LoRA / DoRA)."""
    from safetensors.torch import load_file

    d = Path(directory)
    cfg_path, weights_path = d / "adapter_config.json", d / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights_path.is_file():
        raise CheckpointError(
            f"{d} is not an adapter directory (needs adapter_config.json + adapter_model.safetensors)"
        )
    cfg = _read_config(cfg_path)
    ours = _read_meta(weights_path)
    method, targets, patterns = _method_of(cfg, ours, model, d)
    try:
        state = load_file(str(weights_path))
    except Exception as e:
        from sciadapt.hub import unreadable_checkpoint

        raise unreadable_checkpoint(weights_path, e) from None
    if check_base and ours and "fingerprint" in ours:
        try:
            _check_fingerprint(model, targets, ours, d)
        except (KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(
                f"{weights_path}: its base-model fingerprint is unreadable ({type(e).__name__}: {e}). {_DAMAGED}"
            ) from None
    attach(model, method, adapter, targets=patterns, where=f"adapter {d}")
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    own = {_hf_key(n, adapter): n for n in adapter_param_names(model, adapter)}
    missing = [k for k in own if k not in state]
    extra = [
        k
        for k in state
        if k not in own and k.removeprefix(HF_PREFIX) not in params and k.removeprefix(HF_PREFIX) not in buffers
    ]
    if missing or extra:
        raise CheckpointError(
            f"adapter {d} does not fit this model: missing {missing[:4]}{' ...' if len(missing) > 4 else ''}, "
            f"unexpected {extra[:4]}{' ...' if len(extra) > 4 else ''}. Was it trained on another backbone?"
        )
    with torch.no_grad():
        for key, tensor in state.items():
            name = own.get(key) or key.removeprefix(HF_PREFIX)
            target: torch.Tensor | None = params.get(name)
            if target is None:
                target = buffers[name]
            if tuple(target.shape) != tuple(tensor.shape):
                raise CheckpointError(
                    f"adapter {d}: {key} has shape {tuple(tensor.shape)} but the model expects {tuple(target.shape)}"
                )
            target.copy_(tensor)
    return list(targets)


def _check_fingerprint(model: nn.Module, targets: list[str], ours: dict[str, Any], d: Path) -> None:
    try:
        now = fingerprint(model, targets)
    except KeyError as e:
        raise CheckpointError(f"adapter {d} targets modules this model does not have: {e}") from None
    want = ours["fingerprint"]
    if now["sha256"] == want["sha256"]:
        return
    shapes = [
        f"{k}: saved {tuple(v)} vs model {tuple(now['tensors'].get(k, []))}"
        for k, v in want["tensors"].items()
        if now["tensors"].get(k) != v
    ]
    summ = _summaries(model, targets)
    values = [k for k, v in ours.get("summaries", {}).items() if k in summ and not _same(summ[k], v)]
    if not shapes and not values:
        return  # the same base up to rounding (e.g. after a merge/unmerge round trip)
    detail = "; ".join(shapes[:4]) if shapes else f"different values in {', '.join(values[:6])}"
    raise CheckpointError(
        f"adapter {d} was trained on a different base model ({detail}). Load the base weights it was "
        "trained on first, or pass check_base=False if you really mean to transfer it"
    )
