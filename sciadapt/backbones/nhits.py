"""N-HiTS (Challu et al., AAAI 2023) as a channel-independent series backbone.

Each target channel is forecast as an independent univariate series (the channels are folded into the
batch); the last ``n_exog`` input channels are past-observed covariates shared by every target channel.
The stacks follow the paper: multi-rate input pooling, an MLP per block, a full-resolution backcast and
a low-resolution forecast that is interpolated to the horizon, with doubly residual stacking.

Instead of one forecast value per step, every block emits ``feature_dim`` forecast curves, so the
backbone returns horizon features ``(B, L, C, D)``. The features start from the naive level (the last
observed value, on every ``D``), so a head that averages over ``D`` computes plain N-HiTS.

Reference: C. Challu, K. G. Olivares, B. N. Oreshkin, F. Garza, M. Mergenthaler-Canseco, A. Dubrawski,
"N-HiTS: Neural Hierarchical Interpolation for Time Series Forecasting", https://arxiv.org/abs/2201.12886
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from sciadapt.errors import CheckpointError, ConfigError, ShapeError
from sciadapt.hub import WEIGHT_FILES, describe_mismatch, read_state_dict, resolve_file
from sciadapt.registry import BACKBONES
from sciadapt.spec import FromData, Ge
from sciadapt.types import HORIZON_FEATURES, SERIES, check_shape

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "selu": nn.SELU,
    "leakyrelu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "sigmoid": nn.Sigmoid,
}
POOLING: dict[str, type[nn.Module]] = {"max": nn.MaxPool1d, "avg": nn.AvgPool1d}
INTERPOLATION = ("linear", "nearest", "cubic")

_LIGHTNING_PREFIX = "backbone."
WEIGHTS_FILE = "model.safetensors"
Pooling = Literal["max", "avg"]
Interpolation = Literal["linear", "nearest", "cubic"]
Activation = Literal["relu", "gelu", "softplus", "tanh", "selu", "leakyrelu", "prelu", "sigmoid"]


class NHiTSBlock(nn.Module):
    """One N-HiTS block: pool the input windows, an MLP, then backcast and interpolated forecast.

    Args:
        context_length: Input window length ``T``.
        horizon: Forecast length ``L``.
        n_exog: Number of past-observed exogenous channels fed to the MLP.
        feature_dim: Forecast curves per step ``D``.
        pool_kernel_size: Pooling kernel and stride ``k`` (the paper's multi-rate sampling).
        n_knots: Forecast knots per curve before interpolation to ``horizon``.
        mlp_units: Hidden sizes of the MLP.
        pooling: ``"max"`` or ``"avg"``.
        interpolation: ``"linear"``, ``"nearest"`` or ``"cubic"``.
        activation: Name of the hidden activation (a key of :data:`ACTIVATIONS`).
        dropout: Dropout probability after each hidden activation.
        future_length: Horizon steps of the exogenous channels fed too (``horizon`` when they are known
            in the future, as neuralforecast's ``futr_exog_list``; 0 when only their past is).
    """

    def __init__(
        self,
        context_length: int,
        horizon: int,
        n_exog: int,
        feature_dim: int,
        pool_kernel_size: int,
        n_knots: int,
        mlp_units: list[int],
        pooling: str,
        interpolation: str,
        activation: str,
        dropout: float,
        future_length: int = 0,
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.horizon = horizon
        self.feature_dim = feature_dim
        self.n_knots = n_knots
        self.interpolation = interpolation
        self.pool = POOLING[pooling](kernel_size=pool_kernel_size, stride=pool_kernel_size, ceil_mode=True)
        pooled_length = math.ceil(context_length / pool_kernel_size)
        pooled_future = math.ceil(future_length / pool_kernel_size) if future_length else 0
        sizes = [pooled_length * (1 + n_exog) + pooled_future * n_exog, *mlp_units]
        self.hidden = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in pairwise(sizes))
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Backcast at full input resolution (as in the reference implementation), forecast as knots.
        self.theta = nn.Linear(sizes[-1], context_length + feature_dim * n_knots)

    def forward(
        self, residual: Tensor, exog: Tensor | None, n_targets: int, future: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Compute this block's backcast and forecast.

        Args:
            residual: Target residual windows ``(S, T)`` with ``S = B * n_targets``.
            exog: Exogenous windows ``(B, X, T)`` shared by the targets of a batch row, or ``None``.
            n_targets: Target channels per batch row, used to repeat ``exog`` onto the folded batch.
            future: The exogenous channels over the horizon ``(B, X, L)`` (known-future blocks only).

        Returns:
            ``backcast`` of shape ``(S, T)`` and ``forecast`` of shape ``(S, D, L)``.
        """
        h = self.pool(residual.unsqueeze(1)).squeeze(1)  # (S, T/k)
        if exog is not None:
            pooled_exog = self.pool(exog)  # (B, X, T/k)
            # Pool once per batch row, then share the result with each of its target channels.
            pooled_exog = repeat(pooled_exog, "b x t -> (b c) (t x)", c=n_targets)  # (S, T/k * X)
            h = torch.cat([h, pooled_exog], dim=1)  # (S, T/k * (1 + X))
        if future is not None:
            pooled_future = repeat(self.pool(future), "b x l -> (b c) (l x)", c=n_targets)  # (S, L/k * X)
            h = torch.cat([h, pooled_future], dim=1)
        for layer in self.hidden:
            h = self.dropout(self.act(layer(h)))
        theta = self.theta(h)  # (S, T + D * K)
        backcast, knots = theta.split([self.context_length, self.feature_dim * self.n_knots], dim=1)
        knots = rearrange(knots, "s (d k) -> s d k", d=self.feature_dim)  # (S, D, K)
        return backcast, self._interpolate(knots)

    def _interpolate(self, knots: Tensor) -> Tensor:
        """Interpolate ``(S, D, K)`` knots to ``(S, D, L)`` along the last axis."""
        if self.interpolation == "cubic":
            # F.interpolate has no 1d cubic mode: run bicubic on (S, 1, D, K). Keeping D at its size
            # makes the row direction an identity resample, so each curve is interpolated on its own.
            out = F.interpolate(knots.unsqueeze(1), size=(self.feature_dim, self.horizon), mode="bicubic")
            return out.squeeze(1)  # (S, D, L)
        return F.interpolate(knots, size=self.horizon, mode=self.interpolation)  # (S, D, L)


class NHiTS(nn.Module):
    """Channel-independent N-HiTS producing horizon features ``(B, L, C, D)``.

    Build it with :func:`build_nhits` (the config schema); the constructor takes the validated values.

    Args:
        context_length: Input window length ``T``.
        horizon: Forecast length ``L``.
        n_exog: Trailing input channels that are past-observed covariates (not forecast).
        feature_dim: Forecast curves per step ``D``.
        pool_kernel_sizes: Pooling kernel per stack.
        downsample_freqs: Expressiveness ratio per stack: ``max(horizon // r, 1)`` knots.
        n_blocks: Blocks per stack.
        mlp_units: Hidden sizes of every block MLP.
        pooling: ``"max"`` or ``"avg"``.
        interpolation: ``"linear"``, ``"nearest"`` or ``"cubic"``.
        activation: Hidden activation name.
        dropout: Dropout after each hidden activation.
        known_future: The exogenous channels are known over the horizon too (a panel's known
            covariates and calendar features): their horizon values (``future_exog``) feed every block.
    """

    input_layout = SERIES

    def __init__(
        self,
        context_length: int,
        horizon: int,
        n_exog: int,
        feature_dim: int,
        pool_kernel_sizes: list[int],
        downsample_freqs: list[int],
        n_blocks: list[int],
        mlp_units: list[int],
        pooling: str,
        interpolation: str,
        activation: str,
        dropout: float,
        known_future: bool = False,
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.horizon = horizon
        self.n_exog = n_exog
        self.known_future = bool(known_future and n_exog)
        self.feature_dim = feature_dim
        self.config: dict[str, Any] = {
            "context_length": context_length,
            "horizon": horizon,
            "n_exog": n_exog,
            "feature_dim": feature_dim,
            "pool_kernel_sizes": list(pool_kernel_sizes),
            "downsample_freqs": list(downsample_freqs),
            "n_blocks": list(n_blocks),
            "mlp_units": list(mlp_units),
            "pooling": pooling,
            "interpolation": interpolation,
            "activation": activation,
            "dropout": dropout,
            "known_future": self.known_future,
        }
        blocks = []
        for kernel, freq, count in zip(pool_kernel_sizes, downsample_freqs, n_blocks, strict=True):
            for _ in range(count):
                blocks.append(
                    NHiTSBlock(
                        context_length=context_length,
                        horizon=horizon,
                        n_exog=n_exog,
                        feature_dim=feature_dim,
                        pool_kernel_size=kernel,
                        n_knots=max(horizon // freq, 1),
                        mlp_units=list(mlp_units),
                        pooling=pooling,
                        interpolation=interpolation,
                        activation=activation,
                        dropout=dropout,
                        future_length=horizon if self.known_future else 0,
                    )
                )
        self.blocks = nn.ModuleList(blocks)
        self.feature_info: list[dict[str, Any]] = [
            {"layout": HORIZON_FEATURES, "channels": feature_dim, "horizon": horizon}
        ]
        self.default_peft_targets: list[str] = ["blocks.*.hidden.*", "blocks.*.theta"]

    def forward_features(self, x: Tensor, future_exog: Tensor | None = None) -> Tensor:
        """Forecast features for every target channel.

        Args:
            x: ``(B, T, C_in)`` with ``T == context_length``; the first ``C_in - n_exog`` channels are
                targets, the last ``n_exog`` are covariates.
            future_exog: ``(B, L, n_exog)``: the covariates over the horizon, used when the model was
                built with ``known_future`` (and needed then); ignored otherwise (past-observed covariates).

        Returns:
            ``(B, L, C, D)`` horizon features, ``C = C_in - n_exog`` targets, ``D = feature_dim``.

        Raises:
            ShapeError: If ``x`` is not ``B T C`` with ``T == context_length`` and more than
                ``n_exog`` channels.
        """
        forecast, _, _ = self._run(x, keep_parts=False, future_exog=future_exog)
        return forecast

    def decompose(self, x: Tensor, future_exog: Tensor | None = None) -> dict[str, Any]:
        """Split the forecast features into the naive level and each block's contribution.

        ``level + sum(blocks)`` equals :meth:`forward_features`; ``residual`` is what the backcasts
        of all blocks left unexplained of the target input window.

        Args:
            x: ``(B, T, C_in)`` as for :meth:`forward_features`.

        Returns:
            ``{"level": (B, L, C, D), "blocks": [(B, L, C, D) per block], "residual": (B, T, C)}``.
        """
        batch = x.shape[0]
        _, residual, parts = self._run(x, keep_parts=True, future_exog=future_exog)
        level, *blocks = (rearrange(p, "(b c) d l -> b l c d", b=batch) for p in parts)  # (B, L, C, D)
        return {
            "level": level,
            "blocks": blocks,
            "residual": rearrange(residual.flip(1), "(b c) t -> b t c", b=batch),  # (B, T, C)
        }

    def _run(
        self, x: Tensor, keep_parts: bool, future_exog: Tensor | None = None
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The doubly residual stack: features ``(B, L, C, D)``, final residual ``(S, T)`` (newest
        step first) and, when ``keep_parts``, the level and block forecasts ``(S, D, L)``."""
        check_shape(x, SERIES, name="nhits input", T=self.context_length)
        batch, _, c_in = x.shape
        n_targets = c_in - self.n_exog
        if n_targets < 1:
            raise ShapeError(
                f"nhits input: expected B T C with C > n_exog={self.n_exog} (targets first, then "
                f"{self.n_exog} exogenous channels), got {tuple(x.shape)}"
            )
        # Newest step first, as the reference implementation does: with ceil_mode the incomplete
        # pooling window then falls on the oldest steps, never on the most recent ones.
        x = x.flip(1)
        residual = rearrange(x[..., :n_targets], "b t c -> (b c) t")  # (S, T)
        exog = rearrange(x[..., n_targets:], "b t x -> b x t") if self.n_exog else None  # (B, X, T)
        future = None
        if self.known_future:
            want = (batch, self.horizon, self.n_exog)
            if future_exog is None or tuple(future_exog.shape) != want:
                got = None if future_exog is None else tuple(future_exog.shape)
                raise ShapeError(
                    f"nhits future_exog: backbone.known_future needs the {self.n_exog} covariates over the "
                    f"horizon as (B, L, n_exog) = {want}, got {got}; data that knows them: data.name=panel"
                )
            future = rearrange(future_exog, "b l x -> b x l")  # (B, X, L), oldest first like the horizon

        # Naive level: every feature curve starts at the last observed target value.
        level = residual[:, :1, None]  # (S, 1, 1)
        forecast = level.expand(-1, self.feature_dim, self.horizon)  # (S, D, L)
        parts = [forecast] if keep_parts else []
        for block in self.blocks:
            backcast, block_forecast = block(residual, exog, n_targets, future)
            residual = residual - backcast
            forecast = forecast + block_forecast
            if keep_parts:
                parts.append(block_forecast)
        return rearrange(forecast, "(b c) d l -> b l c d", b=batch), residual, parts  # (B, L, C, D)

    def forward(self, x: Tensor, future_exog: Tensor | None = None) -> Tensor:
        """Same as :meth:`forward_features`."""
        return self.forward_features(x, future_exog)

    def example_inputs(self, batch: int = 2) -> dict[str, Tensor]:
        """A random ``x`` of this instance's shape: ``(batch, context_length, 1 + n_exog)``, and
        ``future_exog`` ``(batch, horizon, n_exog)`` for a known-future model."""
        out = {"x": torch.randn(batch, self.context_length, 1 + self.n_exog)}
        if self.known_future:
            out["future_exog"] = torch.randn(batch, self.horizon, self.n_exog)
        return out

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``model.safetensors`` into ``directory``; :meth:`load_pretrained` reads it back strictly.

        Returns:
            The folder written.
        """
        from safetensors.torch import save_file

        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_FILE))
        return folder

    def load_pretrained(self, source: str | os.PathLike[str]) -> None:
        """Load weights from a local checkpoint file or folder with ``strict=True``.

        Args:
            source: A ``.safetensors`` file, a ``.pt``/``.pth``/``.ckpt``/``.bin`` file saved with
                ``torch.save``, or a folder written by :meth:`save_pretrained`. A Lightning checkpoint
                (a dict with ``"state_dict"``) is accepted; its ``backbone.``-prefixed entries are used
                with the prefix stripped (the one declared filter).

        Raises:
            CheckpointError: If the file is missing or unreadable, or its keys or shapes do not match
                this model; the message names the keys and the config key to change.
        """
        if not Path(source).exists():
            raise CheckpointError(f"nhits checkpoint {str(source)!r} not found (expected a local file or folder)")
        path = resolve_file(source, WEIGHT_FILES)
        state = read_state_dict(path)
        if any(k.startswith(_LIGHTNING_PREFIX) for k in state):
            # A full task checkpoint: keep the backbone's entries only, without the task's prefix.
            state = {k[len(_LIGHTNING_PREFIX) :]: v for k, v in state.items() if k.startswith(_LIGHTNING_PREFIX)}
        problems = self._state_dict_problems(state)
        if problems:
            raise CheckpointError(
                f"cannot load {path} into nhits({_format_config(self.config)}):\n"
                + "\n".join(f"  - {p}" for p in problems)
            )
        self.load_state_dict(state, strict=True)

    def _state_dict_problems(self, state: Mapping[str, Tensor]) -> list[str]:
        """Describe every key/shape mismatch between ``state`` and this model, with a fix."""
        own = self.state_dict()
        problems: list[str] = []
        for problem in describe_mismatch(own, state):
            if "keys missing from the file" in problem:
                problem += (
                    " (fewer blocks or layers in the checkpoint: check n_blocks, pool_kernel_sizes and mlp_units)"
                )
            elif "unexpected keys in the file" in problem:
                problem += " (more blocks or layers in the checkpoint: check n_blocks, pool_kernel_sizes and mlp_units)"
            elif problem.split(":")[0] in own:
                problem += f" ({_shape_hint(problem.split(':')[0])})"
            problems.append(problem)
        mismatched = [k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)]
        if mismatched:
            guess = self._guess_context_length(state)
            if guess is not None:
                problems.append(f"the checkpoint looks trained with context_length={guess}: set it to that")
        return problems

    def _guess_context_length(self, state: Mapping[str, Tensor]) -> int | None:
        """The checkpoint's context length, if it differs from ours and explains block 0's shapes."""
        hidden_key, theta_key = "blocks.0.hidden.0.weight", "blocks.0.theta.weight"
        if hidden_key not in state or theta_key not in state or not len(self.blocks):
            return None
        block = self.blocks[0]
        assert isinstance(block, NHiTSBlock)
        candidate = state[theta_key].shape[0] - block.feature_dim * block.n_knots
        kernel = self.config["pool_kernel_sizes"][0]
        explains_input = math.ceil(candidate / kernel) * (1 + self.n_exog) == state[hidden_key].shape[1]
        if candidate > 0 and candidate != self.context_length and explains_input:
            return int(candidate)
        return None


def _shape_hint(key: str) -> str:
    """Which config keys determine the shape of parameter ``key``."""
    if key.endswith("hidden.0.weight"):
        return "input size ceil(context_length / pool kernel) * (1 + n_exog): check context_length, n_exog"
    if ".theta." in key:
        return (
            "output size context_length + feature_dim * max(horizon // downsample_freq, 1): "
            "check context_length, horizon, feature_dim, downsample_freqs"
        )
    return "hidden sizes: check mlp_units"


def _format_config(config: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())


def _validate(
    context_length: int,
    horizon: int,
    n_exog: int,
    feature_dim: int,
    pool_kernel_sizes: list[int],
    downsample_freqs: list[int],
    n_blocks: list[int],
    mlp_units: list[int],
    pooling: str,
    interpolation: str,
    activation: str,
    dropout: float,
    known_future: bool = False,
) -> None:
    """Raise one :class:`ConfigError` listing every invalid N-HiTS setting."""
    problems: list[str] = []
    for name, value, minimum in (
        ("context_length", context_length, 1),
        ("horizon", horizon, 1),
        ("n_exog", n_exog, 0),
        ("feature_dim", feature_dim, 1),
    ):
        # direct calls skip the config layer's bound check; these messages keep them safe too
        if not isinstance(value, int) or value < minimum:
            problems.append(f"backbone.{name}: expected an int >= {minimum}, got {value!r}")
    per_stack = {
        "pool_kernel_sizes": pool_kernel_sizes,
        "downsample_freqs": downsample_freqs,
        "n_blocks": n_blocks,
    }
    for name, values in {**per_stack, "mlp_units": mlp_units}.items():
        if not values or not all(isinstance(v, int) and v >= 1 for v in values):
            problems.append(f"backbone.{name}: expected a non-empty list of ints >= 1, got {values!r}")
    lengths = {name: len(values) for name, values in per_stack.items()}
    if len(set(lengths.values())) > 1:
        problems.append(
            f"backbone.pool_kernel_sizes, downsample_freqs and n_blocks need one entry per stack, got lengths {lengths}"
        )
    for name, choice, choices in (
        ("pooling", pooling, tuple(POOLING)),
        ("interpolation", interpolation, INTERPOLATION),
        ("activation", activation, tuple(ACTIVATIONS)),
    ):
        if choice not in choices:
            problems.append(f"backbone.{name}: expected one of {', '.join(choices)}, got {choice!r}")
    if not 0.0 <= dropout < 1.0:
        problems.append(f"backbone.dropout: expected 0 <= dropout < 1, got {dropout!r}")
    if problems:
        raise ConfigError(problems)


@BACKBONES.register("nhits")
def build_nhits(
    context_length: Annotated[int, FromData, Ge(1)] = 96,
    horizon: Annotated[int, FromData, Ge(1)] = 24,
    n_exog: Annotated[int, FromData, Ge(0)] = 0,
    feature_dim: Annotated[int, Ge(1)] = 8,
    pool_kernel_sizes: list[int] | None = None,
    downsample_freqs: list[int] | None = None,
    n_blocks: list[int] | None = None,
    mlp_units: list[int] | None = None,
    pooling: Pooling = "max",
    interpolation: Interpolation = "linear",
    activation: Activation = "relu",
    dropout: float = 0.0,
    known_future: bool = False,
    weights: str | None = None,
) -> NHiTS:
    """Build a channel-independent N-HiTS backbone.

    Args:
        context_length: Input window length ``T``.
        horizon: Forecast length ``L``.
        n_exog: Trailing input channels that are past-observed covariates.
        feature_dim: Forecast curves per step ``D`` (the output feature size).
        pool_kernel_sizes: Pooling kernel per stack; default ``[2, 2, 1]``.
        downsample_freqs: Expressiveness ratio per stack; default ``[4, 2, 1]``.
        n_blocks: Blocks per stack; default ``[1, 1, 1]``.
        mlp_units: Hidden sizes of each block MLP; default ``[512, 512]``.
        pooling: ``"max"`` or ``"avg"``.
        interpolation: ``"linear"``, ``"nearest"`` or ``"cubic"``.
        activation: One of ``relu, gelu, softplus, tanh, selu, leakyrelu, prelu, sigmoid``.
        dropout: Dropout after each hidden activation.
        known_future: The ``n_exog`` covariates are known over the horizon (a panel's
            ``known_columns`` and calendar features, given as ``future_exog``): every block sees their
            horizon values too, as neuralforecast's ``futr_exog_list``. False: past-observed only.
        weights: Optional local checkpoint loaded with :meth:`NHiTS.load_pretrained`.

    Returns:
        The model.

    Raises:
        ConfigError: Listing every invalid setting.
        CheckpointError: If ``weights`` cannot be loaded.
    """
    pool_kernel_sizes = [2, 2, 1] if pool_kernel_sizes is None else list(pool_kernel_sizes)
    downsample_freqs = [4, 2, 1] if downsample_freqs is None else list(downsample_freqs)
    n_blocks = [1, 1, 1] if n_blocks is None else list(n_blocks)
    mlp_units = [512, 512] if mlp_units is None else list(mlp_units)
    settings: dict[str, Any] = {
        "context_length": context_length,
        "horizon": horizon,
        "n_exog": n_exog,
        "feature_dim": feature_dim,
        "pool_kernel_sizes": pool_kernel_sizes,
        "downsample_freqs": downsample_freqs,
        "n_blocks": n_blocks,
        "mlp_units": mlp_units,
        "pooling": pooling,
        "interpolation": interpolation,
        "activation": activation,
        "dropout": dropout,
        "known_future": known_future,
    }
    _validate(**settings)
    model = NHiTS(**settings)
    if weights is not None:
        model.load_pretrained(weights)
    return model


@BACKBONES.register("nhits_tiny")
def build_nhits_tiny(
    context_length: Annotated[int, FromData, Ge(1)] = 96,
    horizon: Annotated[int, FromData, Ge(1)] = 24,
    n_exog: Annotated[int, FromData, Ge(0)] = 0,
    feature_dim: Annotated[int, Ge(1)] = 4,
    pool_kernel_sizes: list[int] | None = None,
    downsample_freqs: list[int] | None = None,
    n_blocks: list[int] | None = None,
    mlp_units: list[int] | None = None,
    pooling: Pooling = "max",
    interpolation: Interpolation = "linear",
    activation: Activation = "relu",
    dropout: float = 0.0,
    known_future: bool = False,
    weights: str | None = None,
) -> NHiTS:
    """A tiny N-HiTS (``mlp_units=[32, 32]``, ``feature_dim=4``) for tests and smoke runs.

    Takes the same arguments as :func:`build_nhits`.
    """
    # BACKBONES is a Registry[Any], so its decorator hands back a builder typed to return Any
    return cast(
        NHiTS,
        build_nhits(
            context_length=context_length,
            horizon=horizon,
            n_exog=n_exog,
            feature_dim=feature_dim,
            pool_kernel_sizes=pool_kernel_sizes,
            downsample_freqs=downsample_freqs,
            n_blocks=n_blocks,
            mlp_units=[32, 32] if mlp_units is None else mlp_units,
            pooling=pooling,
            interpolation=interpolation,
            activation=activation,
            dropout=dropout,
            known_future=known_future,
            weights=weights,
        ),
    )
