"""Prithvi-EO (NASA/IBM, 2023-2024): a masked-autoencoder ViT over 3D patches of image series.

An image series ``(B, C, T, H, W)`` of HLS bands is cut into tubelets of ``(t, p, p)`` pixels (Conv3d
with stride = kernel), every tubelet becomes one token, a fixed 3D sine-cosine table gives each token
its (frame, row, column) position, a class token is prepended, and a stack of pre-norm transformer
blocks (timm's ``Block``) encodes the ``1 + T/t * H/p * W/p`` tokens. The Prithvi-EO-2.0 "TL" models add
sine-cosine encodings of each frame's (year, day of year) and of the scene's (lat, lon), scaled by a
learnt factor, to the tokens.

sciadapt fine-tunes the **encoder**: :class:`PrithviViT` holds exactly the parameters of upstream
``PrithviViT`` (terratorch), so the encoder part of an official checkpoint loads with strict
checking. The MAE decoder used for pre-training is not built; its entries in a checkpoint are dropped
(one log line says how many).

Checkpoint layouts read by :meth:`PrithviViT.load_pretrained`:

* **v1** (``Prithvi_EO_V1_100M.pt``, hls-foundation-os ``MaskedAutoencoderViT``): flat keys. As in
  terratorch's ``checkpoint_filter_fn_mae``, a key containing ``decoder`` or ``_dec``, or equal to
  ``mask_token``, belongs to the decoder; every other key is an encoder key under the same name.
* **v2** (``Prithvi_EO_V2_*.pt``, terratorch ``PrithviMAE``): ``encoder.``- and ``decoder.``-prefixed
  keys; the ``encoder.`` prefix is removed.

The position table ``pos_embed`` is never loaded: it is a fixed function of the token grid and is
recomputed for this model's ``num_frames`` and ``img_size`` (and on the fly for inputs of another
size), so both may differ from pre-training.

Bands: the patch embedding has one input channel per band. ``pretrained_bands`` names the file's
channels (default: Prithvi's HLS order); ``bands`` names the data's. A data band found among the
pretrained ones (case-insensitive name match) takes that band's patch-embedding weights; a new band
keeps the fresh initialisation (xavier-uniform over the kernel viewed as ``(D, C*t*p*p)``, as at
construction and as terratorch's ``select_patch_embed_weights`` does); pretrained bands the data
lacks are sliced out.

References: J. Jakubik et al., "Foundation Models for Generalist Geospatial Artificial Intelligence",
2023, https://arxiv.org/abs/2310.18660; D. Szwarcman et al., "Prithvi-EO-2.0: A Versatile
Multi-Temporal Foundation Model for Earth Observation Applications", 2024,
https://arxiv.org/abs/2412.02732
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from sciadapt.backbones._bounds import bound_problems
from sciadapt.backbones._channels import grow_conv_input, log_extension
from sciadapt.backbones._saved import save_state, saved_metadata
from sciadapt.errors import CheckpointError, ConfigError, ShapeError
from sciadapt.hub import WEIGHT_FILES, describe_mismatch, is_hub, read_state_dict, resolve_file
from sciadapt.registry import BACKBONES
from sciadapt.spec import FromData, PositiveInt
from sciadapt.types import IMAGE_SERIES, check_shape

logger = logging.getLogger(__name__)

TOKENS = "B N D"
#: The bands Prithvi-EO was pre-trained on, in the order of the patch embedding's input channels.
HLS_BANDS = ("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2")
#: Per-band normalisation of the pre-training data (HLS reflectance x 10000), in :data:`HLS_BANDS` order.
HLS_STATS: dict[str, dict[str, tuple[float, ...]]] = {
    "v1": {
        "mean": (775.0, 1081.0, 1229.0, 2497.0, 2204.0, 1611.0),
        "std": (1282.0, 1270.0, 1399.0, 1368.0, 1292.0, 1155.0),
    },
    "v2": {
        "mean": (1087.0, 1342.0, 1433.0, 2734.0, 1958.0, 1363.0),
        "std": (2248.0, 2179.0, 2178.0, 1850.0, 1242.0, 1049.0),
    },
}
COORDS = ("time", "location")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
#: The ``sciadapt`` entry of a :meth:`PrithviViT.save_pretrained` file's metadata.
SAVED_FAMILY = "prithvi"

# builder parameters that follow the data's chips (the config layer fills them from the datamodule)
Frames = Annotated[PositiveInt, FromData]
ChipSize = Annotated[PositiveInt, FromData]
Bands = Annotated[list[str] | None, FromData]


@dataclass(frozen=True)
class Variant:
    """The geometry of one official model and where its weights live."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: tuple[int, int, int] = (1, 16, 16)
    coords_encoding: tuple[str, ...] = ()
    hub_repo: str | None = None
    hub_files: tuple[str, ...] = ()


