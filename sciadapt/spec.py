"""The schema of every plain config section, written once (the ground floor: imports no sciadapt).

Registered components (``data``, ``backbone``, ``head``, ``task``, a stage's ``peft`` method) take
their schema from their builder's signature; everything else takes it from the frozen dataclasses
here. :mod:`sciadapt.config` validates a YAML against both in one pass and returns a
:class:`PipelineSpec`; consumers read its attributes (every default is already filled in).

Type annotations carry the rules a value must obey, so no consumer re-checks them:

- ``Literal["a", "b"]``: one of the choices (an unknown value gets a "did you mean").
- ``Annotated[int, Ge(1)]``: a bound (``Ge``, ``Gt``, ``Le``).
- ``Annotated[int, FromData]`` on a builder parameter: the value follows the data (or the
  backbone, for a head) and is filled in at build time; a config that sets it must agree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal


class _FromData:
    """Marker: a builder parameter whose value follows the data (see the module docstring)."""

    def __repr__(self) -> str:
        return "FromData"


FromData = _FromData()


@dataclass(frozen=True)
class Ge:
    """Bound marker: the value is >= ``bound``."""

    bound: float

    def check(self, value: float) -> bool:
        return value >= self.bound

    def describe(self) -> str:
        return f">= {self.bound:g}"


@dataclass(frozen=True)
class Gt:
    """Bound marker: the value is > ``bound``."""

    bound: float

    def check(self, value: float) -> bool:
        return value > self.bound

    def describe(self) -> str:
        return f"> {self.bound:g}"


@dataclass(frozen=True)
class Le:
    """Bound marker: the value is <= ``bound``."""

    bound: float

    def check(self, value: float) -> bool:
        return value <= self.bound

    def describe(self) -> str:
        return f"<= {self.bound:g}"


Bound = Ge | Gt | Le

PositiveInt = Annotated[int, Ge(1)]
NonNegInt = Annotated[int, Ge(0)]
NonNegFloat = Annotated[float, Ge(0)]


@dataclass(frozen=True)
class OptimSpec:
    """Optimiser of one stage."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: NonNegFloat = 1e-3
    weight_decay: NonNegFloat = 0.0
    momentum: NonNegFloat = 0.9  # sgd only
    betas: list[float] | None = None  # adam/adamw, default (0.9, 0.999)


@dataclass(frozen=True)
class ScheduleSpec:
    """Learning-rate schedule of one stage, stepped every optimiser step."""

    name: Literal["constant", "cosine", "onecycle", "cyclic"] = "constant"
    warmup_steps: NonNegInt = 0  # constant and cosine: linear warm-up from 0
    min_lr: NonNegFloat = 0.0  # cosine floor; cyclic lower bound
    pct_start: Annotated[float, Gt(0), Le(1)] = 0.3  # onecycle: fraction of steps spent increasing
    cycle_steps: PositiveInt = 100  # cyclic: steps of one half cycle


@dataclass(frozen=True)
class EarlyStoppingSpec:
    """Stop a stage when a monitored validation metric stops improving."""

    monitor: str = "val/loss"
    patience: NonNegInt = 3
    mode: Literal["min", "max"] = "min"
    min_delta: NonNegFloat = 0.0


@dataclass(frozen=True)
class RolloutSpec:
    """Autoregressive rollout length of a stage (gridded rollout tasks).

    Starts at ``steps``, grows by ``grow_by`` every ``grow_every`` epochs up to ``max_steps``;
    ``checkpoint`` recomputes each step in backward; ``truncate_every`` detaches the state every
    ``n`` steps. The stage's data provides ``n_lead = max_steps or steps`` future states.
    """

    steps: PositiveInt = 1
    grow_every: PositiveInt | None = None
    grow_by: PositiveInt = 1
    max_steps: PositiveInt | None = None
    checkpoint: bool = False
    truncate_every: PositiveInt | None = None

    @property
    def longest(self) -> int:
        """The longest rollout of the stage: the future states each sample must carry."""
        return int(self.max_steps or self.steps)


