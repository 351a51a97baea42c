"""NLinear and DLinear (Zeng et al., AAAI 2023): one linear map from the context to the horizon.

Both are channel-independent: every target channel is a univariate series folded into the batch, and
one ``Linear(T, L)`` (shared by all channels) maps its context to its forecast.

* ``nlinear`` subtracts the last observed value, maps, and adds it back, so a zero map is the naive
  forecast (the weights start there).
* ``dlinear`` splits the context into a trend (a centred moving average with edge replication) and
  the remainder, maps each with its own ``Linear(T, L)``, and sums the two forecasts; both maps start
  as the context mean.

These are the strong simple baselines of the long-horizon benchmarks; the backbone returns horizon
features ``(B, L, C, 1)``, so the shared forecast heads and PEFT methods apply as to N-HiTS.

Reference: A. Zeng, M. Chen, L. Zhang, Q. Xu, "Are Transformers Effective for Time Series
Forecasting?", AAAI 2023, https://arxiv.org/abs/2205.13504
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from sciadapt.errors import CheckpointError, ConfigError, ShapeError
from sciadapt.hub import WEIGHT_FILES, describe_mismatch, read_state_dict, resolve_file
from sciadapt.registry import BACKBONES
from sciadapt.spec import FromData, Ge
from sciadapt.types import HORIZON_FEATURES, SERIES, check_shape

Variant = Literal["nlinear", "dlinear"]


class LinearForecaster(nn.Module):
    """Channel-independent NLinear or DLinear producing horizon features ``(B, L, C, 1)``.

    Build it with :func:`build_linear`; the constructor takes the validated values.

    Args:
        context_length: Input window length ``T``.
        horizon: Forecast length ``L``.
        n_exog: Trailing input channels that are covariates; a linear map on each target's own
            history ignores them.
        variant: ``"nlinear"`` or ``"dlinear"``.
        moving_avg: DLinear's trend window (odd; edges replicated).
    """

    input_layout = SERIES

    def __init__(self, context_length: int, horizon: int, n_exog: int, variant: str, moving_avg: int) -> None:
        super().__init__()
        self.context_length = context_length
        self.horizon = horizon
        self.n_exog = n_exog
        self.variant = variant
        self.moving_avg = moving_avg
        self.config: dict[str, Any] = {
            "context_length": context_length,
            "horizon": horizon,
            "n_exog": n_exog,
            "variant": variant,
            "moving_avg": moving_avg,
        }
        self.proj = nn.Linear(context_length, horizon)
        with torch.no_grad():
            if variant == "nlinear":
                # a zero map plus the re-added last value is the naive forecast
                self.proj.weight.zero_()
                self.proj.bias.zero_()
            else:
                self.proj.weight.fill_(1.0 / context_length)
                self.proj.bias.zero_()
        self.trend_proj: nn.Linear | None = None
        if variant == "dlinear":
            self.trend_proj = nn.Linear(context_length, horizon)
            with torch.no_grad():
                self.trend_proj.weight.fill_(1.0 / context_length)
                self.trend_proj.bias.zero_()
        self.feature_info: list[dict[str, Any]] = [{"layout": HORIZON_FEATURES, "channels": 1, "horizon": horizon}]
        self.default_peft_targets: list[str] = ["proj", "trend_proj"] if variant == "dlinear" else ["proj"]

    def _trend(self, series: Tensor) -> Tensor:
        """Centred moving average of ``(S, T)`` with the first and last values replicated."""
        half = (self.moving_avg - 1) // 2
        padded = F.pad(series.unsqueeze(1), (half, half), mode="replicate")  # (S, 1, T + 2 half)
        return F.avg_pool1d(padded, kernel_size=self.moving_avg, stride=1).squeeze(1)  # (S, T)

    def forward_features(self, x: Tensor) -> Tensor:
        """Forecast features for every target channel.

        Args:
            x: ``(B, T, C_in)`` with ``T == context_length``; the first ``C_in - n_exog`` channels
                are targets.

        Returns:
            ``(B, L, C, 1)`` horizon features.

        Raises:
            ShapeError: If ``x`` is not ``B T C`` with ``T == context_length`` and a target channel.
        """
        check_shape(x, SERIES, name="linear input", T=self.context_length)
        batch, _, c_in = x.shape
        n_targets = c_in - self.n_exog
        if n_targets < 1:
            raise ShapeError(
                f"linear input: expected B T C with C > n_exog={self.n_exog} (targets first), got {tuple(x.shape)}"
            )
        series = rearrange(x[..., :n_targets], "b t c -> (b c) t")  # (S, T)
        if self.variant == "nlinear":
            last = series[:, -1:]  # (S, 1)
            out = self.proj(series - last) + last  # (S, L)
        else:
            assert self.trend_proj is not None
            trend = self._trend(series)
            out = self.proj(series - trend) + self.trend_proj(trend)  # (S, L)
        features: Tensor = rearrange(out, "(b c) l -> b l c 1", b=batch)  # (B, L, C, 1)
        return features

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`forward_features`."""
        return self.forward_features(x)

    def example_inputs(self, batch: int = 2) -> dict[str, Tensor]:
        """A random ``x`` of this instance's shape: ``(batch, context_length, 1 + n_exog)``."""
        return {"x": torch.randn(batch, self.context_length, 1 + self.n_exog)}

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``model.safetensors`` into ``directory``; :meth:`load_pretrained` reads it back strictly."""
        from sciadapt.backbones._saved import save_state

        return save_state(self.state_dict(), Path(directory), "linear", config=self.config)

    def load_pretrained(self, source: str | os.PathLike[str]) -> None:
        """Load weights from a local file or folder with ``strict=True``; a Lightning checkpoint's
        ``backbone.``-prefixed entries are used with the prefix stripped (the one declared filter).

        Raises:
            CheckpointError: If the file is missing or unreadable, or its keys or shapes do not match;
                the message names the keys and the settings that set their shapes.
        """
        if not Path(source).exists():
            raise CheckpointError(f"linear checkpoint {str(source)!r} not found (expected a local file or folder)")
        path = resolve_file(source, WEIGHT_FILES)
        state = read_state_dict(path)
        if any(k.startswith("backbone.") for k in state):
            state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        problems = describe_mismatch(self.state_dict(), state)
        if problems:
            raise CheckpointError(
                f"cannot load {path} into linear(variant={self.variant}, context_length={self.context_length}, "
                f"horizon={self.horizon}): " + "; ".join(problems) + " (weights are (horizon, context_length); "
                "a dlinear checkpoint has trend_proj.*, an nlinear one has not: check backbone.variant)"
            )
        self.load_state_dict(state, strict=True)


@BACKBONES.register("linear")
def build_linear(
    context_length: Annotated[int, FromData, Ge(1)] = 96,
    horizon: Annotated[int, FromData, Ge(1)] = 24,
    n_exog: Annotated[int, FromData, Ge(0)] = 0,
    variant: Variant = "nlinear",
    moving_avg: Annotated[int, Ge(1)] = 25,
) -> LinearForecaster:
    """Build an NLinear or DLinear backbone.

    Args:
        context_length: Input window length ``T``.
        horizon: Forecast length ``L``.
        n_exog: Trailing covariate channels (ignored by the linear map).
        variant: ``nlinear`` (last value removed and re-added) or ``dlinear`` (trend + remainder).
        moving_avg: DLinear's trend window, an odd number of steps (25 in the paper).

    Returns:
        The model.

    Raises:
        ConfigError: If ``moving_avg`` is even or longer than the context.
    """
    problems = []
    if variant == "dlinear" and moving_avg % 2 == 0:
        problems.append(f"backbone.moving_avg: expected an odd window for a centred average, got {moving_avg}")
    if variant == "dlinear" and moving_avg > context_length:
        problems.append(
            f"backbone.moving_avg: the trend window {moving_avg} is longer than context_length {context_length}"
        )
    if problems:
        raise ConfigError(problems)
    return LinearForecaster(context_length, horizon, n_exog, variant, moving_avg)


@BACKBONES.register("linear_tiny")
def build_linear_tiny(
    context_length: Annotated[int, FromData, Ge(1)] = 48,
    horizon: Annotated[int, FromData, Ge(1)] = 12,
    n_exog: Annotated[int, FromData, Ge(0)] = 0,
    variant: Variant = "dlinear",
    moving_avg: Annotated[int, Ge(1)] = 5,
) -> LinearForecaster:
    """DLinear with a 5-step trend window, for tests and smoke runs; the arguments of :func:`build_linear`."""
    return cast(
        LinearForecaster,
        build_linear(
            context_length=context_length, horizon=horizon, n_exog=n_exog, variant=variant, moving_avg=moving_avg
        ),
    )
