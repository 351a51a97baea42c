"""The solar image pipelines end to end from the CLI, on SDO-like FITS series generated here
(tests/data/sdo/make.py: AIA 171/193 and an HMI magnetogram whose active regions rotate):

* ``surya_forecast`` with a tiny random-weight Surya: zero-shot, frozen encoder, LoRA, against persistence;
* ``solaris_new_wavelength`` with a tiny Swin3D and a tiny Surya: pre-trained on AIA 171 and HMI, the
  model gains AIA 193 (whose files cover only the last half of the series: the little data there is),
  and is compared with the same model trained from scratch on that data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("astropy", reason="the sdo datamodule reads FITS with astropy: pip install 'sciadapt[solar]'")

from sciadapt.cli import main  # noqa: E402
from sciadapt.runs import Run  # noqa: E402
from tests.data.sdo import make  # noqa: E402

FAST = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "data=sdo_example"]
# the embedding kernel of each backbone and how to view it with one slice per channel: (D, C, ...)
EMBEDDING = {
    "swin3d_tiny": ("backbone.patch_embed.proj.weight", lambda w, c: w),  # (D, C, pt, p, p)
    "surya_tiny": ("backbone.embedding.patch_embed.proj.weight", lambda w, c: w.view(w.shape[0], c, -1)),  # C*T planes
}


def _summary(root: Path, pipeline: str) -> tuple[Path, dict[str, Any]]:
    (path,) = root.glob(f"{pipeline}/*/summary.json")
    return path.parent, json.loads(path.read_text())


def _rows(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["model"]: r for r in summary["evaluation"]["rows"]}


def _state(run: Path, stage: str) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(run / "checkpoints" / stage / "final.ckpt", weights_only=True)[
        "state_dict"
    ]
    return state


def test_surya_forecast_against_persistence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make.write_series(tmp_path / "sdo", n_frames=60, size=32, seed=0)
    metrics = ["rmse", "rmse/aia171", "rmse/hmi", "rmse/aia193"]
    code = main(
        [
            "fit",
            "surya_forecast",
            *FAST,
            "backbone=surya_tiny",
            f"data.path={tmp_path / 'sdo'}",
            f"run_dir={tmp_path / 'runs'}",
            "stages.frozen_encoder.max_epochs=2",
            "stages.lora.max_epochs=2",
            f"evaluation.metrics=[{','.join(metrics)}]",
        ]
    )
    assert code == 0
    run, summary = _summary(tmp_path / "runs", "surya_forecast")
    rows = _rows(summary)
    assert list(rows) == ["persistence", "Surya-1.0 zero-shot", "Surya frozen + decoder", "Surya + LoRA + decoder"]
    for row in rows.values():
        assert all(math.isfinite(row[m]) for m in metrics), row
        assert row["rmse"] == pytest.approx((row["rmse/aia171"] + row["rmse/aia193"] + row["rmse/hmi"]) / 3)
    for name in list(rows)[1:]:  # every stage against persistence, on the same test images
        assert set(rows[name]["intervals"]) == set(metrics)
    assert summary["evaluation"]["interval"]["reference"] == "persistence"
    assert summary["evaluation"]["interval"]["unit"] == "initial times"
    # the frozen stage moved the decoder only; LoRA left an adapter beside the weights
    zero, frozen = _state(run, "zero_shot"), _state(run, "frozen_encoder")
    for key, value in zero.items():
        same = torch.equal(frozen[key], value)
        assert same != key.startswith("backbone.unembed."), key
    assert (run / "adapters" / "lora" / "adapter_config.json").is_file()
    out = capsys.readouterr().out
    assert "surya_forecast" in out and "persistence" in out and "RMSE/AIA171" in out


def _sdo_with_a_new_wavelength(folder: Path) -> Path:
    """AIA 171 and HMI for 96 hours; AIA 193 (the new wavelength) only for the last 48."""
    make.write_series(folder, n_frames=96, size=32, seed=0, channels=("aia171", "hmi"))
    make.write_series(folder, n_frames=96, size=32, seed=0, channels=("aia193",), skip={"aia193": range(48)})
    return folder


@pytest.mark.parametrize("backbone", ["swin3d_tiny", "surya_tiny"])
def test_a_pretrained_forecaster_gains_a_wavelength_and_is_compared_with_scratch(tmp_path: Path, backbone: str) -> None:
    data = _sdo_with_a_new_wavelength(tmp_path / "sdo")
    metrics = ["rmse", "rmse/aia193", "rmse/aia171", "rmse/hmi"]
    code = main(
        [
            "fit",
            "solaris_new_wavelength",
            *FAST,
            f"backbone={backbone}",
            "backbone.head=forecast",
            f"data.path={data}",
            f"run_dir={tmp_path / 'runs'}",
            "stages.pretrain.data.channels={aia171: aia_171_*.fits, hmi: hmi_m_*.fits}",
            "stages.add_channel.new_channels.names=[aia193]",
            "stages.add_channel.new_channels.init=copy:aia171",
            "stages.pretrain.max_epochs=10",
            "stages.adapted.max_epochs=3",
            "stages.scratch.max_epochs=3",
            "stages.*.optim.lr=0.002",
            f"evaluation.metrics=[{','.join(metrics)}]",
        ]
    )
    assert code == 0
    run, summary = _summary(tmp_path / "runs", "solaris_new_wavelength")
    rows = _rows(summary)
    untrained, adapted, scratch = (
        "pretrained + new channel, untrained",
        "pretrained + new channel, fine-tuned",
        "scratch on the new-channel data",
    )
    assert list(rows) == ["persistence", untrained, adapted, scratch]
    for name in (untrained, adapted, scratch):
        assert all(math.isfinite(rows[name][m]) for m in metrics), rows[name]
        assert set(rows[name]["intervals"]) == set(metrics)
    # the comparison is on the frames that hold the new wavelength: the last half of the series
    assert "sdo test split" in summary["evaluation"]["data"]
    # pre-trained on two channels; the stage appends aia193 as a copy of aia171, the rest bit for bit
    key, per_channel = EMBEDDING[backbone]
    pre, grown = _state(run, "pretrain")[key], _state(run, "add_channel")[key]
    pre, grown = per_channel(pre, 2), per_channel(grown, 3)
    assert torch.equal(grown[:, :2], pre) and torch.equal(grown[:, 2], pre[:, 0])
    assert _state(run, "scratch")[key].shape == _state(run, "adapted")[key].shape
    # the finished run reopens with the grown model, its channels named as the data names them
    opened = Run.open(run)
    dm = opened.datamodule("adapted")
    dm.setup("fit")
    task = opened.task("adapted", dm.facts())
    assert task.backbone.channel_names == ["aia171", "hmi", "aia193"]
    # what pre-training on the other channels is worth with little data of the new one
    assert rows[adapted]["rmse"] < rows[scratch]["rmse"]
    if backbone == "surya_tiny":  # Surya forecasts the image itself (no persistence inside): a clear gap
        assert rows[adapted]["rmse/aia193"] < rows[scratch]["rmse/aia193"]


def test_predict_writes_the_next_frame_in_the_data_units(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``sciadapt predict`` of a Surya run: FITS (one HDU per channel) or netCDF in DN/s and gauss, a PNG per
    channel, from the latest inputs or ``--init``; a time without inputs names the range there is."""
    import numpy as np
    import xarray as xr
    from astropy.io import fits

    files = make.write_series(tmp_path / "sdo", n_frames=20, size=32, seed=0)
    stages = [f"stages.{s}.max_epochs=1" for s in ("frozen_encoder", "lora")]
    fit = ["fit", "surya_forecast", *FAST, "backbone=surya_tiny", f"data.path={tmp_path / 'sdo'}", *stages]
    assert main([*fit, f"run_dir={tmp_path / 'runs'}", "evaluation.baselines=[]"]) == 0
    (run,) = (tmp_path / "runs" / "surya_forecast").iterdir()
    out = tmp_path / "next.fits"
    assert main(["predict", "--run", str(run), "--out", str(out)]) == 0
    with fits.open(out) as hdul:
        assert [h.name for h in hdul[1:]] == ["AIA171", "HMI", "AIA193"]
        first = hdul["AIA171"].header
        assert first["DATE-OBS"].startswith("2011-02-15T20:00")  # the 20th hour: after the last frame (19:00)
        assert first["INITTIME"].startswith("2011-02-15T19:00")
        assert (first["BUNIT"], first["WAVELNTH"], first["CTYPE1"]) == ("DN/s", 171.0, "HPLN-TAN")
        assert hdul["HMI"].header["BUNIT"] == "Gauss"  # HMI as stored (no exposure)
        for hdu in hdul[1:]:
            image = np.asarray(hdu.data)
            assert image.shape == (32, 32) and np.isfinite(image).any() and np.isnan(image).any()  # off-disk NaN
    for name in ("aia171", "hmi", "aia193"):
        assert (tmp_path / f"next_{name}.png").stat().st_size > 0
    # the inverse of the run's scaling: the last input comes back as the file's DN / EXPTIME on the disk
    r = Run.open(run)
    dm = r.datamodule(-1)
    dm.load_scaler_state(r.scaler())
    inputs = dm.forecast_inputs(int(np.datetime64("2011-02-15T19:00", "ms").astype(np.int64)))
    raw = fits.getdata(files["aia171"][-1]) / fits.getheader(files["aia171"][-1])["EXPTIME"]
    on_disk = np.isfinite(inputs["last"][0])
    np.testing.assert_allclose(inputs["last"][0][on_disk], raw[on_disk], rtol=1e-4)
    assert inputs["truth"] is None  # the future: no observed frame yet

    nc = tmp_path / "mid.nc"
    assert main(["predict", "--run", str(run), "--init", "2011-02-15T10:00", "--out", str(nc)]) == 0
    with xr.open_dataset(nc, engine="h5netcdf") as ds:
        assert set(ds.data_vars) == {"aia171", "hmi", "aia193"} and ds["aia171"].attrs["units"] == "DN/s"
        assert ds.attrs["valid_time"].startswith("2011-02-15T11:00")
    capsys.readouterr()
    assert main(["predict", "--run", str(run), "--init", "2011-03-01T00:00", "--out", str(nc)]) == 2
    text = " ".join(capsys.readouterr().err.split())
    assert "2011-02-15T01:00 .. 2011-02-15T19:00 UTC" in text, text
