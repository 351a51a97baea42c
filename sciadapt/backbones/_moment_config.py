"""MOMENT's configuration: the official ``config.json`` layout, its T5 settings and the official sizes.

Private to :mod:`sciadapt.backbones.moment`, which re-exports the public names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from sciadapt.errors import CheckpointError, ConfigError
from sciadapt.hub import read_json_object

TASKS = ("reconstruction", "embedding", "forecasting", "classification")
#: Tasks that ``build_moment``'s backbones serve through ``forward_features``.
FEATURE_TASKS = ("forecasting", "embedding")
POSITIONS = 5000  # rows of the sinusoidal table, as momentfm builds it


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


#: ``dense_act_fn`` -> activation of the T5 feed-forward (the names ``transformers`` uses).
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass(frozen=True)
class T5Settings:
    """The T5 encoder geometry, read from a Hugging Face ``T5Config`` dictionary.

    Missing keys take ``T5Config``'s defaults.
    """

    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    vocab_size: int = 32128
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dropout_rate: float = 0.1
    initializer_factor: float = 1.0
    feed_forward_proj: str = "relu"
    dense_act_fn: str = "relu"
    is_gated_act: bool = False

    @classmethod
    def from_dict(cls, t5: Mapping[str, Any]) -> T5Settings:
        """Parse a ``t5_config`` dictionary; unknown keys (architectures, token ids...) are ignored.

        Raises:
            ConfigError: If ``feed_forward_proj`` is not ``"<act>"`` or ``"gated-<act>"`` or the
                activation is not supported.
        """
        known = {k: t5[k] for k in cls.__dataclass_fields__ if k in t5}
        proj = str(known.get("feed_forward_proj", cls.feed_forward_proj))
        parts = proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ConfigError(f"t5_config.feed_forward_proj: expected '<act>' or 'gated-<act>', got {proj!r}")
        # T5Config maps "gated-gelu" to the tanh approximation (the flan-T5 checkpoints' activation)
        act = "gelu_new" if proj == "gated-gelu" else parts[-1]
        known["dense_act_fn"] = act
        known["is_gated_act"] = parts[0] == "gated"
        if act not in ACTIVATIONS:
            raise ConfigError(f"t5_config.feed_forward_proj: activation {act!r} is not one of {', '.join(ACTIVATIONS)}")
        return cls(**known)

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv


#: The flan-T5 encoders behind the official checkpoints (``keys_moment_1_*.json``).
SIZES: dict[str, dict[str, int]] = {
    "small": {"d_model": 512, "d_ff": 1024, "num_layers": 8, "num_heads": 6, "d_kv": 64},
    "base": {"d_model": 768, "d_ff": 2048, "num_layers": 12, "num_heads": 12, "d_kv": 64},
    "large": {"d_model": 1024, "d_ff": 2816, "num_layers": 24, "num_heads": 16, "d_kv": 64},
}
#: The tiny geometry of the golden fixtures (``tests``, smoke runs).
TINY = {"d_model": 64, "d_ff": 128, "num_layers": 2, "num_heads": 4, "d_kv": 16, "vocab_size": 32}
FLAN_T5 = {
    "vocab_size": 32128,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.1,
}


@dataclass(frozen=True)
class MomentConfig:
    """A resolved MOMENT configuration (the official ``config.json`` layout, defaults filled in).

    Build it with :meth:`from_dict`; the fields mirror the upstream keys.
    """

    t5: T5Settings
    task_name: str = "reconstruction"
    seq_len: int = 512
    patch_len: int = 8
    patch_stride_len: int = 8
    transformer_backbone: str = "google/flan-t5-large"
    transformer_type: str = "encoder_only"
    forecast_horizon: int | None = None
    n_channels: int | None = None
    num_class: int | None = None
    reduction: str = "concat"
    head_dropout: float = 0.1
    patch_dropout: float = 0.1
    revin_affine: bool = False
    add_positional_embedding: bool = True
    value_embedding_bias: bool = False
    orth_gain: float | None = 1.41
    mask_ratio: float = 0.0
    enable_gradient_checkpointing: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def d_model(self) -> int:
        return self.t5.d_model

    @property
    def n_patches(self) -> int:
        return (max(self.seq_len, self.patch_len) - self.patch_len) // self.patch_stride_len + 1

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> MomentConfig:
        """Resolve an official ``config.json`` dictionary, with ``overrides`` applied on top.

        ``overrides`` play the role of momentfm's ``model_kwargs`` (e.g. ``task_name="embedding"``).
        Keys momentfm reads with a default get that default when absent.

        Raises:
            ConfigError: Listing every invalid or inconsistent entry.
        """
        raw = {**dict(config), **overrides}
        problems: list[str] = []
        t5_raw = raw.pop("t5_config", None)
        if not isinstance(t5_raw, Mapping):
            raise ConfigError("t5_config: expected the T5 configuration dictionary (as in the official config.json)")
        t5 = T5Settings.from_dict(t5_raw)
        d_model = raw.pop("d_model", None)
        if d_model is not None and d_model != t5.d_model:
            problems.append(f"d_model={d_model} differs from t5_config.d_model={t5.d_model}: set d_model to null")
        fields = {k: raw.pop(k) for k in list(raw) if k in cls.__dataclass_fields__ and k not in ("t5", "extra")}
        if "patch_stride_len" not in fields and "patch_len" in fields:
            fields["patch_stride_len"] = fields["patch_len"]
        cfg = cls(t5=t5, extra=raw, **fields)
        if cfg.task_name not in TASKS:
            problems.append(f"task_name: expected one of {', '.join(TASKS)}, got {cfg.task_name!r}")
        if cfg.transformer_type != "encoder_only":
            problems.append(f"transformer_type: only 'encoder_only' is implemented, got {cfg.transformer_type!r}")
        if cfg.patch_stride_len != cfg.patch_len:
            # momentfm's masks assume stride == patch_len (its patch views ignore the stride)
            problems.append(
                f"patch_stride_len={cfg.patch_stride_len} must equal patch_len={cfg.patch_len} "
                "(MOMENT's masks assume non-overlapping patches)"
            )
        if cfg.seq_len % cfg.patch_len:
            problems.append(f"seq_len={cfg.seq_len} must be a multiple of patch_len={cfg.patch_len}")
        if cfg.n_patches > POSITIONS:
            problems.append(f"seq_len={cfg.seq_len} gives {cfg.n_patches} patches, more than {POSITIONS} positions")
        if cfg.task_name == "forecasting" and not cfg.forecast_horizon:
            problems.append("forecast_horizon must be set for task_name 'forecasting'")
        if cfg.task_name == "classification":
            if cfg.reduction not in ("mean", "concat"):
                problems.append(f"reduction: expected 'mean' or 'concat', got {cfg.reduction!r}")
            if not cfg.num_class:
                problems.append("num_class must be set for task_name 'classification'")
            if cfg.reduction == "concat" and not cfg.n_channels:
                problems.append("n_channels must be set for classification with reduction 'concat'")
        if problems:
            raise ConfigError(problems)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The official ``config.json`` layout (``d_model: null``, the T5 settings under ``t5_config``)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("t5", "extra")}
        t5 = asdict(self.t5)
        out.update(self.extra)
        out.update({"d_model": None, "t5_config": t5, "model_name": "MOMENT"})
        return {k: v for k, v in out.items() if v is not None or k == "d_model"}

    def geometry(self) -> dict[str, Any]:
        """What the weights' shapes and meaning depend on (compared when loading a checkpoint)."""
        t5 = self.t5
        return {
            "d_model": t5.d_model,
            "num_layers": t5.num_layers,
            "num_heads": t5.num_heads,
            "d_kv": t5.d_kv,
            "d_ff": t5.d_ff,
            "vocab_size": t5.vocab_size,
            "relative_attention_num_buckets": t5.relative_attention_num_buckets,
            "relative_attention_max_distance": t5.relative_attention_max_distance,
            "feed_forward_proj": f"{'gated-' if t5.is_gated_act else ''}{t5.dense_act_fn}",
            "seq_len": self.seq_len,
            "patch_len": self.patch_len,
            "patch_stride_len": self.patch_stride_len,
            "add_positional_embedding": self.add_positional_embedding,
            "value_embedding_bias": self.value_embedding_bias,
            "revin_affine": self.revin_affine,
        }


