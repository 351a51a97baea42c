"""The bundled `nowcast_radar` pipeline end to end from the CLI on generated radar archives: KNMI-like
HDF5 frames and a radar it has never seen (ODIM_H5, another projection, pixel size and unit), each
through `data prepare --format`; pretrained on one radar and adapted to the other; `predict` writes the
nowcast in mm/h on the radar's projected grid."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from sciadapt.cli import main
from tests.data.gridded.make_projected import write_knmi_frames

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("pysteps") is None or importlib.util.find_spec("cv2") is None,
        reason="pysteps or OpenCV not installed (sciadapt[nowcast])",
    ),
    pytest.mark.skipif(importlib.util.find_spec("h5py") is None, reason="h5py not installed"),
]

# the shipped pipeline, made small: the tiny U-Net, small windows, one or two epochs per stage
SMALL = [
    "backbone.name=unet_grid_tiny",
    "backbone.base_channels=8",
    "backbone.depth=2",
    "data.patch=[16,16]",
    "stages.pretrain.max_epochs=2",
    "stages.lora.max_epochs=1",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.data.radar import make

    root = tmp_path_factory.mktemp("radar")
    write_knmi_frames(root / "knmi", n_time=40, ny=24, nx=20)
    make.write_archive(root / "odim", frames=40, seed=1)
    out = {}
    for name, fmt in (("knmi", "knmi_hdf5"), ("odim", "odim_hdf5")):
        store = root / f"{name}.zarr"
        rc = main(["data", "prepare", "--format", fmt, str(root / name / "*.h5"), str(store), "--no-progress"])
        assert rc == 0
        out[name] = store
    return out


def _fit(tmp_path: Path, *overrides: str) -> Path:
    rc = main(["fit", "nowcast_radar", f"run_dir={tmp_path / 'runs'}", *SMALL, *overrides])
    assert rc == 0
    (run,) = sorted((tmp_path / "runs" / "nowcast_radar").glob("*"))
    return run


def _rows(run: Path) -> dict[str, Any]:
    summary = json.loads((run / "summary.json").read_text())
    return {r.get("stage", r["model"]): r for r in summary["evaluation"]["rows"]}


def test_nowcast_radar_runs_and_predicts_on_the_projected_grid(tmp_path: Path, stores: dict[str, Path]) -> None:
    run = _fit(tmp_path, f"data.path={stores['knmi']}")
    rows = _rows(run)
    assert {"persistence", "extrapolation", "pretrain", "lora"} <= set(rows)
    for row in rows.values():
        for m in ("csi@1/10min", "csi@1/60min", "fss@1/8km/30min", "mae", "csi@5", "pod@0.1", "far@1"):
            assert 0.0 <= row[m] or m == "mae", (row["model"], m)
        assert set(row["by_lead"]["csi@1"]) == {f"{5.0 * (k + 1)}" for k in range(12)} | {"all"}
    # the adapter stage trained LoRA with the encoder frozen
    assert (run / "adapters" / "lora" / "adapter_model.safetensors").exists()
    # the nowcast in mm/h on the radar's grid, with its projection, and the three-lead PNG
    stamp = str(xr.open_zarr(stores["knmi"]).time.values[-8])[:16]
    out = tmp_path / "nowcast.nc"
    assert main(["predict", "--run", str(run), "--init", stamp, "--lead", "6", "--out", str(out)]) == 0
    ds = xr.open_dataset(out)
    var = ds["precip_accum"]
    assert var.attrs["units"] == "mm/h" and var.attrs["grid_mapping"] in ds
    assert var.shape[-2:] == (24, 20) and ds.sizes["lead_time"] == 6
    assert np.nanmin(var.values) >= 0.0
    assert "+proj=stere" in ds[var.attrs["grid_mapping"]].attrs["proj4"]
    assert list(tmp_path.glob("nowcast*.png"))


def test_pretrained_on_one_radar_adapted_to_another(tmp_path: Path, stores: dict[str, Path]) -> None:
    # KNMI: 5-minute depths in mm on a 1 km stereographic grid; the ODIM radar: rates in mm/h on 2 km LAEA
    run = _fit(tmp_path, f"data.path={stores['odim']}", f"stages.pretrain.data.path={stores['knmi']}")
    rows = _rows(run)
    assert "odim.zarr" in json.loads((run / "summary.json").read_text())["evaluation"]["data"]
    assert np.isfinite(rows["lora"]["csi@1"]) and np.isfinite(rows["extrapolation"]["fss@1/8km"])
