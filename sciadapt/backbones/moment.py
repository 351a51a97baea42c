"""MOMENT (Goswami et al., ICML 2024): a T5 encoder over patches of univariate series.

Every channel is an independent series. A window of ``seq_len`` (512) steps is instance-normalised
(RevIN without affine parameters), cut into non-overlapping patches of ``patch_len`` (8) steps, each
patch is embedded linearly (or replaced by a learned mask token) and given a sinusoidal position, and
the patch tokens run through the encoder stack of a T5 model (RMS layer norm without bias, relative
position bias shared by all layers, attention without ``1/sqrt(d)`` scaling, gated-GELU feed-forward).
A task head reads the encoded patches:

* ``reconstruction``: ``Linear(d_model, patch_len)`` per patch (the pretrained head),
* ``forecasting``: ``Linear(n_patches * d_model, horizon)`` on each channel's flattened patches,
* ``classification``: mean over patches of the channels' concatenated embeddings, then a linear map,
* ``embedding``: no head; the patch embeddings are averaged over observed patches.

Module and parameter names follow ``momentfm`` and Hugging Face's ``T5Stack`` exactly, so the official
``AutonLab/MOMENT-1-{small,base,large}`` files load with ``strict=True`` and no key rewriting.

Reference: M. Goswami, K. Szafer, A. Choudhry, Y. Cai, S. Li, A. Dubrawski, "MOMENT: A Family of Open
Time-series Foundation Models", ICML 2024, https://arxiv.org/abs/2402.03885
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sciadapt.backbones._moment_config import (
    ACTIVATIONS,
    FEATURE_TASKS,
    FLAN_T5,
    POSITIONS,
    SIZES,
    TASKS,
    TINY,
    MomentConfig,
    T5Settings,
    head_summary,
    read_config,
    size_of,
)
from sciadapt.errors import CheckpointError, ConfigError, ShapeError
from sciadapt.hub import describe_mismatch, read_state_dict, resolve_folder
from sciadapt.registry import BACKBONES
from sciadapt.spec import FromData
from sciadapt.types import HORIZON_FEATURES, SERIES, check_shape

logger = logging.getLogger(__name__)

EMBEDDINGS = "B C D"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: Entries of the official files that the model does not need: ``pe`` is the fixed sinusoid and T5's
#: token embedding is never read (MOMENT feeds patch embeddings), so a file may lack either.
OPTIONAL_KEYS = ("patch_embedding.position_embedding.pe", "encoder.embed_tokens.weight")


# ---------------------------------------------------------------------------------------------
# input side: instance normalisation, patches, patch embedding


def patch_view(mask: Tensor, patch_len: int) -> Tensor:
    """``(..., T)`` step mask -> ``(..., T / patch_len)``: 1 where every step of the patch is observed."""
    return (mask.unfold(-1, patch_len, patch_len).sum(-1) == patch_len).long()


class RevIN(nn.Module):
    """Reversible instance normalisation over the time axis, statistics from observed steps only.

    The standard deviation is the population one with ``eps`` added *after* the square root, as in
    momentfm. Without ``affine`` the module has no parameters.

    Args:
        affine: Learn a scale and shift applied after normalising (undone before denormalising).
        eps: Added to the standard deviation.
    """

    def __init__(self, affine: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.affine = affine
        self.eps = eps
        if affine:
            self.affine_weight = nn.Parameter(torch.ones(1, 1, 1))
            self.affine_bias = nn.Parameter(torch.zeros(1, 1, 1))

    def normalize(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalise ``x`` ``(B, C, T)`` by the statistics of its steps where ``mask`` (broadcastable) is 1.

        Returns:
            The normalised series and the ``(B, C, 1)`` mean and standard deviation.
        """
        observed = (mask != 0).expand_as(x)
        count = observed.sum(-1, keepdim=True)  # a series with no observed step gets NaN statistics
        kept = torch.where(observed, x, torch.zeros_like(x))
        mean = (kept.sum(-1, keepdim=True) / count).detach()  # (B, C, 1)
        centred = torch.where(observed, x - mean, torch.zeros_like(x))
        std = ((centred.square().sum(-1, keepdim=True) / count).sqrt() + self.eps).detach()  # (B, C, 1)
        out = (x - mean) / std
        if self.affine:
            out = out * self.affine_weight + self.affine_bias
        return out, mean, std

    def denormalize(self, y: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """Map normalised values back to the input scale with the statistics from :meth:`normalize`."""
        if self.affine:
            y = (y - self.affine_bias) / (self.affine_weight + self.eps * self.eps)
        return y * std + mean


class SinusoidalPositions(nn.Module):
    """The fixed sine/cosine table of "Attention is all you need", kept as a persistent buffer ``pe``."""

    pe: Tensor

    def __init__(self, d_model: int, max_len: int = POSITIONS) -> None:
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (max_len, 1)
        freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * freq)
        pe[:, 1::2] = torch.cos(position * freq)
        self.register_buffer("pe", pe[None])  # (1, max_len, D)

    def forward(self, n: int) -> Tensor:
        return self.pe[:, :n]  # (1, n, D)


