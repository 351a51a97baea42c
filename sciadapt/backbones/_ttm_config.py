"""TTM's configuration: upstream ``TinyTimeMixerConfig`` fields, the ``config.json`` keys it accepts, mixer geometry.

Private to :mod:`sciadapt.backbones.ttm`, which re-exports the public names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from sciadapt.errors import ConfigError

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


def token_names() -> str:
    """The frequency tokens as ``name=token`` pairs, for messages (one name per token)."""
    return ", ".join(f"{k}={v}" for k, v in FREQUENCY_TOKENS.items() if k not in ("H", "D"))


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


__all__ = ["FREQUENCY_TOKENS", "LOSSES", "MODES", "SCALINGS", "MixerSpec", "TTMConfig", "token_names"]