_TL = ("time", "location")
#: terratorch ``prithvi_cfgs`` / ``pretrained_weights`` (mlp_ratio 4, qkv bias, LayerNorm eps 1e-5 everywhere).
VARIANTS: dict[str, Variant] = {
    "v1_100m": Variant(
        768, 12, 12, hub_repo="ibm-nasa-geospatial/Prithvi-EO-1.0-100M", hub_files=("Prithvi_EO_V1_100M.pt",)
    ),
    "v2_300m": Variant(
        1024, 24, 16, hub_repo="ibm-nasa-geospatial/Prithvi-EO-2.0-300M", hub_files=("Prithvi_EO_V2_300M.pt",)
    ),
    "v2_300m_tl": Variant(
        1024,
        24,
        16,
        coords_encoding=_TL,
        hub_repo="ibm-nasa-geospatial/Prithvi-EO-2.0-300M-TL",
        hub_files=("Prithvi_EO_V2_300M_TL.pt",),
    ),
    "v2_600m": Variant(
        1280,
        32,
        16,
        patch_size=(1, 14, 14),
        hub_repo="ibm-nasa-geospatial/Prithvi-EO-2.0-600M",
        hub_files=("Prithvi_EO_V2_600M.pt",),
    ),
    "v2_600m_tl": Variant(
        1280,
        32,
        16,
        patch_size=(1, 14, 14),
        coords_encoding=_TL,
        hub_repo="ibm-nasa-geospatial/Prithvi-EO-2.0-600M-TL",
        hub_files=("Prithvi_EO_V2_600M_TL.pt",),
    ),
    # the golden fixtures' geometry (tests, smoke runs)
    "tiny": Variant(64, 2, 4),
    "tiny_tl": Variant(64, 2, 4, coords_encoding=_TL),
}


# ---------------------------------------------------------------------------------------------
# fixed sine-cosine encodings