class PatchEmbedding(nn.Module):
    """Patch values -> tokens; masked patches become the learned ``mask_embedding``.

    Args:
        d_model: Token width ``D``.
        patch_len: Steps per patch.
        dropout: Dropout on the tokens.
        add_positional_embedding: Add the sinusoidal position of each patch.
        value_embedding_bias: Give the value projection a bias.
    """

    def __init__(
        self,
        d_model: int,
        patch_len: int,
        dropout: float,
        add_positional_embedding: bool = True,
        value_embedding_bias: bool = False,
    ) -> None:
        super().__init__()
        self.value_embedding = nn.Linear(patch_len, d_model, bias=value_embedding_bias)
        self.mask_embedding = nn.Parameter(torch.zeros(d_model))
        self.position_embedding = SinusoidalPositions(d_model) if add_positional_embedding else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, patches: Tensor, patch_mask: Tensor) -> Tensor:
        """Embed ``(..., P, patch_len)`` patches; ``patch_mask`` ``(..., P)`` (broadcastable) is 0 on masked ones.

        Returns:
            ``(..., P, D)`` tokens.
        """
        keep = patch_mask.unsqueeze(-1).to(patches.dtype)  # (..., P, 1)
        tokens = keep * self.value_embedding(patches) + (1 - keep) * self.mask_embedding
        if self.position_embedding is not None:
            tokens = tokens + self.position_embedding(patches.shape[-2])
        return cast(Tensor, self.dropout(tokens))


# ---------------------------------------------------------------------------------------------
# the T5 encoder stack (Raffel et al. 2020), with Hugging Face's module names


def relative_position_bucket(relative_position: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """T5's bidirectional bucketing of ``key - query`` offsets.

    Half the buckets serve keys after the query. Within a half, offsets below a quarter of the buckets
    get one bucket each, larger ones share logarithmically wider buckets up to ``max_distance``.
    """
    half = num_buckets // 2
    bucket = (relative_position > 0).long() * half
    distance = relative_position.abs()
    exact = half // 2
    # clamp only keeps log() finite where the exact branch is taken anyway
    spread = torch.log(distance.float().clamp_min(1) / exact) / math.log(max_distance / exact) * (half - exact)
    far = (exact + spread.long()).clamp_max(half - 1)
    return bucket + torch.where(distance < exact, distance, far)


class T5LayerNorm(nn.Module):
    """T5's layer norm: scale by the root mean square (computed in float32), no mean, no bias."""

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.eps = eps

    def forward(self, h: Tensor) -> Tensor:
        variance = h.float().square().mean(-1, keepdim=True)
        h = h * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            h = h.to(self.weight.dtype)
        return self.weight * h


class T5Attention(nn.Module):
    """Multi-head self-attention without ``1/sqrt(d)`` scaling; block 0 owns the relative position bias."""

    def __init__(self, t5: T5Settings, has_relative_attention_bias: bool) -> None:
        super().__init__()
        self.n_heads = t5.num_heads
        self.d_kv = t5.d_kv
        self.num_buckets = t5.relative_attention_num_buckets
        self.max_distance = t5.relative_attention_max_distance
        inner = t5.inner_dim
        self.q = nn.Linear(t5.d_model, inner, bias=False)
        self.k = nn.Linear(t5.d_model, inner, bias=False)
        self.v = nn.Linear(t5.d_model, inner, bias=False)
        self.o = nn.Linear(inner, t5.d_model, bias=False)
        self.dropout = nn.Dropout(t5.dropout_rate)
        self.relative_attention_bias = (
            nn.Embedding(self.num_buckets, self.n_heads) if has_relative_attention_bias else None
        )

    def position_bias(self, n: int) -> Tensor:
        """``(1, H, n, n)`` additive bias for ``n`` tokens."""
        if self.relative_attention_bias is None:
            raise RuntimeError("only the first T5 block holds the relative position bias")
        device = self.relative_attention_bias.weight.device
        steps = torch.arange(n, device=device)
        buckets = relative_position_bucket(steps[None, :] - steps[:, None], self.num_buckets, self.max_distance)
        bias: Tensor = self.relative_attention_bias(buckets)  # (n, n, H)
        return rearrange(bias, "q k h -> 1 h q k")

    def forward(self, h: Tensor, bias: Tensor) -> Tensor:
        """``h`` ``(N, P, D)``, ``bias`` ``(N or 1, H, P, P)`` (positions + key mask) -> ``(N, P, D)``."""
        q, k, v = (rearrange(proj(h), "n p (h e) -> n h p e", h=self.n_heads) for proj in (self.q, self.k, self.v))
        if bias.dtype != q.dtype:  # half precision: keep the masked-key value finite
            bias = bias.clamp_min(torch.finfo(q.dtype).min).to(q.dtype)
        scores = q @ k.transpose(-1, -2) + bias  # (N, H, P, P)
        weights = self.dropout(torch.softmax(scores.float(), dim=-1).type_as(scores))
        out = rearrange(weights @ v, "n h p e -> n p (h e)")  # (N, P, H * E)
        return cast(Tensor, self.o(out))


class T5LayerSelfAttention(nn.Module):
    """Pre-norm residual self-attention sub-layer."""

    def __init__(self, t5: T5Settings, has_relative_attention_bias: bool) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(t5, has_relative_attention_bias)
        self.layer_norm = T5LayerNorm(t5.d_model, t5.layer_norm_epsilon)
        self.dropout = nn.Dropout(t5.dropout_rate)

    def forward(self, h: Tensor, bias: Tensor) -> Tensor:
        update: Tensor = self.dropout(self.SelfAttention(self.layer_norm(h), bias))
        return h + update


class T5DenseGatedActDense(nn.Module):
    """Gated feed-forward ``wo(act(wi_0 x) * wi_1 x)`` (flan-T5: tanh-approximated GELU)."""

    def __init__(self, t5: T5Settings) -> None:
        super().__init__()
        self.wi_0 = nn.Linear(t5.d_model, t5.d_ff, bias=False)
        self.wi_1 = nn.Linear(t5.d_model, t5.d_ff, bias=False)
        self.wo = nn.Linear(t5.d_ff, t5.d_model, bias=False)
        self.dropout = nn.Dropout(t5.dropout_rate)
        self.act = ACTIVATIONS[t5.dense_act_fn]

    def forward(self, h: Tensor) -> Tensor:
        return cast(Tensor, self.wo(self.dropout(self.act(self.wi_0(h)) * self.wi_1(h))))


class T5DenseActDense(nn.Module):
    """Plain feed-forward ``wo(act(wi x))`` (original T5: ReLU)."""

    def __init__(self, t5: T5Settings) -> None:
        super().__init__()
        self.wi = nn.Linear(t5.d_model, t5.d_ff, bias=False)
        self.wo = nn.Linear(t5.d_ff, t5.d_model, bias=False)
        self.dropout = nn.Dropout(t5.dropout_rate)
        self.act = ACTIVATIONS[t5.dense_act_fn]

    def forward(self, h: Tensor) -> Tensor:
        return cast(Tensor, self.wo(self.dropout(self.act(self.wi(h)))))


class T5LayerFF(nn.Module):
    """Pre-norm residual feed-forward sub-layer."""

    def __init__(self, t5: T5Settings) -> None:
        super().__init__()
        self.DenseReluDense: nn.Module = T5DenseGatedActDense(t5) if t5.is_gated_act else T5DenseActDense(t5)
        self.layer_norm = T5LayerNorm(t5.d_model, t5.layer_norm_epsilon)
        self.dropout = nn.Dropout(t5.dropout_rate)

    def forward(self, h: Tensor) -> Tensor:
        update: Tensor = self.dropout(self.DenseReluDense(self.layer_norm(h)))
        return h + update


class T5Block(nn.Module):
    """Self-attention then feed-forward, under ``layer.0`` and ``layer.1``."""

    def __init__(self, t5: T5Settings, has_relative_attention_bias: bool) -> None:
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(t5, has_relative_attention_bias), T5LayerFF(t5)])

    def forward(self, h: Tensor, bias: Tensor) -> Tensor:
        h = self.layer[0](h, bias)
        return cast(Tensor, self.layer[1](h))


