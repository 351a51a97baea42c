"""Any timm image model as a multi-scale feature extractor for dense heads.

The model is built with ``timm.create_model(model_name, features_only=True, ...)``: convolutional
networks return their stage outputs (FeatureListNet and friends), ViTs and most hierarchical
transformers serve features through ``forward_intermediates`` (timm's FeatureGetterNet). Every level
is returned as ``(B, C, H/r, W/r)``; models whose features are channels-last (Swin) are permuted.

Input is sciadapt's image-series layout ``(B, C, T, H, W)`` with a single frame (``T = 1``): these
models see one image. For several dates use a Prithvi backbone, or stack the frames as channels in
the datamodule.

Input channels: ``in_chans`` follows the data (``len(bands)``). Pretrained RGB weights are adapted by
timm's ``adapt_input_conv`` on the first convolution (``pretrained_cfg["first_conv"]``): one channel
takes the sum of the RGB kernels; ``C > 3`` channels take the RGB kernels repeated cyclically
(R, G, B, R, ...) and scaled by ``3 / C``, so a constant input gives the pretrained response. The
band names play no part in this mapping.

Weights: ``pretrained=True`` downloads timm's default pretrained tag (timm's own hub code, cached by
Hugging Face); ``weights`` loads a timm-layout state dict (``model.state_dict()`` of the same
architecture, e.g. ``model.safetensors`` of a ``timm/<model>.<tag>`` repository) from a file, a folder
or ``hf://``, through the same adaptation. The classifier is not used.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import timm
import torch
from einops import rearrange
from torch import Tensor, nn

from sciadapt.backbones._bounds import bound_problems
from sciadapt.backbones._saved import save_state, saved_metadata
from sciadapt.errors import CheckpointError, ConfigError, ShapeError
from sciadapt.hub import describe_mismatch, read_state_dict, resolve_file
from sciadapt.registry import BACKBONES
from sciadapt.spec import FromData, PositiveInt
from sciadapt.types import IMAGE, IMAGE_SERIES, check_shape

logger = logging.getLogger(__name__)

#: Module-name suffixes of the Linear layers of transformer blocks (ViT, Swin, ...).
TRANSFORMER_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
#: Convolutional models: PEFT targets the convolutions and Linears of this many last feature stages.
PEFT_STAGES = 2
#: Side of the square example input of models without a fixed input size (a few pixels per level).
EXAMPLE_SIZE = 64
#: The ``sciadapt`` entry of a :meth:`TimmBackbone.save_pretrained` file's metadata.
SAVED_FAMILY = "timm_features"

# builder parameters that follow the data (the config layer fills them from the datamodule)
Bands = Annotated[list[str] | None, FromData]
InChans = Annotated[PositiveInt | None, FromData]
ImgSize = Annotated[PositiveInt | None, FromData]


def _pretrained_cfg(model_name: str) -> Any:
    """timm's default pretrained config of ``model_name`` (None for models without weights)."""
    try:
        return timm.models.get_pretrained_cfg(model_name)
    except Exception:  # a name timm knows only by architecture
        return None


def _check_model_name(model_name: str) -> None:
    if timm.is_model(model_name):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(model_name, names, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"backbone.model_name: timm has no model {model_name!r}.{hint} List them with timm.list_models('<pattern>')"
    )