@dataclass(frozen=True)
class NewChannelsSpec:
    """Input channels a stage adds to the model it starts from (a wavelength or band unseen in pre-training).

    ``names`` are appended after the model's channels, in this order (the stage's data lists them last);
    ``init`` is the rule their weights start from: ``zeros`` (the model first computes what it did),
    ``mean`` (of the existing channels' weights) or ``copy:<name>`` (an existing channel's weights).
    """

    names: list[str]
    init: str


@dataclass(frozen=True)
class EmaSpec:
    """An exponential moving average of a stage's trainable weights, kept beside the raw ones.

    After every ``every_n_steps``-th optimiser step ``ema = decay * ema + (1 - decay) * w``, starting
    from the weights the stage starts with; buffers (normalisation statistics) are the raw model's.
    The stage end writes ``checkpoints/<stage>/ema.ckpt`` and the comparison scores it as a row of
    its own; the stage's final weights (what the next stage starts from) stay the raw ones.
    """

    decay: Annotated[float, Gt(0), Le(1)] = 0.999  # 1 is refused by the stage rules (nothing would move)
    every_n_steps: PositiveInt = 1


@dataclass(frozen=True)
class MergeSpec:
    """A stage that trains nothing: its weights are merged from earlier stages' final weights.

    ``method`` combines the final checkpoints of ``stages`` (earlier stages of the same architecture):
    ``soup`` their mean, ``greedy_soup`` the model-soups recipe chosen on this stage's validation
    split, ``model_stock`` (two or more stages and the pretrained/zero-shot ``anchor`` stage) or
    ``wise_ft`` (one stage interpolated with ``anchor``: ``(1 - alpha) anchor + alpha stage``).
    The result is the stage's ``final.ckpt``, scored like any stage's. Nothing trains (``max_epochs``
    or ``max_steps``, say from a ``stages.*`` override, change nothing).
    """

    #: wise_ft's alpha when none is given
    DEFAULT_ALPHA = 0.5

    method: Literal["soup", "greedy_soup", "wise_ft", "model_stock"]
    stages: list[str]
    alpha: Annotated[float, Ge(0), Le(1)] | None = None  # wise_ft only (default 0.5)
    anchor: str | None = None  # wise_ft and model_stock: the stage of the pretrained/zero-shot weights

    @property
    def wise_ft_alpha(self) -> float:
        """WiSE-FT's alpha: the given one, else :attr:`DEFAULT_ALPHA`."""
        return self.DEFAULT_ALPHA if self.alpha is None else float(self.alpha)


@dataclass(frozen=True)
class StageSpec:
    """One fine-tuning stage. A pipeline runs its stages in order on one task."""

    name: str = ""
    max_epochs: NonNegInt | None = None
    max_steps: PositiveInt | None = None
    limit_train_batches: PositiveInt | None = None  # batches per epoch (None = all)
    limit_val_batches: PositiveInt | None = None
    # globs over parameter names; default: everything, or only the head in a PEFT stage
    trainable: list[str] | None = None
    frozen: list[str] = field(default_factory=list)  # globs; win over `trainable` (never over adapters)
    # {method: lora, r: 8, targets: [...], adapter_name: <stage name>, merge_after: false, ...}:
    # the common keys (PEFT_COMMON) plus the method builder's parameters, every default filled in
    peft: dict[str, Any] | None = None
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    gradient_clip_val: NonNegFloat | None = None
    early_stopping: EarlyStoppingSpec | None = None
    restore_best: bool = False  # load the best validation checkpoint when the stage ends
    init_from: str | None = None  # previous | scratch | pretrained | stage:<name> | <checkpoint path>
    data: dict[str, Any] | None = None  # overrides of the pipeline's `data:` for this stage
    evaluate: bool = True  # test on this stage's data when the stage ends
    rollout: RolloutSpec | None = None  # rollout tasks: steps per sample (curriculum stages)
    # another model from this stage on (e.g. a U-Net from scratch beside a frozen foundation
    # encoder); without `name`, keys are merged over the model the previous stage used
    backbone: dict[str, Any] | None = None
    head: dict[str, Any] | None = None
    # {names: [aia1700], init: zeros | mean | copy:<name>}: input channels (a wavelength, a band) this
    # stage adds to the weights it starts from (pretrained, previous, a stage or a checkpoint), after the
    # model's own channels; those weights are kept bit for bit, the new channels' start from `init`. The
    # stage's data lists the model's channels, then the new ones. Backbones with named, growable channels
    # only (`sciadapt validate` lists them when another is used)
    new_channels: NewChannelsSpec | None = None
    # {decay: 0.999, every_n_steps: 1}: an EMA of the trainable weights, saved as
    # checkpoints/<stage>/ema.ckpt and scored beside the raw weights ("<label> (EMA)")
    ema: EmaSpec | None = None
    # {method: soup | greedy_soup | wise_ft | model_stock, stages: [a, b], alpha: 0.5, anchor: <stage>}:
    # no training (max_epochs 0 implied); the final weights are merged from the named earlier stages'
    merge: MergeSpec | None = None


