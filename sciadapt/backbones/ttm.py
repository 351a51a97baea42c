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
import os
from pathlib import Path
from typing import Annotated, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciadapt.backbones._ttm_checkpoints import (
    ADAPTATION_FIELDS,
    OFFICIAL_CHECKPOINTS,
    RELEASES,
    WEIGHT_FILES,
    OfficialCheckpoint,
    config_mismatch,
    describe_geometry,
    module_group,
    new_module_patterns,
    pick_revision,
    read_checkpoint_config,
    request_problems,
    resolve_checkpoint,
    select_checkpoint,
    ttm_revision,
)
from sciadapt.backbones._ttm_config import FREQUENCY_TOKENS, LOSSES, MODES, SCALINGS, TTMConfig, token_names
from sciadapt.backbones._ttm_layers import SCALERS, Decoder, PredictionHead, TTMBackbone
from sciadapt.errors import CheckpointError, ConfigError, ShapeError
from sciadapt.hub import describe_mismatch, is_hub, read_state_dict, weights_file
from sciadapt.registry import BACKBONES
from sciadapt.spec import FromData
from sciadapt.types import HORIZON_FEATURES, SERIES

log = logging.getLogger(__name__)


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
        scaler = SCALERS[cfg.scaling if isinstance(cfg.scaling, str) else None]
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
                f"backbone.freq_token (one of {token_names()})"
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
        forecast: Tensor = out["prediction_outputs"]  # (B, L, C)
        return forecast.unsqueeze(-1)  # (B, L, C, 1)

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
        folder = resolve_checkpoint(source)
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
        folder = resolve_checkpoint(source)
        ckpt = read_checkpoint_config(folder, str(source))
        path = weights_file(folder, WEIGHT_FILES)
        problems = config_mismatch(self.config, ckpt, self.freq_token)
        new_modules = new_module_patterns(self.config, ckpt)
        state = read_state_dict(path)
        own = self.state_dict()
        fresh = sorted(k for k in own if k not in state and any(fnmatch.fnmatchcase(k, p) for p in new_modules))
        problems += describe_mismatch({k: v for k, v in own.items() if k not in fresh}, state)
        if problems:
            raise CheckpointError(
                f"cannot load {path} into ttm ({describe_geometry(self.config)}):\n"
                + "\n".join(f"  - {p}" for p in problems)
            )
        result = self.load_state_dict(state, strict=False)
        if result.unexpected_keys or sorted(result.missing_keys) != fresh:  # describe_mismatch should have caught it
            raise CheckpointError(
                f"cannot load {path}: missing {result.missing_keys}, unexpected {result.unexpected_keys}"
            )
        if fresh:
            modules = sorted({module_group(k) for k in fresh})
            log.info(
                "ttm: loaded %s; newly initialised (not in the checkpoint, added by this config): %s",
                path,
                ", ".join(modules),
            )


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


def _freq_token_value(freq_token: int | str | None) -> int | None:
    if freq_token is None or isinstance(freq_token, int):
        return freq_token
    if freq_token not in FREQUENCY_TOKENS:
        raise ConfigError(f"backbone.freq_token: {freq_token!r} is not a known resolution; use one of {token_names()}")
    return FREQUENCY_TOKENS[freq_token]


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
            raise ConfigError(f"backbone.freq_token: required with resolution_prefix_tuning (one of {token_names()})")
        return TTM(config, freq_token=token)

    weights = pick_revision(
        weights,
        context_length,
        horizon,
        bool(resolution_prefix_tuning),
        freq_token if isinstance(freq_token, str) else None,
    )
    folder = resolve_checkpoint(weights)
    ckpt = read_checkpoint_config(folder, weights)
    where = f"{folder / 'config.json'}" + (f" ({weights})" if is_hub(weights) else "")
    problems = request_problems(ckpt, where, given, context_length, horizon, n_targets, n_exog, token is not None)
    if problems:
        raise ConfigError(problems)
    adapt = {k: v for k, v in given.items() if k in ADAPTATION_FIELDS}
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
    # the registry's decorator returns an untyped callable
    return cast(
        TTM,
        build_ttm(
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
        ),
    )


__all__ = [
    "FREQUENCY_TOKENS",
    "LOSSES",
    "MODES",
    "OFFICIAL_CHECKPOINTS",
    "RELEASES",
    "SCALINGS",
    "TTM",
    "OfficialCheckpoint",
    "TTMConfig",
    "build_ttm",
    "build_ttm_tiny",
    "read_checkpoint_config",
    "select_checkpoint",
    "ttm_revision",
]