class TimmBackbone(nn.Module):
    """A timm ``features_only`` model behind sciadapt's backbone contract.

    Build it with :func:`build_timm`.

    Args:
        model_name: The timm architecture.
        in_chans: Input channels ``C``.
        bands: The data's band names (recorded; only their number matters here).
        out_indices: Feature levels to return (timm's indices; None: timm's default for the family).
        img_size: Input size for models with a fixed input size (ViT, Swin); ignored by others.
        drop_path: Stochastic-depth rate (timm's ``drop_path_rate``).

    Raises:
        ConfigError: If timm cannot build the model with these settings.
    """

    input_layout = IMAGE_SERIES

    def __init__(
        self,
        model_name: str,
        in_chans: int,
        bands: Sequence[str] | None = None,
        out_indices: Sequence[int] | None = None,
        img_size: int | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        _check_model_name(model_name)
        self.model_name = model_name
        self.in_chans = in_chans
        self.bands = list(bands) if bands is not None else None
        cfg = _pretrained_cfg(model_name)
        self.fixed_input_size = bool(cfg is not None and cfg.fixed_input_size)
        self._kwargs: dict[str, Any] = {"in_chans": in_chans}
        if out_indices is not None:
            self._kwargs["out_indices"] = tuple(out_indices)
        if img_size is not None and self.fixed_input_size:
            self._kwargs["img_size"] = img_size
        if drop_path:
            self._kwargs["drop_path_rate"] = drop_path
        self.img_size = img_size
        self.model = self._create()
        info: Any = self.model.feature_info
        self.channels_last = str(getattr(getattr(self.model, "output_fmt", "NCHW"), "value", "NCHW")) == "NHWC"
        self.feature_info: list[dict[str, Any]] = [
            {"layout": IMAGE, "channels": int(c), "reduction": int(r)}
            for c, r in zip(info.channels(), info.reduction(), strict=True)
        ]
        self.default_peft_targets: list[str] = peft_targets(self, [f"model.{n}" for n in info.module_name()])

    def _create(self, pretrained: bool = False, state: Mapping[str, Tensor] | None = None) -> nn.Module:
        kwargs = dict(self._kwargs)
        if state is not None:
            # timm's own loading path: checkpoint filter, first-conv adaptation, classifier dropped
            kwargs["pretrained_cfg_overlay"] = {"state_dict": dict(state), "source": ""}
        try:
            return timm.create_model(
                self.model_name, pretrained=pretrained or state is not None, features_only=True, **kwargs
            )
        except (TypeError, ValueError, AssertionError, RuntimeError, IndexError, KeyError, NotImplementedError) as err:
            if pretrained or state is not None:
                raise
            shown = ", ".join(f"{k}={v}" for k, v in self._kwargs.items())
            raise ConfigError(
                f"timm cannot build {self.model_name!r} with features_only=True ({shown}): {type(err).__name__}: "
                f"{err}. Check out_indices (0..number of stages - 1) and, for ViT/Swin, img_size"
            ) from None

    # -- forward ------------------------------------------------------------------------------

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """One image through the model: ``(B, C, 1, H, W)`` -> a ``(B, C_i, H/r_i, W/r_i)`` tensor per level.

        Raises:
            ShapeError: If ``x`` is not ``B C T H W`` with ``C = in_chans`` and ``T = 1``.
        """
        check_shape(x, IMAGE_SERIES, name=f"timm {self.model_name} input", C=self.in_chans)
        if x.shape[2] != 1:
            raise ShapeError(
                f"timm {self.model_name} input: expected B C T H W with T=1 (one image), got {tuple(x.shape)}; "
                "for image series use a prithvi backbone, or stack the frames as channels in the datamodule"
            )
        feats = self.model(x[:, :, 0])
        if self.channels_last:
            feats = [rearrange(f, "b h w c -> b c h w") for f in feats]
        return list(feats)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Same as :meth:`forward_features`."""
        return self.forward_features(x)

    def example_inputs(self, batch: int = 2) -> dict[str, Tensor]:
        """Seeded random inputs for this instance, on its device.

        Args:
            batch: Batch size ``B``.

        Returns:
            ``x`` ``(B, in_chans, 1, S, S)``: ``S = img_size`` when given, else the pretrained input
            size for models with a fixed input size (ViT, Swin), else :data:`EXAMPLE_SIZE`.
        """
        if self.img_size is not None:
            size = self.img_size
        elif self.fixed_input_size:
            size = int(_pretrained_cfg(self.model_name).input_size[-1])
        else:
            size = EXAMPLE_SIZE
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, self.in_chans, 1, size, size, generator=g)
        like = next(self.model.parameters())
        return {"x": x.to(like.device, like.dtype)}

    # -- weights -------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the wrapped ``features_only`` model to ``directory/model.safetensors`` for :meth:`load_pretrained`.

        The keys are those of the ``features_only`` model (not timm's full-model layout), with the
        first convolution already at ``in_chans``; the metadata records ``model_name`` and
        ``in_chans``.

        Returns:
            The folder.
        """
        state = self.model.state_dict()
        return save_state(state, directory, SAVED_FAMILY, model_name=self.model_name, in_chans=self.in_chans)

    def load_pretrained(self, source: str) -> None:
        """Load a timm-layout state dict of ``model_name`` (classifier optional) from a file, folder or ``hf://``.

        Key names are checked against the full model (classifier excluded); the first convolution is
        adapted to ``in_chans`` as timm does for its own weights; shapes must match otherwise. A
        :meth:`save_pretrained` file (its metadata says so) is already in this model's layout and
        loads as it is, with strict checking.

        Args:
            source: A ``.safetensors`` / ``.pt`` / ``.bin`` file, a folder holding ``model.safetensors``
                (or ``pytorch_model.bin``), or ``hf://timm/<model>.<tag>[@revision]``.

        Raises:
            CheckpointError: If the file cannot be found, fetched or read, or its keys or shapes differ;
                the message names the file.
        """
        path = resolve_file(source)
        state = read_state_dict(path)
        saved = saved_metadata(path, SAVED_FAMILY)
        if saved is not None:
            self._load_saved(path, state, saved)
            return
        problems = self._key_problems(state)
        if problems:
            raise CheckpointError(
                f"cannot load {path} into timm {self.model_name!r}:\n"
                + "\n".join(f"  - {p}" for p in problems)
                + "\n  (weights expects a timm state dict of this architecture)"
            )
        try:
            loaded = self._create(state=state)
        except Exception as err:  # shape mismatches surface as RuntimeError from load_state_dict
            raise CheckpointError(
                f"cannot load {path} into timm {self.model_name!r}: {type(err).__name__}: {err}"
            ) from None
        self.model.load_state_dict(loaded.state_dict(), strict=True)
        logger.info(f"timm {self.model_name}: loaded {path}" + self._adapted_note())

    def _load_saved(self, path: Path, state: Mapping[str, Tensor], saved: Mapping[str, object]) -> None:
        """Strictly load a :meth:`save_pretrained` file (no first-conv adaptation: it is already this model's)."""
        problems: list[str] = []
        if saved.get("model_name") != self.model_name:
            problems.append(f"the file was saved from timm {saved.get('model_name')!r}: set model_name to it")
        if saved.get("in_chans") != self.in_chans:
            problems.append(f"the file was saved with in_chans={saved.get('in_chans')}: set bands or in_chans to match")
        problems += describe_mismatch(self.model.state_dict(), state)
        if problems:
            raise CheckpointError(
                f"cannot load {path} (written by save_pretrained) into timm {self.model_name!r} "
                f"(in_chans={self.in_chans}):\n" + "\n".join(f"  - {p}" for p in problems)
            )
        self.model.load_state_dict(state, strict=True)
        logger.info(f"timm {self.model_name}: loaded {path} (written by save_pretrained, features_only layout)")

    def load_timm_pretrained(self) -> None:
        """Load timm's default pretrained weights of ``model_name`` (downloaded by timm, cached by Hugging Face).

        Raises:
            CheckpointError: If there are none or they cannot be fetched (offline); the message says
                how to pass a local copy instead.
        """
        cfg = _pretrained_cfg(self.model_name)
        hub_id = getattr(cfg, "hf_hub_id", None)
        where = f"hf://{hub_id}" if hub_id else (getattr(cfg, "url", None) or "timm's default source")
        try:
            loaded = self._create(pretrained=True)
        except Exception as err:  # offline, DNS, 404: hub and urllib raise many types
            first = str(err).splitlines()[0] if str(err) else ""
            fetch = (
                f"`hf download {hub_id} model.safetensors --local-dir <dir>`"
                if hub_id
                else "the weight file from the model's pretrained_cfg url"
            )
            raise CheckpointError(
                f"cannot fetch timm's pretrained weights for {self.model_name!r} from {where} "
                f"({type(err).__name__}: {first}). Without network access, download them where there is one "
                f"({fetch}) and set `pretrained: false` and `weights: <dir>/model.safetensors`."
            ) from None
        self.model.load_state_dict(loaded.state_dict(), strict=True)
        logger.info(f"timm {self.model_name}: loaded timm's pretrained weights ({where})" + self._adapted_note())

    def _adapted_note(self) -> str:
        cfg = _pretrained_cfg(self.model_name)
        base = (getattr(cfg, "input_size", None) or (3,))[0]
        if self.in_chans == base:
            return ""
        return f"; first convolution adapted from {base} to {self.in_chans} input channels (timm adapt_input_conv)"

    def _key_problems(self, state: Mapping[str, Tensor]) -> list[str]:
        """Missing or unexpected key names against the full model (see :func:`timm_key_problems`)."""
        return timm_key_problems(self.model_name, self._kwargs, state)


def timm_key_problems(model_name: str, kwargs: Mapping[str, Any], state: Mapping[str, Tensor]) -> list[str]:
    """Missing or unexpected key names of ``state`` against the full timm model ``model_name`` built
    with ``kwargs`` (on the meta device, ``out_indices`` left out), its classifier excluded.

    Names only: shapes are checked by the load itself (the first convolution and position tables get
    adapted), so a key the model has is compared with the model's own tensor.
    """
    with torch.device("meta"):
        full = timm.create_model(
            model_name, pretrained=False, **{k: v for k, v in kwargs.items() if k != "out_indices"}
        )
    cfg: Any = getattr(full, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier") or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)

    def body(keys: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: v for k, v in keys.items() if not any(k.startswith(f"{h}.") for h in heads)}

    own = body(full.state_dict())
    return describe_mismatch(own, {k: own.get(k, v) for k, v in body(state).items()})


def peft_targets(backbone: nn.Module, stage_names: Sequence[str]) -> list[str]:
    """Default PEFT targets of a wrapped timm model.

    Transformer-like models (blocks with ``attn.qkv`` / ``mlp.fc1`` ...): globs for every such Linear
    (``model.*attn.qkv`` ...), the same choice as for Prithvi. Convolutional models: by exact name,
    the ungrouped Conv2d and the Linear layers that compute the last :data:`PEFT_STAGES` feature
    levels (everything after the level before them): the late stages hold the task-specific
    features, the early ones generic edges and textures, and depthwise convolutions take no
    low-rank update.
    """
    modules = dict(backbone.named_modules())
    kinds = (nn.Linear, nn.Conv2d)
    globs = [f"model.*{s}" for s in TRANSFORMER_LINEARS]
    found = [g for g in globs if any(isinstance(m, kinds) and fnmatch.fnmatchcase(n, g) for n, m in modules.items())]
    if found:
        return found
    names = list(modules)
    positions: list[int] = []
    for name in stage_names:
        head, _, rest = name.partition(".")
        for candidate in (name, f"{head}.{rest.replace('.', '_')}", f"{head}.model.{rest}"):
            if candidate in modules:
                # the stage's last descendant in registration (= execution) order
                positions.append(max(i for i, n in enumerate(names) if n == candidate or n.startswith(candidate + ".")))
                break
    # everything computed after the feature level before the last PEFT_STAGES levels
    start = positions[-PEFT_STAGES - 1] + 1 if len(positions) > PEFT_STAGES else 0
    return [n for n in names[start:] if isinstance(modules[n], kinds) and getattr(modules[n], "groups", 1) == 1]


# ---------------------------------------------------------------------------------------------
# builders


def _build(
    model_name: str,
    pretrained: bool,
    weights: str | None,
    bands: list[str] | None,
    in_chans: int | None,
    out_indices: list[int] | None,
    img_size: int | None,
    drop_path: float,
) -> TimmBackbone:
    problems: list[str] = []
    if in_chans is None:
        in_chans = len(bands) if bands else 3
    elif bands is not None and len(bands) != in_chans:
        problems.append(
            f"backbone.in_chans={in_chans} but bands lists {len(bands)}: remove in_chans (it follows bands)"
        )
    problems += bound_problems(build_timm, {"in_chans": in_chans, "img_size": img_size}, "backbone")
    if pretrained and weights is not None:
        problems.append(
            "backbone.pretrained and backbone.weights are both set: pretrained downloads timm's default weights, "
            "weights loads a file; keep one"
        )
    if not isinstance(drop_path, int | float) or not 0.0 <= drop_path < 1.0:
        problems.append(f"backbone.drop_path: expected 0 <= drop_path < 1, got {drop_path!r}")
    if problems:
        raise ConfigError(problems)
    model = TimmBackbone(model_name, in_chans, bands, out_indices, img_size, drop_path)
    if pretrained:
        model.load_timm_pretrained()
    elif weights is not None:
        model.load_pretrained(weights)
    return model


@BACKBONES.register("timm")
def build_timm(
    model_name: str = "resnet18",
    pretrained: bool = False,
    weights: str | None = None,
    bands: Bands = None,
    in_chans: InChans = None,
    out_indices: list[int] | None = None,
    img_size: ImgSize = None,
    drop_path: float = 0.0,
) -> TimmBackbone:
    """Any timm model as a feature extractor (``features_only``); input ``B C 1 H W``.

    Args:
        model_name: A timm architecture (``timm.list_models()``), e.g. ``resnet50``, ``convnext_tiny``,
            ``vit_base_patch16_224``, ``swin_tiny_patch4_window7_224``.
        pretrained: Download timm's default pretrained weights (needs network access or the Hugging
            Face cache); the first convolution is adapted to ``in_chans``.
        weights: A local timm state dict (file, folder or ``hf://timm/<model>.<tag>``) instead.
        bands: The data's band names; ``in_chans = len(bands)``.
        in_chans: Input channels when ``bands`` is not given (default 3).
        out_indices: Feature levels (timm's indices); None: timm's default (every stage of a CNN,
            the last three blocks of a ViT).
        img_size: Input size of models with a fixed input size (ViT, Swin); others ignore it.
        drop_path: Stochastic-depth rate.

    Returns:
        The backbone; ``forward_features`` returns one ``(B, C_i, H/r_i, W/r_i)`` tensor per level.

    Raises:
        ConfigError: For an unknown model or settings timm rejects.
        CheckpointError: If weights cannot be fetched or loaded.
    """
    return _build(model_name, pretrained, weights, bands, in_chans, out_indices, img_size, drop_path)


@BACKBONES.register("timm_tiny")
def build_timm_tiny(
    model_name: str = "test_resnet",
    pretrained: bool = False,
    weights: str | None = None,
    bands: Bands = None,
    in_chans: InChans = None,
    out_indices: list[int] | None = None,
    img_size: ImgSize = None,
    drop_path: float = 0.0,
) -> TimmBackbone:
    """One of timm's tiny test models (``test_resnet``, ``test_vit``, ``test_convnext``...; < 0.5M parameters).

    Takes the arguments of :func:`build_timm`; ``model_name`` must start with ``test_``.
    """
    if not model_name.startswith("test_"):
        raise ConfigError(
            f"backbone.model_name: timm_tiny takes timm's test models ({', '.join(timm.list_models('test_*')[:4])}, "
            f"...), got {model_name!r}; use the timm backbone for other models"
        )
    return _build(model_name, pretrained, weights, bands, in_chans, out_indices, img_size, drop_path)
