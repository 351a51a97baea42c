"""TTM's official checkpoints: the granite-tsfm catalogue, the revision choice, reading ``config.json``.

What :func:`~sciadapt.backbones.ttm.build_ttm` and :meth:`~sciadapt.backbones.ttm.TTM.load_pretrained`
need to know about published weights: every checkpoint of granite-tsfm's ``ttm.yaml`` and the rule its
``get_model`` uses to pick one (see the :mod:`sciadapt.backbones.ttm` docstring), how a checkpoint's
``config.json`` is read and checked, and how its settings are compared with the requested model.
Private to :mod:`sciadapt.backbones.ttm`, which re-exports the public names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from sciadapt.backbones._ttm_config import FREQUENCY_TOKENS, TTMConfig, token_names
from sciadapt.errors import CheckpointError, ConfigError
from sciadapt.hub import is_hub, parse_hub, read_json_object, resolve_folder

# the family's logger, so the revision choice is logged under the name users filter TTM messages by
log = logging.getLogger("sciadapt.backbones.ttm")

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# get_model applies the L1 / frequency-token preferences only up to this reference context
_LOW_RESOLUTION_MAX_CONTEXT = 512


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


def pick_revision(weights: str, context_length: int, horizon: int, prefix_tuning: bool, freq: str | None) -> str:
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


# ---------------------------------------------------------------------------------------------
# reading config.json and comparing it with the requested model


def resolve_checkpoint(source: str | os.PathLike[str]) -> Path:
    """The local folder of a checkpoint (``hf://`` references are fetched through :mod:`sciadapt.hub`)."""
    return resolve_folder(source, ["config.json"], WEIGHT_FILES)


def read_checkpoint_config(folder: Path, source: str | None = None) -> TTMConfig:
    """The :class:`TTMConfig` of ``folder/config.json``.

    Raises:
        CheckpointError: Naming the file when it is unreadable or holds settings not supported here.
    """
    path = folder / "config.json"
    fix = "The checkpoint is damaged or incomplete: download it again (or restore the file)"
    data = read_json_object(path, "a JSON object of TTM settings", fix)
    if data.get("model_type", "tinytimemixer") != "tinytimemixer":
        raise CheckpointError(f"{path}: model_type is {data['model_type']!r}, not a TTM (tinytimemixer)")
    try:
        return TTMConfig.from_dict(data)
    except ConfigError as err:
        where = f" ({source})" if source and str(source) != str(folder) else ""
        raise CheckpointError(
            f"{path}{where} cannot be used by this TTM implementation:\n" + "\n".join(f"  - {p}" for p in err.problems)
        ) from None


# Parameters that fix the weights' shapes or meaning: with `weights` they come from config.json.
CHECKPOINT_FIELDS = (
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
ADAPTATION_FIELDS = (
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


def request_problems(
    ckpt: TTMConfig,
    where: str,
    given: Mapping[str, Any],
    context_length: int,
    horizon: int,
    n_targets: int,
    n_exog: int,
    has_freq_token: bool,
) -> list[str]:
    """Why the checkpoint ``ckpt`` (read from ``where``) cannot serve the requested model, as messages.

    Args:
        ckpt: The checkpoint's configuration.
        where: The ``config.json`` path (and hub reference) the messages name.
        given: The builder's geometry and head settings that were set (not ``None``).
        context_length: The data's context length (must equal the checkpoint's).
        horizon: The forecast length wanted (at most the checkpoint's prediction length).
        n_targets: Target channels of the data.
        n_exog: Exogenous channels of the data.
        has_freq_token: Whether the builder was given a frequency token.

    Returns:
        Every problem, each saying what to change (empty when the checkpoint fits).
    """
    problems: list[str] = []
    if context_length != ckpt.context_length:
        problems.append(
            f"context_length={context_length} but the checkpoint {where} has context_length={ckpt.context_length}: "
            "set data.context_length to it or choose other weights"
        )
    for name in CHECKPOINT_FIELDS:
        if name in given and normalized(name, given[name]) != normalized(name, getattr(ckpt, name)):
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
    if ckpt.resolution_prefix_tuning and not has_freq_token:
        problems.append(
            f"the checkpoint {where} uses a frequency prefix token: set backbone.freq_token to the data's "
            f"resolution (one of {token_names()})"
        )
    return problems


def config_mismatch(cfg: TTMConfig, ckpt: TTMConfig, freq_token: int | None) -> list[str]:
    """Differences between a checkpoint's config ``ckpt`` and a model's ``cfg`` that the weights cannot absorb.

    ``freq_token`` is the model's default frequency token, checked against the checkpoint's vocabulary.
    """
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
        if normalized(n, getattr(ckpt, n)) != normalized(n, getattr(cfg, n))
    ]
    if ckpt.resolution_prefix_tuning and freq_token is not None:
        if not 0 <= freq_token < ckpt.frequency_token_vocab_size:
            problems.append(
                f"freq_token={freq_token} is not in the checkpoint's frequency vocabulary "
                f"0..{ckpt.frequency_token_vocab_size - 1} (frequency_token_vocab_size={ckpt.frequency_token_vocab_size})"
            )
    return problems


def new_module_patterns(cfg: TTMConfig, ckpt: TTMConfig) -> list[str]:
    """Globs of the modules a model of ``cfg`` adds to ``ckpt`` on purpose (they start freshly initialised)."""
    out = []
    if cfg.use_decoder and cfg.decoder_mode == "mix_channel" and ckpt.decoder_mode != "mix_channel":
        out.append("decoder.decoder_block.*channel_feature_mixer.*")
    if cfg.enable_forecast_channel_mixing and not ckpt.enable_forecast_channel_mixing:
        out.append("head.fcm_block.*")
    if cfg.categorical_vocab_size_list is not None and ckpt.categorical_vocab_size_list is None:
        out.append("decoder.decoder_cat_embedding_layer.*")
    return out


def normalized(name: str, value: object) -> object:
    """A setting in the form compared between checkpoint and model (``norm_mlp``: batch norm or not)."""
    return "batch" in str(value).lower() if name == "norm_mlp" else value


def module_group(key: str) -> str:
    """``decoder.decoder_block.mixers.0.channel_feature_mixer.mlp.fc1.weight`` -> the module up to the new part."""
    for marker in ("channel_feature_mixer", "fcm_block", "decoder_cat_embedding_layer"):
        if marker in key:
            return key.split(marker)[0] + marker
    return key


def describe_geometry(config: TTMConfig) -> str:
    """The geometry named in a loading error."""
    return (
        f"context_length={config.context_length}, prediction_length={config.prediction_length}, "
        f"patch_length={config.patch_length}, d_model={config.d_model}"
    )


__all__ = [
    "ADAPTATION_FIELDS",
    "CHECKPOINT_FIELDS",
    "OFFICIAL_CHECKPOINTS",
    "OfficialCheckpoint",
    "RELEASES",
    "WEIGHT_FILES",
    "config_mismatch",
    "describe_geometry",
    "module_group",
    "new_module_patterns",
    "normalized",
    "pick_revision",
    "read_checkpoint_config",
    "request_problems",
    "resolve_checkpoint",
    "select_checkpoint",
    "ttm_revision",
]
