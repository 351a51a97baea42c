"""How far below 24-hour persistence can the UK task go? A direct, per-lead ridge regression.

    python benchmarks/gridded_era5_uk_linear.py --data ../shared/data/gridded/era5-2mt-2019-03-uk.nc

For each lead L, one linear model per lead (no rollout, so no accumulated error) predicts the
change T(t+L) - T(t) at every grid point from that point's last 24 hourly values, the domain
mean of those hours and the hour of day, fitted on the same train split as the pipeline (before
2019-03-20) and scored on the same 216 test initial times with the same cos-latitude-weighted RMSE.
It is a reference for what three weeks of 2 m temperature alone allow at each lead, not a model
sciadapt ships.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import xarray as xr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/gridded/era5-2mt-2019-03-uk.nc")
    ap.add_argument("--leads", type=int, nargs="*", default=[1, 3, 6, 12, 18, 21, 22, 23, 24])
    args = ap.parse_args()
    ds = xr.open_dataset(args.data)
    temp = ds.t2m.values.astype(np.float64)  # (time, lat, lon), north to south
    times = pd.DatetimeIndex(ds.time.values)
    w = np.cos(np.deg2rad(ds.latitude.values))
    weights = np.broadcast_to((w / w.mean())[:, None], temp.shape[1:])
    train_end = int(np.searchsorted(times, pd.Timestamp("2019-03-20")))
    test_start = int(np.searchsorted(times, pd.Timestamp("2019-03-22")))
    inits = np.arange(test_start, len(times) - 24)  # the pipeline's 216 test windows
    hist = 24
    n_pts = temp[0].size

    def features(t: int) -> np.ndarray:
        past = temp[t - hist + 1 : t + 1].reshape(hist, -1)
        hour = 2 * np.pi * times[t].hour / 24
        cols = [past, np.repeat(past.mean(axis=1)[:, None], n_pts, 1)]
        cols += [np.full((1, n_pts), np.sin(hour)), np.full((1, n_pts), np.cos(hour)), np.ones((1, n_pts))]
        return np.concatenate(cols).T

    print(f"RMSE of t2m (K), {len(inits)} test initial times")
    print(f"{'lead h':>6} {'direct linear':>14} {'persistence':>12}")
    for lead in args.leads:
        train = range(hist - 1, train_end - lead)
        x = np.concatenate([features(t) for t in train])
        y = np.concatenate([(temp[t + lead] - temp[t]).ravel() for t in train])
        beta = np.linalg.solve(x.T @ x + 0.1 * len(x) * np.eye(x.shape[1]), x.T @ y)
        model = [
            (((temp[t] + (features(t) @ beta).reshape(temp.shape[1:])) - temp[t + lead]) ** 2 * weights).mean()
            for t in inits
        ]
        persist = [((temp[t] - temp[t + lead]) ** 2 * weights).mean() for t in inits]
        print(f"{lead:6d} {np.sqrt(np.mean(model)):14.3f} {np.sqrt(np.mean(persist)):12.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
