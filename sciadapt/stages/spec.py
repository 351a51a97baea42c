"""The schema of everything in a pipeline that is not a registered component.

Registered components (data, backbone, head, task) take their schema from their builder's
signature; stages, optimisers, schedules and the trainer take it from these dataclasses.
`config.py` validates a YAML against both in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class OptimSpec:
    """Optimiser of one stage."""

    name: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    betas: list[float] | None = None  # adam/adamw, default (0.9, 0.999)


@dataclass
class ScheduleSpec:
    """Learning-rate schedule of one stage, stepped every optimiser step."""

    name: str = "constant"  # constant | cosine | onecycle | cyclic
    warmup_steps: int = 0  # constant and cosine: linear warm-up from 0
    min_lr: float = 0.0  # cosine floor; cyclic lower bound
    pct_start: float = 0.3  # onecycle: fraction of steps spent increasing
    cycle_steps: int = 100  # cyclic: steps of one half cycle


@dataclass
class EarlyStoppingSpec:
    """Stop a stage when a monitored validation metric stops improving."""

    monitor: str = "val/loss"
    patience: int = 3
    mode: str = "min"
    min_delta: float = 0.0


@dataclass
class RolloutSpec:
    """Autoregressive rollout length of a stage (gridded rollout tasks).

    Starts at ``steps``, grows by ``grow_by`` every ``grow_every`` epochs up to ``max_steps``;
    ``checkpoint`` recomputes each step in backward; ``truncate_every`` detaches the state every
    ``n`` steps. The stage's data provides ``n_lead = max_steps or steps`` future states.
    """

    steps: int = 1
    grow_every: int | None = None
    grow_by: int = 1
    max_steps: int | None = None
    checkpoint: bool = False
    truncate_every: int | None = None


@dataclass
class StageSpec:
    """One fine-tuning stage. A pipeline runs its stages in order on one task."""

    name: str = ""
    max_epochs: int | None = None
    max_steps: int | None = None
    limit_train_batches: int | None = None  # batches per epoch (None = all)
    limit_val_batches: int | None = None
    # globs over parameter names; default: everything, or only the head in a PEFT stage
    trainable: list[str] | None = None
    frozen: list[str] = field(default_factory=list)  # globs; win over `trainable` (never over adapters)
    # {method: lora, r: 8, targets: [...], adapter_name: <stage name>, merge_after: false, ...}
    peft: dict[str, Any] | None = None
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    gradient_clip_val: float | None = None
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


@dataclass
class TrainerSpec:
    """Lightning Trainer settings shared by every stage."""

    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_nodes: int = 1
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    progress_refresh_steps: int = 10  # redraw the progress bar every N steps
    deterministic: bool = False
    val_check_interval: float | None = None
    num_sanity_val_steps: int = 0
    accumulate_grad_batches: int = 1


@dataclass
class EvaluationSpec:
    """The comparison table printed (and saved) when a pipeline ends.

    Every listed stage's final weights and every baseline are scored on the test split of
    the last stage's data, so the rows are comparable.
    """

    stages: list[str] | None = None  # default: every stage
    labels: dict[str, str] | None = None  # row label per stage name
    baselines: list[str] = field(default_factory=lambda: ["seasonal_naive"])
    metrics: list[str] = field(default_factory=lambda: ["mse", "mae", "mase", "smape"])
    # overrides of the last stage's data for the comparison (e.g. {n_lead: 24} to score 24-step rollouts)
    data: dict[str, Any] | None = None


# keys of a stage's `peft:` block that are not parameters of the method's builder
PEFT_COMMON = {
    "method": str,
    "adapter_name": str,
    "targets": list,
    "layer_types": list,
    "merge_after": bool,
}

# top-level keys of a pipeline YAML; data/backbone/head/task are registered components
TOP_LEVEL = {
    "name": str,
    "description": str,
    "seed": int,
    "run_dir": str,
    "data": "component",
    "backbone": "component",
    "head": "component",
    "task": "component",
    "trainer": TrainerSpec,
    "stages": list,
    "evaluation": EvaluationSpec,
}
