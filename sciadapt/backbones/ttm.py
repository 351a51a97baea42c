"""IBM Tiny Time Mixers (TTM, Ekambaram et al., NeurIPS 2024) in plain PyTorch.

A re-implementation of granite-tsfm's ``TinyTimeMixerForPrediction`` whose ``state_dict`` keys are the
official ones, so the published ``model.safetensors`` files load with ``strict=True``. The model
standardises each channel over the context (std, mean or no scaler, honouring the observed mask), cuts
it into patches, runs an MLP-Mixer encoder with adaptive patching levels (the level that runs first
sees ``num_patches * 2**(levels-1)`` patches of ``d_model / 2**(levels-1)`` features), a small mixer
decoder and a linear head, then undoes the scaling. Optional parts, each read from ``config.json``:
gated attention, LayerNorm or BatchNorm, a tiny self-attention over patches, sin/cos positional
encoding, channel mixing in encoder and/or decoder, a frequency prefix token (``resolution_prefix_tuning``),
a raw-patch residual into the decoder, static categorical embeddings and forecast channel mixing with
known-future exogenous channels.

Channel layout for :meth:`TTM.forward_features`: ``x`` holds the target channels first, then the
``n_exog`` exogenous channels; the forecast covers the targets only. With forecast channel mixing the
future values of the exogenous channels come in ``future_exog``.

Official checkpoints (``tsfm_public/resources/model_paths_config/ttm.yaml``, granite-tsfm 0.3.x). A
``hf://`` reference without ``@revision`` to one of these repositories picks the revision from
``context_length`` and ``horizon`` as granite-tsfm's ``get_model`` does (:func:`ttm_revision`): among the
checkpoints with a context no longer than ``context_length``, the longest context, then the shortest
prediction length that still covers ``horizon``; a longer checkpoint horizon is cut with
``prediction_filter_length``. The chosen checkpoint's context must equal ``context_length`` here, since
this backbone takes exactly ``context_length`` steps.

- ``ibm-granite/granite-timeseries-ttm-r1``: ``main`` (512-96), ``1024_96_v1`` (1024-96).
- ``ibm-granite/granite-timeseries-ttm-r2`` (r2): ``main`` (512-96), ``512-192-r2``, ``512-336-r2``,
  ``512-720-r2``, and ``{1024,1536}-{96,192,336,720}-r2``.
- ``ibm-granite/granite-timeseries-ttm-r2`` (r2.1, frequency token): ``52-16-ft-r2.1``,
  ``52-16-ft-l1-r2.1``, ``90-30-ft-r2.1``, ``90-30-ft-l1-r2.1``, ``180-60-ft-l1-r2.1``,
  ``360-60-ft-l1-r2.1``, ``512-48-ft-r2.1``, ``512-48-ft-l1-r2.1``, ``512-96-ft-r2.1``,
  ``512-96-ft-l1-r2.1`` (revision = name; ``<context>-<prediction>``, ``l1``: trained with an L1 loss).
- ``ibm-research/ttm-research-r2``: ``main`` (512-96-ft-r2) and ``{512,1024,1536}-{96,192,336,720}-ft-r2``.

Examples: context 512 / horizon 96 -> ``main``; 1024 / 96 -> ``1024-96-r2``; 1536 / 96 -> ``1536-96-r2``;
512 / 192 -> ``512-192-r2``; 512 / 24 -> ``512-48-ft-r2.1`` cut to 24 steps; 52 / 16 -> ``52-16-ft-r2.1``.

The ``-ft-`` checkpoints were trained with a frequency prefix token: give ``freq_token`` (an int or a
resolution string of :data:`FREQUENCY_TOKENS`, e.g. ``"h"``). r3 models (``ibm-research/ttm-r3``,
decomposed prediction) are not supported.

References: V. Ekambaram, A. Jati, P. Dayama, S. Mukherjee, N. H. Nguyen, W. M. Gifford, C. Reddy,
J. Kalagnanam, "Tiny Time Mixers (TTMs): Fast Pre-trained Models for Enhanced Zero/Few-Shot Forecasting of
Multivariate Time Series", https://arxiv.org/abs/2401.03955 ; https://github.com/ibm-granite/granite-tsfm
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from sciadapt.errors import CheckpointError, ConfigError, ShapeError
from sciadapt.hub import describe_mismatch, is_hub, parse_hub, read_state_dict, resolve_folder, weights_file
from sciadapt.registry import BACKBONES
from sciadapt.spec import FromData
from sciadapt.types import HORIZON_FEATURES, SERIES

log = logging.getLogger(__name__)

#: Resolution name -> frequency token, as granite-tsfm's ``DEFAULT_FREQUENCY_MAPPING``.
FREQUENCY_TOKENS: dict[str, int] = {
    "oov": 0,
    "min": 1,
    "2min": 2,
    "5min": 3,
    "10min": 4,
    "15min": 5,
    "30min": 6,
    "h": 7,
    "H": 7,
    "d": 8,
    "D": 8,
    "W": 9,
}
MODES = ("common_channel", "mix_channel")
SCALINGS = ("std", "mean", None)
LOSSES = ("mse", "mae", "huber", "pinball", None)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# get_model applies the L1 / frequency-token preferences only up to this reference context
_LOW_RESOLUTION_MAX_CONTEXT = 512


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass
class TTMConfig:
    """The model-shaping fields of upstream ``TinyTimeMixerConfig``, with its defaults.

    :meth:`from_dict` reads an upstream ``config.json``; a missing key takes the upstream default.
    ``prediction_channel_indices`` defaults to the channels that are not exogenous.
    """

    context_length: int = 64
    patch_length: int = 8
    num_input_channels: int = 1
    prediction_length: int = 16
    patch_stride: int = 8
    prediction_channel_indices: list[int] | None = None
    exogenous_channel_indices: list[int] | None = None
    d_model: int = 16
    expansion_factor: int = 2
    num_layers: int = 3
    dropout: float = 0.2
    mode: str = "common_channel"
    gated_attn: bool = True
    norm_mlp: str = "LayerNorm"
    self_attn: bool = False
    self_attn_heads: int = 1
    use_positional_encoding: bool = False
    positional_encoding_type: str = "sincos"
    scaling: str | bool | None = "std"
    loss: str | None = "mse"
    norm_eps: float = 1e-5
    adaptive_patching_levels: int = 0
    resolution_prefix_tuning: bool = False
    frequency_token_vocab_size: int = 5
    head_dropout: float = 0.2
    decoder_num_layers: int = 8
    decoder_d_model: int = 8
    decoder_adaptive_patching_levels: int = 0
    decoder_raw_residual: bool = False
    decoder_mode: str = "common_channel"
    use_decoder: bool = True
    enable_forecast_channel_mixing: bool = False
    fcm_gated_attn: bool = True
    fcm_context_length: int = 1
    fcm_use_mixer: bool = False
    fcm_mix_layers: int = 2
    fcm_prepend_past: bool = True
    fcm_prepend_past_offset: int | None = None
    categorical_vocab_size_list: list[int] | None = None
    prediction_filter_length: int | None = None
    quantile: float = 0.5
    huber_delta: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.scaling is True:
            self.scaling = "std"  # upstream picks the std scaler for `True`
        elif self.scaling is False:
            self.scaling = None
        for name in ("prediction_channel_indices", "exogenous_channel_indices", "categorical_vocab_size_list"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, [int(v) for v in value])
        if self.prediction_channel_indices is not None:
            self.prediction_channel_indices = sorted(self.prediction_channel_indices)
        if self.exogenous_channel_indices is not None:
            self.exogenous_channel_indices = sorted(self.exogenous_channel_indices)
            if self.prediction_channel_indices is None:
                exog = set(self.exogenous_channel_indices)
                self.prediction_channel_indices = [c for c in range(self.num_input_channels) if c not in exog]

    # -- derived geometry -------------------------------------------------------------------
    @property
    def num_patches(self) -> int:
        """Tokens per channel: context patches, plus one frequency token with prefix tuning."""
        n = (max(self.context_length, self.patch_length) - self.patch_length) // self.patch_stride + 1
        return n + int(self.resolution_prefix_tuning)

    @property
    def output_length(self) -> int:
        """Forecast steps returned: ``prediction_filter_length`` when set, else ``prediction_length``."""
        return self.prediction_filter_length or self.prediction_length

    @property
    def channel_dependent(self) -> bool:
        """Whether any weight depends on the number of input channels."""
        return (
            self.mode == "mix_channel"
            or (self.use_decoder and self.decoder_mode == "mix_channel")
            or self.enable_forecast_channel_mixing
            or self.categorical_vocab_size_list is not None
        )

    def to_dict(self) -> dict[str, Any]:
        """The upstream ``config.json`` fields (plus any accepted extra keys)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out["num_patches"] = self.num_patches
        return {**self.extra, **out}

    # -- reading config.json ----------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TTMConfig:
        """Read an upstream ``config.json`` mapping.

        Raises:
            ConfigError: Listing every key this implementation cannot honour (an unknown key, an
                r3-era feature switched on, a ``num_patches`` that contradicts the geometry).
        """
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        problems: list[str] = []
        for key, value in data.items():
            if key in known:
                kwargs[key] = value
            elif key in _BOOKKEEPING_KEYS or key in _HARMLESS_KEYS or key.startswith("mq_"):
                extra[key] = value
            elif key in _DISABLED_KEYS:
                off = _DISABLED_KEYS[key]
                if value != off and not (off is None and value in (0, False)):
                    problems.append(
                        f"{key}={value!r}: this feature is not implemented here (only {key}={off!r} is supported)"
                    )
                extra[key] = value
            elif key != "num_patches":
                problems.append(f"{key}={value!r}: unknown TinyTimeMixerConfig key (it may change the model)")
        if problems:
            raise ConfigError(problems)
        try:
            config = cls(**kwargs, extra=extra)
        except (TypeError, ValueError) as err:  # e.g. channel indices that are not a list of ints
            raise ConfigError(f"malformed value: {err}") from None
        if "num_patches" in data and data["num_patches"] is not None and data["num_patches"] != config.num_patches:
            problems.append(
                f"num_patches={data['num_patches']} but context_length={config.context_length}, "
                f"patch_length={config.patch_length}, patch_stride={config.patch_stride}"
                + (" and a frequency token" if config.resolution_prefix_tuning else "")
                + f" give {config.num_patches}"
            )
        problems += config.problems()
        if problems:
            raise ConfigError(problems)
        return config

    def problems(self) -> list[str]:
        """Every invalid or unsupported setting, as messages (empty when the config is usable)."""
        out: list[str] = []
        for name in (
            "context_length",
            "patch_length",
            "patch_stride",
            "prediction_length",
            "num_input_channels",
            "d_model",
            "decoder_d_model",
            "expansion_factor",
            "self_attn_heads",
            "frequency_token_vocab_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                out.append(f"{name}: expected an int >= 1, got {value!r}")
        for name in (
            "num_layers",
            "decoder_num_layers",
            "adaptive_patching_levels",
            "decoder_adaptive_patching_levels",
            "fcm_context_length",
            "fcm_mix_layers",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                out.append(f"{name}: expected an int >= 0, got {value!r}")
        if out:
            return out  # the checks below do arithmetic on these
        if self.context_length <= self.patch_length:
            out.append(
                f"context_length ({self.context_length}) must be greater than patch_length ({self.patch_length})"
            )
        for name in ("mode", "decoder_mode"):
            if getattr(self, name) not in MODES:
                out.append(f"{name}: expected one of {', '.join(MODES)}, got {getattr(self, name)!r}")
        if str(self.norm_mlp).lower() not in ("layernorm", "batchnorm"):
            out.append(f"norm_mlp: expected LayerNorm or BatchNorm, got {self.norm_mlp!r}")
        if self.scaling not in SCALINGS:
            out.append(f"scaling: expected std, mean or null, got {self.scaling!r}")
        if self.loss == "nll":
            out.append("loss=nll (a distribution head) is not supported: use mse, mae, huber or pinball")
        elif self.loss not in LOSSES:
            out.append(f"loss: expected one of mse, mae, huber, pinball or null, got {self.loss!r}")
        if self.positional_encoding_type not in ("sincos", "random"):
            out.append(f"positional_encoding_type: expected sincos or random, got {self.positional_encoding_type!r}")
        if (
            self.prediction_filter_length is not None
            and not 0 < self.prediction_filter_length <= self.prediction_length
        ):
            out.append(
                f"prediction_filter_length ({self.prediction_filter_length}) must be in 1..prediction_length "
                f"({self.prediction_length})"
            )
        for name in ("prediction_channel_indices", "exogenous_channel_indices"):
            idx = getattr(self, name)
            if idx is not None and (not idx or any(not 0 <= i < self.num_input_channels for i in idx)):
                out.append(f"{name}: {idx} are not channels of num_input_channels={self.num_input_channels}")
        if self.exogenous_channel_indices and self.prediction_channel_indices:
            both = set(self.exogenous_channel_indices) & set(self.prediction_channel_indices)
            if both:
                out.append(f"channels {sorted(both)} are both predicted and exogenous")
        if self.categorical_vocab_size_list is not None:
            if not self.use_decoder or self.decoder_mode != "mix_channel":
                out.append("categorical_vocab_size_list needs use_decoder=true and decoder_mode=mix_channel")
            if any(v < 1 for v in self.categorical_vocab_size_list):
                out.append(f"categorical_vocab_size_list: sizes must be >= 1, got {self.categorical_vocab_size_list}")
        if self.enable_forecast_channel_mixing:
            fcm_len = self.output_length + 2 * self.fcm_context_length
            if self.fcm_context_length > 0 and fcm_len <= 2 * self.fcm_context_length + 1:
                out.append(
                    f"forecast channel mixing with fcm_context_length={self.fcm_context_length} needs a forecast "
                    f"longer than 1 step, got {self.output_length}"
                )
            if self.fcm_prepend_past and self.fcm_prepend_past_offset is not None and self.fcm_prepend_past_offset < 1:
                out.append(f"fcm_prepend_past_offset: expected null or an int >= 1, got {self.fcm_prepend_past_offset}")
        out += _mixer_spec_problems(self._encoder_spec(), "encoder")
        if self.use_decoder:
            out += _mixer_spec_problems(self._decoder_spec(), "decoder")
        if self.enable_forecast_channel_mixing and self.fcm_use_mixer:
            out += _mixer_spec_problems(self._fcm_spec(), "forecast channel mixer")
        return out

    # -- the mixer geometry of each part ----------------------------------------------------
    def _encoder_spec(self) -> MixerSpec:
        return MixerSpec(
            num_patches=self.num_patches,
            d_model=self.d_model,
            num_channels=self.num_input_channels,
            num_layers=self.num_layers,
            adaptive_patching_levels=self.adaptive_patching_levels,
            mode=self.mode,
            expansion_factor=self.expansion_factor,
            dropout=self.dropout,
            gated_attn=self.gated_attn,
            batch_norm="batch" in str(self.norm_mlp).lower(),
            norm_eps=self.norm_eps,
            self_attn=self.self_attn,
            self_attn_heads=self.self_attn_heads,
        )

    def _decoder_spec(self) -> MixerSpec:
        return dataclasses.replace(
            self._encoder_spec(),
            d_model=self.decoder_d_model,
            num_channels=self.num_input_channels + len(self.categorical_vocab_size_list or []),
            num_layers=self.decoder_num_layers,
            adaptive_patching_levels=self.decoder_adaptive_patching_levels,
            mode=self.decoder_mode,
            dropout=self.head_dropout,
        )

    def _fcm_spec(self) -> MixerSpec:
        # The forecast channel mixer treats channels as patches and forecast steps as channels.
        window = 2 * self.fcm_context_length + 1
        return dataclasses.replace(
            self._encoder_spec(),
            num_patches=len(self.prediction_channel_indices or range(self.num_input_channels))
            + len(self.exogenous_channel_indices or []),
            d_model=2 * window,
            num_channels=self.output_length,
            num_layers=self.fcm_mix_layers,
            adaptive_patching_levels=0,
            mode="common_channel",
            dropout=self.head_dropout,
            gated_attn=self.fcm_gated_attn,
        )


# config.json keys that describe the file or the training run, not the network
_BOOKKEEPING_KEYS = {
    "architectures",
    "model_type",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "init_processing",
    "_name_or_path",
    "post_init",
    "init_std",
    "init_linear",
    "init_embed",
    "num_parallel_samples",
    "distribution_output",
    "patch_last",
    "return_dict",
    "output_hidden_states",
    "use_return_dict",
    "torchscript",
    "id2label",
    "label2id",
    "problem_type",
    "tie_word_embeddings",
    "is_encoder_decoder",
    "pruned_heads",
    "chunk_size_feed_forward",
}
# keys without effect here: r3-era (granite-tsfm >= 0.3) keys that only act when another switch is on or
# only on the loss, and keys of the pretraining script
_HARMLESS_KEYS = {
    "use_fft_embedding",
    "point_extra_weight",
    "trend_loss_weight",
    "residual_loss_weight",
    "joint_loss_weight",
    "forecast_loss_type",
    "combine_quantiles_via_variance",
    "quantile_levels",
    "penalize_large_width_ratio",
    "width_penalty_mode",
    "multi_quantile_head_weights",
    "mask_value",
    # granite-tsfm's pretraining script writes these; d_model, decoder_d_model and patch_stride hold the result
    "d_model_scale",
    "decoder_d_model_scale",
    "stride_ratio",
}
# keys of features this implementation lacks: accepted only at the value that switches them off
_DISABLED_KEYS: dict[str, Any] = {
    "multi_scale": False,
    "register_tokens": 0,
    "fft_length": 0,
    "multi_quantile_head": False,
    "multi_quantile_heads": None,
    "residual_context_length": None,
    "masked_context_length": None,
    "decompose": False,
    "light_mode": False,
    "enable_base_norm_always": False,
    "gate_mode": "softmax",
    "trend_patch_length": None,
    "trend_patch_stride": None,
    "trend_d_model": None,
    "trend_decoder_d_model": None,
    "trend_num_layers": None,
    "trend_decoder_num_layers": None,
    "trend_register_tokens": None,
    "trend_fft_length": None,
    "trend_multi_scale": None,
    "trend_adaptive_patching_levels": None,
    "trend_head_d_model": None,
}


@dataclass(frozen=True)
class MixerSpec:
    """Geometry of one mixer stack (encoder, decoder or forecast channel mixer)."""

    num_patches: int
    d_model: int
    num_channels: int
    num_layers: int
    adaptive_patching_levels: int
    mode: str
    expansion_factor: int
    dropout: float
    gated_attn: bool
    batch_norm: bool
    norm_eps: float
    self_attn: bool
    self_attn_heads: int

    def level_factors(self) -> list[int]:
        """Patch-splitting factor of each adaptive level in module order (coarsest split first).

        A level whose features would drop to 4 or fewer runs unsplit (factor 1), as upstream does.
        """
        factors = []
        for level in reversed(range(self.adaptive_patching_levels)):
            factor = 2**level
            factors.append(1 if self.d_model // factor <= 4 else factor)
        return factors


def _mixer_spec_problems(spec: MixerSpec, where: str) -> list[str]:
    out = []
    widths = [spec.d_model // f for f in spec.level_factors()] or [spec.d_model]
    for factor in spec.level_factors():
        if spec.d_model % factor:
            out.append(f"{where}: d_model={spec.d_model} is not divisible by 2^level={factor}")
    if spec.self_attn and any(w % spec.self_attn_heads for w in widths):
        out.append(f"{where}: self_attn_heads={spec.self_attn_heads} must divide the feature sizes {widths}")
    return out


# ---------------------------------------------------------------------------------------------
# building blocks (attribute names are the upstream ones: they are the state_dict keys)


class GatedAttention(nn.Module):
    """``x * softmax(Linear(x))`` over the last axis."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.attn_layer = nn.Linear(size, size)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.softmax(self.attn_layer(x), dim=-1)


class _BatchNormOverTokens(nn.Module):
    """BatchNorm1d over the feature axis of ``(N, P, D)`` tokens."""

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.batchnorm = nn.BatchNorm1d(d_model, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.batchnorm(x.transpose(1, 2)).transpose(1, 2)


class NormLayer(nn.Module):
    """LayerNorm over features, or BatchNorm over features with channels folded into the batch."""

    def __init__(self, spec: MixerSpec) -> None:
        super().__init__()
        self.batch_norm = spec.batch_norm
        self.norm: nn.Module = (
            _BatchNormOverTokens(spec.d_model, spec.norm_eps)
            if spec.batch_norm
            else nn.LayerNorm(spec.d_model, eps=spec.norm_eps)
        )

    def forward(self, x: Tensor) -> Tensor:
        if not self.batch_norm:
            return self.norm(x)
        b, c, p, d = x.shape
        return self.norm(x.reshape(b * c, p, d)).reshape(b, c, p, d)


class MLP(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout, hidden size ``expansion_factor * in``."""

    def __init__(self, size: int, expansion_factor: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(size, size * expansion_factor)
        self.dropout1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(size * expansion_factor, size)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout2(self.fc2(self.dropout1(F.gelu(self.fc1(x)))))


class SelfAttention(nn.Module):
    """Multi-head self-attention over the patches of each channel (no mask)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.scaling = (d_model // num_heads) ** -0.5
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.q_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        h = self.num_heads
        q = rearrange(self.q_proj(x) * self.scaling, "n p (h e) -> n h p e", h=h)
        k = rearrange(self.k_proj(x), "n p (h e) -> n h p e", h=h)
        v = rearrange(self.v_proj(x), "n p (h e) -> n h p e", h=h)
        weights = torch.softmax(q @ k.transpose(-1, -2), dim=-1)  # (N, h, P, P)
        weights = F.dropout(weights, p=self.dropout, training=self.training)
        return self.out_proj(rearrange(weights @ v, "n h p e -> n p (h e)"))


class PatchMixer(nn.Module):
    """Mixes along the patch axis (MLP, then gate), optionally with self-attention beside it."""

    def __init__(self, spec: MixerSpec) -> None:
        super().__init__()
        self.norm = NormLayer(spec)
        self.mlp = MLP(spec.num_patches, spec.expansion_factor, spec.dropout)
        self.gating_block = GatedAttention(spec.num_patches) if spec.gated_attn else None
        if spec.self_attn:
            self.self_attn_layer: SelfAttention | None = SelfAttention(spec.d_model, spec.self_attn_heads, spec.dropout)
            self.norm_attn: NormLayer | None = NormLayer(spec)
        else:
            self.self_attn_layer = self.norm_attn = None

    def forward(self, x: Tensor) -> Tensor:
        residual = x
        x = self.norm(x)  # (B, C, P, D)
        attn = None
        if self.self_attn_layer is not None:
            b, c, p, d = x.shape
            attn = self.self_attn_layer(x.reshape(b * c, p, d)).reshape(b, c, p, d)
        x = self.mlp(x.transpose(2, 3))  # (B, C, D, P)
        if self.gating_block is not None:
            x = self.gating_block(x)
        x = x.transpose(2, 3)  # (B, C, P, D)
        if attn is not None and self.norm_attn is not None:
            x = self.norm_attn(x + attn)
        return x + residual


class FeatureMixer(nn.Module):
    """Mixes along the feature axis (MLP, then gate)."""

    def __init__(self, spec: MixerSpec) -> None:
        super().__init__()
        self.norm = NormLayer(spec)
        self.mlp = MLP(spec.d_model, spec.expansion_factor, spec.dropout)
        self.gating_block = GatedAttention(spec.d_model) if spec.gated_attn else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.mlp(self.norm(x))
        if self.gating_block is not None:
            h = self.gating_block(h)
        return h + x


class ChannelFeatureMixer(nn.Module):
    """Mixes along the channel axis (gate, then MLP); the norm runs over features first."""

    def __init__(self, spec: MixerSpec) -> None:
        super().__init__()
        self.norm = NormLayer(spec)
        self.mlp = MLP(spec.num_channels, spec.expansion_factor, spec.dropout)
        self.gating_block = GatedAttention(spec.num_channels) if spec.gated_attn else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x).permute(0, 3, 2, 1)  # (B, D, P, C)
        if self.gating_block is not None:
            h = self.gating_block(h)
        h = self.mlp(h).permute(0, 3, 2, 1)  # (B, C, P, D)
        return h + x


class MixerLayer(nn.Module):
    """[channel mixer] -> patch mixer (when there is more than one patch) -> feature mixer."""

    def __init__(self, spec: MixerSpec) -> None:
        super().__init__()
        self.patch_mixer = PatchMixer(spec) if spec.num_patches > 1 else None
        self.feature_mixer = FeatureMixer(spec)
        self.channel_feature_mixer = ChannelFeatureMixer(spec) if spec.mode == "mix_channel" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.channel_feature_mixer is not None:
            x = self.channel_feature_mixer(x)
        if self.patch_mixer is not None:
            x = self.patch_mixer(x)
        return self.feature_mixer(x)


class AdaptivePatchingLevel(nn.Module):
    """Mixer layers on patches split ``factor`` times finer (``P*f`` tokens of ``D/f`` features)."""

    def __init__(self, spec: MixerSpec, factor: int) -> None:
        super().__init__()
        self.factor = factor
        level = dataclasses.replace(spec, num_patches=spec.num_patches * factor, d_model=spec.d_model // factor)
        self.mixer_layers = nn.ModuleList(MixerLayer(level) for _ in range(spec.num_layers))

    def forward(self, x: Tensor, hidden: list[Tensor]) -> Tensor:
        b, c, p, d = x.shape
        hidden.append(x)
        x = x.reshape(b, c, p * self.factor, d // self.factor)  # (B, C, P*f, D/f)
        hidden.append(x)
        for layer in self.mixer_layers:
            x = layer(x)
            hidden.append(x)
        x = x.reshape(b, c, p, d)  # (B, C, P, D)
        hidden.append(x)
        return x


class MixerBlock(nn.Module):
    """Adaptive patching levels (``levels > 0``) or a plain stack of ``num_layers`` mixer layers."""

    def __init__(self, spec: MixerSpec) -> None:
        super().__init__()
        self.adaptive = spec.adaptive_patching_levels > 0
        self.mixers = nn.ModuleList(
            [AdaptivePatchingLevel(spec, f) for f in spec.level_factors()]
            if self.adaptive
            else [MixerLayer(spec) for _ in range(spec.num_layers)]
        )

    def forward(self, x: Tensor, hidden: list[Tensor] | None = None) -> Tensor:
        sink: list[Tensor] = [] if hidden is None else hidden
        for mixer in self.mixers:
            if self.adaptive:
                x = mixer(x, sink)
            else:
                x = mixer(x)
                sink.append(x)
        return x


class PositionalEncoding(nn.Module):
    """Additive ``(num_patches, d_model)`` encoding: fixed centred sin/cos, or learned."""

    def __init__(self, num_patches: int, d_model: int, kind: str) -> None:
        super().__init__()
        if kind == "random":
            self.position_enc = nn.Parameter(torch.randn(num_patches, d_model))
            return
        pe = torch.zeros(num_patches, d_model)
        position = torch.arange(0, num_patches).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * -(math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div)
        pe[:, 1::2] = torch.cos(position * div)
        pe = pe - pe.mean()
        self.position_enc = nn.Parameter(pe / (pe.std() * 10), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.position_enc


class Encoder(nn.Module):
    """Patch embedding, optional frequency prefix token and positional encoding, mixer stack."""

    def __init__(self, config: TTMConfig) -> None:
        super().__init__()
        self.d_model = config.d_model
        self.patcher = nn.Linear(config.patch_length, config.d_model)
        self.positional_encoder = (
            PositionalEncoding(config.num_patches, config.d_model, config.positional_encoding_type)
            if config.use_positional_encoding
            else None
        )
        self.mlp_mixer_encoder = MixerBlock(config._encoder_spec())
        if config.resolution_prefix_tuning:
            mid = (config.patch_length + config.d_model) // 2
            self.freq_mod: nn.Sequential | None = nn.Sequential(
                nn.Embedding(config.frequency_token_vocab_size, config.patch_length),
                nn.Linear(config.patch_length, mid),
                nn.GELU(),
                nn.Linear(mid, config.d_model),
            )
        else:
            self.freq_mod = None

    def forward(self, patches: Tensor, freq_token: Tensor | None, hidden: list[Tensor] | None) -> Tensor:
        x = self.patcher(patches)  # (B, C, P, D)
        if self.freq_mod is not None:
            if freq_token is None:
                raise ShapeError("this TTM was trained with a frequency prefix token: pass freq_token (B,)")
            b, c = x.shape[:2]
            token = self.freq_mod(freq_token.long()).view(b, 1, 1, self.d_model).expand(b, c, 1, self.d_model)
            x = torch.cat([token, x], dim=-2)  # (B, C, 1+P, D)
        if self.positional_encoder is not None:
            x = self.positional_encoder(x)
        return self.mlp_mixer_encoder(x, hidden)


class TTMBackbone(nn.Module):
    """Upstream ``TinyTimeMixerModel``: scaling and patching (no weights) around the encoder."""

    def __init__(self, config: TTMConfig) -> None:
        super().__init__()
        self.encoder = Encoder(config)


class CategoricalEmbedding(nn.Module):
    """One embedding per static categorical variable, repeated over the patches."""

    def __init__(self, vocab_sizes: Sequence[int], d_model: int, num_patches: int) -> None:
        super().__init__()
        self.num_patches = num_patches
        self.embedding_layers = nn.ModuleList(nn.Embedding(v, d_model) for v in vocab_sizes)

    def forward(self, values: Tensor) -> Tensor:
        emb = torch.stack([layer(values[:, i].long()) for i, layer in enumerate(self.embedding_layers)], dim=1)
        return emb.unsqueeze(2).repeat(1, 1, self.num_patches, 1)  # (B, n_cat, P, D)


class Decoder(nn.Module):
    """Adapter to ``decoder_d_model``, optional raw-patch residual and categorical channels, mixers."""

    def __init__(self, config: TTMConfig) -> None:
        super().__init__()
        self.num_input_channels = config.num_input_channels
        self.adapter = (
            nn.Linear(config.d_model, config.decoder_d_model) if config.d_model != config.decoder_d_model else None
        )
        self.decoder_raw_embedding = (
            nn.Linear(config.patch_length, config.decoder_d_model) if config.decoder_raw_residual else None
        )
        self.decoder_cat_embedding_layer = (
            CategoricalEmbedding(config.categorical_vocab_size_list, config.decoder_d_model, config.num_patches)
            if config.categorical_vocab_size_list is not None
            else None
        )
        self.decoder_block = MixerBlock(config._decoder_spec())

    def forward(
        self, x: Tensor, patches: Tensor, static_categorical_values: Tensor | None, hidden: list[Tensor] | None
    ) -> Tensor:
        if self.adapter is not None:
            x = self.adapter(x)  # (B, C, P, D_dec)
            if hidden is not None:
                hidden.append(x)
        if self.decoder_raw_embedding is not None:
            if patches.shape[-2] == x.shape[-2] - 1:
                # the frequency token has no raw patch: a zero patch stands in for it
                patches = torch.cat([patches.new_zeros(*patches.shape[:-2], 1, patches.shape[-1]), patches], dim=-2)
            x = x + self.decoder_raw_embedding(patches)
            if hidden is not None:
                hidden.append(x)
        if self.decoder_cat_embedding_layer is not None:
            if static_categorical_values is None:
                raise ShapeError(
                    "this TTM embeds static categorical variables: pass static_categorical_values (B, n_categorical)"
                )
            x = torch.cat([x, self.decoder_cat_embedding_layer(static_categorical_values)], dim=1)
        x = self.decoder_block(x, hidden)
        if self.decoder_cat_embedding_layer is not None:
            x = x[:, : self.num_input_channels]  # drop the categorical channels again
            if hidden is not None:
                hidden.append(x)
        return x


class ForecastChannelMixer(nn.Module):
    """Upstream ``ForecastChannelHeadMixer``: refines the forecasts across channels, fusing known-future
    exogenous values, from a window of ``2 * fcm_context_length + 1`` steps around each forecast step."""

    def __init__(self, config: TTMConfig) -> None:
        super().__init__()
        self.context = config.fcm_context_length
        self.window = 2 * self.context + 1
        self.prediction_length = config.output_length
        self.prediction_channels = config.prediction_channel_indices
        self.exog_channels = config.exogenous_channel_indices
        n_total = len(self.prediction_channels or range(config.num_input_channels)) + len(self.exog_channels or [])
        n_pred = len(self.prediction_channels or range(config.num_input_channels))
        features = self.window
        if config.fcm_use_mixer:
            spec = config._fcm_spec()
            self.exog_mixer: MixerBlock | None = MixerBlock(spec)
            features = spec.d_model
            self.fcm_embedding: nn.Linear | None = nn.Linear(self.window, spec.d_model)
        else:
            self.exog_mixer = self.fcm_embedding = None
        self.mlp = nn.Linear(n_total * features, n_pred)
        self.fcm_gating_block = GatedAttention(n_total * features) if config.fcm_gated_attn else None
        self.prepend_past = config.fcm_prepend_past
        offset = config.fcm_prepend_past_offset
        self.past_slice = slice(-self.context, None) if offset is None else slice(-(offset + self.context), -offset)

    def forward(self, forecast: Tensor, past_values: Tensor, future_values: Tensor | None) -> Tensor:
        # forecast: (B, L, C_pred) scaled; past_values / future_values: raw (B, T, C) / (B, L, C), as upstream
        pred_idx = self.prediction_channels if self.prediction_channels is not None else slice(None)
        past = past_values[:, self.past_slice, pred_idx]  # (B, ctx, C_pred)
        residual = forecast
        if self.exog_channels:
            if future_values is None:
                raise ShapeError("forecast channel mixing with exogenous channels needs their future values")
            past = torch.cat([past, past_values[:, self.past_slice, self.exog_channels]], dim=-1)
            forecast = torch.cat([forecast, future_values[..., self.exog_channels]], dim=-1)  # (B, L, C_tot)
        if self.context > 0:
            pad = forecast.new_zeros(forecast.shape[0], self.context, forecast.shape[2])
            extended = torch.cat([past if self.prepend_past else pad, forecast, pad], dim=1)  # (B, L+2k, C_tot)
            # every forecast step with its k neighbours on each side
            h = extended.unfold(1, self.window, 1)  # (B, L, C_tot, 2k+1)
            if h.shape[1] != self.prediction_length:
                raise ShapeError(f"forecast channel mixing expects {self.prediction_length} steps, got {h.shape[1]}")
            if self.exog_mixer is not None and self.fcm_embedding is not None:
                h = self.exog_mixer(self.fcm_embedding(h))  # (B, L, C_tot, 2(2k+1))
            h = h.flatten(start_dim=2)  # (B, L, C_tot * features)
            if self.fcm_gating_block is not None:
                h = self.fcm_gating_block(h)
            h = self.mlp(h)
        else:
            h = forecast
            if self.fcm_gating_block is not None:
                h = self.fcm_gating_block(h)
            h = self.mlp(h)
        return h + residual  # (B, L, C_pred)


class PredictionHead(nn.Module):
    """Flatten the patches, one Linear to ``prediction_length`` steps, optional channel mixing."""

    def __init__(self, config: TTMConfig) -> None:
        super().__init__()
        self.prediction_filter_length = config.prediction_filter_length
        self.dropout_layer = nn.Dropout(config.head_dropout)
        width = config.decoder_d_model if config.use_decoder else config.d_model
        self.base_forecast_block = nn.Linear(config.num_patches * width, config.prediction_length)
        self.fcm_block = ForecastChannelMixer(config) if config.enable_forecast_channel_mixing else None

    def forward(
        self,
        x: Tensor,
        past_values: Tensor,
        future_values: Tensor | None,
        prediction_channels: list[int] | None,
    ) -> Tensor:
        x = self.dropout_layer(x.flatten(start_dim=-2))  # (B, C, P*D)
        forecast = self.base_forecast_block(x).transpose(-1, -2)  # (B, L, C)
        if prediction_channels is not None:
            forecast = forecast[..., prediction_channels]  # (B, L, C_pred)
        if self.prediction_filter_length is not None:
            forecast = forecast[:, : self.prediction_filter_length]
            if future_values is not None:
                future_values = future_values[:, : self.prediction_filter_length]
        if self.fcm_block is not None:
            forecast = self.fcm_block(forecast, past_values, future_values)
        return forecast


# ---------------------------------------------------------------------------------------------
# scalers (no weights): (B, T, C) -> scaled, loc (B, 1, C), scale (B, 1, C)


def _std_scale(x: Tensor, observed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    n = observed.sum(1, keepdim=True).clamp_min(1)
    loc = (x * observed).sum(1, keepdim=True) / n
    variance = (((x - loc) * observed) ** 2).sum(1, keepdim=True) / n
    scale = torch.sqrt(variance + 1e-5)
    return (x - loc) / scale, loc, scale


def _mean_scale(x: Tensor, observed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    total = (x * observed).abs().sum(1, keepdim=True)
    n = observed.sum(1, keepdim=True)
    scale = total / n.clamp(min=1)
    # a channel with no observed step takes the batch's mean absolute value (as upstream)
    fallback = torch.squeeze(total.sum(0) / n.sum(0).clamp(min=1))
    scale = torch.where(n > 0, scale, fallback).clamp(min=1e-10)
    return x / scale, torch.zeros_like(scale), scale


def _no_scale(x: Tensor, observed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    ones = x.new_ones(x.shape[0], 1, x.shape[2])
    return x, torch.zeros_like(ones), ones


_SCALERS = {"std": _std_scale, "mean": _mean_scale, None: _no_scale}


# ---------------------------------------------------------------------------------------------
# the model


class TTM(nn.Module):
    """Tiny Time Mixer forecaster with upstream parameter names.

    Build it with :func:`build_ttm` (the config schema) or :meth:`from_pretrained`; the constructor
    takes a validated :class:`TTMConfig`.

    Args:
        config: The model configuration (upstream ``TinyTimeMixerConfig`` fields).
        freq_token: Frequency token used when a call passes none (models with
            ``resolution_prefix_tuning``); an int of :data:`FREQUENCY_TOKENS`.

    Raises:
        ConfigError: Listing every invalid setting of ``config``.
    """

    input_layout = SERIES

    def __init__(self, config: TTMConfig, freq_token: int | None = None) -> None:
        super().__init__()
        problems = config.problems()
        if freq_token is not None and config.resolution_prefix_tuning:
            if not 0 <= freq_token < config.frequency_token_vocab_size:
                problems.append(
                    f"freq_token={freq_token} is outside the frequency vocabulary 0..{config.frequency_token_vocab_size - 1}"
                )
        if problems:
            raise ConfigError(problems)
        self.config = config
        self.freq_token = freq_token
        self.context_length = config.context_length
        self.horizon = config.output_length
        self.backbone = TTMBackbone(config)
        self.decoder = Decoder(config) if config.use_decoder else None
        self.head = PredictionHead(config)
        self.feature_info: list[dict[str, Any]] = [{"layout": HORIZON_FEATURES, "channels": 1, "reduction": 1}]
        self.default_peft_targets: list[str] = [
            "backbone.encoder.mlp_mixer_encoder.*.mlp.fc1",
            "backbone.encoder.mlp_mixer_encoder.*.mlp.fc2",
        ]
        if config.use_decoder:
            self.default_peft_targets += ["decoder.decoder_block.*.mlp.fc1", "decoder.decoder_block.*.mlp.fc2"]

    @property
    def n_exog(self) -> int:
        """Exogenous channels (the trailing channels of ``x`` in :meth:`forward_features`)."""
        return len(self.config.exogenous_channel_indices or [])

    # -- upstream-compatible forward --------------------------------------------------------
    def forward_official(
        self,
        past_values: Tensor,
        past_observed_mask: Tensor | None = None,
        future_values: Tensor | None = None,
        freq_token: Tensor | None = None,
        static_categorical_values: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> dict[str, Any]:
        """The computation of upstream ``TinyTimeMixerForPrediction.forward`` (``return_dict=True``).

        Args:
            past_values: ``(B, T, C)`` raw context, ``T >= context_length`` (the last ``context_length``
                steps are used), ``C = num_input_channels`` for channel-mixing models.
            past_observed_mask: ``(B, T, C)`` 1 observed, 0 missing; default all observed.
            future_values: ``(B, L, C)`` targets for the loss; the exogenous channels' future values
                for forecast channel mixing.
            freq_token: ``(B,)`` frequency tokens (models with ``resolution_prefix_tuning``); default
                the model's ``freq_token``.
            static_categorical_values: ``(B, n_categorical)`` category ids.
            output_hidden_states: Also return every intermediate hidden state, in upstream order.

        Returns:
            ``prediction_outputs`` (B, L, C_pred) de-normalised, ``backbone_hidden_state`` (B, C, P, D),
            ``decoder_hidden_state`` (B, C, P, D_dec), ``loc`` / ``scale`` (B, 1, C_pred),
            ``hidden_states`` (a list, empty unless requested) and ``loss`` (``None`` without
            ``future_values``).
        """
        if past_values.dim() != 3:
            raise ShapeError(f"ttm past_values: expected B T C, got {tuple(past_values.shape)}")
        if past_values.shape[1] < self.context_length:
            raise ShapeError(
                f"ttm past_values: expected at least context_length={self.context_length} steps, "
                f"got {past_values.shape[1]}"
            )
        past_values = past_values[:, -self.context_length :]
        if past_observed_mask is not None:
            past_observed_mask = past_observed_mask[:, -self.context_length :]
        out = self._forward(
            past_values,
            past_observed_mask,
            future_values,
            freq_token,
            static_categorical_values,
            self.config.prediction_channel_indices,
            output_hidden_states,
        )
        out["loss"] = None
        if future_values is not None:
            target = future_values
            pfl = self.config.prediction_filter_length
            if pfl is not None and target.shape[1] != pfl:
                target = target[:, :pfl]
            idx = self.config.prediction_channel_indices
            if idx is not None and target.shape[2] == self.config.num_input_channels != len(idx):
                target = target[..., idx]
            out["loss"] = self._loss(out["prediction_outputs"], target)
        return out

    def _loss(self, pred: Tensor, target: Tensor) -> Tensor | None:
        kind = self.config.loss
        if kind == "mse":
            return F.mse_loss(pred, target)
        if kind == "mae":
            return F.l1_loss(pred, target)
        if kind == "huber":
            return F.huber_loss(pred, target, delta=self.config.huber_delta)
        if kind == "pinball":
            err = target - pred
            q = self.config.quantile
            return torch.max(q * err, (q - 1) * err).mean()
        return None

    def _forward(
        self,
        past_values: Tensor,
        observed: Tensor | None,
        future_values: Tensor | None,
        freq_token: Tensor | int | None,
        static_categorical_values: Tensor | None,
        prediction_channels: list[int] | None,
        output_hidden_states: bool,
    ) -> dict[str, Any]:
        cfg = self.config
        if observed is None:
            observed = torch.ones_like(past_values)
        scaler = _SCALERS[cfg.scaling if isinstance(cfg.scaling, str) else None]
        scaled, loc, scale = scaler(past_values, observed.to(past_values.dtype))
        # (B, T, C) -> (B, C, P, patch_length); a context not a multiple of the stride drops its oldest steps
        n_patches = cfg.num_patches - int(cfg.resolution_prefix_tuning)
        start = cfg.context_length - (cfg.patch_length + cfg.patch_stride * (n_patches - 1))
        patches = scaled[:, start:].unfold(1, cfg.patch_length, cfg.patch_stride)  # (B, P, C, patch_length)
        patches = patches.transpose(1, 2).contiguous()  # (B, C, P, patch_length)

        token = self._freq_token_tensor(freq_token, past_values) if cfg.resolution_prefix_tuning else None
        hidden: list[Tensor] | None = [] if output_hidden_states else None
        encoded = self.backbone.encoder(patches, token, hidden)  # (B, C, P', D)
        decoded = encoded
        if self.decoder is not None:
            decoded = self.decoder(encoded, patches, static_categorical_values, hidden)  # (B, C, P', D_dec)
        forecast = self.head(decoded, past_values, future_values, prediction_channels)  # (B, L, C_pred)
        if prediction_channels is not None:
            loc, scale = loc[..., prediction_channels], scale[..., prediction_channels]
        return {
            "prediction_outputs": forecast * scale + loc,
            "backbone_hidden_state": encoded,
            "decoder_hidden_state": decoded,
            "hidden_states": hidden if hidden is not None else [],
            "loc": loc,
            "scale": scale,
        }

    def _freq_token_tensor(self, freq_token: Tensor | int | None, like: Tensor) -> Tensor:
        if freq_token is None:
            freq_token = self.freq_token
        if freq_token is None:
            raise ShapeError(
                "this TTM was trained with a frequency prefix token: pass freq_token or build it with "
                f"backbone.freq_token (one of {_token_names()})"
            )
        if isinstance(freq_token, int):
            return torch.full((like.shape[0],), freq_token, dtype=torch.long, device=like.device)
        if freq_token.dim() != 1 or freq_token.shape[0] != like.shape[0]:
            raise ShapeError(f"ttm freq_token: expected (B,) with B={like.shape[0]}, got {tuple(freq_token.shape)}")
        return freq_token

    # -- the backbone contract --------------------------------------------------------------
    def forward_features(
        self,
        x: Tensor,
        x_mask: Tensor | None = None,
        future_exog: Tensor | None = None,
        freq_token: Tensor | int | None = None,
        static_categorical_values: Tensor | None = None,
    ) -> Tensor:
        """De-normalised forecast of the target channels with a trailing feature axis of 1.

        Args:
            x: ``(B, T, C_in)`` with ``T == context_length``: the target channels first, then the
                ``n_exog`` exogenous channels. Channel-independent models (``common_channel`` encoder
                and decoder, no forecast channel mixing) take any number of targets; the others need
                ``C_in == num_input_channels``.
            x_mask: ``(B, T, C_in)``, 1 observed, 0 missing or padded (upstream ``past_observed_mask``):
                the scaling statistics use only observed steps.
            future_exog: ``(B, L, n_exog)`` known future values of the exogenous channels, used by
                forecast channel mixing (ignored otherwise).
            freq_token: ``(B,)`` or one int frequency token; default the model's ``freq_token``.
            static_categorical_values: ``(B, n_categorical)`` category ids, for models with
                ``categorical_vocab_size_list``.

        Returns:
            ``(B, L, C, 1)`` with ``L`` the output length (``prediction_filter_length`` when set) and
            ``C = C_in - n_exog`` targets.

        Raises:
            ShapeError: If a shape does not match the above.
        """
        cfg = self.config
        if x.dim() != 3:
            raise ShapeError(f"ttm input: expected B T C, got {tuple(x.shape)}")
        if x.shape[1] != self.context_length:
            raise ShapeError(
                f"ttm input: expected B T C with T = context_length = {self.context_length}, got T = {x.shape[1]} "
                f"(shape {tuple(x.shape)}): make the data windows {self.context_length} steps long"
            )
        batch, _, c_in = x.shape
        n_targets = c_in - self.n_exog
        if n_targets < 1:
            raise ShapeError(
                f"ttm input: expected B T C with C > n_exog={self.n_exog} (targets first, then "
                f"{self.n_exog} exogenous channels), got {tuple(x.shape)}"
            )
        if cfg.channel_dependent and c_in != cfg.num_input_channels:
            raise ShapeError(
                f"ttm input: this model mixes channels and was built for {cfg.num_input_channels} input channels "
                f"({cfg.num_input_channels - self.n_exog} targets + {self.n_exog} exog), got C = {c_in} "
                f"(shape {tuple(x.shape)})"
            )
        targets = list(range(n_targets))
        exog = list(range(n_targets, c_in))
        if cfg.channel_dependent and (
            cfg.prediction_channel_indices not in (None, targets) or (cfg.exogenous_channel_indices or []) != exog
        ):
            raise ShapeError(
                f"ttm input: this model's channels are predicted={cfg.prediction_channel_indices}, "
                f"exogenous={cfg.exogenous_channel_indices}, not targets first then exogenous: use forward_official"
            )
        if x_mask is not None and x_mask.shape != x.shape:
            raise ShapeError(f"ttm x_mask: expected the shape of x {tuple(x.shape)}, got {tuple(x_mask.shape)}")
        future = None
        if cfg.enable_forecast_channel_mixing and self.n_exog:
            want = (batch, self.horizon, self.n_exog)
            if future_exog is None:
                raise ShapeError(
                    f"ttm: forecast channel mixing with {self.n_exog} exogenous channels needs future_exog "
                    f"(B, L, n_exog) = {want}"
                )
            if tuple(future_exog.shape) != want:
                raise ShapeError(f"ttm future_exog: expected (B, L, n_exog) = {want}, got {tuple(future_exog.shape)}")
            future = torch.cat([future_exog.new_zeros(batch, self.horizon, n_targets), future_exog], dim=-1)
        if isinstance(freq_token, Tensor) and cfg.resolution_prefix_tuning:
            vocab = cfg.frequency_token_vocab_size
            if bool(((freq_token < 0) | (freq_token >= vocab)).any()):
                raise ShapeError(f"ttm freq_token: tokens must be in 0..{vocab - 1}, got {freq_token.tolist()}")
        out = self._forward(
            x,
            x_mask,
            future,
            freq_token,
            static_categorical_values,
            targets if self.n_exog else None,
            output_hidden_states=False,
        )
        return out["prediction_outputs"].unsqueeze(-1)  # (B, L, C, 1)

    def forward(self, x: Tensor, x_mask: Tensor | None = None, future_exog: Tensor | None = None) -> Tensor:
        """Same as :meth:`forward_features`."""
        return self.forward_features(x, x_mask=x_mask, future_exog=future_exog)

    # -- weights ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source: str | os.PathLike[str], freq_token: int | None = None) -> TTM:
        """A model with exactly the geometry of ``source``'s ``config.json``, with its weights loaded.

        Args:
            source: A local folder (``config.json`` + ``model.safetensors``) or
                ``hf://org/repo[@revision]``.
            freq_token: Default frequency token (checked against the checkpoint's vocabulary).

        Raises:
            CheckpointError: If the folder, config or weights cannot be used.
        """
        folder = _resolve(source)
        config = read_checkpoint_config(folder, str(source))
        try:
            model = cls(config, freq_token=freq_token)
        except ConfigError as err:
            raise CheckpointError(f"cannot build ttm from {folder / 'config.json'}: {err}") from None
        model.load_pretrained(folder)
        return model

    def example_inputs(self, batch: int = 2) -> dict[str, Tensor]:
        """Random inputs shaped for this model: ``x`` (B, context_length, C) with C the checkpoint's
        input channels, plus ``future_exog`` when forecast channel mixing takes exogenous channels."""
        gen = torch.Generator().manual_seed(0)
        c = max(self.config.num_input_channels, self.n_exog + 1)
        out = {"x": torch.randn(batch, self.context_length, c, generator=gen)}
        if self.config.enable_forecast_channel_mixing and self.n_exog:
            out["future_exog"] = torch.randn(batch, self.horizon, self.n_exog, generator=gen)
        return out

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write the official layout (``config.json`` + ``model.safetensors``) that :meth:`load_pretrained` reads strictly."""
        from sciadapt.backbones._saved import save_state
        from sciadapt.runs import atomic_write_text

        folder = Path(directory)
        atomic_write_text(folder / "config.json", json.dumps(self.config.to_dict(), indent=2))
        return save_state(self.state_dict(), folder, "ttm")

    def load_pretrained(self, source: str | os.PathLike[str]) -> None:
        """Load an official checkpoint (``config.json`` + weights) into this model.

        The checkpoint's geometry must equal this model's. Modules this model adds on purpose to a
        checkpoint that lacks them (a ``mix_channel`` decoder's channel mixers, forecast channel
        mixing, categorical embeddings: upstream's channel-mixing fine-tuning) keep their fresh
        initialisation and are named in a log line; every other key loads strictly.

        Args:
            source: A local folder or ``hf://org/repo[@revision]``.

        Raises:
            CheckpointError: Naming the file and every mismatch (geometry, frequency token outside
                the checkpoint's vocabulary, missing / unexpected / mis-shaped keys).
        """
        folder = _resolve(source)
        ckpt = read_checkpoint_config(folder, str(source))
        path = weights_file(folder, _WEIGHT_FILES)
        problems = self._config_mismatch(ckpt)
        new_modules = self._new_module_patterns(ckpt)
        state = read_state_dict(path)
        own = self.state_dict()
        fresh = sorted(k for k in own if k not in state and any(fnmatch.fnmatchcase(k, p) for p in new_modules))
        problems += describe_mismatch({k: v for k, v in own.items() if k not in fresh}, state)
        if problems:
            raise CheckpointError(
                f"cannot load {path} into ttm ({_describe(self.config)}):\n" + "\n".join(f"  - {p}" for p in problems)
            )
        result = self.load_state_dict(state, strict=False)
        if result.unexpected_keys or sorted(result.missing_keys) != fresh:  # describe_mismatch should have caught it
            raise CheckpointError(
                f"cannot load {path}: missing {result.missing_keys}, unexpected {result.unexpected_keys}"
            )
        if fresh:
            modules = sorted({_module_group(k) for k in fresh})
            log.info(
                "ttm: loaded %s; newly initialised (not in the checkpoint, added by this config): %s",
                path,
                ", ".join(modules),
            )

    def _config_mismatch(self, ckpt: TTMConfig) -> list[str]:
        """Config differences between checkpoint and model that the weights cannot absorb."""
        cfg = self.config
        names = [
            "context_length",
            "prediction_length",
            "patch_length",
            "patch_stride",
            "d_model",
            "num_layers",
            "adaptive_patching_levels",
            "expansion_factor",
            "mode",
            "gated_attn",
            "self_attn",
            "use_positional_encoding",
            "resolution_prefix_tuning",
            "use_decoder",
            "scaling",
        ]
        if ckpt.use_decoder:
            names += [
                "decoder_d_model",
                "decoder_num_layers",
                "decoder_adaptive_patching_levels",
                "decoder_raw_residual",
            ]
        if ckpt.self_attn:
            names.append("self_attn_heads")
        if ckpt.use_positional_encoding:
            names.append("positional_encoding_type")
        if ckpt.resolution_prefix_tuning:
            names.append("frequency_token_vocab_size")
        if ckpt.enable_forecast_channel_mixing:
            names += [
                "enable_forecast_channel_mixing",
                "fcm_context_length",
                "fcm_use_mixer",
                "fcm_gated_attn",
                "prediction_channel_indices",
                "exogenous_channel_indices",
            ]
            if ckpt.fcm_use_mixer:
                names.append("fcm_mix_layers")
        if ckpt.categorical_vocab_size_list is not None:
            names.append("categorical_vocab_size_list")
        if ckpt.use_decoder and ckpt.decoder_mode == "mix_channel":
            names.append("decoder_mode")
        if ckpt.channel_dependent:
            names.append("num_input_channels")
        problems = [
            f"{n}: the checkpoint has {getattr(ckpt, n)!r}, the model {getattr(cfg, n)!r}"
            for n in names
            if _norm(n, getattr(ckpt, n)) != _norm(n, getattr(cfg, n))
        ]
        if ckpt.resolution_prefix_tuning and self.freq_token is not None:
            if not 0 <= self.freq_token < ckpt.frequency_token_vocab_size:
                problems.append(
                    f"freq_token={self.freq_token} is not in the checkpoint's frequency vocabulary "
                    f"0..{ckpt.frequency_token_vocab_size - 1} (frequency_token_vocab_size={ckpt.frequency_token_vocab_size})"
                )
        return problems

    def _new_module_patterns(self, ckpt: TTMConfig) -> list[str]:
        """Globs of the modules this model adds to ``ckpt`` on purpose (they start freshly initialised)."""
        cfg = self.config
        out = []
        if cfg.use_decoder and cfg.decoder_mode == "mix_channel" and ckpt.decoder_mode != "mix_channel":
            out.append("decoder.decoder_block.*channel_feature_mixer.*")
        if cfg.enable_forecast_channel_mixing and not ckpt.enable_forecast_channel_mixing:
            out.append("head.fcm_block.*")
        if cfg.categorical_vocab_size_list is not None and ckpt.categorical_vocab_size_list is None:
            out.append("decoder.decoder_cat_embedding_layer.*")
        return out


def _norm(name: str, value: Any) -> Any:
    return "batch" in str(value).lower() if name == "norm_mlp" else value


def _module_group(key: str) -> str:
    """``decoder.decoder_block.mixers.0.channel_feature_mixer.mlp.fc1.weight`` -> the module up to the new part."""
    for marker in ("channel_feature_mixer", "fcm_block", "decoder_cat_embedding_layer"):
        if marker in key:
            return key.split(marker)[0] + marker
    return key


def _describe(config: TTMConfig) -> str:
    return (
        f"context_length={config.context_length}, prediction_length={config.prediction_length}, "
        f"patch_length={config.patch_length}, d_model={config.d_model}"
    )


def _token_names() -> str:
    return ", ".join(f"{k}={v}" for k, v in FREQUENCY_TOKENS.items() if k not in ("H", "D"))


def _resolve(source: str | os.PathLike[str]) -> Path:
    return resolve_folder(source, ["config.json"], _WEIGHT_FILES)


def read_checkpoint_config(folder: Path, source: str | None = None) -> TTMConfig:
    """The :class:`TTMConfig` of ``folder/config.json``.

    Raises:
        CheckpointError: Naming the file when it is unreadable or holds settings not supported here.
    """
    path = folder / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    if data.get("model_type", "tinytimemixer") != "tinytimemixer":
        raise CheckpointError(f"{path}: model_type is {data['model_type']!r}, not a TTM (tinytimemixer)")
    try:
        return TTMConfig.from_dict(data)
    except ConfigError as err:
        where = f" ({source})" if source and str(source) != str(folder) else ""
        raise CheckpointError(
            f"{path}{where} cannot be used by this TTM implementation:\n" + "\n".join(f"  - {p}" for p in err.problems)
        ) from None


# ---------------------------------------------------------------------------------------------
# official checkpoints and revision choice (granite-tsfm get_model)


class OfficialCheckpoint(NamedTuple):
    """One entry of upstream ``ttm.yaml``."""

    key: str
    release: str
    repo: str
    revision: str
    context_length: int
    prediction_length: int


_R1 = "ibm-granite/granite-timeseries-ttm-r1"
_R2 = "ibm-granite/granite-timeseries-ttm-r2"
_RESEARCH = "ibm-research/ttm-research-r2"


def _entries() -> tuple[OfficialCheckpoint, ...]:
    rows = [("512-96-r1", "r1", _R1, "main", 512, 96), ("1024-96-r1", "r1", _R1, "1024_96_v1", 1024, 96)]
    for ctx in (512, 1024, 1536):
        for pred in (96, 192, 336, 720):
            rev = "main" if (ctx, pred) == (512, 96) else f"{ctx}-{pred}-r2"
            rows.append((f"{ctx}-{pred}-r2", "r2", _R2, rev, ctx, pred))
    for key in (
        "52-16-ft-r2.1",
        "52-16-ft-l1-r2.1",
        "90-30-ft-r2.1",
        "90-30-ft-l1-r2.1",
        "180-60-ft-l1-r2.1",
        "360-60-ft-l1-r2.1",
        "512-48-ft-r2.1",
        "512-48-ft-l1-r2.1",
        "512-96-ft-r2.1",
        "512-96-ft-l1-r2.1",
    ):
        c, p = key.split("-")[:2]
        rows.append((key, "r2.1", _R2, key, int(c), int(p)))
    for ctx in (512, 1024, 1536):
        for pred in (96, 192, 336, 720):
            key = f"{ctx}-{pred}-ft-r2"
            rows.append((key, "r2", _RESEARCH, "main" if (ctx, pred) == (512, 96) else key, ctx, pred))
    return tuple(OfficialCheckpoint(*r) for r in rows)


#: Every checkpoint of granite-tsfm's ``ttm.yaml`` (r3 excluded), in that file's order.
OFFICIAL_CHECKPOINTS = _entries()
RELEASES = {"r1": _R1, "r2": _R2, "research": _RESEARCH}


def _release_of_repo(repo_id: str) -> str | None:
    if repo_id in ("ibm-granite/granite-timeseries-ttm-r1", "ibm-granite/granite-timeseries-ttm-v1", "ibm/TTM"):
        return "r1"
    return {_R2: "r2", _RESEARCH: "research"}.get(repo_id)


def select_checkpoint(
    context_length: int,
    horizon: int,
    release: str = "r2",
    freq_prefix_tuning: bool = False,
    prefer_l1_loss: bool = False,
    freq: str | None = None,
) -> OfficialCheckpoint:
    """The checkpoint granite-tsfm's ``get_model`` picks (``prefer_longer_context=True``, no ``force_return``).

    Args:
        context_length: History available (the chosen context is the longest one not above it).
        horizon: Forecast length wanted (the chosen prediction length is the shortest covering it).
        release: ``"r1"``, ``"r2"`` (r2 and r2.1 of granite-timeseries-ttm-r2) or ``"research"``.
        freq_prefix_tuning: Prefer frequency-token (``-ft-``) checkpoints (only at contexts <= 512).
        prefer_l1_loss: Prefer checkpoints trained with an L1 loss (only at contexts <= 512).
        freq: Data resolution (a key of :data:`FREQUENCY_TOKENS`); daily or coarser selects r2.1 only.

    Raises:
        ConfigError: No checkpoint fits; the message lists the available (context, prediction) pairs.
    """
    if release not in RELEASES:
        raise ConfigError(f"ttm release: expected one of {', '.join(RELEASES)}, got {release!r}")
    repo = RELEASES[release]
    pool = [c for c in OFFICIAL_CHECKPOINTS if c.repo == repo and (release != "r1" or c.release == "r1")]
    available = ", ".join(f"{c.context_length}-{c.prediction_length} ({c.revision})" for c in pool)
    if release != "research" and FREQUENCY_TOKENS.get(freq or "", 0) >= 8:
        pool = [c for c in pool if c.release == "r2.1"]
    models = [c for c in pool if c.context_length <= context_length]
    if not models:
        raise ConfigError(
            f"no {repo} checkpoint has a context_length <= {context_length} (with freq={freq!r}); available: {available}"
        )
    if min(context_length, max(c.context_length for c in models)) <= _LOW_RESOLUTION_MAX_CONTEXT:
        if prefer_l1_loss and any("-l1-" in c.key for c in models):
            models = [c for c in models if "-l1-" in c.key]
        if freq_prefix_tuning and any("-ft-" in c.key for c in models):
            models = [c for c in models if "-ft-" in c.key]
    models.sort(key=lambda c: (-c.context_length, c.prediction_length))
    models = [c for c in models if c.prediction_length >= horizon]
    if not models:
        raise ConfigError(
            f"no {repo} checkpoint with context_length <= {context_length} predicts {horizon} steps or more; "
            f"available: {available}"
        )
    return models[0]


def ttm_revision(context_length: int, horizon: int, release: str = "r2") -> str:
    """The hub revision granite-tsfm's ``get_model`` loads for this context and horizon.

    >>> ttm_revision(512, 96), ttm_revision(1024, 96), ttm_revision(512, 24)
    ('main', '1024-96-r2', '512-48-ft-r2.1')

    See :func:`select_checkpoint` for the rule and the options.
    """
    return select_checkpoint(context_length, horizon, release).revision


# ---------------------------------------------------------------------------------------------
# builders


def _scratch_geometry(context_length: int) -> dict[str, int]:
    """The r2 family's geometry scaled to a context (512 -> the published 512-96 model).

    r2 512 uses 8 patches of 64 steps, 1024/1536 use patches of 128; d_model = 3 * patch_length and
    decoder_d_model = 2 * patch_length in all of them; three adaptive levels of two layers.
    """
    patch = 1
    while patch * 2 <= min(128, context_length // 8):
        patch *= 2
    d_model = 3 * patch
    levels = 3
    while levels > 1 and d_model // 2 ** (levels - 1) <= 4:
        levels -= 1
    return {
        "patch_length": patch,
        "patch_stride": patch,
        "d_model": d_model,
        "decoder_d_model": 2 * patch,
        "num_layers": 2,
        "decoder_num_layers": 2,
        "adaptive_patching_levels": levels,
        "expansion_factor": 2,
    }


# Parameters that fix the weights' shapes or meaning: with `weights` they come from config.json.
_CHECKPOINT_FIELDS = (
    "prediction_length",
    "mode",
    "resolution_prefix_tuning",
    "frequency_token_vocab_size",
    "patch_length",
    "patch_stride",
    "d_model",
    "decoder_d_model",
    "num_layers",
    "decoder_num_layers",
    "adaptive_patching_levels",
    "expansion_factor",
    "gated_attn",
    "norm_mlp",
    "self_attn",
    "self_attn_heads",
    "use_positional_encoding",
    "decoder_raw_residual",
    "scaling",
)
# Head-side settings a checkpoint may be adapted with (upstream's channel-mixing fine-tuning).
_ADAPTATION_FIELDS = (
    "decoder_mode",
    "enable_forecast_channel_mixing",
    "fcm_context_length",
    "fcm_use_mixer",
    "fcm_mix_layers",
    "fcm_gated_attn",
    "fcm_prepend_past",
    "dropout",
    "head_dropout",
)


def _freq_token_value(freq_token: int | str | None) -> int | None:
    if freq_token is None or isinstance(freq_token, int):
        return freq_token
    if freq_token not in FREQUENCY_TOKENS:
        raise ConfigError(f"backbone.freq_token: {freq_token!r} is not a known resolution; use one of {_token_names()}")
    return FREQUENCY_TOKENS[freq_token]


def _pick_revision(weights: str, context_length: int, horizon: int, prefix_tuning: bool, freq: str | None) -> str:
    """``hf://`` reference without revision to an official TTM repository -> with the get_model revision."""
    if not is_hub(weights):
        return weights
    ref = parse_hub(weights)
    release = _release_of_repo(ref.repo_id)
    if ref.revision is not None or release is None or ref.subfolder:
        return weights
    entry = select_checkpoint(context_length, horizon, release, freq_prefix_tuning=prefix_tuning, freq=freq)
    if entry.context_length != context_length:
        contexts = sorted({c.context_length for c in OFFICIAL_CHECKPOINTS if c.repo == entry.repo})
        raise ConfigError(
            f"backbone.weights={weights}: no checkpoint takes context_length={context_length} (get_model would use "
            f"{entry.key}, context {entry.context_length}); set data.context_length to one of {contexts} or pin a "
            "revision with @<revision>"
        )
    log.info(
        "ttm: %s has no revision; using %s@%s (context %d, prediction %d) as granite-tsfm's get_model would",
        weights,
        weights,
        entry.revision,
        entry.context_length,
        entry.prediction_length,
    )
    return f"{weights}@{entry.revision}"


@BACKBONES.register("ttm")
def build_ttm(
    context_length: Annotated[int, FromData] = 512,
    horizon: Annotated[int, FromData] = 96,
    n_targets: Annotated[int, FromData] = 1,
    n_exog: Annotated[int, FromData] = 0,
    weights: str | None = None,
    prediction_length: int | None = None,
    prediction_filter_length: int | None = None,
    mode: str | None = None,
    decoder_mode: str | None = None,
    enable_forecast_channel_mixing: bool | None = None,
    fcm_context_length: int | None = None,
    fcm_use_mixer: bool | None = None,
    fcm_mix_layers: int | None = None,
    fcm_gated_attn: bool | None = None,
    fcm_prepend_past: bool | None = None,
    resolution_prefix_tuning: bool | None = None,
    frequency_token_vocab_size: int | None = None,
    freq_token: int | str | None = None,
    patch_length: int | None = None,
    patch_stride: int | None = None,
    d_model: int | None = None,
    decoder_d_model: int | None = None,
    num_layers: int | None = None,
    decoder_num_layers: int | None = None,
    adaptive_patching_levels: int | None = None,
    expansion_factor: int | None = None,
    gated_attn: bool | None = None,
    norm_mlp: str | None = None,
    self_attn: bool | None = None,
    self_attn_heads: int | None = None,
    use_positional_encoding: bool | None = None,
    decoder_raw_residual: bool | None = None,
    scaling: str | None = None,
    dropout: float | None = None,
    head_dropout: float | None = None,
) -> TTM:
    """Build a Tiny Time Mixer, from scratch or from official weights.

    With ``weights`` the geometry comes from the checkpoint's ``config.json``; a geometry parameter
    given here must agree with it. Head-side settings (``decoder_mode``, forecast channel mixing,
    dropouts) may differ: the modules they add start freshly initialised (logged), as in upstream's
    channel-mixing fine-tuning. ``null`` means "the checkpoint's value" (with weights) or "the
    default" (from scratch: upstream's defaults, geometry as :func:`_scratch_geometry`).

    Args:
        context_length: Input steps ``T`` (must equal the checkpoint's).
        horizon: Forecast steps returned ``L``. With weights, a shorter horizon than the checkpoint's
            prediction length is cut with ``prediction_filter_length`` (logged); a longer one is an error.
        n_targets: Target channels (the leading channels of ``x``).
        n_exog: Exogenous channels after the targets (past covariates; with forecast channel mixing also
            known in the future, given as ``future_exog``).
        weights: A local folder with ``config.json`` + ``model.safetensors`` or ``hf://org/repo[@rev]``.
            ``hf://ibm-granite/granite-timeseries-ttm-r2`` (or ``-r1``, ``ibm-research/ttm-research-r2``)
            without ``@rev`` picks the revision from context_length and horizon (see module docstring).
        prediction_length: Steps of the linear head (default: the checkpoint's, or ``horizon``).
        prediction_filter_length: Upstream's output cut; it is the returned length, so it must equal
            ``horizon`` (set automatically when ``horizon < prediction_length``).
        mode: ``common_channel`` or ``mix_channel`` encoder.
        decoder_mode: ``common_channel`` or ``mix_channel`` decoder.
        enable_forecast_channel_mixing: Refine the forecasts across channels with the exogenous
            channels' future values (upstream FCM head).
        fcm_context_length: FCM window half-width.
        fcm_use_mixer: FCM with a mixer over its windows.
        fcm_mix_layers: FCM mixer layers.
        fcm_gated_attn: FCM gating.
        fcm_prepend_past: FCM takes the last context steps before the first forecast step.
        resolution_prefix_tuning: Frequency prefix token (from scratch); with an hf:// reference without
            revision, prefer the ``-ft-`` checkpoints.
        frequency_token_vocab_size: Frequency vocabulary (from scratch).
        freq_token: Default frequency token: an int or a resolution name (``"h"``, ``"15min"``, ``"D"``,
            see :data:`FREQUENCY_TOKENS`); required by frequency-token models.
        patch_length: Steps per patch.
        patch_stride: Steps between patch starts.
        d_model: Encoder features per patch.
        decoder_d_model: Decoder features per patch.
        num_layers: Mixer layers per adaptive level (or in total without levels).
        decoder_num_layers: Decoder mixer layers.
        adaptive_patching_levels: Adaptive patching levels of the encoder.
        expansion_factor: MLP expansion.
        gated_attn: Softmax gating after each MLP.
        norm_mlp: ``LayerNorm`` or ``BatchNorm``.
        self_attn: Tiny self-attention over patches.
        self_attn_heads: Its heads.
        use_positional_encoding: Sin/cos positional encoding.
        decoder_raw_residual: Add embedded raw patches to the decoder input.
        scaling: ``std``, ``mean`` or ``null`` (none).
        dropout: Encoder dropout.
        head_dropout: Decoder and head dropout.

    Returns:
        The model.

    Raises:
        ConfigError: Invalid or conflicting settings, or no official checkpoint fits.
        CheckpointError: The weights cannot be fetched, read or loaded.
    """
    given: dict[str, Any] = {
        "prediction_length": prediction_length,
        "mode": mode,
        "decoder_mode": decoder_mode,
        "enable_forecast_channel_mixing": enable_forecast_channel_mixing,
        "fcm_context_length": fcm_context_length,
        "fcm_use_mixer": fcm_use_mixer,
        "fcm_mix_layers": fcm_mix_layers,
        "fcm_gated_attn": fcm_gated_attn,
        "fcm_prepend_past": fcm_prepend_past,
        "resolution_prefix_tuning": resolution_prefix_tuning,
        "frequency_token_vocab_size": frequency_token_vocab_size,
        "patch_length": patch_length,
        "patch_stride": patch_stride,
        "d_model": d_model,
        "decoder_d_model": decoder_d_model,
        "num_layers": num_layers,
        "decoder_num_layers": decoder_num_layers,
        "adaptive_patching_levels": adaptive_patching_levels,
        "expansion_factor": expansion_factor,
        "gated_attn": gated_attn,
        "norm_mlp": norm_mlp,
        "self_attn": self_attn,
        "self_attn_heads": self_attn_heads,
        "use_positional_encoding": use_positional_encoding,
        "decoder_raw_residual": decoder_raw_residual,
        "scaling": scaling,
        "dropout": dropout,
        "head_dropout": head_dropout,
    }
    given = {k: v for k, v in given.items() if v is not None}
    problems = []
    for name, value, minimum in (("context_length", context_length, 2), ("horizon", horizon, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            problems.append(f"backbone.{name}: expected an int >= {minimum}, got {value!r}")
    for name, value, minimum in (("n_targets", n_targets, 1), ("n_exog", n_exog, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            problems.append(f"backbone.{name}: expected an int >= {minimum}, got {value!r}")
    if problems:
        raise ConfigError(problems)
    token = _freq_token_value(freq_token)
    channels: dict[str, Any] = {
        "num_input_channels": n_targets + n_exog,
        "prediction_channel_indices": list(range(n_targets)) if n_exog else None,
        "exogenous_channel_indices": list(range(n_targets, n_targets + n_exog)) if n_exog else None,
    }

    if weights is None:
        values: dict[str, Any] = {**_scratch_geometry(context_length), **given}
        values.setdefault("prediction_length", horizon)
        if values.get("resolution_prefix_tuning") and "frequency_token_vocab_size" not in values:
            values["frequency_token_vocab_size"] = max(FREQUENCY_TOKENS.values()) + 1
        config = TTMConfig(context_length=context_length, **values, **channels)
        config.prediction_filter_length = _filter_length(config.prediction_length, horizon, prediction_filter_length)
        if token is not None and not config.resolution_prefix_tuning:
            log.info("ttm: freq_token=%s is not used: the model has no frequency prefix token", freq_token)
            token = None
        if config.resolution_prefix_tuning and token is None:
            raise ConfigError(f"backbone.freq_token: required with resolution_prefix_tuning (one of {_token_names()})")
        return TTM(config, freq_token=token)

    weights = _pick_revision(
        weights,
        context_length,
        horizon,
        bool(resolution_prefix_tuning),
        freq_token if isinstance(freq_token, str) else None,
    )
    folder = _resolve(weights)
    ckpt = read_checkpoint_config(folder, weights)
    where = f"{folder / 'config.json'}" + (f" ({weights})" if is_hub(weights) else "")
    if context_length != ckpt.context_length:
        problems.append(
            f"context_length={context_length} but the checkpoint {where} has context_length={ckpt.context_length}: "
            "set data.context_length to it or choose other weights"
        )
    for name in _CHECKPOINT_FIELDS:
        if name in given and _norm(name, given[name]) != _norm(name, getattr(ckpt, name)):
            problems.append(
                f"backbone.{name}={given[name]!r} but the checkpoint {where} has {name}={getattr(ckpt, name)!r}: "
                f"remove backbone.{name} (the weights fix it) or choose other weights"
            )
    if horizon > ckpt.prediction_length:
        problems.append(
            f"horizon={horizon} is longer than the checkpoint's prediction_length={ckpt.prediction_length} ({where}): "
            "lower data.horizon or choose a checkpoint with a longer prediction length"
        )
    if ckpt.channel_dependent and ckpt.num_input_channels != n_targets + n_exog:
        problems.append(
            f"the checkpoint {where} mixes channels and was trained on num_input_channels={ckpt.num_input_channels}, "
            f"the data has {n_targets} targets + {n_exog} exog = {n_targets + n_exog}"
        )
    if ckpt.resolution_prefix_tuning and token is None:
        problems.append(
            f"the checkpoint {where} uses a frequency prefix token: set backbone.freq_token to the data's "
            f"resolution (one of {_token_names()})"
        )
    if problems:
        raise ConfigError(problems)
    adapt = {k: v for k, v in given.items() if k in _ADAPTATION_FIELDS}
    config = dataclasses.replace(ckpt, **channels, **adapt, extra=dict(ckpt.extra))
    config.prediction_filter_length = _filter_length(config.prediction_length, horizon, prediction_filter_length)
    if config.prediction_filter_length is not None:
        log.info(
            "ttm: horizon %d is shorter than the checkpoint's prediction length %d: forecasting with "
            "prediction_filter_length=%d",
            horizon,
            config.prediction_length,
            horizon,
        )
    if token is not None and not config.resolution_prefix_tuning:
        log.info("ttm: freq_token=%s is not used: the checkpoint has no frequency prefix token", freq_token)
        token = None
    if token is not None and not 0 <= token < config.frequency_token_vocab_size:
        raise CheckpointError(
            f"freq_token={token} ({freq_token!r}) is not in the frequency vocabulary of {where}: "
            f"tokens 0..{config.frequency_token_vocab_size - 1} (frequency_token_vocab_size="
            f"{config.frequency_token_vocab_size})"
        )
    try:
        model = TTM(config, freq_token=token)
    except ConfigError as err:
        raise ConfigError([f"with the checkpoint {where}: {p}" for p in err.problems]) from None
    model.load_pretrained(folder)
    return model


def _filter_length(prediction_length: int, horizon: int, given: int | None) -> int | None:
    if given is not None and given != horizon:
        raise ConfigError(
            f"backbone.prediction_filter_length={given} but horizon={horizon}: the filter length is the forecast "
            "length returned, so it follows the horizon; remove it (or change data.horizon)"
        )
    if horizon > prediction_length:
        raise ConfigError(f"horizon={horizon} is longer than prediction_length={prediction_length}")
    return horizon if horizon < prediction_length else None


@BACKBONES.register("ttm_tiny")
def build_ttm_tiny(
    context_length: Annotated[int, FromData] = 64,
    horizon: Annotated[int, FromData] = 16,
    n_targets: Annotated[int, FromData] = 1,
    n_exog: Annotated[int, FromData] = 0,
    mode: str = "common_channel",
    decoder_mode: str = "common_channel",
    enable_forecast_channel_mixing: bool = False,
    resolution_prefix_tuning: bool = False,
    freq_token: int | str | None = None,
    scaling: str | None = "std",
    dropout: float = 0.2,
    head_dropout: float = 0.2,
) -> TTM:
    """A tiny TTM for tests and smoke runs (9k parameters at 3 channels, as the ``tiny`` golden fixture).

    Patches of 8 steps, d_model 16, decoder_d_model 8, two adaptive levels of two layers, one decoder
    layer. Takes a subset of :func:`build_ttm`'s arguments; no weights.
    """
    return build_ttm(
        context_length=context_length,
        horizon=horizon,
        n_targets=n_targets,
        n_exog=n_exog,
        mode=mode,
        decoder_mode=decoder_mode,
        enable_forecast_channel_mixing=enable_forecast_channel_mixing,
        fcm_use_mixer=True if enable_forecast_channel_mixing else None,
        resolution_prefix_tuning=resolution_prefix_tuning,
        frequency_token_vocab_size=max(FREQUENCY_TOKENS.values()) + 1 if resolution_prefix_tuning else None,
        freq_token=freq_token,
        patch_length=8,
        patch_stride=8,
        d_model=16,
        decoder_d_model=8,
        num_layers=2,
        decoder_num_layers=1,
        adaptive_patching_levels=2,
        expansion_factor=2,
        scaling=scaling,
        dropout=dropout,
        head_dropout=head_dropout,
    )