class T5Encoder(nn.Module):
    """The encoder half of T5 fed with embeddings (``inputs_embeds``): blocks, final norm, dropout.

    ``embed_tokens`` is kept so the official state dict loads unchanged; it is never read.
    """

    def __init__(self, t5: T5Settings) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(t5.vocab_size, t5.d_model)
        self.block = nn.ModuleList(T5Block(t5, has_relative_attention_bias=i == 0) for i in range(t5.num_layers))
        self.final_layer_norm = T5LayerNorm(t5.d_model, t5.layer_norm_epsilon)
        self.dropout = nn.Dropout(t5.dropout_rate)
        self.gradient_checkpointing = False

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor) -> Tensor:
        """Encode ``(N, P, D)`` tokens; ``attention_mask`` ``(N, P)`` is 0 on keys nobody may attend to."""
        n_tokens = inputs_embeds.shape[1]
        block0 = self.block[0]
        assert isinstance(block0, T5Block)
        first = block0.layer[0]
        assert isinstance(first, T5LayerSelfAttention)
        # One bias for all blocks: relative positions plus a very negative value on masked keys.
        key_mask = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        bias = first.SelfAttention.position_bias(n_tokens).float() + key_mask  # (N, H, P, P)
        h: Tensor = self.dropout(inputs_embeds)
        for block in self.block:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = cast(Tensor, checkpoint(block, h, bias, use_reentrant=False))
            else:
                h = block(h, bias)
        return cast(Tensor, self.dropout(self.final_layer_norm(h)))


# ---------------------------------------------------------------------------------------------
# heads (momentfm's names: everything under head.linear)