@dataclass(frozen=True)
class TrainerSpec:
    """Lightning Trainer settings shared by every stage."""

    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_nodes: PositiveInt = 1
    log_every_n_steps: PositiveInt = 10
    enable_progress_bar: bool = True
    progress_refresh_steps: PositiveInt = 10  # redraw the progress bar every N steps
    # where else the run is tracked (metrics.csv is always written): one tracker run per pipeline
    # run with the resolved config, per-step metrics, stage boundaries, per-stage test metrics, the
    # comparison and the plots; tensorboard and mlflow need `pip install "sciadapt[tracking]"`,
    # wandb `pip install wandb`
    logger: Literal["csv", "tensorboard", "mlflow", "wandb"] = "csv"
    deterministic: bool = False
    val_check_interval: float | None = None
    num_sanity_val_steps: NonNegInt = 0
    accumulate_grad_batches: PositiveInt = 1


@dataclass(frozen=True)
class EvaluationSpec:
    """The comparison table printed (and saved) when a pipeline ends.

    Every listed stage's final weights and every baseline are scored on the test split of
    the last stage's data, so the rows are comparable. Baselines are the task's own
    (``BASELINES`` of the task class).
    """

    stages: list[str] | None = None  # default: every stage
    labels: dict[str, str] | None = None  # row label per stage name
    baselines: list[str] = field(default_factory=lambda: ["seasonal_naive"])
    metrics: list[str] = field(default_factory=lambda: ["mse", "mae", "mase", "smape"])
    # overrides of the last stage's data for the comparison (e.g. {n_lead: 24} to score 24-step rollouts)
    data: dict[str, Any] | None = None
    # overrides of the comparison's data (after `data`) for a second, shifted test split (another
    # site, year or region): every row is also scored on it, as `<metric>@shifted` columns
    shifted: dict[str, Any] | None = None


@dataclass(frozen=True)
class PeftCommonSpec:
    """The keys of a stage's ``peft:`` block that are not parameters of the method's builder."""

    method: str = ""
    adapter_name: str | None = None
    targets: list[str] | None = None
    layer_types: list[str] | None = None
    merge_after: bool = False


PEFT_COMMON = tuple(f.name for f in dataclasses.fields(PeftCommonSpec))


@dataclass(frozen=True)
class PipelineSpec:
    """A validated pipeline: what ``config.load_config`` returns and ``config.yaml`` holds.

    The component sections (``data``, ``backbone``, ``head``, ``task``) are ``{"name": ...,
    **builder arguments}`` mappings checked against the builder's signature.
    """

    name: str = "pipeline"
    description: str = ""
    seed: int = 0
    run_dir: str = "runs"
    data: dict[str, Any] = field(default_factory=dict)
    backbone: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    trainer: TrainerSpec = field(default_factory=TrainerSpec)
    stages: tuple[StageSpec, ...] = ()
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)

    def stage_index(self, name: str) -> int:
        """The position of stage ``name``."""
        return [s.name for s in self.stages].index(name)

    def to_dict(self) -> dict[str, Any]:
        """The plain form (what ``config.yaml`` holds and ``config.validate`` reads back)."""
        out = dataclasses.asdict(self)
        out["stages"] = list(out["stages"])
        return out


#: sections that are registered components (their schema is a builder's signature)
COMPONENT_SECTIONS = ("data", "backbone", "head", "task")
#: component sections a pipeline may leave out, and the builder they then default to
DEFAULT_COMPONENT = {"head": "point", "task": "forecasting"}
