"""Surya (NASA/IBM, 2025): HelioSpectFormer, a foundation model of the Sun's SDO images.

Two time steps of 13 co-registered SDO channels (8 AIA EUV/UV passbands, 5 HMI magnetic and
Doppler maps) on a 4096 x 4096 grid, ``(B, C, T, H, W)``, are cut into 16-pixel patches over all
``C * T`` planes at once (one token per patch, a fixed Fourier position signal added), mixed by 2
spectral-gating blocks (a learnt filter in 2-D Fourier space) and 8 long-short attention blocks
(window attention plus attention to a low-rank dynamic projection of the whole sequence), and
decoded by a 1x1 convolution + pixel shuffle into the next time step's ``(B, C, H, W)`` image.

sciadapt's :class:`HelioSpectFormer` is our own implementation with the module names of the official
code, so the released ``surya.366m.v1.pt`` (366,190,080 parameters) loads with strict checking.
``head="none"`` (the default) builds the encoder, as upstream's fine-tuning examples do
(``finetune=True``): the loader drops the file's pre-training decoder (``unembed.*``) and says so.
``head="forecast"`` keeps that decoder: the model then forecasts the next step, zero-shot, and loads
every entry of the official file.

``time_delta_input`` ``(B, T)`` holds, as upstream's dataset writes it, the hours from each input frame
to the last one (``[1, 0]`` for Surya-1.0's two frames an hour apart, its config's
``time_delta_input_minutes: [-60, 0]``), as the ``sdo`` datamodule gives it. The linear time embedding
ignores it (upstream takes it and does not use it); :meth:`HelioSpectFormer.forward_features` accepts
and checks its shape for compatibility.

Channels have names (``channel_names``, following the data; Surya-1.0's are :data:`SDO_CHANNELS`):
:meth:`HelioSpectFormer.extend_input_channels` appends channels unseen in pre-training to the patch
embedding (one ``T``-frame slice of planes per channel) and the decoder's outputs (a stage's
``new_channels``, see :mod:`sciadapt.backbones._channels`).

Not built: upstream's perceiver embedding, learned flow, ensembles (adaLN), relative position bias and
global tokens, none of which Surya-1.0 uses.

References: S. Roy et al., "Surya: Foundation Model for Heliophysics", 2025,
https://arxiv.org/abs/2508.14112; code https://github.com/NASA-IMPACT/Surya; weights
https://huggingface.co/nasa-ibm-ai4science/Surya-1.0
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sciadapt.backbones._bounds import bound_problems
from sciadapt.backbones._channels import channel_key, extend_channels, log_extension
from sciadapt.backbones._saved import save_state, saved_metadata
from sciadapt.backbones._surya_layers import LinearDecoder, LinearEmbedding, SpectFormer
from sciadapt.errors import CheckpointError, ConfigError, ShapeError
from sciadapt.hub import WEIGHT_FILES, describe_mismatch, is_hub, read_state_dict, resolve_file
from sciadapt.registry import BACKBONES
from sciadapt.spec import FromData, Ge
from sciadapt.types import IMAGE, IMAGE_SERIES

logger = logging.getLogger(__name__)

TOKENS = "B N D"
#: The SDO channels of Surya-1.0, in the order of its input (and output) channels.
SDO_CHANNELS = (
    "aia94",
    "aia131",
    "aia171",
    "aia193",
    "aia211",
    "aia304",
    "aia335",
    "aia1600",
    "hmi_m",
    "hmi_bx",
    "hmi_by",
    "hmi_bz",
    "hmi_v",
)
#: Minutes of the input frames relative to the last one in Surya-1.0's pre-training (its config's
#: ``time_delta_input_minutes``; the batch entry ``time_delta_input`` is hours before the last frame, ``[1, 0]``).
TIME_DELTA_INPUT_MINUTES = (-60, 0)
#: The ``sciadapt`` entry of a :meth:`HelioSpectFormer.save_pretrained` file's metadata.
SAVED_FAMILY = "surya"
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")

# builder parameters that follow the data (the config layer fills them from the datamodule)
ImgSize = Annotated[int, Ge(1), FromData]
ChannelNames = Annotated[list[str] | None, FromData]
# a count for unnamed channels only (not FromData): the channels follow channel_names, so a stage that
# adds channels (new_channels) changes no second fact
InChans = Annotated[int | None, Ge(1)]
Frames = Annotated[int, Ge(1), FromData]
Head = Literal["forecast", "none"]


@dataclass(frozen=True)
class Variant:
    """The geometry of one model and where its weights live."""

    patch_size: int
    embed_dim: int
    depth: int
    n_spectral_blocks: int
    num_heads: int
    window_size: int
    dp_rank: int
    mlp_ratio: float = 4.0
    default_chans: int = len(SDO_CHANNELS)  # channels when neither names nor a count are given
    hub_repo: str | None = None
    hub_files: tuple[str, ...] = ()


#: Surya-1.0 (``config.yaml`` of the downstream examples) and the golden fixtures' tiny geometry.
VARIANTS: dict[str, Variant] = {
    "1.0": Variant(
        16, 1280, 10, 2, 16, 2, 4, hub_repo="nasa-ibm-ai4science/Surya-1.0", hub_files=("surya.366m.v1.pt",)
    ),
    "tiny": Variant(4, 32, 3, 1, 4, 2, 2, default_chans=3),
}


def resolve_weights(source: str, hub_files: tuple[str, ...]) -> Path:
    """A local weight file: a file, a folder, ``hf://org/repo[@rev]`` or ``hf://org/repo/<file>[@rev]``.

    A folder or repository is searched for ``hub_files`` (the official names; in a local folder a
    ``.safetensors`` twin first), then the usual ``model.safetensors`` ...
    """
    if is_hub(source):
        base, at, revision = source.partition("@")
        repo, _, last = base.rstrip("/").rpartition("/")
        if Path(last).suffix.lower() in _WEIGHT_SUFFIXES:
            return resolve_file(repo + at + revision, [last])
        return resolve_file(source, list(hub_files) or list(WEIGHT_FILES))
    twins = [f"{Path(f).stem}.safetensors" for f in hub_files]
    return resolve_file(source, [*twins, *hub_files, *WEIGHT_FILES])


class HelioSpectFormer(nn.Module):
    """Surya's HelioSpectFormer with the official parameter names, as a sciadapt backbone.

    Build it with ``surya`` or ``surya_tiny`` (the config schema). Keys: ``embedding.pos_embed``
    (buffer), ``embedding.patch_embed.proj.*``, ``backbone.blocks_spectral_gating.{i}.*``,
    ``backbone.blocks_attention.{i}.*`` and, with the forecast head, ``unembed.unembed.0.*``.

    Args:
        variant: Geometry (a key of :data:`VARIANTS`).
        img_size: ``H = W`` of the inputs (the position signal and the spectral filters are built
            for its token grid).
        channel_names: Names of the input channels ``C`` in order (also the forecast's channels);
            None: ``in_chans`` channels, named after the first of :data:`SDO_CHANNELS`.
        in_chans: The channel count when ``channel_names`` is None (else it must agree); None: the
            variant's (13 for Surya-1.0, 3 for the tiny one).
        num_frames: Time steps ``T`` of an input (upstream ``time_embedding.time_dim``).
        head: ``"none"`` ends at the tokens, ``"forecast"`` keeps the pre-training decoder.
        drop_rate: Dropout after the position signal and in every MLP.
        drop_path: Stochastic depth of the last block (0 for the first, linear in between).
        activation_checkpointing: Recompute every block's activations in the backward pass.
        name: The builder name (messages).

    Raises:
        ConfigError: Listing every invalid setting.
    """

    input_layout = IMAGE_SERIES
    #: the builder parameter (and datamodule fact) naming the input channels (:class:`~sciadapt.types.ExtendsChannels`)
    CHANNELS_FACT: ClassVar[str] = "channel_names"

    def __init__(
        self,
        variant: str,
        img_size: int,
        channel_names: Sequence[str] | None = None,
        num_frames: int = 2,
        head: str = "none",
        drop_rate: float = 0.0,
        drop_path: float = 0.0,
        activation_checkpointing: bool = False,
        name: str = "surya",
        in_chans: int | None = None,
    ) -> None:
        super().__init__()
        v = VARIANTS[variant]
        channels = _validate(name, v, img_size, channel_names, in_chans, num_frames, head, drop_rate, drop_path)
        self.name = name
        self.variant = variant
        self.img_size = int(img_size)
        self.channels = channels
        self.in_chans = len(channels)
        self.num_frames = int(num_frames)
        self.patch_size = v.patch_size
        self.embed_dim = v.embed_dim
        self.grid = self.img_size // v.patch_size
        self.weight_files = v.hub_files
        self.activation_checkpointing = activation_checkpointing

        self.embedding = LinearEmbedding(img_size, v.patch_size, self.in_chans, num_frames, v.embed_dim, drop_rate)
        self.backbone = SpectFormer(
            self.grid,
            v.embed_dim,
            v.depth,
            v.n_spectral_blocks,
            v.num_heads,
            v.mlp_ratio,
            v.window_size,
            v.dp_rank,
            drop_rate,
            drop_path,
        )
        self.unembed = LinearDecoder(v.patch_size, self.in_chans, v.embed_dim) if head == "forecast" else None
        self.feature_info: list[dict[str, Any]] = self._feature_info()
        # attention in and out of the long-short blocks, and every MLP (what upstream's LoRA examples reach)
        self.default_peft_targets: list[str] = [
            "backbone.blocks_attention.*.attn.qkv",
            "backbone.blocks_attention.*.attn.proj",
            "backbone.blocks_*.*.mlp.fc1",
            "backbone.blocks_*.*.mlp.fc2",
        ]

    def _feature_info(self) -> list[dict[str, Any]]:
        v = VARIANTS[self.variant]
        # the forecast, when built, is the last level (reduction 1): dense heads want head="none"
        tokens = {"layout": TOKENS, "channels": v.embed_dim, "reduction": v.patch_size, "cls_token": False}
        kinds = ["spectral_gating"] * v.n_spectral_blocks + ["attention"] * (v.depth - v.n_spectral_blocks)
        levels: list[dict[str, Any]] = [{**tokens, "grid": [1, self.grid, self.grid], "kind": k} for k in kinds]
        if self.unembed is not None:
            levels.append({"layout": IMAGE, "channels": self.in_chans, "reduction": 1, "kind": "forecast"})
        return levels

    # -- forward ------------------------------------------------------------------------------

    def check_input(self, x: Tensor, time_delta_input: Tensor | None = None) -> None:
        """Raise :class:`ShapeError` naming the setting to change unless ``x`` is ``(B, C, T, H, W)`` of this model."""
        shape = tuple(x.shape)
        if x.dim() != 5:
            raise ShapeError(f"{self.name} input: expected {IMAGE_SERIES}, got {shape}")
        _, c, t, h, w = shape
        if c != self.in_chans:
            raise ShapeError(
                f"{self.name} input: expected {IMAGE_SERIES} with C={self.in_chans} channels "
                f"({', '.join(self.channels)}), got {shape}. Fix: give the data these channels in this order, or "
                f"build the model for the data's channels (backbone.channel_names, or backbone.in_chans={c} for "
                f"unnamed ones). The official Surya-1.0 weights take the {len(SDO_CHANNELS)} SDO channels: select "
                "them in the data to keep its patch embedding, and add others with stages[i].new_channels"
            )
        if t != self.num_frames:
            raise ShapeError(
                f"{self.name} input: expected {IMAGE_SERIES} with T={self.num_frames} time steps, got {shape}. "
                f"Fix: set backbone.num_frames={t} (Surya-1.0 was pre-trained on {len(TIME_DELTA_INPUT_MINUTES)} "
                "frames: give the data that many input steps to keep its patch embedding)"
            )
        if h != self.img_size or w != self.img_size:
            raise ShapeError(
                f"{self.name} input: expected {IMAGE_SERIES} with H=W={self.img_size}, got {shape}. "
                f"Fix: set backbone.img_size={h if h == w else '<H=W>'} (the position signal and the spectral "
                "filters are tied to the token grid; the official weights need 4096) or resize the images"
            )
        if time_delta_input is not None and tuple(time_delta_input.shape) != (shape[0], t):
            raise ShapeError(
                f"{self.name} time_delta_input: expected (B, T) = {(shape[0], t)} (hours from each input frame "
                "to the last one), "
                f"got {tuple(time_delta_input.shape)}"
            )

    def forward_features(self, x: Tensor, time_delta_input: Tensor | None = None) -> list[Tensor]:
        """Encode a series of solar images; return every block's tokens and, with the head, the forecast.

        Args:
            x: ``(B, C, T, H, W)`` with ``C = len(channel_names)``, ``T = num_frames``, ``H = W = img_size``.
            time_delta_input: ``(B, T)`` hours from each input frame to the last one (upstream's batch
                entry, ``[1, 0]`` for two hourly frames); checked, not used by the linear time embedding
                (as upstream).

        Returns:
            One ``(B, N, D)`` tensor per block (``N = (img_size / patch)^2`` tokens, row-major, no
            final norm), then, with ``head="forecast"``, the ``(B, C, H, W)`` forecast.

        Raises:
            ShapeError: If ``x`` or ``time_delta_input`` does not fit this model.
        """
        self.check_input(x, time_delta_input)
        tokens = self.embedding(x)  # (B, N, D)
        out = []
        for block in self.backbone.blocks():
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
            out.append(tokens)
        if self.unembed is not None:
            out.append(self.unembed(tokens, self.grid))  # (B, C, H, W)
        return out

    def forward(self, x: Tensor, time_delta_input: Tensor | None = None) -> list[Tensor]:
        """Same as :meth:`forward_features`."""
        return self.forward_features(x, time_delta_input)

    def example_inputs(self, batch: int = 2) -> dict[str, Tensor]:
        """Seeded random inputs for this instance, on its device.

        Returns:
            ``x`` ``(B, C, T, H, W)`` and ``time_delta_input`` ``(B, T)``: frames one hour apart,
            in hours before the last (Surya-1.0's ``[1, 0]`` for two frames).
        """
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, self.in_chans, self.num_frames, self.img_size, self.img_size, generator=g)
        hours = torch.arange(self.num_frames - 1, -1, -1, dtype=torch.float32)  # (T,): T-1 ... 1, 0
        like = self.embedding.patch_embed.proj.weight
        return {
            "x": x.to(like.device, like.dtype),
            "time_delta_input": hours.expand(batch, -1).to(like.device, like.dtype),
        }

    # -- new input channels (sciadapt.types.ExtendsChannels) ------------------------------------

    @property
    def channel_names(self) -> list[str]:
        """The input (and forecast) channels, in order."""
        return list(self.channels)

    def extend_input_channels(self, new_channel_names: Sequence[str], rule: str) -> None:
        """Append input channels to the patch embedding and, with the forecast head, the decoder's outputs.

        The patch embedding reads the ``C * T`` planes channel-major (plane ``c * T + t``): its kernel
        ``(D, C*T, p, p)`` is viewed as ``(D, C, T, p, p)`` and grows along ``C`` (every frame of a new
        channel gets its rule's slice). The decoder's 1x1 convolution writes ``C * p * p`` maps that the
        pixel shuffle turns into ``C`` images: its weight ``(C*p*p, D, 1, 1)`` is viewed as
        ``(C, p*p, D, 1, 1)`` and its bias as ``(C, p*p)``, both grown along ``C``. The existing slices
        are kept bit for bit; the new ones start from ``rule`` (``zeros``, ``mean`` or ``copy:<name>``,
        see :mod:`sciadapt.backbones._channels`). ``channel_names``, ``in_chans``, ``feature_info`` and
        what :meth:`save_pretrained` records follow.

        Raises:
            ConfigError: If the rule is unknown, ``copy:`` names no channel, or a channel is already there.
        """
        new = [str(n) for n in new_channel_names]
        old = list(self.channels)
        c, t, n = len(old), self.num_frames, len(new)
        conv = self.embedding.patch_embed.proj
        w = conv.weight
        grown = extend_channels(w.view(w.shape[0], c, t, *w.shape[2:]), old, new, rule, dim=1)  # (D, C+n, T, p, p)
        conv.weight = nn.Parameter(grown.reshape(w.shape[0], (c + n) * t, *w.shape[2:]), requires_grad=w.requires_grad)
        conv.in_channels = (c + n) * t
        layers = ["embedding.patch_embed.proj"]
        if self.unembed is not None:
            out = self.unembed.unembed[0]
            # LinearDecoder: a 1x1 convolution with a bias, then the pixel shuffle
            assert isinstance(out, nn.Conv2d) and out.bias is not None
            w, b = out.weight, out.bias
            rows = w.shape[0] // c  # p * p output pixels per channel
            grown = extend_channels(w.view(c, rows, *w.shape[1:]), old, new, rule, dim=0)  # (C+n, p*p, D, 1, 1)
            out.weight = nn.Parameter(grown.reshape(-1, *w.shape[1:]), requires_grad=w.requires_grad)
            grown_bias = extend_channels(b.view(c, rows), old, new, rule, dim=0)  # (C+n, p*p)
            out.bias = nn.Parameter(grown_bias.reshape(-1), requires_grad=b.requires_grad)
            out.out_channels = (c + n) * rows
            layers.append("unembed.unembed.0")
        self.channels = old + new
        self.in_chans = len(self.channels)
        self.feature_info = self._feature_info()
        log_extension(self.name, old, new, rule, layers)

    # -- weights -------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the model to ``directory/model.safetensors`` (official key names; metadata: the channel
        names and the geometry) for :meth:`load_pretrained`."""
        geometry = {"in_chans": self.in_chans, "num_frames": self.num_frames, "img_size": self.img_size}
        return save_state(
            self.state_dict(), directory, SAVED_FAMILY, geometry=geometry, channel_names=self.channel_names
        )

    def load_pretrained(self, source: str) -> None:
        """Load an official Surya checkpoint (or a :meth:`save_pretrained` folder) with strict checking.

        The one filter: with ``head="none"`` the file's pre-training decoder entries (``unembed.*``)
        are dropped (logged). Every other entry, the ``embedding.pos_embed`` buffer included, must
        match this model's key and shape, and a :meth:`save_pretrained` file must record this model's
        channel names in its order (an official file records none: its channels are :data:`SDO_CHANNELS`).

        Args:
            source: A ``.pt`` (read with ``torch.load(weights_only=True)``) or ``.safetensors`` file,
                a folder holding ``surya.366m.v1.{safetensors,pt}`` or ``model.safetensors``, or
                ``hf://nasa-ibm-ai4science/Surya-1.0[@revision]`` / ``hf://org/repo/<file>``.

        Raises:
            CheckpointError: If the file cannot be found, fetched or read, records other channels, or
                keys are missing, unexpected or mis-shaped; the message names the keys and the setting
                to change.
        """
        path = resolve_weights(source, self.weight_files)
        file_state = read_state_dict(path)
        meta = saved_metadata(path, SAVED_FAMILY)
        if meta is not None:
            logger.info(f"{self.name}: {path.name} was written by save_pretrained")
            recorded = meta.get("channel_names")
            names = [str(c) for c in recorded] if isinstance(recorded, list) else []
            if names and [channel_key(c) for c in names] != [channel_key(c) for c in self.channels]:
                raise CheckpointError(
                    f"cannot load {path} into {self._describe()}: the file's channels are {', '.join(names)}, "
                    f"this model's {', '.join(self.channels)}. Give the data the file's channels in its order "
                    "(data.channels), and add channels the file lacks with stages[i].new_channels"
                )
        state = dict(file_state)
        if self.unembed is None:
            dropped = [k for k in state if k.startswith("unembed.")]
            for k in dropped:
                del state[k]
            if dropped:
                logger.info(
                    f"{self.name}: head=none: dropped the {len(dropped)} entries of the pre-training decoder "
                    f"(unembed.*) of {path.name}"
                )
        problems = describe_mismatch(self.state_dict(), state)
        if problems:
            raise CheckpointError(
                f"cannot load {path} into {self._describe()}:\n"
                + "\n".join(f"  - {p}" for p in problems)
                + "".join(f"\n  ({h})" for h in self._hints(file_state))
            )
        self.load_state_dict(state, strict=True)

    def _describe(self) -> str:
        return (
            f"{self.name}(in_chans={self.in_chans} [{', '.join(self.channels)}], num_frames={self.num_frames}, "
            f"img_size={self.img_size}, head={'forecast' if self.unembed is not None else 'none'})"
        )

    def _hints(self, state: dict[str, Tensor]) -> list[str]:
        """The settings a file's shapes imply, where they differ from this model's."""
        hints = []
        if self.unembed is not None and not any(k.startswith("unembed.") for k in state):
            hints.append("the file has no pre-training decoder (unembed.*): set backbone.head=none")
        patch = state.get("embedding.patch_embed.proj.weight")
        decoder = state.get("unembed.unembed.0.weight")
        filt = state.get("backbone.blocks_spectral_gating.0.filter.complex_weight")
        if patch is not None and patch.dim() == 4:
            p, planes = int(patch.shape[-1]), int(patch.shape[1])
            if decoder is not None and decoder.dim() == 4 and decoder.shape[0] % (p * p) == 0:
                c = int(decoder.shape[0]) // (p * p)
                if c and planes % c == 0 and (c, planes // c) != (self.in_chans, self.num_frames):
                    hints.append(
                        f"the file takes in_chans={c}, num_frames={planes // c}: set backbone.in_chans and num_frames"
                    )
            elif planes != self.in_chans * self.num_frames:
                hints.append(
                    f"the file's patch embedding takes {planes} planes (in_chans x num_frames), this model "
                    f"{self.in_chans} x {self.num_frames}: set backbone.in_chans and num_frames to the file's"
                )
            if filt is not None and filt.dim() == 4 and int(filt.shape[0]) * p != self.img_size:
                hints.append(
                    f"the file's spectral filters are for img_size={int(filt.shape[0]) * p}: set backbone.img_size"
                )
        return hints


def _validate(
    name: str,
    v: Variant,
    img_size: int,
    channel_names: Sequence[str] | None,
    in_chans: int | None,
    num_frames: int,
    head: str,
    drop_rate: float,
    drop_path: float,
) -> list[str]:
    """Every problem of the settings in one :class:`ConfigError`; else the channel names."""
    problems = bound_problems(build_surya, {"img_size": img_size, "in_chans": in_chans, "num_frames": num_frames}, name)
    count = in_chans if isinstance(in_chans, int) and not isinstance(in_chans, bool) and in_chans >= 1 else None
    channels, channel_problems = _channels(name, v, channel_names, count)
    problems += channel_problems
    if not problems:
        if img_size % v.patch_size:
            problems.append(f"{name}.img_size={img_size} must be a multiple of the patch size {v.patch_size}")
        elif (img_size // v.patch_size) % v.window_size:
            problems.append(
                f"{name}.img_size={img_size}: its token grid ({img_size // v.patch_size}) must be a multiple of the "
                f"attention window {v.window_size}; use a multiple of {v.patch_size * v.window_size}"
            )
    if head not in ("forecast", "none"):
        problems.append(f"{name}.head: expected 'forecast' or 'none', got {head!r}")
    for key, rate in (("drop_rate", drop_rate), ("drop_path", drop_path)):
        if not isinstance(rate, int | float) or not 0.0 <= rate < 1.0:
            problems.append(f"{name}.{key}: expected 0 <= {key} < 1, got {rate!r}")
    if problems:
        raise ConfigError(problems)
    return channels


def _channels(
    name: str, v: Variant, channel_names: Sequence[str] | None, in_chans: int | None
) -> tuple[list[str], list[str]]:
    """The channel names and what is wrong with them: ``channel_names`` as given (``in_chans``, if set,
    must count them), else the first ``in_chans`` (default: the variant's count) of :data:`SDO_CHANNELS`."""
    if channel_names is not None:
        names = [str(c) for c in channel_names]
        problems = []
        if not names:
            problems.append(f"{name}.channel_names: expected at least one channel name")
        keys = [channel_key(c) for c in names]
        repeated = sorted({c for c, k in zip(names, keys, strict=True) if keys.count(k) > 1})
        if repeated:
            problems.append(f"{name}.channel_names: names repeat (case-insensitive): {', '.join(repeated)}")
        if in_chans is not None and in_chans != len(names):
            problems.append(
                f"{name}.in_chans={in_chans} but channel_names has {len(names)} names ({', '.join(names)}): "
                "drop in_chans (the channels follow channel_names, which follows the data)"
            )
        return names, problems
    count = v.default_chans if in_chans is None else in_chans
    if count > len(SDO_CHANNELS):
        return [], [
            f"{name}.in_chans={count}: more channels than Surya-1.0's {len(SDO_CHANNELS)} SDO channels, so they "
            "need names: set backbone.channel_names (a datamodule that names its channels sets it)"
        ]
    return list(SDO_CHANNELS[:count]), []


# ---------------------------------------------------------------------------------------------
# builders


def _build(
    variant: str,
    name: str,
    weights: str | None,
    img_size: int,
    channel_names: list[str] | None,
    in_chans: int | None,
    num_frames: int,
    head: str,
    drop_rate: float,
    drop_path: float,
    activation_checkpointing: bool,
) -> HelioSpectFormer:
    model = HelioSpectFormer(
        variant,
        img_size,
        channel_names=channel_names,
        num_frames=num_frames,
        head=head,
        drop_rate=drop_rate,
        drop_path=drop_path,
        activation_checkpointing=activation_checkpointing,
        name=name,
        in_chans=in_chans,
    )
    if weights is not None:
        model.load_pretrained(weights)
    return model


@BACKBONES.register("surya")
def build_surya(
    weights: str | None = None,
    img_size: ImgSize = 4096,
    channel_names: ChannelNames = None,
    in_chans: InChans = None,
    num_frames: Frames = 2,
    head: Head = "none",
    drop_rate: float = 0.0,
    drop_path: float = 0.0,
    activation_checkpointing: bool = False,
) -> HelioSpectFormer:
    """Surya-1.0 (NASA/IBM): HelioSpectFormer, 1280 wide, 2 spectral-gating + 8 long-short attention blocks.

    16-pixel patches over ``C x T`` planes of 4096 x 4096 SDO images (13 channels, 2 frames an hour
    apart); 361,926,912 parameters, 366,190,080 with the forecast head (``head=forecast``).

    Args:
        weights: ``hf://nasa-ibm-ai4science/Surya-1.0`` (fetches ``surya.366m.v1.pt``), another
            ``hf://org/repo[/<file>][@rev]``, a local file or a folder holding the official file
            name; None: random initialisation. See :meth:`HelioSpectFormer.load_pretrained`.
        img_size: ``H = W`` of the images, a multiple of 32 (the official weights need 4096).
        channel_names: The input channels' names, in order (follows the data; the official weights
            take ``SDO_CHANNELS``: aia94 ... aia1600, hmi_m, hmi_bx, hmi_by, hmi_bz, hmi_v). A stage's
            ``new_channels`` appends channels to them. None: ``SDO_CHANNELS``.
        in_chans: The channel count of a model for unnamed channels (the first ``in_chans`` of
            ``SDO_CHANNELS`` name them); with ``channel_names`` it must agree. None: 13.
        num_frames: Input time steps ``T`` (2 for the official weights).
        head: ``none``: the encoder, tokens only (a file's pre-training decoder is dropped);
            ``forecast``: keep that decoder, the last output is the next step's ``(B, C, H, W)`` image.
        drop_rate: Dropout after the position signal and in every MLP.
        drop_path: Stochastic depth of the last block (linear from 0 over the blocks).
        activation_checkpointing: Recompute block activations in the backward pass (memory).

    Returns:
        The backbone; ``forward_features(x, time_delta_input=None)`` returns every block's
        ``(B, N, 1280)`` tokens and, with the head, the forecast.

    Raises:
        ConfigError: Listing every invalid setting.
        CheckpointError: If ``weights`` cannot be loaded.
    """
    return _build(
        "1.0",
        "surya",
        weights,
        img_size,
        channel_names,
        in_chans,
        num_frames,
        head,
        drop_rate,
        drop_path,
        activation_checkpointing,
    )


@BACKBONES.register("surya_tiny")
def build_surya_tiny(
    weights: str | None = None,
    img_size: ImgSize = 32,
    channel_names: ChannelNames = None,
    in_chans: InChans = None,
    num_frames: Frames = 2,
    head: Head = "none",
    drop_rate: float = 0.0,
    drop_path: float = 0.0,
    activation_checkpointing: bool = False,
) -> HelioSpectFormer:
    """A tiny Surya (embed 32, 1 spectral-gating + 2 attention blocks, 4-pixel patches; the golden fixtures' geometry).

    Takes the arguments of :func:`build_surya` (``img_size``: a multiple of 8; without names or count,
    three channels: aia94, aia131, aia171); for tests and smoke runs.
    """
    return _build(
        "tiny",
        "surya_tiny",
        weights,
        img_size,
        channel_names,
        in_chans,
        num_frames,
        head,
        drop_rate,
        drop_path,
        activation_checkpointing,
    )