def read_config(path: Path, **overrides: Any) -> MomentConfig:
    """The :class:`MomentConfig` of a ``config.json`` file, with ``overrides`` applied (see :meth:`MomentConfig.from_dict`).

    Raises:
        CheckpointError: If the file cannot be read or does not hold a JSON object.
        ConfigError: If its settings are invalid.
    """
    fix = "The checkpoint is damaged or incomplete: download it again (or restore the file)"
    raw = read_json_object(path, "a JSON object of MOMENT settings", fix)
    try:
        return MomentConfig.from_dict(raw, **overrides)
    except (TypeError, ValueError, AttributeError) as err:  # a value of the wrong type in the file
        raise CheckpointError(f"{path}: a setting has the wrong type ({type(err).__name__}: {err}). {fix}") from None


def head_summary(cfg: MomentConfig) -> str:
    """The head settings of ``cfg``, for a shape-mismatch message."""
    if cfg.task_name == "forecasting":
        return f"forecast_horizon={cfg.forecast_horizon}"
    if cfg.task_name == "classification":
        return f"n_channels={cfg.n_channels}, num_class={cfg.num_class}, reduction={cfg.reduction}"
    return f"patch_len={cfg.patch_len}"


def size_of(t5: T5Settings) -> str | None:
    """The official size (``small``, ``base``, ``large``) whose T5 geometry ``t5`` has, if any."""
    for name, geometry in SIZES.items():
        if all(getattr(t5, k) == v for k, v in geometry.items()):
            return name
    return None


__all__ = [
    "ACTIVATIONS",
    "FEATURE_TASKS",
    "FLAN_T5",
    "POSITIONS",
    "SIZES",
    "TASKS",
    "TINY",
    "MomentConfig",
    "T5Settings",
    "head_summary",
    "read_config",
    "size_of",
]
