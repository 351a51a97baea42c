"""A timm hierarchical encoder (Swin, ConvNeXt, ...) plus a light decoder: a grid-native rollout backbone.

The last ``n_input`` states, the forcings of those times and of the target time, and the static
fields are stacked along channels and fed to ``timm.create_model(model_name, features_only=True,
in_chans=...)``; a light U-Net-style decoder upsamples the deepest level, adding each shallower
level (and a full-resolution stem of the input, for the detail finer than the patch size) to give
the normalised tendency of every channel on the grid. Like ``unet_grid`` it runs on any grid (lat-
lon, projected, curvilinear) and size: the grid is padded to a multiple of the encoder's total
stride and the output cropped back. Swin-style models are built with ``strict_img_size=False``, so
their window attention pads the feature maps itself.

Pretrained image weights (``pretrained`` or ``encoder_weights``) reach the encoder through timm's
own loading path: the first convolution is adapted to the stacked channels (``adapt_input_conv``);
the decoder starts from random.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal, cast

import timm
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from sciadapt.backbones._bounds import bound_problems
from sciadapt.backbones._grid_common import ConvBlock, GridBackbone, PadMode
from sciadapt.backbones.timm_vision import peft_targets, timm_key_problems
from sciadapt.errors import CheckpointError, ConfigError
from sciadapt.hub import read_state_dict, resolve_file
from sciadapt.registry import BACKBONES
from sciadapt.spec import FromData, Ge, NonNegInt, PositiveInt

logger = logging.getLogger(__name__)

#: The tiny Swin of ``swin_grid_tiny``: random weights, 3 stages (strides 4, 8, 16), ~60k parameters.
TINY_SWIN: dict[str, Any] = {"embed_dim": 16, "depths": (1, 1, 1), "num_heads": (1, 2, 4), "window_size": 4}


class SwinGrid(GridBackbone):
    """A timm ``features_only`` encoder and a light decoder on the grid. Build it with :func:`build_swin_grid`.

    Args:
        n_channels: State channels ``C``.
        n_forcings: Forcing channels per time step ``F``.
        n_static: Static channels ``S``.
        n_input: Past states per step ``T``.
        model_name: The timm architecture.
        decoder_channels: Width of every decoder level.
        groups: GroupNorm groups of the decoder.
        pad_mode: How the grid is padded.
        drop_path: Stochastic-depth rate of the encoder.
        timm_kwargs: More architecture arguments for ``timm.create_model`` (the tiny variant's sizes).

    Raises:
        ConfigError: If timm cannot build the model.
    """

    family = "swin_grid"

    def __init__(
        self,
        n_channels: int,
        n_forcings: int,
        n_static: int,
        n_input: int,
        model_name: str,
        decoder_channels: int,
        groups: int,
        pad_mode: PadMode,
        drop_path: float = 0.0,
        timm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        config = {"model_name": model_name, "decoder_channels": decoder_channels, "groups": groups}
        super().__init__(n_channels, n_forcings, n_static, n_input, pad_mode, config)
        self.model_name = model_name
        self._kwargs: dict[str, Any] = {"in_chans": self.in_chans, **(timm_kwargs or {})}
        if drop_path:
            self._kwargs["drop_path_rate"] = drop_path
        cfg = _pretrained_cfg(model_name)
        if cfg is not None and cfg.fixed_input_size:
            # Swin / ViT: any grid size (Swin pads to whole windows itself, ViT interpolates positions)
            self._kwargs.update(strict_img_size=False, dynamic_img_size=True)
        self.model = self._create()
        info: Any = self.model.feature_info
        channels = [int(c) for c in info.channels()]
        reductions = [int(r) for r in info.reduction()]
        self.channels_last = str(getattr(getattr(self.model, "output_fmt", "NCHW"), "value", "NCHW")) == "NHWC"
        self.multiple = max(reductions)
        # the decoder: deepest level -> 1x1 to the decoder width, then up one level at a time
        self.lateral = nn.Conv2d(channels[-1], decoder_channels, 1)
        self.up_blocks = nn.ModuleList(
            ConvBlock(decoder_channels + c, decoder_channels, groups) for c in reversed(channels[:-1])
        )
        stem_width = max(decoder_channels // 2, 1)
        self.stem = ConvBlock(self.in_chans, stem_width, groups)
        self.fuse = ConvBlock(decoder_channels + stem_width, decoder_channels, groups)
        self.out = nn.Conv2d(decoder_channels, n_channels, 1)
        # the encoder's attention and MLP Linears (transformers), else the convolutions of its last stages
        self.default_peft_targets: list[str] = peft_targets(self, [f"model.{n}" for n in info.module_name()])

    def _create(self, pretrained: bool = False, state: dict[str, Tensor] | None = None) -> nn.Module:
        kwargs = dict(self._kwargs)
        if state is not None:
            # timm's loading path: checkpoint filter, first-convolution adaptation, classifier dropped
            kwargs["pretrained_cfg_overlay"] = {"state_dict": state, "source": ""}
        try:
            return timm.create_model(
                self.model_name, pretrained=pretrained or state is not None, features_only=True, **kwargs
            )
        except (TypeError, ValueError, AssertionError, IndexError, KeyError, NotImplementedError) as err:
            if pretrained or state is not None:
                raise
            shown = ", ".join(f"{k}={v}" for k, v in self._kwargs.items())
            raise ConfigError(
                f"backbone.model_name: timm cannot build {self.model_name!r} with features_only=True ({shown}): "
                f"{type(err).__name__}: {err}. Use a hierarchical timm model (swin_*, convnext_*, resnet*)"
            ) from None

    def decode(self, x: Tensor) -> Tensor:
        feats = list(self.model(x))
        if self.channels_last:
            feats = [rearrange(f, "b h w c -> b c h w") for f in feats]
        h = self.lateral(feats[-1])  # (B, D, H'/r_L, W'/r_L)
        for block, skip in zip(self.up_blocks, reversed(feats[:-1]), strict=True):
            # to the skip's size, not x2: a Swin rounds odd stage sizes up
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1))  # (B, D, H'/r_i, W'/r_i)
        h = F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False)  # (B, D, H', W')
        h = self.fuse(torch.cat([h, self.stem(x)], dim=1))
        return cast(Tensor, self.out(h))  # (B, C, H', W')

    # -- encoder weights ----------------------------------------------------------------------
    def load_encoder_weights(self, source: str | None) -> None:
        """Load image weights into the encoder: timm's default pretrained tag (``source=None``,
        downloaded by timm) or a timm-layout state dict of ``model_name`` (file, folder or ``hf://``);
        the first convolution is adapted to the stacked input channels.

        Raises:
            CheckpointError: If the weights cannot be fetched or do not fit the architecture.
        """
        where = "timm's pretrained weights" if source is None else str(source)
        try:
            if source is None:
                loaded = self._create(pretrained=True)
            else:
                path = resolve_file(source)
                where = str(path)
                state = dict(read_state_dict(path))
                # timm loads features_only models non-strictly: check the key names first, as timm_vision does
                problems = self._key_problems(state)
                if problems:
                    raise CheckpointError(
                        f"swin_grid: cannot load {path} into the timm {self.model_name!r} encoder:\n"
                        + "\n".join(f"  - {p}" for p in problems)
                        + "\n  (encoder_weights expects a timm state dict of this architecture)"
                    )
                loaded = self._create(state=state)
        except CheckpointError:
            raise
        except Exception as err:  # offline, a 404, shapes that do not fit: timm raises many types
            first = str(err).splitlines()[0] if str(err) else ""
            raise CheckpointError(
                f"swin_grid: cannot load {where} into the timm {self.model_name!r} encoder "
                f"({type(err).__name__}: {first}). Offline, download the timm weights where there is a network "
                "and set pretrained: false and encoder_weights: <dir>/model.safetensors"
            ) from None
        self.model.load_state_dict(loaded.state_dict(), strict=True)
        logger.info(f"swin_grid: encoder {self.model_name} loaded from {where} (first convolution adapted)")

    def _key_problems(self, state: dict[str, Tensor]) -> list[str]:
        """Missing or unexpected key names against the full timm model, classifier excluded."""
        return timm_key_problems(self.model_name, self._kwargs, state)


def _pretrained_cfg(model_name: str) -> Any:
    try:
        return timm.models.get_pretrained_cfg(model_name)
    except Exception:  # a name timm knows only by architecture
        return None


def _build(
    n_channels: int,
    n_forcings: int,
    n_static: int,
    n_input: int,
    model_name: str,
    pretrained: bool,
    encoder_weights: str | None,
    weights: str | None,
    decoder_channels: int,
    groups: int,
    pad_mode: PadMode,
    drop_path: float,
    timm_kwargs: dict[str, Any] | None = None,
) -> SwinGrid:
    values: dict[str, Any] = {
        "n_channels": n_channels,
        "n_forcings": n_forcings,
        "n_static": n_static,
        "n_input": n_input,
        "decoder_channels": decoder_channels,
        "groups": groups,
    }
    problems = bound_problems(build_swin_grid, values, "backbone")
    if not timm.is_model(model_name):
        problems.append(f"backbone.model_name: timm has no model {model_name!r} (list them: timm.list_models('swin*'))")
    if int(pretrained) + (encoder_weights is not None) + (weights is not None) > 1:
        problems.append(
            "backbone.pretrained, encoder_weights and weights: set one (pretrained: timm's image weights for the "
            "encoder; encoder_weights: a local timm state dict; weights: a whole swin_grid checkpoint)"
        )
    if not 0.0 <= drop_path < 1.0:
        problems.append(f"backbone.drop_path: expected 0 <= drop_path < 1, got {drop_path!r}")
    if problems:
        raise ConfigError(problems)
    model = SwinGrid(
        n_channels, n_forcings, n_static, n_input, model_name, decoder_channels, groups, pad_mode, drop_path,
        timm_kwargs,
    )  # fmt: skip
    if pretrained or encoder_weights is not None:
        model.load_encoder_weights(encoder_weights)
    elif weights is not None:
        model.load_pretrained(weights)
    return model


@BACKBONES.register("swin_grid")
def build_swin_grid(
    n_channels: Annotated[PositiveInt, FromData] = 1,
    n_forcings: Annotated[NonNegInt, FromData] = 0,
    n_static: Annotated[NonNegInt, FromData] = 0,
    n_input: Annotated[PositiveInt, FromData] = 1,
    model_name: str = "swin_tiny_patch4_window7_224",
    pretrained: bool = False,
    encoder_weights: str | None = None,
    weights: str | None = None,
    decoder_channels: Annotated[int, Ge(1)] = 96,
    groups: PositiveInt = 8,
    pad_mode: Literal["replicate", "zeros", "circular"] = "replicate",
    drop_path: float = 0.0,
) -> SwinGrid:
    """A timm hierarchical encoder (Swin, ConvNeXt, ...) plus a light decoder, predicting normalised
    tendencies on any grid (lat-lon, projected, curvilinear).

    Args:
        n_channels: State channels; follows the data.
        n_forcings: Forcing channels per time step; follows the data.
        n_static: Static channels; follows the data.
        n_input: Past states per step; follows the data.
        model_name: A hierarchical timm model (``swin_tiny_patch4_window7_224``, ``convnext_tiny``, ...).
        pretrained: Load timm's default image weights into the encoder (needs network access or the
            Hugging Face cache); the first convolution is adapted to the stacked channels.
        encoder_weights: A local timm state dict of ``model_name`` for the encoder, instead.
        weights: A whole swin_grid checkpoint (``save_pretrained`` folder or file, Lightning checkpoint).
        decoder_channels: Width of every decoder level.
        groups: GroupNorm groups of the decoder.
        pad_mode: ``replicate`` (regional grids), ``circular`` (global grids) or ``zeros``.
        drop_path: Stochastic-depth rate of the encoder.

    Returns:
        The model; ``forward_features`` returns ``(B, C, H, W)`` tendencies.

    Raises:
        ConfigError: Listing every invalid setting, or settings timm rejects.
        CheckpointError: If weights cannot be fetched or loaded.
    """
    return _build(
        n_channels, n_forcings, n_static, n_input, model_name, pretrained, encoder_weights, weights,
        decoder_channels, groups, pad_mode, drop_path,
    )  # fmt: skip


@BACKBONES.register("swin_grid_tiny")
def build_swin_grid_tiny(
    n_channels: Annotated[PositiveInt, FromData] = 1,
    n_forcings: Annotated[NonNegInt, FromData] = 0,
    n_static: Annotated[NonNegInt, FromData] = 0,
    n_input: Annotated[PositiveInt, FromData] = 1,
    decoder_channels: Annotated[int, Ge(1)] = 16,
    groups: PositiveInt = 4,
    pad_mode: Literal["replicate", "zeros", "circular"] = "replicate",
    weights: str | None = None,
) -> SwinGrid:
    """A tiny random Swin (width 16, 3 stages, window 4) with a 16-wide decoder, for tests and smoke runs.

    Takes the data's sizes, ``decoder_channels``, ``groups``, ``pad_mode`` and ``weights`` of
    :func:`build_swin_grid`; nothing is downloaded.
    """
    return _build(
        n_channels, n_forcings, n_static, n_input, "swin_tiny_patch4_window7_224", False, None, weights,
        decoder_channels, groups, pad_mode, 0.0, TINY_SWIN,
    )  # fmt: skip
