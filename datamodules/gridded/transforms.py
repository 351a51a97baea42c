"""Value transforms applied as a store is read (``data.transform``): precipitation as dBR.

Radar nowcasting works on the logarithm of the rain rate, as pysteps does (``dB_transform``): a rate
``R`` (mm/h) at or above the "no rain" threshold becomes ``10 log10(R)`` dBR, a drier pixel one floor
value (``10 log10(threshold) - 5``, -15 dBR for 0.1 mm/h), and NaN (no data) stays NaN. The
transform is applied where the store is read (the batch reader, the statistics and the climatology
pass), so normalisation, the tendency scale and every "physical" array of the datamodule are in dBR;
:meth:`RainTransform.to_rate` turns them back into mm/h for verification and written forecasts.

The store's units say how to get a rate: ``mm/h`` (and spellings of it) as it is, ``kg m-2 s-1``
times 3600, and an accumulation in ``mm`` times ``60 / accutime`` (the ``accutime`` attribute in
minutes that ``sciadapt data prepare --format`` keeps from pysteps' importers; KNMI's 5-minute depths).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import xarray as xr

from sciadapt.errors import DataError
from sciadapt.nowcast_transforms import db_to_rate, floor_db

_RATE_UNITS = {"mm/h", "mm h-1", "mm hr-1", "mm/hr", "mm h**-1", "mm.h-1", "mm per hour"}
_FLUX_UNITS = {"kg m-2 s-1", "kg m**-2 s**-1", "kg/m2/s", "mm/s", "mm s-1"}


def rate_factor(name: str, units: dict[str, Any], path: str) -> float:
    """The factor turning store values of ``name`` into a rain rate in mm/h.

    Raises:
        DataError: When the units are not a rate, a flux or an accumulation with its time.
    """
    unit = str(units.get("units", "")).strip()
    if unit in _RATE_UNITS:
        return 1.0
    if unit in _FLUX_UNITS:
        return 3600.0
    if unit == "mm" and "accutime" in units:
        return 60.0 / float(units["accutime"])
    found = f"units {unit!r}" if unit else "no units attribute"
    if unit == "mm":
        found += " and no 'accutime' attribute"
    raise DataError(
        f"{path}: data.transform=dbr needs a rain rate (mm/h) or an accumulation (mm) with its "
        f"'accutime' (minutes), but variable {name!r} has {found}. Fix: set the attribute in the store "
        f"(e.g. ds['{name}'].attrs['units'] = 'mm/h'), convert radar files with sciadapt data prepare "
        "--format <importer> (which keeps units and accutime), or leave data.transform unset"
    )


@dataclass(frozen=True)
class RainTransform:
    """Rain rate (from the store's units) to dBR on read, and back to mm/h (picklable).

    Attributes:
        factors: Store variable -> factor to mm/h.
        threshold: The "no rain" rate (mm/h).
    """

    factors: dict[str, float]
    threshold: float

    @property
    def floor(self) -> float:
        """dBR of a dry pixel."""
        return floor_db(self.threshold)

    @property
    def key(self) -> str:
        """What the statistics of transformed data depend on (part of their cache key)."""
        return f"dbr@{self.threshold:g}"

    def apply(self, name: str, block: np.ndarray) -> None:
        """Store values of ``name`` to dBR, in place (``block`` may be any float32 view)."""
        rate = block * np.float32(self.factors[name])
        with np.errstate(invalid="ignore", divide="ignore"):
            wet = rate >= self.threshold
            db = np.float32(10.0) * np.log10(np.where(wet, rate, np.float32(1.0)))
        block[...] = np.where(wet, db, np.where(np.isnan(rate), np.float32(np.nan), np.float32(self.floor)))

    def apply_lazy(self, name: str, da: xr.DataArray) -> xr.DataArray:
        """The same on a lazy (dask-backed) array, for the statistics and climatology passes."""
        rate = da * self.factors[name]
        db = cast(xr.DataArray, 10.0 * np.log10(rate.where(rate >= self.threshold)))
        return db.where(rate.isnull() | (rate >= self.threshold), self.floor)

    def to_rate(self, db: np.ndarray) -> np.ndarray:
        """dBR to mm/h, dry pixels 0 and NaN kept (pysteps' inverse transform)."""
        out: np.ndarray = db_to_rate(np.asarray(db, dtype=np.float64), threshold_db=10.0 * np.log10(self.threshold))
        return out.astype(np.float32)
