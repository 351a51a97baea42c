"""TTM's building blocks and scalers; attribute names are the upstream ones (they are the state_dict keys).

Private to :mod:`sciadapt.backbones.ttm`: :class:`~sciadapt.backbones.ttm.TTM` assembles ``TTMBackbone``,
``Decoder`` and ``PredictionHead`` and scales its input with one of :data:`SCALERS`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from sciadapt.backbones._ttm_config import MixerSpec, TTMConfig
from sciadapt.errors import ShapeError


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
        out: Tensor = self.batchnorm(x.transpose(1, 2))
        return out.transpose(1, 2)


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
            return cast(Tensor, self.norm(x))
        b, c, p, d = x.shape
        out: Tensor = self.norm(x.reshape(b * c, p, d))  # (B*C, P, D): channels folded into the batch
        return out.reshape(b, c, p, d)


class MLP(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout, hidden size ``expansion_factor * in``."""

    def __init__(self, size: int, expansion_factor: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(size, size * expansion_factor)
        self.dropout1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(size * expansion_factor, size)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return cast(Tensor, self.dropout2(self.fc2(self.dropout1(F.gelu(self.fc1(x))))))


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
        return cast(Tensor, self.out_proj(rearrange(weights @ v, "n h p e -> n p (h e)")))


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
        h: Tensor = self.mlp(self.norm(x))
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
        h: Tensor = self.norm(x).permute(0, 3, 2, 1)  # (B, D, P, C)
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
        return cast(Tensor, self.feature_mixer(x))


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
        return cast(Tensor, self.mlp_mixer_encoder(x, hidden))


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
            h: Tensor = extended.unfold(1, self.window, 1)  # (B, L, C_tot, 2k+1)
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
        forecast: Tensor = self.base_forecast_block(x).transpose(-1, -2)  # (B, L, C)
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


#: ``scaling`` -> scaler: ``(x, observed) -> (scaled, loc, scale)``.
SCALERS: dict[str | None, Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]] = {
    "std": _std_scale,
    "mean": _mean_scale,
    None: _no_scale,
}


__all__ = ["SCALERS", "Decoder", "PredictionHead", "TTMBackbone"]
