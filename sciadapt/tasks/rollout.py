"""Autoregressive rollout of gridded states: GraphCast / Anemoi-style emulator training.

One step maps the last ``n_input`` normalised states (plus forcings and static fields) to the
normalised tendency of every channel; the next state is ``x_last + tendency * tendency_scale``
(``tendency_scale = std(Δstate) / std(state)`` per channel, so the network predicts unit-variance
tendencies). A rollout feeds predictions back as inputs for ``k`` steps; the loss is the latitude-
weighted MSE with per-variable weights, averaged over the ``k`` steps.

The rollout length comes from the stage (``stages[i].rollout``): ``steps`` to start with, grown by
``grow_by`` every ``grow_every`` epochs up to ``max_steps`` (Anemoi's schedule); ``checkpoint``
recomputes each step in backward (memory flat in ``k``); ``truncate_every`` detaches the state every
``n`` steps (GraphCast's split of the 3-day stage). The current length is saved in every checkpoint,
so a resumed run continues at the length it reached.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sciadapt._process import tune_allocator
from sciadapt.errors import ConfigError, ShapeError
from sciadapt.metrics.bootstrap import WindowScores
from sciadapt.registry import TASKS
from sciadapt.spec import FromData, RolloutSpec
from sciadapt.tasks.base import Task
from sciadapt.types import Batch


def rollout_length(spec: RolloutSpec | None, epoch: int) -> int:
    """Rollout steps at ``epoch`` of a stage whose ``rollout`` block is ``spec``."""
    if spec is None:
        return 1
    steps = spec.steps
    if spec.grow_every:
        steps += spec.grow_by * (epoch // spec.grow_every)
    return min(steps, spec.max_steps) if spec.max_steps else steps


class RolloutTask(Task):
    """Train and evaluate a one-step emulator by autoregressive rollout.

    Args:
        backbone: ``forward_features(x, forcings, static) -> (B, C, H, W)`` normalised tendencies.
        head: A grid head (``grid``).
        variables: Channel names, in order (follows the data).
        tendency_scale: ``std(Δ) / std`` per channel (follows the data).
        area_weights: Latitude weights ``(H,)`` on a lat-lon grid, or cell areas ``(H, W)`` on a
            projected or curvilinear grid; rescaled to mean 1 (follows the data).
        n_input: Past states per step (follows the data).
        variable_weights: Loss weight per variable name (others 1); a name may be a prefix
            (``z`` weighs every ``z_<level>``).
        time_step_hours: Hours per step, for lead-time labels (follows the data).
    """

    #: the initial state held at every lead, or the datamodule's climatology
    BASELINES: ClassVar[tuple[str, ...]] = ("persistence", "climatology")
    WINDOW_UNIT: ClassVar[str] = "initial times"

    tendency_scale_t: Tensor
    area_w: Tensor
    var_w: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        variables: list[str],
        tendency_scale: list[float],
        area_weights: list[float] | list[list[float]],
        n_input: int = 1,
        variable_weights: dict[str, float] | None = None,
        time_step_hours: float = 1.0,
    ) -> None:
        super().__init__(backbone, head)
        # checkpointed rollouts recompute each step in backward: a fixed mmap threshold keeps their
        # peak flat on glibc (sciadapt._process; the user's MALLOC_MMAP_THRESHOLD_ wins)
        tune_allocator()
        self.variables = list(variables)
        self.n_input = int(n_input)
        self.time_step_hours = float(time_step_hours)
        c = len(self.variables)
        self.register_buffer("tendency_scale_t", torch.tensor(tendency_scale, dtype=torch.float32).reshape(1, c, 1, 1))
        # loss weights of the grid, not part of the model: not saved, and they follow the data of each
        # stage (a model moved to another grid keeps its weights and takes that grid's areas)
        self.register_buffer("area_w", _area_tensor(area_weights), persistent=False)
        vw = torch.ones(c)
        for key, value in (variable_weights or {}).items():
            hit = [i for i, v in enumerate(self.variables) if v == key or v.startswith(f"{key}_")]
            if not hit:
                raise ConfigError(
                    f"task.variable_weights: {key!r} names no variable; variables are {', '.join(self.variables)}"
                )
            vw[hit] = float(value)
        self.register_buffer("var_w", vw.reshape(1, 1, c, 1, 1))
        self.rollout_steps = 1

    # -- one step and a rollout -----------------------------------------------------------
    def step(self, state: Tensor, forcings: Tensor | None, static: Tensor | None) -> Tensor:
        """Next normalised state ``(B, C, H, W)`` from ``state`` ``(B, n_input, C, H, W)``."""
        # only the inputs the data has: a backbone's forward_features defaults the others
        inputs = {k: v for k, v in (("forcings", forcings), ("static", static)) if v is not None}
        tendency: Tensor = self.head(self.backbone.forward_features(state, **inputs))  # (B, C, H, W)
        return state[:, -1] + tendency * self.tendency_scale_t

    def rollout(self, batch: Batch | dict[str, Any], steps: int) -> Tensor:
        """Predicted normalised states ``(B, steps, C, H, W)`` from the batch's initial conditions."""
        x = batch["x"]
        if x.dim() != 5:
            raise ShapeError(f"rollout input: expected B T C H W, got {tuple(x.shape)}")
        forcings: Tensor | None = batch.get("forcings")  # type: ignore[assignment]
        static: Tensor | None = batch.get("static")  # type: ignore[assignment]
        spec = self.stage.rollout or RolloutSpec()
        use_ckpt = spec.checkpoint and self.training and torch.is_grad_enabled()
        cut = spec.truncate_every
        state, preds = x, []
        for k in range(steps):
            f = None
            if forcings is not None:
                # the forcings of this step's inputs and of its target time: (B, (n_input + 1) * F, H, W)
                f = forcings[:, k : k + self.n_input + 1].flatten(1, 2)
            if use_ckpt:
                nxt = checkpoint(self.step, state, f, static, use_reentrant=False)
            else:
                nxt = self.step(state, f, static)
            preds.append(nxt)
            state = torch.cat([state[:, 1:], nxt.unsqueeze(1)], dim=1)
            if cut and (k + 1) % cut == 0 and k + 1 < steps:
                state = state.detach()  # truncated backpropagation through the rollout
        return torch.stack(preds, dim=1)  # (B, steps, C, H, W)

    @staticmethod
    def migrate_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Checkpoints before the area weights followed the data saved them as ``area_w``: dropped
        (they are loss weights of the grid, re-derived from the data)."""
        return {k: v for k, v in state.items() if k != "area_w"}

    def follow_data(self, facts: Mapping[str, Any]) -> None:
        if facts.get("area_weights") is not None:
            self.area_w = _area_tensor(facts["area_weights"]).to(self.area_w.device)

    def area_weights_for(self, batch: Batch | dict[str, Any]) -> Tensor:
        """The area weights of the batch's grid: the whole grid's ``(1, 1, 1, H, 1 or W)``, or for
        train windows cut from it (``data.patch``; ``meta["patch_origin"]``) each window's ``(B, 1, 1, h, 1 or w)``."""
        meta = batch.get("meta")
        origin = meta.get("patch_origin") if isinstance(meta, dict) else None
        if origin is None:
            return self.area_w
        h, w = batch["x"].shape[-2:]
        parts = []
        for r0, c0 in origin.tolist():
            part = self.area_w[0, 0, 0, r0 : r0 + h]  # (h, 1 or W)
            parts.append(part if part.shape[-1] == 1 else part[:, c0 : c0 + w])
        return torch.stack(parts)[:, None, None]  # (B, 1, 1, h, 1 or w)

    def weighted_mse(self, pred: Tensor, y: Tensor, mask: Tensor | None, area: Tensor | None = None) -> Tensor:
        """Latitude- and variable-weighted MSE over ``(B, steps, C, H, W)``; masked points excluded.

        ``area``: the batch's area weights (:meth:`area_weights_for`), default the whole grid's."""
        w = (self.area_w if area is None else area) * self.var_w  # (1 or B, 1, C, H, 1 or W)
        w = w.expand_as(pred) if mask is None else w * mask
        return ((pred - y) ** 2 * w).sum() / w.sum().clamp_min(1e-12)

    def rollout_loss(self, pred: Tensor, y: Tensor, mask: Tensor | None, area: Tensor) -> Tensor:
        """The training loss of a rollout (a task may weigh it otherwise): :meth:`weighted_mse`."""
        return self.weighted_mse(pred, y, mask, area)

    # -- the loop hooks -------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.rollout_steps = rollout_length(self.stage.rollout, self.current_epoch)

    def _datamodule(self) -> Any:
        """The trainer's datamodule; ``None`` in unit use without a trainer (or fitted on loaders)."""
        if self._trainer is None:
            return None
        # Lightning's DataConnector sets this attribute on every Trainer without declaring it
        return self._trainer.datamodule  # type: ignore[attr-defined]

    def _loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        n_lead = batch["y"].shape[1]  # (B, n_lead, C, H, W): the future states the data provides
        if self.training and self.rollout_steps > n_lead:
            raise ConfigError(
                f"stage {self.stage.name!r}: rollout of {self.rollout_steps} steps at epoch "
                f"{self.current_epoch} but the data provides n_lead={n_lead}; set rollout.max_steps or data.n_lead"
            )
        steps = self.rollout_steps if self.training else n_lead
        pred = self.rollout(batch, steps)
        y = batch["y"][:, :steps]
        mask = batch.get("mask")
        loss = self.rollout_loss(pred, y, None if mask is None else mask[:, :steps], self.area_weights_for(batch))
        return loss, pred

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train/rollout", float(self.rollout_steps), on_step=False, on_epoch=True)
        return loss

    def validation_metrics(self, pred: Tensor, batch: Batch) -> dict[str, Tensor]:
        y = batch["y"][:, : pred.shape[1]]
        err = (pred - y) ** 2 * self.area_w
        return {"rmse_last_step": err[:, -1].mean().sqrt()}

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self.rollout(batch, batch["y"].shape[1] if "y" in batch else self.rollout_steps)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["sciadapt"]["rollout_steps"] = self.rollout_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # checkpoints written before the rollout length was saved start again at the current length
        self.rollout_steps = int(checkpoint.get("sciadapt", {}).get("rollout_steps", self.rollout_steps))

    # -- evaluation -----------------------------------------------------------------------
    def collect_test_outputs(self, pred: Tensor, batch: Batch) -> dict[str, Tensor]:
        out = {"pred": pred.detach().float().cpu(), "y": batch["y"].detach().float().cpu()}
        out["x_last"] = batch["x"][:, -1].detach().float().cpu()
        if batch.get("mask") is not None:
            out["mask"] = batch["mask"].detach().float().cpu()
        return out

    def evaluate_outputs(self, outs: dict[str, Tensor]) -> dict[str, Any]:
        results, self.test_window_scores = self.score(outs["pred"].numpy(), outs, self._datamodule())
        return results

    def score(
        self, pred: np.ndarray, outs: dict[str, Tensor], dm: Any
    ) -> tuple[dict[str, Any], dict[str, WindowScores]]:
        """The test metrics of normalised ``pred`` ``(N, L, C, H, W)`` against ``outs`` (``y``, ``mask``,
        ``x_last``), and their per-initial-time accumulators: :func:`score_rollout`."""
        return score_rollout(pred, outs, dm, self.variables, self.time_step_hours)

    def baseline(self, name: str, dm: Any) -> dict[str, Any]:
        """Persistence (the initial state at every lead) or climatology, scored like the model."""
        cat = self.test_arrays(dm)
        y = cat["y"].numpy()
        if name == "persistence":
            pred = np.repeat(cat["x_last"].numpy()[:, None], y.shape[1], axis=1)
        elif name == "climatology":
            clim = dm.normalise(dm.climatology())  # (C, H, W) in the normalised space
            pred = np.broadcast_to(clim, y.shape).copy()
        else:
            raise ConfigError(f"evaluation.baselines: {name!r} is not a gridded baseline (persistence, climatology)")
        results, self.test_window_scores = self.score(pred, cat, dm)
        return results

    @staticmethod
    def test_arrays(dm: Any, inputs: bool = False) -> dict[str, Tensor]:
        """The test split's targets ``y``, last inputs ``x_last`` and ``mask`` (normalised; and every
        input state as ``x``, and its ``x_mask``, with ``inputs``), for baselines."""
        outs: dict[str, list[Tensor]] = {"y": [], "x_last": [], "mask": [], "x": [], "x_mask": []}
        for batch in dm.test_dataloader():
            outs["y"].append(batch["y"].float())
            outs["x_last"].append(batch["x"][:, -1].float())
            if inputs:
                outs["x"].append(batch["x"].float())
                if batch.get("x_mask") is not None:
                    outs["x_mask"].append(batch["x_mask"].float())
            if batch.get("mask") is not None:
                outs["mask"].append(batch["mask"].float())
        return {k: torch.cat(v) for k, v in outs.items() if v}


