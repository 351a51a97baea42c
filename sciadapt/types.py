"""The shape vocabulary, once.

B batch, T time steps, C channels/variables, H W grid, N mesh nodes or tokens,
D embedding, L horizon, Q quantiles.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypedDict, runtime_checkable

import torch
from torch import nn

from sciadapt.errors import ShapeError

SERIES = "B T C"
IMAGE = "B C H W"
IMAGE_SERIES = "B C T H W"
GRIDDED = "B T C H W"
MESH = "B N C"
FORECAST = "B L C"
FORECAST_QUANTILES = "B L C Q"
HORIZON_FEATURES = "B L C D"


class Batch(TypedDict, total=False):
    """One batch. ``x`` is the model input, ``y`` the target, ``mask`` marks observed
    target values (1 observed, 0 missing), ``meta`` carries anything else.

    Optional model inputs (see :data:`MODEL_INPUTS`) ride beside ``x``; a backbone receives the
    ones its ``forward_features`` names as keyword arguments. Gridded batches add ``forcings``
    (B T F H W: time-of-day/year and other known inputs per step) and ``static`` (B S H W:
    land-sea mask, orography, coordinate encodings), which the rollout task passes itself.
    """

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    meta: dict[str, Any]
    x_mask: torch.Tensor
    future_exog: torch.Tensor
    forcings: torch.Tensor
    static: torch.Tensor
    temporal_coords: torch.Tensor
    time_delta_input: torch.Tensor
    location_coords: torch.Tensor


#: Optional batch entries a backbone may take: ``x_mask`` (same shape as ``x``; 1 observed,
#: 0 missing or left-padded), ``future_exog`` (B L C_exog: known-future covariates),
#: ``temporal_coords`` (B T 2: year, day of year) and ``location_coords`` (B 2: lat, lon) for
#: image-series backbones with temporal/location encodings (Prithvi-EO v2 TL), ``time_delta_input``
#: (B T: hours before the last input frame; SDO stacks for Surya).
MODEL_INPUTS = ("x_mask", "future_exog", "temporal_coords", "location_coords", "time_delta_input")


def check_shape(t: torch.Tensor, layout: str, name: str = "input", **sizes: int) -> None:
    """Raise :class:`ShapeError` unless ``t`` has one axis per layout letter and the named sizes.

    >>> check_shape(torch.zeros(4, 512, 7), "B T C", C=7)
    """
    axes = layout.split()
    if t.dim() != len(axes):
        raise ShapeError(f"{name}: expected {layout}, got {tuple(t.shape)}")
    for ax, want in sizes.items():
        got = t.shape[axes.index(ax)]
        if got != want:
            raise ShapeError(f"{name}: expected {layout} with {ax}={want}, got {tuple(t.shape)}")


# ---------------------------------------------------------------------------------------------
# contracts (DESIGN.md): what the runner, predict and the contract tests rely on


@runtime_checkable
class Backbone(Protocol):
    """A registered backbone (an ``nn.Module``).

    ``feature_info`` lists the feature levels ``forward_features`` returns (each a dict with at
    least ``layout`` and ``channels``); a backbone that ends in its official head has a last level
    of kind ``"forecast"``. ``load_pretrained`` is a strict load after a declared, logged filter;
    ``save_pretrained`` writes what it reads back strictly.
    """

    input_layout: str
    feature_info: list[dict[str, Any]]
    default_peft_targets: list[str]

    def forward_features(self, x: torch.Tensor, **inputs: torch.Tensor) -> Any: ...

    def example_inputs(self, batch: int = 2) -> dict[str, torch.Tensor]: ...

    def load_pretrained(self, source: str) -> Any: ...

    def save_pretrained(self, directory: str | Path) -> Path: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def named_modules(self) -> Iterator[tuple[str, nn.Module]]: ...


@runtime_checkable
class FitsWindow(Protocol):
    """A backbone with a fixed context of its own (TTM, MOMENT) that reports how it fits a window."""

    def input_policy(self, context_length: int) -> Any: ...


@runtime_checkable
class ExtendsChannels(Protocol):
    """A backbone whose named input channels can grow after its weights are loaded (a stage's
    ``new_channels``: a wavelength or band unseen in pre-training, as Solaris adds 1700 Å).

    ``CHANNELS_FACT`` is assigned in the class body (the config check reads it from the source): the
    builder parameter, a ``FromData`` list and so the datamodule fact of that name, holding the input
    channels' names; the model's shapes must follow that list alone (no second ``FromData`` count
    such as ``in_chans``: a stage that adds channels builds the model it starts from with the list less
    the new names). ``channel_names`` are the model's, in input order. ``extend_input_channels``
    appends the new channels after them in every layer that has one slice per channel (patch
    embedding, a forecast decoder's outputs): the existing slices keep their values bit for bit, the
    new ones start from ``rule`` (``zeros``, ``mean`` or ``copy:<name>``), one log line says so, and
    ``channel_names``, ``feature_info`` and what ``save_pretrained`` records follow. Helpers:
    :mod:`sciadapt.backbones._channels`.
    """

    CHANNELS_FACT: ClassVar[str]

    @property
    def channel_names(self) -> list[str]: ...

    def extend_input_channels(self, new_channel_names: Sequence[str], rule: str) -> None: ...


@runtime_checkable
class DataModule(Protocol):
    """A registered datamodule (a ``LightningDataModule``; its ``__init__`` is its config schema).

    ``facts()`` is what the model must agree with (window geometry, channels, grid ...): builder
    parameters marked ``FromData`` are filled from it by name. ``scaler_state()`` is what a run
    keeps (``scaler.json``) and ``load_scaler_state`` reads back to predict in original units.
    The runner sets ``shuffle_seed``; a run preempted mid-epoch sets ``train_resume`` (epoch,
    batches done on this rank) for the next train sampler to skip
    (:func:`sciadapt.datamodules.sampling.apply_resume`).
    """

    shuffle_seed: int
    train_resume: tuple[int, int] | None

    def setup(self, stage: str) -> None: ...

    def facts(self) -> dict[str, Any]: ...

    def describe(self) -> str: ...

    def scaler_state(self) -> dict[str, Any]: ...

    def load_scaler_state(self, state: dict[str, Any]) -> None: ...

    def train_dataloader(self) -> Any: ...

    def val_dataloader(self) -> Any: ...

    def test_dataloader(self) -> Any: ...


@runtime_checkable
class NamesColumns(Protocol):
    """A datamodule of named series columns (time series): checkpoints record which they were trained on."""

    @property
    def target_columns(self) -> list[str]: ...

    @property
    def exog_columns(self) -> list[str]: ...


@runtime_checkable
class ReportsPadding(Protocol):
    """A datamodule that pads short histories and says how often it did (time series)."""

    def padding_report(self) -> dict[str, Any]: ...


class Task(Protocol):
    """A task (:class:`sciadapt.tasks.base.Task` subclasses): the one step loop plus a loss,
    metrics and the task's own baselines."""

    BASELINES: ClassVar[tuple[str, ...]]
    backbone: Backbone
    head: nn.Module
    seed: int
    stage_index: int
    test_results: dict[str, Any]
    data_signature: dict[str, Any]

    def baseline(self, name: str, dm: Any) -> dict[str, Any]: ...

    def model_inputs(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]: ...


class PeftMethod(Protocol):
    """A registered PEFT method; one that needs data to initialise overrides ``init_from_data``."""

    def init_from_data(self, model: nn.Module, adapter: str, batches: Iterable[Mapping[str, Any]]) -> None: ...
