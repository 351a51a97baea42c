"""Fields every sample carries besides the states: time forcings, static fields, area weights."""

from __future__ import annotations

import numpy as np

FORCING_NAMES = ("cos_local_time", "sin_local_time", "cos_year_progress", "sin_year_progress")
_YEAR_SECONDS = 365.24219 * 86400.0


def time_forcings(times: np.ndarray, lon: np.ndarray, n_lat: int, out: np.ndarray | None = None) -> np.ndarray:
    """Forcings ``(T, 4, H, W)`` float32: cos/sin of local time of day and of the year progress.

    Local time is UTC plus ``lon / 15`` hours, so the first two channels vary along longitude;
    the year progress (fraction of a tropical year since 1970, as GraphCast uses) is uniform.

    Args:
        times: ``datetime64`` timestamps (UTC) of the states.
        lon: Longitudes in degrees, ``(W,)``, or ``(H, W)`` on a projected or curvilinear grid.
        n_lat: ``H``.
        out: Array to write into (default: a new one).
    """
    seconds = times.astype("datetime64[s]").astype(np.int64).astype(np.float64)  # (T,)
    day_frac = (seconds % 86400.0) / 86400.0
    lon_hw = lon[None, :] if lon.ndim == 1 else lon  # (1, W) or (H, W)
    local = 2 * np.pi * (day_frac[:, None, None] + lon_hw[None] / 360.0)  # (T, 1 or H, W)
    year = 2 * np.pi * ((seconds / _YEAR_SECONDS) % 1.0)  # (T,)
    if out is None:
        out = np.empty((len(times), 4, n_lat, lon.shape[-1]), dtype=np.float32)
    out[:, 0] = np.cos(local)
    out[:, 1] = np.sin(local)
    out[:, 2] = np.cos(year)[:, None, None]
    out[:, 3] = np.sin(year)[:, None, None]
    return out


def latitude_area_weights(lat: np.ndarray) -> np.ndarray:
    """``cos(latitude)`` normalised to mean 1, ``(H,)`` float64 (the loss and metric weights)."""
    w = np.cos(np.deg2rad(np.asarray(lat, dtype=np.float64)))
    w = np.clip(w, 0.0, None)
    return w / float(w.mean())