def score_rollout(
    pred: np.ndarray, outs: dict[str, Tensor], dm: Any, variables: list[str], time_step_hours: float
) -> tuple[dict[str, Any], dict[str, WindowScores]]:
    """WeatherBench-2 scores of normalised ``pred`` ``(N, L, C, H, W)`` against ``outs["y"]``, in physical units.

    Returns the overall means (``rmse``, ``acc``, ``bias``; averaged over variables and leads) plus
    ``by_variable``: ``{var: {"rmse": {lead_h: v}, "acc": ..., "bias": ...}}``; and the same overall
    means as per-initial-time accumulators (:func:`sciadapt.metrics.gridded.window_scores`), for the
    comparison's intervals.
    """
    from sciadapt.metrics import gridded as gm

    truth = outs["y"].numpy()
    mask = outs["mask"].numpy() if "mask" in outs else None
    if dm is not None:
        pred, truth = dm.denormalise(pred), dm.denormalise(truth)
        clim = dm.climatology()
        weights = dm.area_weights
    else:  # unit use without a datamodule: normalised units, flat weights
        clim, weights = None, np.ones(pred.shape[-2])
    leads = [time_step_hours * (k + 1) for k in range(pred.shape[1])]
    per_time = gm.per_time_scores(pred, truth, weights, variables, climatology=clim, mask=mask)  # (N, L, C) each
    tables = gm.time_means(per_time, variables, leads)
    by_var: dict[str, dict[str, dict[Any, float]]] = {v: {m: tables[m][v] for m in tables} for v in variables}
    flat = {m: [x for v in variables for x in by_var[v][m].values()] for m in tables}
    results = {**{m: float(np.mean(xs)) for m, xs in flat.items()}, "by_variable": by_var}
    return results, gm.window_scores(per_time)