def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """``(M,)`` positions -> ``(M, dim)``: ``[sin(pos * w), cos(pos * w)]`` with ``w_i = 10000^(-2i/dim)``.

    Computed in ``pos``'s dtype, with the operation order of the upstream code so float32 results
    (the temporal and location encodings) match it bit for bit.
    """
    if dim % 2:
        raise ConfigError(f"sine-cosine encodings need an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=pos.dtype, device=pos.device)
    omega /= dim / 2.0
    omega = 1.0 / torch.pow(10000.0, omega)  # (dim/2,)
    angles = pos.reshape(-1, 1) * omega  # (M, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_3d(dim: int, grid: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """The ``(1, 1 + t*h*w, dim)`` position table of a ``(t, h, w)`` token grid, class token row first (zeros).

    Per token: ``[enc_w(col) (6/16 of dim), enc_h(row) (6/16), enc_t(frame) (4/16)]``, tokens in
    ``(t h w)`` order. Computed in float64 (as upstream's numpy code) and returned as float32.
    """
    if dim % 16:
        raise ConfigError(f"Prithvi's 3D position table needs embed_dim divisible by 16, got {dim}")
    t, h, w = (int(g) for g in grid)
    axes = [torch.arange(n, dtype=torch.float64, device=device) for n in (t, h, w)]
    tt, hh, ww = torch.meshgrid(*axes, indexing="ij")  # (t, h, w) each
    table = torch.cat(
        [
            sincos_1d(dim // 16 * 6, ww.flatten()),
            sincos_1d(dim // 16 * 6, hh.flatten()),
            sincos_1d(dim // 16 * 4, tt.flatten()),
        ],
        dim=1,
    )  # (t*h*w, dim)
    table = torch.cat([torch.zeros(1, dim, dtype=table.dtype, device=device), table])
    return table.float().unsqueeze(0)


class TemporalEncoding(nn.Module):
    """``scale * [enc(year) (dim/2), enc(day of year) (dim - dim/2)]`` per frame (the TL models).

    Args:
        embed_dim: Token width.
        learn_scale: Learn ``scale`` (a Parameter initialised to 0.1, as the official TL models);
            otherwise it is a buffer of 1.
    """

    def __init__(self, embed_dim: int, learn_scale: bool = True) -> None:
        super().__init__()
        self.year_dim = embed_dim // 2
        self.day_dim = embed_dim - self.year_dim
        self.scale: Tensor
        if learn_scale:
            self.scale = nn.Parameter(torch.full((1,), 0.1))
        else:
            self.register_buffer("scale", torch.ones(1))

    def forward(self, coords: Tensor, tokens_per_frame: int) -> Tensor:
        """``(B, T, 2)`` (year, day of year) -> ``(B, T * tokens_per_frame, D)``, frames in token order."""
        b, t = coords.shape[:2]
        year = sincos_1d(self.year_dim, coords[:, :, 0].flatten()).reshape(b, t, -1)
        day = sincos_1d(self.day_dim, coords[:, :, 1].flatten()).reshape(b, t, -1)
        embedding = self.scale * torch.cat([year, day], dim=-1)  # (B, T, D)
        return torch.repeat_interleave(embedding, tokens_per_frame, dim=1)


class LocationEncoding(nn.Module):
    """``scale * [enc(lat) (dim/2), enc(lon) (dim - dim/2)]``, one vector per sample (the TL models).

    Args:
        embed_dim: Token width.
        learn_scale: As in :class:`TemporalEncoding`.
    """

    def __init__(self, embed_dim: int, learn_scale: bool = True) -> None:
        super().__init__()
        self.lat_dim = embed_dim // 2
        self.lon_dim = embed_dim - self.lat_dim
        self.scale: Tensor
        if learn_scale:
            self.scale = nn.Parameter(torch.full((1,), 0.1))
        else:
            self.register_buffer("scale", torch.ones(1))

    def forward(self, coords: Tensor) -> Tensor:
        """``(B, 2)`` (lat, lon) -> ``(B, 1, D)``, added to every token."""
        b = coords.shape[0]
        lat = sincos_1d(self.lat_dim, coords[:, 0]).reshape(b, 1, -1)
        lon = sincos_1d(self.lon_dim, coords[:, 1]).reshape(b, 1, -1)
        return self.scale * torch.cat([lat, lon], dim=-1)


class PatchEmbed3d(nn.Module):
    """Tubelets of ``(t, p, p)`` pixels -> tokens: a Conv3d with stride = kernel, then ``(t h w)`` order."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: tuple[int, int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, T, H, W)`` -> ``(B, T/t * H/p * W/p, D)``."""
        tokens: Tensor = rearrange(self.proj(x), "b d t h w -> b (t h w) d")  # (B, N, D)
        return tokens


# ---------------------------------------------------------------------------------------------
# checkpoints


def is_decoder_key(key: str) -> bool:
    """terratorch's rule for a v1 flat key: decoder entries contain ``decoder`` or ``_dec`` or are ``mask_token``."""
    return "decoder" in key or "_dec" in key or key == "mask_token"


def encoder_state(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str], str]:
    """Split a Prithvi checkpoint into encoder entries under :class:`PrithviViT` names and the rest.

    Returns:
        The encoder entries, the dropped MAE decoder keys (sorted), and the layout: ``"v2"`` when a
        key starts with ``encoder.`` or ``decoder.`` (terratorch ``PrithviMAE``), else ``"v1"`` (flat
        keys, split by :func:`is_decoder_key`). In a v2 file, an entry with neither prefix is kept
        under its own name, so the strict check reports it.
    """
    if any(k.startswith(("encoder.", "decoder.")) for k in state):
        encoder = {k.removeprefix("encoder."): v for k, v in state.items() if not k.startswith("decoder.")}
        return encoder, sorted(k for k in state if k.startswith("decoder.")), "v2"
    encoder = {k: v for k, v in state.items() if not is_decoder_key(k)}
    return encoder, sorted(k for k in state if is_decoder_key(k)), "v1"


def resolve_weights(source: str, hub_files: Sequence[str]) -> Path:
    """A local weight file for ``source``: a file, a folder, ``hf://org/repo[@rev]`` or ``hf://org/repo/<file>[@rev]``.

    A folder or a repository without a file name is searched for ``hub_files`` (the official names),
    safetensors first in a local folder.
    """
    if is_hub(source):
        base, at, revision = source.partition("@")
        head, _, last = base.rstrip("/").rpartition("/")
        if Path(last).suffix.lower() in _WEIGHT_SUFFIXES:
            return resolve_file(head + at + revision, [last])
        return resolve_file(source, list(hub_files) or WEIGHT_FILES)
    stems = [Path(f).stem for f in hub_files]
    local = [f"{s}.safetensors" for s in stems] + list(hub_files) + list(WEIGHT_FILES)
    return resolve_file(source, local)


def _band_key(name: str) -> str:
    return str(name).strip().upper()


# ---------------------------------------------------------------------------------------------
# the encoder


class PrithviViT(nn.Module):
    """The Prithvi-EO encoder with upstream parameter names, as a sciadapt backbone.

    Build it with a ``prithvi_*`` builder (the config schema). Keys: ``cls_token``, ``pos_embed``
    (buffer, recomputed, never loaded), ``patch_embed.proj.{weight,bias}``, ``blocks.{i}.*`` (timm
    ``Block``), ``norm.*`` and, for TL models, ``temporal_embed_enc.scale`` and
    ``location_embed_enc.scale``: an official v2 file's ``encoder.*`` entries.

    Args:
        img_size: Square chip size ``H = W`` the position table is built for (other sizes that are
            multiples of the patch size work too; their table is computed on the fly).
        patch_size: Tubelet ``(t, p, p)``.
        num_frames: Frames ``T`` the position table is built for.
        embed_dim: Token width ``D``.
        depth: Number of transformer blocks.
        num_heads: Attention heads per block.
        mlp_ratio: Hidden width of the blocks' MLP over ``D``.
        coords_encoding: Any of ``"time"`` and ``"location"`` (the TL models have both).
        coords_scale_learn: Learn the scale of the coordinate encodings (True in the TL models).
        drop_path: Stochastic-depth rate, the same in every block (as upstream).
        bands: The data's band names, one per input channel (default: ``pretrained_bands``).
        pretrained_bands: The band names of a checkpoint's input channels (default :data:`HLS_BANDS`).
        weight_files: Official file names looked for when :meth:`load_pretrained` gets a folder or a
            repository.
        name: The builder name (messages).

    ``feature_info`` describes inputs of ``num_frames x img_size x img_size``; another input size gives
    the token grid ``(T/t, H/p, W/p)``.

    Raises:
        ConfigError: Listing every invalid setting.
    """

    input_layout = IMAGE_SERIES
    #: the builder parameter (and datamodule fact) naming the input channels (:class:`~sciadapt.types.ExtendsChannels`)
    CHANNELS_FACT: ClassVar[str] = "bands"

    def __init__(
        self,
        img_size: PositiveInt = 224,
        patch_size: tuple[int, int, int] = (1, 16, 16),
        num_frames: PositiveInt = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        coords_encoding: Sequence[str] = (),
        coords_scale_learn: bool = False,
        drop_path: float = 0.0,
        bands: Sequence[str] | None = None,
        pretrained_bands: Sequence[str] | None = None,
        weight_files: Sequence[str] = (),
        name: str = "prithvi",
    ) -> None:
        super().__init__()
        pretrained = [str(b) for b in (pretrained_bands if pretrained_bands is not None else HLS_BANDS)]
        data_bands = [str(b) for b in bands] if bands is not None else list(pretrained)
        _validate(
            name, img_size, tuple(patch_size), num_frames, embed_dim, num_heads, drop_path, data_bands, pretrained
        )
        bad_coords = [c for c in coords_encoding if c not in COORDS]
        if bad_coords or ("time" in coords_encoding and patch_size[0] != 1):
            raise ConfigError(
                f"{name}: coords_encoding takes {' and '.join(COORDS)} (time needs a tubelet of 1 frame), "
                f"got {list(coords_encoding)} with patch_size {tuple(patch_size)}"
            )
        self.name = name
        self.bands = data_bands
        self.pretrained_bands = pretrained
        self.in_chans = len(data_bands)
        self.img_size = int(img_size)
        self.num_frames = int(num_frames)
        self.patch_size = (int(patch_size[0]), int(patch_size[1]), int(patch_size[2]))
        self.embed_dim = embed_dim
        self.depth = depth
        self.weight_files = tuple(weight_files)
        self.grid = (num_frames // self.patch_size[0], img_size // self.patch_size[1], img_size // self.patch_size[2])

        self.patch_embed = PatchEmbed3d(self.in_chans, embed_dim, self.patch_size)
        self.temporal_embed_enc = TemporalEncoding(embed_dim, coords_scale_learn) if "time" in coords_encoding else None
        self.location_embed_enc = (
            LocationEncoding(embed_dim, coords_scale_learn) if "location" in coords_encoding else None
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # persistent so the key set is upstream's; load_pretrained always keeps this model's table
        self.pos_embed: Tensor
        self.register_buffer("pos_embed", sincos_3d(embed_dim, self.grid))
        self.blocks = nn.ModuleList(
            [
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm, drop_path=drop_path)
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self._init_weights()
        self._noted: set[str] = set()

        level = {"layout": TOKENS, "channels": embed_dim, "reduction": self.patch_size[1], "cls_token": True}
        self.feature_info: list[dict[str, Any]] = [{**level, "grid": list(self.grid)} for _ in range(depth)]
        # every Linear of the transformer blocks (attention in and out, MLP in and out)
        self.default_peft_targets: list[str] = [
            "blocks.*.attn.qkv",
            "blocks.*.attn.proj",
            "blocks.*.mlp.fc1",
            "blocks.*.mlp.fc2",
        ]

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Upstream's initialisation: xavier-uniform patch embedding (as a Linear) and Linears, cls ~ N(0, 0.02)."""
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # -- forward ------------------------------------------------------------------------------

    def token_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The ``(T', h, w)`` token grid of an input of ``frames x height x width`` pixels.

        Raises:
            ShapeError: If a size is not a multiple of the tubelet.
        """
        t, p, q = self.patch_size
        if frames % t or height % p or width % q or min(frames, height, width) == 0:
            raise ShapeError(
                f"{self.name} input: T={frames}, H={height}, W={width} must be positive multiples of the tubelet "
                f"({t}, {p}, {q}); pad or crop the chips (e.g. chip size {self.img_size})"
            )
        return frames // t, height // p, width // q

    def forward_features(
        self,
        x: Tensor,
        temporal_coords: Tensor | None = None,
        location_coords: Tensor | None = None,
    ) -> list[Tensor]:
        """Encode an image series; return every block's output tokens.

        Args:
            x: ``(B, C, T, H, W)`` with ``C = len(bands)``; ``T``, ``H``, ``W`` multiples of the tubelet.
            temporal_coords: ``(B, T, 2)`` (year, day of year) per frame, for models with the
                temporal encoding. Without it the encoding is skipped (as upstream).
            location_coords: ``(B, 2)`` (lat, lon) in degrees, for models with the location encoding.

        Returns:
            ``depth`` tensors ``(B, N, D)``, ``N = 1 + T' * h * w`` (class token first, then tokens in
            ``(t h w)`` order); the last one after the final LayerNorm (upstream ``forward_features``).

        Raises:
            ShapeError: If ``x`` or a coordinate tensor has the wrong shape.
        """
        check_shape(x, IMAGE_SERIES, name=f"{self.name} input", C=self.in_chans)
        b, _, frames, height, width = x.shape
        grid = self.token_grid(frames, height, width)
        pos = self.pos_embed if grid == self.grid else sincos_3d(self.embed_dim, grid, x.device).to(x.dtype)
        tokens = self.patch_embed(x) + pos[:, 1:]  # (B, T'hw, D)
        if temporal_coords is not None:
            if self.temporal_embed_enc is None:
                self._note_once("time", f"{self.name}: temporal_coords ignored: this model has no temporal encoding")
            else:
                if tuple(temporal_coords.shape) != (b, frames, 2):
                    raise ShapeError(
                        f"{self.name} temporal_coords: expected (B, T, 2) = {(b, frames, 2)} (year, day of year), "
                        f"got {tuple(temporal_coords.shape)}"
                    )
                coords = temporal_coords.float()  # years need float32's resolution
                tokens = tokens + self.temporal_embed_enc(coords, grid[1] * grid[2])
        elif self.temporal_embed_enc is not None:
            self._note_once("no-time", f"{self.name}: no temporal_coords given; the temporal encoding is skipped")
        if location_coords is not None:
            if self.location_embed_enc is None:
                self._note_once("loc", f"{self.name}: location_coords ignored: this model has no location encoding")
            else:
                if tuple(location_coords.shape) != (b, 2):
                    raise ShapeError(
                        f"{self.name} location_coords: expected (B, 2) = {(b, 2)} (lat, lon), "
                        f"got {tuple(location_coords.shape)}"
                    )
                tokens = tokens + self.location_embed_enc(location_coords.float())
        elif self.location_embed_enc is not None:
            self._note_once("no-loc", f"{self.name}: no location_coords given; the location encoding is skipped")
        cls = (self.cls_token + pos[:, :1]).expand(b, -1, -1)  # (B, 1, D)
        h = torch.cat([cls, tokens], dim=1)  # (B, N, D)
        out = []
        for block in self.blocks:
            h = block(h)
            out.append(h)
        out[-1] = self.norm(h)
        return out

    def forward(
        self,
        x: Tensor,
        temporal_coords: Tensor | None = None,
        location_coords: Tensor | None = None,
    ) -> list[Tensor]:
        """Same as :meth:`forward_features`."""
        return self.forward_features(x, temporal_coords, location_coords)

    def _note_once(self, key: str, message: str) -> None:
        if key not in self._noted:
            self._noted.add(key)
            logger.info(message)

    # -- weights -------------------------------------------------------------------------------

    def example_inputs(self, batch: int = 2) -> dict[str, Tensor]:
        """Seeded random inputs for this instance, on its device.

        Args:
            batch: Batch size ``B``.

        Returns:
            ``x`` ``(B, C, T, H, W)`` with ``C = len(bands)``, ``T = num_frames`` and ``H = W =
            img_size``; plus ``temporal_coords`` ``(B, T, 2)`` (year, day of year) and
            ``location_coords`` ``(B, 2)`` (lat, lon) for the encodings this model has.
        """
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, self.in_chans, self.num_frames, self.img_size, self.img_size, generator=g)
        inputs = {"x": x}
        if self.temporal_embed_enc is not None:
            year = torch.randint(2015, 2025, (batch, self.num_frames, 1), generator=g)
            day = torch.randint(1, 366, (batch, self.num_frames, 1), generator=g)
            inputs["temporal_coords"] = torch.cat([year, day], dim=-1).float()  # (B, T, 2)
        if self.location_embed_enc is not None:
            lat = torch.rand(batch, 1, generator=g) * 120.0 - 60.0
            lon = torch.rand(batch, 1, generator=g) * 360.0 - 180.0
            inputs["location_coords"] = torch.cat([lat, lon], dim=-1)  # (B, 2)
        like = self.cls_token
        return {k: v.to(like.device, like.dtype) for k, v in inputs.items()}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the encoder to ``directory/model.safetensors`` for :meth:`load_pretrained`.

        The keys are an official v1 file's encoder keys; the metadata records ``bands`` (the patch
        embedding's channel order), which the loader maps from instead of ``pretrained_bands``.

        Returns:
            The folder.
        """
        return save_state(self.state_dict(), directory, SAVED_FAMILY, bands=self.bands)

    def load_pretrained(self, source: str) -> None:
        """Load the encoder of an official (or compatible) Prithvi-EO checkpoint, or a :meth:`save_pretrained` folder.

        Reads a ``.pt`` (``torch.load(weights_only=True)``) or ``.safetensors`` file in the v1 or v2
        layout (see the module docstring), drops the MAE decoder entries and the file's
        ``pos_embed`` (this model's table is kept), maps the patch embedding's input channels from
        ``pretrained_bands`` (for a :meth:`save_pretrained` file: the bands it records) to ``bands``,
        and loads every other encoder entry with strict checking.

        Args:
            source: A file, a folder holding the official file name (or ``model.safetensors``),
                ``hf://org/repo[@revision]`` (e.g. ``hf://ibm-nasa-geospatial/Prithvi-EO-2.0-300M``) or
                ``hf://org/repo/<file>``.

        Raises:
            CheckpointError: If the file cannot be found, fetched or read, its patch size or band
                count differs, or keys are missing, unexpected or mis-shaped; the message names the
                file and the keys.
        """
        path = resolve_weights(source, self.weight_files)
        state, dropped, layout = encoder_state(read_state_dict(path))
        file_bands = self._saved_bands(path)
        if dropped:
            logger.info(
                f"{self.name}: {path.name}: dropped {len(dropped)} MAE decoder entries (mask_token, decoder_*): "
                "they belong to the pre-training reconstruction head, not the encoder"
            )
        if file_bands is not None:
            logger.info(f"{self.name}: {path.name} was written by save_pretrained; its bands: {', '.join(file_bands)}")
        elif layout == "v1":
            logger.info(f"{self.name}: {path.name} has the v1 flat layout; its non-decoder keys are encoder keys")
        if state.pop("pos_embed", None) is not None:
            logger.info(
                f"{self.name}: pos_embed of {path.name} not loaded: the fixed sine-cosine table is recomputed "
                f"for the token grid {self.grid}"
            )
        own = self.state_dict()
        key = "patch_embed.proj.weight"
        if key in state:
            state[key] = self._map_bands(state[key], path, file_bands)
        state["pos_embed"] = own["pos_embed"]
        problems = describe_mismatch(own, state)
        if problems:
            raise CheckpointError(
                f"cannot load {path} into {self._describe()}:\n"
                + "\n".join(f"  - {p}" for p in problems)
                + self._hint(state)
            )
        self.load_state_dict(state, strict=True)

    def _saved_bands(self, path: Path) -> list[str] | None:
        """The band order a :meth:`save_pretrained` file records, or None for other files."""
        saved = saved_metadata(path, SAVED_FAMILY)
        if saved is None:
            return None
        bands = saved.get("bands")
        if not isinstance(bands, list) or not bands:
            raise CheckpointError(f"{path}: written by save_pretrained but its metadata has no band list")
        return [str(b) for b in bands]

    def _map_bands(self, weight: Tensor, path: Path, file_bands: list[str] | None = None) -> Tensor:
        """The file's ``(D, C_pre, t, p, p)`` patch kernel rearranged for ``bands`` (new bands keep this model's init).

        ``file_bands`` names the file's channels when it records them (a :meth:`save_pretrained`
        file); otherwise they are ``pretrained_bands``.
        """
        own = self.patch_embed.proj.weight
        if weight.dim() != 5 or tuple(weight.shape[2:]) != tuple(own.shape[2:]):
            file_patch = tuple(weight.shape[2:]) if weight.dim() == 5 else tuple(weight.shape)
            raise CheckpointError(
                f"cannot load {path} into {self._describe()}: patch_embed.proj.weight has patch size {file_patch} "
                f"(tubelet t, p, p) but this model uses {self.patch_size}; use the builder of the file's model "
                "(prithvi_v2_600m* has 14-pixel patches, the other Prithvi-EO models 16)"
            )
        if weight.shape[0] != own.shape[0]:
            return weight  # a different embed_dim: reported with the other shape mismatches
        source_bands = self.pretrained_bands if file_bands is None else file_bands
        if weight.shape[1] != len(source_bands):
            where, fix = (
                ("pretrained_bands lists", "set pretrained_bands to the file's band order")
                if file_bands is None
                else ("its save_pretrained metadata lists", "the file is damaged")
            )
            raise CheckpointError(
                f"cannot load {path}: its patch embedding takes {weight.shape[1]} bands but {where} "
                f"{len(source_bands)} ({', '.join(source_bands)}); {fix}"
            )
        index = {_band_key(b): i for i, b in enumerate(source_bands)}
        mapped = own.detach().clone().to(weight.dtype)
        kept, new = [], []
        for i, band in enumerate(self.bands):
            j = index.get(_band_key(band))
            if j is None:
                new.append(band)
            else:
                mapped[:, i] = weight[:, j]
                kept.append(band)
        data_keys = {_band_key(b) for b in self.bands}
        sliced = [b for b in source_bands if _band_key(b) not in data_keys]
        if not new and not sliced and kept == source_bands:
            logger.info(f"{self.name}: the data's {len(kept)} bands are the pretrained bands, in order")
            return weight
        logger.info(f"{self.name}: bands with pretrained patch-embedding weights: {', '.join(kept) or 'none'}")
        if new:
            logger.info(
                f"{self.name}: new bands with fresh (xavier-uniform) patch-embedding weights, to be trained: "
                + ", ".join(new)
            )
        if sliced:
            logger.info(f"{self.name}: pretrained bands not in the data, sliced out: {', '.join(sliced)}")
        return mapped

    # -- new input channels (sciadapt.types.ExtendsChannels) ------------------------------------

    @property
    def channel_names(self) -> list[str]:
        """The input channels (``bands``), in order."""
        return list(self.bands)

    def extend_input_channels(self, new_channel_names: Sequence[str], rule: str) -> None:
        """Append input bands to the patch embedding; the existing bands' kernels are kept bit for bit.

        The new bands' kernel slices start from ``rule``: ``zeros``, ``mean`` (of the existing bands'
        slices) or ``copy:<band>`` (see :mod:`sciadapt.backbones._channels`); the bias and every other
        weight are unchanged. ``bands`` (and so what :meth:`save_pretrained` records) gains the new
        names, so a saved or checkpointed extended model reloads into a model built with those bands.

        Raises:
            ConfigError: If the rule is unknown, ``copy:`` names no band of the model, or a band is
                already there.
        """
        new = [str(n) for n in new_channel_names]
        old = list(self.bands)
        grow_conv_input(self.patch_embed.proj, old, new, rule)
        self.bands = old + new
        self.in_chans = len(self.bands)
        log_extension(self.name, old, new, rule, ["patch_embed.proj"])

    def _describe(self) -> str:
        tl = ", temporal+location encodings" if self.temporal_embed_enc is not None else ""
        return (
            f"{self.name}(embed_dim={self.embed_dim}, depth={self.depth}, patch={self.patch_size}, "
            f"bands={len(self.bands)}{tl})"
        )

    def _hint(self, state: Mapping[str, Tensor]) -> str:
        hints = []
        own_tl = self.temporal_embed_enc is not None or self.location_embed_enc is not None
        file_tl = any(k.startswith(("temporal_embed_enc.", "location_embed_enc.")) for k in state)
        if file_tl and not own_tl:
            hints.append("the file is a TL model (temporal/location encodings): use the *_tl builder")
        elif own_tl and not file_tl:
            hints.append("the file has no temporal/location encodings: use the builder without _tl")
        cls = state.get("cls_token")
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        if cls is not None and (cls.shape[-1] != self.embed_dim or depth != self.depth):
            names = [n for n, v in VARIANTS.items() if (v.embed_dim, v.depth) == (cls.shape[-1], depth)]
            hints.append(
                f"the file has embed_dim {cls.shape[-1]} and depth {depth}"
                + (f": it is prithvi_{names[0]}" if names else "")
            )
        return "".join(f"\n  ({h})" for h in hints)


def _validate(
    name: str,
    img_size: int,
    patch_size: tuple[int, ...],
    num_frames: int,
    embed_dim: int,
    num_heads: int,
    drop_path: float,
    bands: list[str],
    pretrained_bands: list[str],
) -> None:
    problems: list[str] = []
    if len(patch_size) != 3 or patch_size[1] != patch_size[2]:
        problems.append(f"{name}.patch_size: expected (t, p, p), got {patch_size}")
    problems += bound_problems(PrithviViT.__init__, {"img_size": img_size, "num_frames": num_frames}, name)
    if not problems:
        if img_size % patch_size[1]:
            problems.append(f"{name}.img_size={img_size} must be a multiple of the patch size {patch_size[1]}")
        if num_frames % patch_size[0]:
            problems.append(f"{name}.num_frames={num_frames} must be a multiple of the tubelet {patch_size[0]}")
    if embed_dim % 16 or embed_dim % num_heads:
        problems.append(f"{name}: embed_dim={embed_dim} must be divisible by 16 and by num_heads={num_heads}")
    if not isinstance(drop_path, int | float) or not 0.0 <= drop_path < 1.0:
        problems.append(f"{name}.drop_path: expected 0 <= drop_path < 1, got {drop_path!r}")
    for key, names in (("bands", bands), ("pretrained_bands", pretrained_bands)):
        if not names:
            problems.append(f"{name}.{key}: expected at least one band name")
        upper = [_band_key(b) for b in names]
        repeated = sorted({b for b in upper if upper.count(b) > 1})
        if repeated:
            problems.append(f"{name}.{key}: band names repeat (case-insensitive): {', '.join(repeated)}")
    if problems:
        raise ConfigError(problems)


# ---------------------------------------------------------------------------------------------
# builders


def _build(
    variant: str,
    weights: str | None,
    num_frames: int,
    img_size: int,
    bands: list[str] | None,
    pretrained_bands: list[str] | None,
    drop_path: float,
    name: str | None = None,
) -> PrithviViT:
    v = VARIANTS[variant]
    name = name or f"prithvi_{variant}"
    if bands is None:
        logger.info(
            f"{name}: bands not given; the data's channels are taken to be the pretrained bands "
            f"({', '.join(pretrained_bands or HLS_BANDS)}), in that order"
        )
    model = PrithviViT(
        img_size=img_size,
        patch_size=v.patch_size,
        num_frames=num_frames,
        embed_dim=v.embed_dim,
        depth=v.depth,
        num_heads=v.num_heads,
        coords_encoding=v.coords_encoding,
        coords_scale_learn=bool(v.coords_encoding),
        drop_path=drop_path,
        bands=bands,
        pretrained_bands=pretrained_bands,
        weight_files=v.hub_files,
        name=name,
    )
    if weights is not None:
        model.load_pretrained(weights)
    return model


@BACKBONES.register("prithvi_v1_100m")
def build_prithvi_v1_100m(
    weights: str | None = None,
    num_frames: Frames = 1,
    img_size: ChipSize = 224,
    bands: Bands = None,
    pretrained_bands: list[str] | None = None,
    drop_path: float = 0.0,
) -> PrithviViT:
    """Prithvi-EO-1.0-100M: ViT-B (embed 768, depth 12, 12 heads), 16-pixel patches, pre-trained on 3 frames.

    Takes the arguments of :func:`build_prithvi_v2_300m`; the official weights are
    ``hf://ibm-nasa-geospatial/Prithvi-EO-1.0-100M/Prithvi_EO_V1_100M.pt`` (v1 flat layout).
    """
    return _build("v1_100m", weights, num_frames, img_size, bands, pretrained_bands, drop_path)


@BACKBONES.register("prithvi_v2_300m")
def build_prithvi_v2_300m(
    weights: str | None = None,
    num_frames: Frames = 1,
    img_size: ChipSize = 224,
    bands: Bands = None,
    pretrained_bands: list[str] | None = None,
    drop_path: float = 0.0,
) -> PrithviViT:
    """Prithvi-EO-2.0-300M: ViT-L (embed 1024, depth 24, 16 heads), 16-pixel patches, pre-trained on 4 frames.

    Args:
        weights: ``hf://ibm-nasa-geospatial/Prithvi-EO-2.0-300M`` (fetches ``Prithvi_EO_V2_300M.pt``),
            ``hf://org/repo/<file>``, a local file or a folder holding the official file name; None:
            random initialisation. See :meth:`PrithviViT.load_pretrained`.
        num_frames: Frames ``T`` of the data (the position table's time axis; may differ from
            pre-training).
        img_size: Chip size ``H = W`` of the data, a multiple of the patch size.
        bands: The data's band names, one per input channel (``in_chans = len(bands)``); default:
            the pretrained bands in their order.
        pretrained_bands: The checkpoint's band names in channel order; default Prithvi's HLS order
            BLUE, GREEN, RED, NIR_NARROW, SWIR_1, SWIR_2.
        drop_path: Stochastic-depth rate of every block.

    Returns:
        The encoder; ``forward_features(x, temporal_coords=None, location_coords=None)`` returns every
        block's tokens ``(B, 1 + T*h*w, D)``.

    Raises:
        ConfigError: Listing every invalid setting.
        CheckpointError: If ``weights`` cannot be loaded.
    """
    return _build("v2_300m", weights, num_frames, img_size, bands, pretrained_bands, drop_path)


@BACKBONES.register("prithvi_v2_300m_tl")
def build_prithvi_v2_300m_tl(
    weights: str | None = None,
    num_frames: Frames = 1,
    img_size: ChipSize = 224,
    bands: Bands = None,
    pretrained_bands: list[str] | None = None,
    drop_path: float = 0.0,
) -> PrithviViT:
    """Prithvi-EO-2.0-300M-TL: the 300M encoder with temporal (year, day of year) and location (lat, lon) encodings.

    Takes the arguments of :func:`build_prithvi_v2_300m`; the official weights are
    ``hf://ibm-nasa-geospatial/Prithvi-EO-2.0-300M-TL/Prithvi_EO_V2_300M_TL.pt``.
    """
    return _build("v2_300m_tl", weights, num_frames, img_size, bands, pretrained_bands, drop_path)


@BACKBONES.register("prithvi_v2_600m")
def build_prithvi_v2_600m(
    weights: str | None = None,
    num_frames: Frames = 1,
    img_size: ChipSize = 224,
    bands: Bands = None,
    pretrained_bands: list[str] | None = None,
    drop_path: float = 0.0,
) -> PrithviViT:
    """Prithvi-EO-2.0-600M: ViT-H (embed 1280, depth 32, 16 heads), 14-pixel patches, pre-trained on 4 frames.

    Takes the arguments of :func:`build_prithvi_v2_300m` (``img_size``: a multiple of 14); the official
    weights are ``hf://ibm-nasa-geospatial/Prithvi-EO-2.0-600M/Prithvi_EO_V2_600M.pt``.
    """
    return _build("v2_600m", weights, num_frames, img_size, bands, pretrained_bands, drop_path)


@BACKBONES.register("prithvi_v2_600m_tl")
def build_prithvi_v2_600m_tl(
    weights: str | None = None,
    num_frames: Frames = 1,
    img_size: ChipSize = 224,
    bands: Bands = None,
    pretrained_bands: list[str] | None = None,
    drop_path: float = 0.0,
) -> PrithviViT:
    """Prithvi-EO-2.0-600M-TL: the 600M encoder with temporal and location encodings.

    Takes the arguments of :func:`build_prithvi_v2_300m` (``img_size``: a multiple of 14); the official
    weights are ``hf://ibm-nasa-geospatial/Prithvi-EO-2.0-600M-TL/Prithvi_EO_V2_600M_TL.pt``.
    """
    return _build("v2_600m_tl", weights, num_frames, img_size, bands, pretrained_bands, drop_path)


@BACKBONES.register("prithvi_tiny")
def build_prithvi_tiny(
    weights: str | None = None,
    num_frames: Frames = 3,
    img_size: ChipSize = 32,
    bands: Bands = None,
    pretrained_bands: list[str] | None = None,
    drop_path: float = 0.0,
    temporal_location: bool = False,
) -> PrithviViT:
    """A tiny Prithvi (embed 64, depth 2, 4 heads, 16-pixel patches; the golden fixtures' geometry) for tests.

    Takes the arguments of the full-size builders, plus ``temporal_location``: add the TL models'
    temporal and location encodings (learnt scales).
    """
    variant = "tiny_tl" if temporal_location else "tiny"
    return _build(variant, weights, num_frames, img_size, bands, pretrained_bands, drop_path, name="prithvi_tiny")
