"""Precipitation nowcasting: the rollout task on radar rain rates, verified the way the field does it.

The state is one precipitation channel read as dBR (``data.transform=dbr``; see
:mod:`sciadapt.datamodules.gridded.transforms`), normalised; one step predicts the next 5-minute
(or whatever the store's spacing is) frame from the last ``n_input`` ones and a rollout feeds
predictions back, as :class:`~sciadapt.tasks.rollout.RolloutTask` does.

**Loss.** A plain MSE, even in dBR, is minimised by the conditional mean: the forecast blurs and its
heavy rain fades with lead time. ``loss="balanced"`` weighs each pixel's squared error by the
intensity of the observed rain, with the weights of Shi et al. (2017, "Deep learning for
precipitation nowcasting: a benchmark and a new model", B-MSE): 1 below 2 mm/h, 2 from 2, 5 from
5, 10 from 10 and 30 from 30 mm/h, so missing a convective cell costs what it costs a forecaster.
``loss="mse"`` keeps the plain one (the comparison is in ``benchmarks/nowcast_knmi.py``).

**Probability matching.** A network trained on any pointwise loss forecasts the conditional mean, whose
rain fades and spreads with lead time; at evaluation and prediction each predicted frame's values are
therefore rank-matched to the last observed frame's (``match_distribution``, on by default): the
forecast keeps its own pattern and takes the observed intensity distribution, as pysteps' S-PROG and
STEPS nowcasts do (``pysteps.postprocessing.probmatching``, "cdf"). Training is not matched (a sort
passes no gradient).

**Verification** (:mod:`sciadapt.metrics.nowcast`): forecasts and truth back in mm/h, scored on the
pixels the radar observed at each valid time: CSI/POD/FAR at 0.1, 1 and 5 mm/h, FSS at 1 mm/h over
1-32 km neighbourhoods, and MAE, per lead (``csi@1/10min``) and pooled over leads (``csi@1``).

**Baselines:** ``persistence`` (the last observed frame at every lead) and ``extrapolation``,
pysteps' advection nowcast (:func:`extrapolation_nowcast`: Lucas-Kanade optical flow of the last
three input frames in dBR, semi-Lagrangian advection of the last one; ``pip install
'sciadapt[nowcast]'``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from sciadapt.errors import ConfigError
from sciadapt.metrics import nowcast as nm
from sciadapt.metrics.bootstrap import WindowScores
from sciadapt.nowcast_transforms import RAIN_THRESHOLD, db_to_rate, rate_to_db
from sciadapt.registry import TASKS
from sciadapt.spec import FromData, Gt
from sciadapt.tasks.rollout import RolloutTask, _as_list
from sciadapt.types import Batch

log = logging.getLogger(__name__)

#: B-MSE intensity classes (mm/h) and weights (Shi et al. 2017)
BALANCE_RATES = (2.0, 5.0, 10.0, 30.0)
BALANCE_WEIGHTS = (1.0, 2.0, 5.0, 10.0, 30.0)


def extrapolation_nowcast(
    rates: np.ndarray, n_leads: int, *, threshold: float = RAIN_THRESHOLD, n_motion_frames: int = 3
) -> np.ndarray:
    """pysteps' extrapolation nowcast: LK optical flow of the last frames in dBR, semi-Lagrangian advection.

    Args:
        rates: ``(T >= 2, H, W)`` past rain rates (mm/h), oldest first, one time step apart; NaN
            where the radar saw nothing.
        n_leads: Steps to forecast (each one time step of ``rates``).
        threshold: The "no rain" rate of the dBR transform (pysteps' example: 0.1 mm/h).
        n_motion_frames: Frames the optical flow uses (pysteps' example: 3).

    Returns:
        ``(n_leads, H, W)`` rain rates (mm/h); NaN where advection brought nothing in from outside the grid.

    Raises:
        ConfigError: If pysteps (or OpenCV, for the flow) is not installed.
    """
    try:
        import cv2  # noqa: F401  # pysteps' Lucas-Kanade flow runs on OpenCV
        from pysteps import motion, nowcasts
    except ImportError as err:
        raise ConfigError(
            f"evaluation.baselines: extrapolation is pysteps' advection nowcast; {err.name or 'pysteps'} is not installed. "
            "Fix: pip install 'sciadapt[nowcast]', or drop the baseline"
        ) from err
    r = np.asarray(rates, dtype=np.float64)
    if r.ndim != 3 or r.shape[0] < 2:
        raise ConfigError(f"extrapolation: needs at least 2 past frames (data.n_input >= 2), got {r.shape}")
    db = rate_to_db(r[-n_motion_frames:], threshold=threshold)  # floor 10 log10(thr) - 5 dBR for dry pixels
    floor = float(np.nanmin(db)) if np.isfinite(db).any() else 10.0 * np.log10(threshold) - 5.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        velocity = motion.get_method("LK")(db)  # (2, H, W) pixels per frame; LK fills NaN itself
        db[~np.isfinite(db)] = floor  # outside the radar's range: no rain, as pysteps' example does
        fc = nowcasts.get_method("extrapolation")(db[-1], velocity, n_leads)  # (L, H, W) dBR
    out: np.ndarray = db_to_rate(fc, threshold_db=10.0 * np.log10(threshold))
    return out


def _edges(state_mean: float, state_std: float) -> Tensor:
    """The B-MSE class edges as normalised dBR values."""
    edges = [(10.0 * np.log10(r) - float(state_mean)) / float(state_std) for r in BALANCE_RATES]
    return torch.tensor(edges, dtype=torch.float32)


def _bounds(state_mean: float, state_std: float, threshold: float, max_rate: float) -> tuple[float, float]:
    """Normalised dBR of a dry pixel (the transform's floor) and of ``max_rate``."""
    floor = 10.0 * np.log10(threshold) - 5.0
    top = 10.0 * np.log10(max_rate)
    return (floor - float(state_mean)) / float(state_std), (top - float(state_mean)) / float(state_std)


class NowcastTask(RolloutTask):
    """Radar nowcasting: rollout training in dBR, verification in mm/h (see the module docstring).

    Args:
        backbone / head / variables / tendency_scale / area_weights / n_input / time_step_hours:
            As :class:`RolloutTask` (follow the data).
        state_mean / state_std: The data's normalisation of the precipitation channel (dBR).
        grid_spacing_km: Pixel size, for the FSS neighbourhoods in km.
        rain_threshold: The "no rain" rate of the data's dBR transform (mm/h).
        loss: ``"balanced"`` (intensity-weighted MSE) or ``"mse"``.
        thresholds: CSI/POD/FAR thresholds (mm/h).
        fss_threshold: FSS threshold (mm/h).
        fss_scales_km: FSS neighbourhood sides (km).
        max_rate: The highest rain rate a step may forecast (mm/h); each predicted state is kept between
            the dBR of a dry pixel and this rate's, so a rollout longer than those trained on cannot run
            away at a few pixels (the KNMI benchmark's 60-min MAE doubled without it).
        match_distribution: At evaluation and prediction, rank-match every predicted frame to the
            intensity distribution of the last observed one (probability matching).
    """

    BASELINES: ClassVar[tuple[str, ...]] = ("persistence", "extrapolation")

    db_edges: Tensor
    db_weights: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        variables: list[str],
        tendency_scale: list[float],
        area_weights: list[float] | list[list[float]],
        state_mean: float,
        state_std: float,
        grid_spacing_km: float,
        n_input: int = 4,
        time_step_hours: float = 5 / 60,
        rain_threshold: float = RAIN_THRESHOLD,
        loss: Literal["balanced", "mse"] = "balanced",
        thresholds: Sequence[float] = nm.THRESHOLDS,
        fss_threshold: float = 1.0,
        fss_scales_km: Sequence[float] = nm.FSS_SCALES_KM,
        max_rate: float = 250.0,
        match_distribution: bool = True,
    ) -> None:
        super().__init__(backbone, head, variables, tendency_scale, area_weights, n_input, None, time_step_hours)
        self.loss_kind = loss
        self.rain_threshold = float(rain_threshold)
        self.grid_spacing_km = float(grid_spacing_km)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.fss_threshold = float(fss_threshold)
        self.fss_scales_km = tuple(float(k) for k in fss_scales_km)
        self.max_rate = float(max_rate)
        self.match_distribution = bool(match_distribution)
        self._reference: Tensor | None = None  # sorted values of the last observed frame, per sample
        self._bounds = _bounds(state_mean, state_std, self.rain_threshold, self.max_rate)
        # the class edges as normalised dBR values of the one channel: they follow the data's
        # normalisation (follow_data), so they are not saved with the model
        self.register_buffer("db_edges", _edges(state_mean, state_std), persistent=False)
        self.register_buffer("db_weights", torch.tensor(BALANCE_WEIGHTS, dtype=torch.float32), persistent=False)

    def follow_data(self, facts: Mapping[str, Any]) -> None:
        super().follow_data(facts)
        if facts.get("state_mean") is not None and facts.get("state_std") is not None:
            mean, std = facts["state_mean"][0], facts["state_std"][0]
            self.db_edges = _edges(mean, std).to(self.db_edges.device)
            self._bounds = _bounds(mean, std, self.rain_threshold, self.max_rate)
        if facts.get("grid_spacing_km") is not None:
            self.grid_spacing_km = float(facts["grid_spacing_km"])

    def lead_minutes(self, n_lead: int) -> list[float]:
        """Lead times (minutes) of ``n_lead`` steps."""
        return [round(60.0 * self.time_step_hours * (k + 1), 6) for k in range(n_lead)]

    def step(self, state: Tensor, forcings: Tensor | None, static: Tensor | None) -> Tensor:
        """The next normalised dBR frame, kept between a dry pixel's value and ``max_rate``'s (and
        probability-matched to the last observed frame during a matched rollout)."""
        lo, hi = self._bounds
        out = super().step(state, forcings, static).clamp(lo, hi)
        if self._reference is None:
            return out
        b, c, h, w = out.shape
        flat = out.reshape(b, -1)  # (B, C*H*W)
        order = flat.argsort(dim=1)
        matched = torch.empty_like(flat).scatter_(1, order, self._reference)  # the k-th smallest gets the k-th value
        return matched.reshape(b, c, h, w)

    def rollout(self, batch: Batch | dict[str, Any], steps: int) -> Tensor:
        if self.training or not self.match_distribution:
            return super().rollout(batch, steps)
        self._reference = batch["x"][:, -1].reshape(len(batch["x"]), -1).sort(dim=1).values  # (B, C*H*W)
        try:
            return super().rollout(batch, steps)
        finally:
            self._reference = None

    # -- the loss -------------------------------------------------------------------------
    def rollout_loss(self, pred: Tensor, y: Tensor, mask: Tensor | None, area: Tensor) -> Tensor:
        if self.loss_kind == "mse":
            return self.weighted_mse(pred, y, mask, area)
        w = self.db_weights[
            torch.bucketize(y.contiguous(), self.db_edges, right=True)
        ]  # (B, L, 1, H, W) by observed intensity
        w = w * area if mask is None else w * area * mask
        return ((pred - y) ** 2 * w).sum() / w.sum().clamp_min(1e-12)

    # -- verification ---------------------------------------------------------------------
    def _rates(self, normalised: np.ndarray, dm: Any) -> np.ndarray:
        """Normalised dBR ``(..., 1, H, W)`` to mm/h ``(..., H, W)``."""
        if dm is None:
            raise ConfigError("nowcast verification needs the datamodule (its dBR statistics)")
        out: np.ndarray = np.asarray(dm.to_output_units(dm.denormalise(normalised)))[..., 0, :, :]
        return out

    def score(
        self, pred: np.ndarray, outs: dict[str, Tensor], dm: Any
    ) -> tuple[dict[str, Any], dict[str, WindowScores]]:
        forecast = self._rates(pred, dm)  # (N, L, H, W)
        truth = self._rates(outs["y"].numpy(), dm)
        observed = outs["mask"].numpy()[:, :, 0] > 0 if "mask" in outs else np.isfinite(truth)
        forecast = np.where(np.isfinite(forecast), forecast, 0.0)  # no value forecast = no rain forecast
        sums = nm.nowcast_sums(
            forecast,
            np.where(observed, truth, np.nan),
            self.grid_spacing_km,
            thresholds=self.thresholds,
            fss_threshold=self.fss_threshold,
            scales_km=self.fss_scales_km,
            mask=observed,
        )
        leads = self.lead_minutes(forecast.shape[1])
        windows = nm.nowcast_window_scores(sums, leads)
        table = nm.nowcast_table(sums, leads)
        results: dict[str, Any] = {name: ws.value() for name, ws in windows.items()}
        results["by_lead"] = {m: {str(k): v for k, v in t.items()} for m, t in table.items()}
        return results, windows

    def baseline(self, name: str, dm: Any) -> dict[str, Any]:
        if name != "extrapolation":
            return super().baseline(name, dm)
        cat = self.test_arrays(dm, inputs=True)
        x, y = cat["x"].numpy(), cat["y"].numpy()  # (N, T, 1, H, W) normalised
        rates_in = self._rates(x, dm)  # (N, T, H, W)
        if "x_mask" in cat:
            rates_in = np.where(cat["x_mask"].numpy()[:, :, 0] > 0, rates_in, np.nan)
        std, mean = np.asarray(dm.stats["std"]), np.asarray(dm.stats["mean"])
        preds = np.empty_like(y)
        for i in range(len(x)):
            fc = extrapolation_nowcast(rates_in[i], y.shape[1], threshold=self.rain_threshold)  # (L, H, W) mm/h
            db = rate_to_db(np.where(np.isfinite(fc), fc, 0.0), threshold=self.rain_threshold)
            preds[i, :, 0] = (db - mean[0]) / std[0]
        results, self.test_window_scores = self.score(preds, cat, dm)
        return results


@TASKS.register("nowcast")
def build_nowcast(
    backbone: nn.Module,
    head: nn.Module,
    variables: Annotated[list[str] | None, FromData] = None,
    tendency_scale: Annotated[list[float] | None, FromData] = None,
    area_weights: Annotated[list[float] | list[list[float]] | None, FromData] = None,
    state_mean: Annotated[list[float] | None, FromData] = None,
    state_std: Annotated[list[float] | None, FromData] = None,
    grid_spacing_km: Annotated[float | None, FromData] = None,
    value_transform: Annotated[str, FromData] = "none",
    n_input: Annotated[int, FromData] = 4,
    time_step_hours: Annotated[float, FromData] = 5 / 60,
    loss: Literal["balanced", "mse"] = "balanced",
    thresholds: list[float] | None = None,
    fss_threshold: float = 1.0,
    fss_scales_km: list[float] | None = None,
    max_rate: Annotated[float, Gt(0)] = 250.0,
    match_distribution: bool = True,
) -> NowcastTask:
    """Precipitation nowcasting from radar frames (see :mod:`sciadapt.tasks.nowcast`).

    Args:
        backbone: Injected by the runner.
        head: Injected by the runner.
        variables: Follows the data: one precipitation variable.
        tendency_scale: Follows the data.
        area_weights: Follows the data.
        state_mean: Follows the data (the dBR normalisation).
        state_std: Follows the data.
        grid_spacing_km: Follows the data (pixel size, for FSS scales in km).
        value_transform: Follows the data: must be ``dbr@<threshold>`` (``data.transform=dbr``).
        n_input: Follows the data (past frames per step; the extrapolation baseline's flow uses the last 3).
        time_step_hours: Follows the data (the frame spacing).
        loss: ``balanced`` (intensity-weighted MSE, Shi et al. 2017) or ``mse``.
        thresholds: CSI/POD/FAR thresholds in mm/h; default 0.1, 1 and 5.
        fss_threshold: FSS threshold in mm/h.
        fss_scales_km: FSS neighbourhood sides in km; default 1, 2, 4, 8, 16, 32.
        max_rate: The highest rate a step may forecast (mm/h); states are clamped to it in dBR.
        match_distribution: Probability-match each forecast frame to the last observed one at
            evaluation and prediction (pysteps' "cdf" matching, as S-PROG); false: the raw network output.
    """
    if variables is None or tendency_scale is None or area_weights is None or state_mean is None:
        raise ConfigError("task: nowcast needs gridded radar data; use data.name=gridded with data.transform=dbr")
    if len(variables) != 1:
        raise ConfigError(
            f"task: nowcast scores one precipitation channel, but the data gives {len(variables)}: "
            f"{', '.join(variables)}. Fix: data.variables=[<the rain rate or accumulation>]"
        )
    if not value_transform.startswith("dbr@"):
        raise ConfigError(
            "task: nowcast works on rain in dBR, but the data is read as stored. Fix: data.transform=dbr "
            "(and data.rain_threshold, default 0.1 mm/h)"
        )
    assert state_std is not None and grid_spacing_km is not None
    return NowcastTask(
        backbone,
        head,
        variables=list(variables),
        tendency_scale=_as_list(tendency_scale),
        area_weights=np.asarray(area_weights, dtype=np.float64).tolist(),
        state_mean=float(state_mean[0]),
        state_std=float(state_std[0]),
        grid_spacing_km=float(grid_spacing_km),
        n_input=n_input,
        time_step_hours=time_step_hours,
        rain_threshold=float(value_transform.split("@", 1)[1]),
        loss=loss,
        thresholds=tuple(thresholds) if thresholds is not None else nm.THRESHOLDS,
        fss_threshold=fss_threshold,
        fss_scales_km=tuple(fss_scales_km) if fss_scales_km is not None else nm.FSS_SCALES_KM,
        max_rate=max_rate,
        match_distribution=match_distribution,
    )