def _area_tensor(area_weights: Any) -> Tensor:
    """Area weights rescaled to mean 1: ``(1, 1, 1, H, 1)`` per latitude row, or ``(1, 1, 1, H, W)`` per cell."""
    w = torch.tensor(np.asarray(area_weights, dtype=np.float64), dtype=torch.float32)
    shape = (1, 1, 1, -1, 1) if w.dim() == 1 else (1, 1, 1, *w.shape)
    return (w / w.mean()).reshape(shape)


def _as_list(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values).reshape(-1)]


@TASKS.register("rollout")
def build_rollout(
    backbone: nn.Module,
    head: nn.Module,
    variables: Annotated[list[str] | None, FromData] = None,
    tendency_scale: Annotated[list[float] | None, FromData] = None,
    area_weights: Annotated[list[float] | list[list[float]] | None, FromData] = None,
    n_input: Annotated[int, FromData] = 1,
    variable_weights: dict[str, float] | None = None,
    time_step_hours: Annotated[float, FromData] = 1.0,
) -> RolloutTask:
    """Autoregressive rollout training of a gridded emulator (see :mod:`sciadapt.tasks.rollout`).

    Args:
        backbone: Injected by the runner.
        head: Injected by the runner.
        variables: Follows the data (channel names).
        tendency_scale: Follows the data (``std(Δ)/std`` per channel).
        area_weights: Follows the data (cos-latitude weights per grid row, or ``(H, W)`` cell areas).
        n_input: Follows the data.
        variable_weights: Loss weight per variable (or variable prefix); default 1 each.
        time_step_hours: Follows the data.
    """
    if variables is None or tendency_scale is None or area_weights is None:
        raise ConfigError("task: rollout needs gridded data (variables, statistics, latitudes); use data.name=gridded")
    return RolloutTask(
        backbone,
        head,
        variables=list(variables),
        tendency_scale=_as_list(tendency_scale),
        area_weights=np.asarray(area_weights, dtype=np.float64).tolist(),
        n_input=n_input,
        variable_weights=variable_weights,
        time_step_hours=time_step_hours,
    )