class PretrainHead(nn.Module):
    """Reconstruct each patch's values: ``(B, C, P, D) -> (B, C, P * patch_len)``."""

    def __init__(self, d_model: int, patch_len: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(d_model, patch_len)

    def forward(self, enc_out: Tensor) -> Tensor:
        patches: Tensor = self.linear(self.dropout(enc_out))  # (B, C, P, patch_len)
        return rearrange(patches, "b c p s -> b c (p s)")


class ForecastingHead(nn.Module):
    """A channel's flattened patch embeddings -> its horizon: ``(B, C, P, D) -> (B, C, L)``.

    As in momentfm the dropout acts on the forecast, after the linear map.
    """

    def __init__(self, n_features: int, horizon: int, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, horizon)
        self.dropout = nn.Dropout(dropout)

    def forward(self, enc_out: Tensor) -> Tensor:
        return cast(Tensor, self.dropout(self.linear(rearrange(enc_out, "b c p d -> b c (p d)"))))


class ClassificationHead(nn.Module):
    """Mean over patches of ``(B, P, F)`` embeddings, dropout, then ``Linear(F, num_class)``."""

    def __init__(self, n_features: int, num_class: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(n_features, num_class)

    def forward(self, embeddings: Tensor) -> Tensor:
        return cast(Tensor, self.linear(self.dropout(embeddings.mean(dim=1))))


# ---------------------------------------------------------------------------------------------
# the model


class Moment(nn.Module):
    """MOMENT with one task head; keys equal the official checkpoints'.

    Two interfaces share the weights:

    * :meth:`forward_official` takes momentfm's arguments (``x_enc`` ``(B, C, seq_len)``, a per-sample
      ``input_mask`` and a pretraining ``mask``) and returns its outputs, for parity with upstream;
    * :meth:`forward_features` is the sciadapt backbone contract: ``x`` ``(B, T, C)`` of any length and
      channel count with an optional per-value mask; windows shorter than ``seq_len`` are left-padded
      with zeros and masked (MOMENT's own recipe), longer ones keep their last ``seq_len`` steps.

    Args:
        config: The resolved configuration (see :meth:`MomentConfig.from_dict`).
        context_length: The data's window length ``T`` (only reported by :meth:`input_policy`).
        n_exog: Trailing input channels that are covariates; MOMENT forecasts channels independently
            and has no covariate input, so ``forward_features`` drops them.
    """

    input_layout = SERIES

    def __init__(self, config: MomentConfig, context_length: int | None = None, n_exog: int = 0) -> None:
        super().__init__()
        self.config = config
        self.task_name = config.task_name
        self.seq_len = config.seq_len
        self.patch_len = config.patch_len
        self.n_patches = config.n_patches
        self.d_model = config.d_model
        self.context_length = config.seq_len if context_length is None else context_length
        self.n_exog = n_exog
        self.normalizer = RevIN(affine=config.revin_affine)
        self.patch_embedding = PatchEmbedding(
            config.d_model,
            config.patch_len,
            config.patch_dropout,
            add_positional_embedding=config.add_positional_embedding,
            value_embedding_bias=config.value_embedding_bias,
        )
        self.encoder = T5Encoder(config.t5)
        self.encoder.gradient_checkpointing = config.enable_gradient_checkpointing
        self.head = self._make_head()
        self._init_weights()
        self.feature_info: list[dict[str, Any]] = self._feature_info()
        self.default_peft_targets: list[str] = [
            "encoder.block.*.layer.0.SelfAttention.q",
            "encoder.block.*.layer.0.SelfAttention.v",
        ]

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any) -> Moment:
        """Build from an official ``config.json`` dictionary (``overrides`` act as momentfm's ``model_kwargs``)."""
        return cls(MomentConfig.from_dict(config, **overrides))

    @classmethod
    def from_pretrained(cls, source: str | Path, **overrides: Any) -> Moment:
        """Build from a checkpoint folder's ``config.json`` and load its weights (see :meth:`load_pretrained`).

        Args:
            source: A local folder or ``hf://AutonLab/MOMENT-1-large[@revision]``.
            **overrides: Config entries replacing the file's, e.g. ``task_name="embedding"``
                (the file's head is then not used).
        """
        folder = resolve_folder(source, [CONFIG_FILE, WEIGHTS_FILE])
        model = cls(read_config(folder / CONFIG_FILE, **overrides))
        model.load_pretrained(str(folder))
        return model

    # -- construction helpers ------------------------------------------------------------------

    def _make_head(self) -> nn.Module:
        cfg = self.config
        if cfg.task_name == "reconstruction":
            return PretrainHead(cfg.d_model, cfg.patch_len, cfg.head_dropout)
        if cfg.task_name == "forecasting":
            assert cfg.forecast_horizon is not None
            return ForecastingHead(cfg.n_patches * cfg.d_model, cfg.forecast_horizon, cfg.head_dropout)
        if cfg.task_name == "classification":
            assert cfg.num_class is not None
            width = cfg.d_model * (cfg.n_channels or 1) if cfg.reduction == "concat" else cfg.d_model
            return ClassificationHead(width, cfg.num_class, cfg.head_dropout)
        return nn.Identity()

    def _feature_info(self) -> list[dict[str, Any]]:
        if self.task_name == "forecasting":
            return [
                {"layout": HORIZON_FEATURES, "channels": 1, "reduction": 1, "horizon": self.config.forecast_horizon}
            ]
        if self.task_name == "embedding":
            # one vector per channel summarises the whole window
            return [{"layout": EMBEDDINGS, "channels": self.d_model, "reduction": self.seq_len}]
        return []

    @torch.no_grad()
    def _init_weights(self) -> None:
        """T5's initialisation (factor ``initializer_factor``) and momentfm's orthogonal patch maps."""
        t5 = self.config.t5
        factor = t5.initializer_factor
        for module in self.modules():
            if isinstance(module, T5LayerNorm):
                module.weight.fill_(factor)
            elif isinstance(module, T5Attention):
                nn.init.normal_(module.q.weight, std=factor * (t5.d_model * t5.d_kv) ** -0.5)
                nn.init.normal_(module.k.weight, std=factor * t5.d_model**-0.5)
                nn.init.normal_(module.v.weight, std=factor * t5.d_model**-0.5)
                nn.init.normal_(module.o.weight, std=factor * t5.inner_dim**-0.5)
                if module.relative_attention_bias is not None:
                    nn.init.normal_(module.relative_attention_bias.weight, std=factor * t5.d_model**-0.5)
            elif isinstance(module, T5DenseGatedActDense):
                nn.init.normal_(module.wi_0.weight, std=factor * t5.d_model**-0.5)
                nn.init.normal_(module.wi_1.weight, std=factor * t5.d_model**-0.5)
                nn.init.normal_(module.wo.weight, std=factor * t5.d_ff**-0.5)
            elif isinstance(module, T5DenseActDense):
                nn.init.normal_(module.wi.weight, std=factor * t5.d_model**-0.5)
                nn.init.normal_(module.wo.weight, std=factor * t5.d_ff**-0.5)
        nn.init.normal_(self.encoder.embed_tokens.weight, std=factor)
        gain = self.config.orth_gain
        orthogonal = [self.patch_embedding.value_embedding]
        if isinstance(self.head, PretrainHead):
            orthogonal.append(self.head.linear)
        for linear in orthogonal:
            if gain is not None and not linear.weight.is_meta:
                nn.init.orthogonal_(linear.weight, gain=gain)
            if linear.bias is not None:
                linear.bias.zero_()

    # -- shared computation --------------------------------------------------------------------

    def _encode(self, x: Tensor, stats_mask: Tensor, attention_mask: Tensor, token_mask: Tensor) -> dict[str, Tensor]:
        """Normalise, patch, embed and encode ``(B, C, seq_len)`` series.

        Args:
            x: ``(B, C, seq_len)`` values.
            stats_mask: ``(B, 1 or C, seq_len)``: steps the normalisation statistics come from.
            attention_mask: ``(B, 1 or C, seq_len)``: patches with any 0 step are not attended to.
            token_mask: ``(B, 1 or C, seq_len)``: patches with any 0 step get the mask token.

        Returns:
            ``enc_in`` and ``enc_out`` ``(B, C, P, D)``, the RevIN ``mean`` and ``std`` ``(B, C, 1)``.
        """
        batch, n_channels, _ = x.shape
        x, mean, std = self.normalizer.normalize(x, stats_mask)
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)  # all-masked (too short) series
        patches = x.unfold(-1, self.patch_len, self.patch_len)  # (B, C, P, S)
        enc_in = self.patch_embedding(patches, patch_view(token_mask, self.patch_len))  # (B, C, P, D)
        keys = patch_view(attention_mask, self.patch_len).expand(batch, n_channels, -1)  # (B, C, P)
        enc_out = self.encoder(rearrange(enc_in, "b c p d -> (b c) p d"), rearrange(keys, "b c p -> (b c) p"))
        enc_out = rearrange(enc_out, "(b c) p d -> b c p d", b=batch)  # (B, C, P, D)
        return {"enc_in": enc_in, "enc_out": enc_out, "mean": mean, "std": std}

    def _pretrain_mask(self, input_mask: Tensor) -> Tensor:
        """momentfm's random patch masking: hide ``mask_ratio`` of each sample's observed patches.

        Returns:
            ``(B, seq_len)`` int64, 1 on kept steps; with ``mask_ratio == 0`` the patch view of ``input_mask``.
        """
        observed = patch_view(input_mask, self.patch_len)  # (B, P)
        keep = torch.ceil(observed.sum(-1, keepdim=True) * (1 - self.config.mask_ratio)).long()  # (B, 1)
        # random ranks among observed patches; unobserved ones rank last and are never kept
        noise = torch.where(observed == 1, torch.rand(observed.shape, device=input_mask.device), 1.0)
        rank = noise.argsort(dim=-1).argsort(dim=-1)
        kept = (rank < keep).long()  # (B, P)
        return kept.repeat_interleave(self.patch_len, dim=-1)

    # -- momentfm's interface ------------------------------------------------------------------

    def forward_official(
        self,
        x_enc: Tensor,
        input_mask: Tensor | None = None,
        mask: Tensor | None = None,
        reduction: str | None = None,
    ) -> dict[str, Tensor]:
        """The model's task forward with momentfm's arguments and output names.

        Args:
            x_enc: ``(B, C, seq_len)`` series.
            input_mask: ``(B, seq_len)``, 1 on observed steps and 0 on padding; default all ones.
            mask: ``(B, seq_len)`` pretraining mask (reconstruction only), 0 on steps whose patch is
                replaced by the mask token; default from ``mask_ratio`` (0: nothing beyond padding).
            reduction: ``"mean"`` or ``"none"`` for embedding (default ``"mean"``); ``"mean"`` or
                ``"concat"`` for classification (default the config's ``reduction``).

        Returns:
            reconstruction: ``reconstruction`` ``(B, C, seq_len)``, ``pretrain_mask``, ``input_mask``;
            forecasting: ``forecast`` ``(B, C, horizon)``, ``input_mask``;
            embedding: ``embeddings`` ``(B, D)`` (mean) or ``(B, C, P, D)`` (none), ``input_mask``;
            classification: ``logits`` ``(B, num_class)``, ``embeddings`` ``(B, P, D * C)`` (concat) or
            ``(B, P, D)`` (mean).

        Raises:
            ShapeError: If ``x_enc`` is not ``(B, C, seq_len)`` or a mask does not fit it.
        """
        check_shape(x_enc, "B C T", name="moment x_enc", T=self.seq_len)
        batch = x_enc.shape[0]
        if input_mask is None:
            input_mask = torch.ones(batch, self.seq_len, dtype=x_enc.dtype, device=x_enc.device)
        check_shape(input_mask, "B T", name="moment input_mask", B=batch, T=self.seq_len)
        seq_mask = input_mask[:, None, :]  # (B, 1, T): one mask for all channels of a sample
        task = self.task_name
        if task == "reconstruction":
            if mask is None:
                mask = self._pretrain_mask(input_mask)
            check_shape(mask, "B T", name="moment mask", B=batch, T=self.seq_len)
            out = self._encode(x_enc, (mask * input_mask)[:, None, :], seq_mask, mask[:, None, :])
            recon = self.head(out["enc_out"])  # (B, C, T)
            return {
                "reconstruction": self.normalizer.denormalize(recon, out["mean"], out["std"]),
                "pretrain_mask": mask,
                "input_mask": input_mask,
            }
        if task == "forecasting":
            out = self._encode(x_enc, seq_mask, seq_mask, torch.ones_like(seq_mask))
            forecast = self.head(out["enc_out"])  # (B, C, L)
            return {
                "forecast": self.normalizer.denormalize(forecast, out["mean"], out["std"]),
                "input_mask": input_mask,
            }
        out = self._encode(x_enc, seq_mask, seq_mask, seq_mask)
        enc_out = out["enc_out"]  # (B, C, P, D)
        if task == "embedding":
            reduction = reduction or "mean"
            if reduction == "none":
                return {"embeddings": enc_out, "input_mask": input_mask}
            if reduction != "mean":
                raise ConfigError(f"embedding reduction: expected 'mean' or 'none', got {reduction!r}")
            weight = patch_view(input_mask, self.patch_len)[..., None].to(enc_out.dtype)  # (B, P, 1)
            pooled = (enc_out.mean(dim=1) * weight).sum(1) / weight.sum(1)  # (B, D)
            return {"embeddings": pooled, "input_mask": input_mask}
        reduction = reduction or self.config.reduction
        if reduction == "concat":
            # the channel axis is innermost: feature d * C + c, as momentfm lays it out
            embeddings = rearrange(enc_out, "b c p d -> b p (d c)")
        elif reduction == "mean":
            embeddings = enc_out.mean(dim=1)  # (B, P, D)
        else:
            raise ConfigError(f"classification reduction: expected 'mean' or 'concat', got {reduction!r}")
        return {"logits": self.head(embeddings), "embeddings": embeddings}

    # -- sciadapt's backbone contract ----------------------------------------------------------

    def input_policy(self, length: int) -> str:
        """How a window of ``length`` steps is fitted to ``seq_len``: ``"pad"``, ``"truncate"`` or ``"exact"``.

        ``"pad"``: zeros are prepended and masked out (MOMENT's recipe for short series);
        ``"truncate"``: only the last ``seq_len`` steps are used.
        """
        if length < self.seq_len:
            return "pad"
        if length > self.seq_len:
            return "truncate"
        return "exact"

    def describe_input_policy(self, length: int | None = None) -> str:
        """One line saying what :meth:`input_policy` does to a ``length`` (default ``context_length``) window."""
        length = self.context_length if length is None else length
        policy = self.input_policy(length)
        if policy == "pad":
            return f"moment: {length}-step windows are left-padded with {self.seq_len - length} masked zeros to {self.seq_len}"
        if policy == "truncate":
            return f"moment: {length}-step windows are cut to their last {self.seq_len} steps"
        return f"moment: {length}-step windows are used as they are"

    def forward_features(self, x: Tensor, x_mask: Tensor | None = None) -> Tensor:
        """Forecast (task ``forecasting``) or embed (task ``embedding``) every channel independently.

        Args:
            x: ``(B, T, C_in)`` series of any length; the last ``n_exog`` channels are dropped.
            x_mask: ``(B, T, C_in)``, 1 on observed values and 0 on missing or padded ones; non-finite
                values count as missing too. Unobserved values are set to 0 (like MOMENT's padding),
                left out of the normalisation statistics and their patches are not attended to.

        Returns:
            forecasting: ``(B, horizon, C, 1)`` in the scale of ``x``; embedding: ``(B, C, d_model)``,
            the mean over observed patches. ``C = C_in - n_exog``.

        Raises:
            ShapeError: If ``x`` is not ``B T C``, ``x_mask`` does not match it, or no channel is left
                after removing the covariates.
            ConfigError: If the model was built for reconstruction or classification.
        """
        check_shape(x, SERIES, name="moment input")
        if x_mask is not None and tuple(x_mask.shape) != tuple(x.shape):
            raise ShapeError(f"moment x_mask: expected {SERIES} = {tuple(x.shape)} like x, got {tuple(x_mask.shape)}")
        n_series = x.shape[-1] - self.n_exog
        if n_series < 1:
            raise ShapeError(
                f"moment input: expected B T C with C > n_exog={self.n_exog} (targets first), got {tuple(x.shape)}"
            )
        if self.task_name not in FEATURE_TASKS:
            raise ConfigError(
                f"forward_features serves the tasks {', '.join(FEATURE_TASKS)}; this model is built for "
                f"{self.task_name!r}: use forward_official"
            )
        values = x[..., :n_series]
        observed = torch.isfinite(values)
        if x_mask is not None:
            observed &= x_mask[..., :n_series] != 0
        series = rearrange(torch.where(observed, values, torch.zeros_like(values)), "b t c -> b c t")
        mask = rearrange(observed.to(values.dtype), "b t c -> b c t")
        series, mask = self._fit_window(series, mask)  # (B, C, seq_len)
        if self.task_name == "forecasting":
            out = self._encode(series, mask, mask, torch.ones_like(mask))
            forecast = self.normalizer.denormalize(self.head(out["enc_out"]), out["mean"], out["std"])
            return rearrange(forecast, "b c l -> b l c 1")  # (B, L, C, 1)
        out = self._encode(series, mask, mask, mask)
        weight = patch_view(mask, self.patch_len)[..., None].to(series.dtype)  # (B, C, P, 1)
        return (out["enc_out"] * weight).sum(2) / weight.sum(2)  # (B, C, D)

    def _fit_window(self, series: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Left-pad (masked zeros) or cut ``(B, C, T)`` series and masks to ``seq_len`` steps."""
        length = series.shape[-1]
        if length < self.seq_len:
            pad = (self.seq_len - length, 0)
            return F.pad(series, pad), F.pad(mask, pad)
        return series[..., -self.seq_len :], mask[..., -self.seq_len :]

    def forward(self, x: Tensor, x_mask: Tensor | None = None) -> Tensor:
        """Same as :meth:`forward_features`."""
        return self.forward_features(x, x_mask)

    # -- weights -------------------------------------------------------------------------------

    def example_inputs(self, batch: int = 2) -> dict[str, Tensor]:
        """Random inputs shaped for this model: ``x`` (B, context_length, 1 + n_exog)."""
        gen = torch.Generator().manual_seed(0)
        return {"x": torch.randn(batch, self.context_length, 1 + self.n_exog, generator=gen)}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the official layout (``config.json`` + ``model.safetensors``) that :meth:`load_pretrained` reads strictly."""
        from sciadapt.backbones._saved import save_state
        from sciadapt.runs import atomic_write_text

        folder = Path(directory)
        atomic_write_text(folder / CONFIG_FILE, json.dumps(self.config.to_dict(), indent=2))
        return save_state(self.state_dict(), folder, "moment")

    def load_pretrained(self, source: str) -> None:
        """Load an official (or compatible) checkpoint folder with ``strict=True``.

        The folder holds ``config.json`` and ``model.safetensors``. The file's configuration must have
        this model's geometry. The official files hold the reconstruction head: when this model serves
        another task, the encoder and patch embedding load strictly and the head stays as initialised
        (one log line says so); a head of the same task must match in shape.
        ``patch_embedding.position_embedding.pe`` and ``encoder.embed_tokens.weight`` may be absent
        from the file (the first is a fixed table, the second is never used).

        Args:
            source: A local folder or ``hf://AutonLab/MOMENT-1-large[@revision]``.

        Raises:
            CheckpointError: If the folder or a file is missing, the hub is unreachable, the file's
                geometry differs or its keys or shapes do not match; the message names the file.
        """
        folder = resolve_folder(source, [CONFIG_FILE, WEIGHTS_FILE])
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        try:
            file_cfg = read_config(config_path)
        except ConfigError as err:
            raise CheckpointError(f"cannot use {config_path}: {err}") from None
        problems = self._geometry_problems(file_cfg)
        if problems:
            raise CheckpointError(
                f"cannot load {source} ({config_path}) into {self._describe()}:\n"
                + "\n".join(f"  - {p}" for p in problems)
            )
        state = read_state_dict(weights_path)
        own = self.state_dict()
        note = None
        if file_cfg.task_name != self.task_name:
            dropped = sorted(k for k in state if k.startswith("head."))
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
            own_head = {k: v for k, v in own.items() if k.startswith("head.")}
            state.update(own_head)  # keep this model's head as initialised
            if own_head:
                note = (
                    f"moment: {source} holds a {file_cfg.task_name} head; the {self.task_name} head is new "
                    "(initialised, to be trained)"
                )
            elif dropped:
                note = f"moment: {source} holds a {file_cfg.task_name} head, unused by the {self.task_name} task"
        for key in OPTIONAL_KEYS:
            if key in own and key not in state:
                state[key] = own[key]
        mismatch = describe_mismatch(own, state)
        if mismatch:
            hint = ""
            if any(p.startswith("head.") for p in mismatch) and file_cfg.task_name == self.task_name:
                hint = f"\n  (the file's {file_cfg.task_name} head: {head_summary(file_cfg)}; ours: {head_summary(self.config)})"
            raise CheckpointError(
                f"cannot load {weights_path} into {self._describe()}:\n"
                + "\n".join(f"  - {p}" for p in mismatch)
                + hint
            )
        self.load_state_dict(state, strict=True)
        if note:
            logger.info(note)

    def _geometry_problems(self, file_cfg: MomentConfig) -> list[str]:
        ours, theirs = self.config.geometry(), file_cfg.geometry()
        problems = [f"{k}: file {theirs[k]!r}, model {ours[k]!r}" for k in ours if ours[k] != theirs[k]]
        if problems:
            size = size_of(file_cfg.t5)
            if size is not None:
                problems.append(f"the file is MOMENT-1-{size}: build the backbone with size: {size}")
        return problems

    def _describe(self) -> str:
        t5 = self.config.t5
        return (
            f"moment(task={self.task_name}, d_model={t5.d_model}, layers={t5.num_layers}, heads={t5.num_heads}, "
            f"seq_len={self.seq_len}, patch_len={self.patch_len})"
        )


# ---------------------------------------------------------------------------------------------
# builders


def _settings(
    geometry: Mapping[str, Any],
    backbone_name: str,
    task: str,
    context_length: int,
    horizon: int,
    n_exog: int,
    dropout: float,
    head_dropout: float,
    gradient_checkpointing: bool,
) -> MomentConfig:
    problems: list[str] = []
    if task not in FEATURE_TASKS:
        problems.append(
            f"backbone.task: expected one of {' | '.join(FEATURE_TASKS)}, got {task!r}"
            + (" (reconstruction/classification: use Moment.from_pretrained)" if task in TASKS else "")
        )
    for name, value, minimum in (("context_length", context_length, 1), ("horizon", horizon, 1), ("n_exog", n_exog, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            problems.append(f"backbone.{name}: expected an int >= {minimum}, got {value!r}")
    for name, p in (("dropout", dropout), ("head_dropout", head_dropout)):
        if not isinstance(p, int | float) or not 0.0 <= p < 1.0:
            problems.append(f"backbone.{name}: expected 0 <= {name} < 1, got {p!r}")
    if problems:
        raise ConfigError(problems)
    t5 = {**FLAN_T5, **geometry, "dropout_rate": float(dropout)}
    return MomentConfig.from_dict(
        {
            "task_name": task,
            "seq_len": 512,
            "patch_len": 8,
            "patch_stride_len": 8,
            "transformer_backbone": backbone_name,
            "transformer_type": "encoder_only",
            "d_model": None,
            "t5_config": t5,
            "forecast_horizon": horizon,
            "head_dropout": float(head_dropout),
            "patch_dropout": float(dropout),
            "enable_gradient_checkpointing": gradient_checkpointing,
        }
    )


def _finish(model: Moment, weights: str | None) -> Moment:
    if model.input_policy(model.context_length) != "exact":
        logger.info(model.describe_input_policy())
    if weights is not None:
        model.load_pretrained(weights)
    return model


@BACKBONES.register("moment")
def build_moment(
    size: str = "large",
    task: str = "forecasting",
    context_length: Annotated[int, FromData] = 512,
    horizon: Annotated[int, FromData] = 96,
    n_exog: Annotated[int, FromData] = 0,
    dropout: float = 0.1,
    head_dropout: float = 0.1,
    gradient_checkpointing: bool = False,
    weights: str | None = None,
) -> Moment:
    """Build MOMENT-1 (a flan-T5 encoder over 8-step patches of 512-step windows).

    Args:
        size: ``"small"``, ``"base"`` or ``"large"``: the T5 geometry of ``AutonLab/MOMENT-1-<size>``.
        task: ``"forecasting"`` (features ``B L C D`` with ``D = 1``: the forecast of MOMENT's linear
            head, in the input scale) or ``"embedding"`` (``B C D`` per-channel embeddings).
        context_length: The data's window; shorter ones are left-padded and masked, longer ones keep
            their last 512 steps (see :meth:`Moment.input_policy`).
        horizon: Forecast length ``L`` of the forecasting head.
        n_exog: Trailing covariate channels of the input, dropped (MOMENT has no covariate input).
        dropout: Patch-embedding and T5 dropout (0.1 in the official models).
        head_dropout: Dropout of the task head (momentfm applies it to the forecast itself).
        gradient_checkpointing: Recompute each T5 block in the backward pass (saves memory; momentfm
            enables it by default).
        weights: ``hf://AutonLab/MOMENT-1-<size>`` or a local folder with ``config.json`` and
            ``model.safetensors``, loaded with :meth:`Moment.load_pretrained`.

    Returns:
        The model.

    Raises:
        ConfigError: Listing every invalid setting.
        CheckpointError: If ``weights`` cannot be loaded.
    """
    if size not in SIZES:
        raise ConfigError(f"backbone.size: expected one of {' | '.join(SIZES)}, got {size!r}")
    cfg = _settings(
        SIZES[size],
        f"google/flan-t5-{size}",
        task,
        context_length,
        horizon,
        n_exog,
        dropout,
        head_dropout,
        gradient_checkpointing,
    )
    return _finish(Moment(cfg, context_length=context_length, n_exog=n_exog), weights)


@BACKBONES.register("moment_tiny")
def build_moment_tiny(
    task: str = "forecasting",
    context_length: Annotated[int, FromData] = 512,
    horizon: Annotated[int, FromData] = 96,
    n_exog: Annotated[int, FromData] = 0,
    dropout: float = 0.1,
    head_dropout: float = 0.1,
    gradient_checkpointing: bool = False,
    weights: str | None = None,
) -> Moment:
    """A tiny MOMENT (T5 with d_model 64, 2 layers, 4 heads; the golden fixtures' geometry) for tests.

    Takes the arguments of :func:`build_moment` except ``size``.
    """
    cfg = _settings(
        TINY,
        "google/flan-t5-large",
        task,
        context_length,
        horizon,
        n_exog,
        dropout,
        head_dropout,
        gradient_checkpointing,
    )
    return _finish(Moment(cfg, context_length=context_length, n_exog=n_exog), weights)


__all__ = [
    "ACTIVATIONS",
    "CONFIG_FILE",
    "EMBEDDINGS",
    "FEATURE_TASKS",
    "OPTIONAL_KEYS",
    "POSITIONS",
    "SIZES",
    "TASKS",
    "TINY",
    "WEIGHTS_FILE",
    "Moment",
    "MomentConfig",
    "T5Settings",
    "build_moment",
    "build_moment_tiny",
]
