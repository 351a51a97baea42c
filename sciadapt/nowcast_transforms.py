"""Unit transforms of precipitation fields, with pysteps' definitions (NumPy arrays or torch tensors).

- **dBR** = ``10 log10(R)`` for a rain rate ``R`` (mm/h) at or above a "no rain" threshold (0.1 mm/h
  by default); rates below it become one floor value, ``10 log10(threshold) - 5`` by default (-15
  dBR for 0.1 mm/h), as ``pysteps.utils.transformation.dB_transform``. NaN stays NaN.
- The inverse is ``R = 10^(dBR / 10)``, with rates below ``10^(threshold_db / 10)`` (0.1 mm/h for the
  default -10 dBR) set to 0, as pysteps' inverse transform.
- An accumulation over ``accutime`` minutes (mm, e.g. KNMI's 5-minute depths) is the rate times
  ``accutime / 60``, as ``pysteps.utils.conversion.to_rainrate`` / ``to_raindepth``.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np
import torch

A = TypeVar("A", np.ndarray, torch.Tensor)

#: The "no rain" rate (mm/h) below which a pixel is dry.
RAIN_THRESHOLD = 0.1


def floor_db(threshold: float = RAIN_THRESHOLD) -> float:
    """pysteps' floor (dBR) for rates below ``threshold``: ``10 log10(threshold) - 5``."""
    return 10.0 * math.log10(threshold) - 5.0


def _array(x: Any) -> np.ndarray | torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return np.asarray(x, dtype=np.float64)


def rate_to_db(rate: A, threshold: float = RAIN_THRESHOLD, zerovalue: float | None = None) -> A:
    """Rain rate (mm/h) to dBR: ``10 log10(R)`` where ``R >= threshold``, ``zerovalue`` below it.

    Args:
        rate: Rates of any shape; NaN stays NaN.
        threshold: The "no rain" rate (mm/h).
        zerovalue: dBR of dry pixels; default :func:`floor_db` of ``threshold``.

    Raises:
        ValueError: If ``threshold`` is not positive.
    """
    if not threshold > 0:
        raise ValueError(f"rate_to_db: the no-rain threshold must be a positive rate in mm/h, got {threshold}")
    floor = floor_db(threshold) if zerovalue is None else zerovalue
    r = _array(rate)
    if isinstance(r, torch.Tensor):
        wet = r >= threshold
        db = 10.0 * torch.log10(torch.where(wet, r, torch.ones_like(r)))
        return torch.where(wet, db, torch.where(torch.isnan(r), r, torch.full_like(r, floor)))  # type: ignore[return-value]
    with np.errstate(invalid="ignore", divide="ignore"):
        wet_np = r >= threshold
        db_np = 10.0 * np.log10(np.where(wet_np, r, 1.0))
    out: np.ndarray = np.where(wet_np, db_np, np.where(np.isnan(r), np.nan, floor))
    return out  # type: ignore[return-value]


def db_to_rate(db: A, threshold_db: float = -10.0, zerovalue: float = 0.0) -> A:
    """dBR to rain rate (mm/h): ``10^(dBR / 10)``, and ``zerovalue`` where that is below ``10^(threshold_db / 10)``.

    Args:
        db: dBR of any shape; NaN stays NaN.
        threshold_db: The "no rain" threshold in dBR (-10 dBR = 0.1 mm/h).
        zerovalue: The rate of dry pixels.
    """
    x = _array(db)
    threshold = 10.0 ** (threshold_db / 10.0)
    if isinstance(x, torch.Tensor):
        r = torch.pow(10.0, x / 10.0)
        return torch.where(r < threshold, torch.full_like(r, zerovalue), r)  # type: ignore[return-value]
    r_np = 10.0 ** (x / 10.0)
    with np.errstate(invalid="ignore"):
        out: np.ndarray = np.where(r_np < threshold, zerovalue, r_np)
    return out  # type: ignore[return-value]


def depth_to_rate(depth: A, accutime_minutes: float = 5.0) -> A:
    """An accumulation (mm over ``accutime_minutes``) to a rate (mm/h): ``depth / accutime * 60``."""
    if not accutime_minutes > 0:
        raise ValueError(f"depth_to_rate: the accumulation time must be positive minutes, got {accutime_minutes}")
    return _array(depth) / float(accutime_minutes) * 60.0  # type: ignore[return-value]


def rate_to_depth(rate: A, accutime_minutes: float = 5.0) -> A:
    """A rate (mm/h) to the accumulation over ``accutime_minutes`` (mm): ``rate / 60 * accutime``."""
    if not accutime_minutes > 0:
        raise ValueError(f"rate_to_depth: the accumulation time must be positive minutes, got {accutime_minutes}")
    return _array(rate) / 60.0 * float(accutime_minutes)  # type: ignore[return-value]
