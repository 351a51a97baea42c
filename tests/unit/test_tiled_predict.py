"""Out-of-core tiled scene prediction: exact blending, georeferencing, COG output, bounded memory."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from sciadapt.datamodules import raster as rm
from sciadapt.errors import ConfigError, DataError, ShapeError
from sciadapt.predict.tiles import edge_ramp, is_cog, overview_count, predict_scene, tile_starts

_spec = importlib.util.spec_from_file_location("raster_make", Path(__file__).parents[1] / "data/raster/make.py")
assert _spec is not None and _spec.loader is not None
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)

WEIGHTS = torch.tensor([[1.0, -1.0, 0.5, 0.0], [0.2, 0.3, -0.7, 1.0], [0.0, 0.0, 1.0, -1.0]])
MEAN, STD = [5000.0] * 4, [2000.0] * 4


def pixelwise(x: torch.Tensor) -> torch.Tensor:
    """A per-pixel linear model: (B, 4, 1, H, W) -> (B, 3, H, W)."""
    return torch.einsum("oc,bchw->bohw", WEIGHTS, x[:, :, 0])


def whole_scene(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The same model applied to the whole scene at once, and the valid-pixel mask."""
    with rasterio.open(path) as src:
        x = src.read().astype(np.float32)
    ok = ~(x == 0).any(axis=0)
    xn = (x - np.float32(5000)) / np.float32(2000)
    xn[:, ~ok] = 0
    return np.einsum("oc,chw->ohw", WEIGHTS.numpy(), xn), ok


@pytest.fixture(autouse=True)
def _close_files():
    yield
    rm.close_rasters()


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiles")
    return make.write_scene(folder / "scene.tif", height=2048, width=2048, nodata_box=(100, 1000, 40, 300))


def test_blend_weights() -> None:
    for blend in ("cosine", "linear"):
        a = edge_ramp(64, 16, blend, start=False, end=True)
        b = edge_ramp(64, 16, blend, start=True, end=False)
        np.testing.assert_allclose(a[48:] + b[:16], 1.0, atol=1e-6)  # a partition of unity over the overlap
        assert (a > 0).all() and a[:48].min() == 1.0
    assert tile_starts(2048, 256, 224) == list(range(0, 1793, 224))
    assert tile_starts(2000, 256, 224) == [*range(0, 1745, 224), 1744]
    assert tile_starts(100, 256, 224) == [0]


def test_tiled_equals_whole_scene_and_writes_a_cog(big_scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred.tif"
    rep = predict_scene(
        pixelwise, str(big_scene), out, chip_size=256, overlap=32, n_outputs=3, task="regression", mean=MEAN, std=STD
    )
    ref, ok = whole_scene(big_scene)
    with rasterio.open(out) as dst, rasterio.open(big_scene) as src:
        pred = dst.read()
        assert dst.crs == src.crs and dst.transform == src.transform
        assert dst.dtypes == ("float32",) * 3 and (dst.height, dst.width) == (2048, 2048)
        assert dst.profile["tiled"] and dst.profile["blockxsize"] == 512
    np.testing.assert_allclose(pred[:, ok], ref[:, ok], atol=2e-6)  # every valid pixel, seams included
    assert np.isnan(pred[:, ~ok]).all()
    assert rep["cog"] and is_cog(out) and overview_count(out) >= 2
    assert rep["tiles"] == 81 and not list(tmp_path.glob(".*"))  # temporary files removed


def test_segmentation_class_map_scores_and_nodata(big_scene: Path, tmp_path: Path) -> None:
    out, scores = tmp_path / "classes.tif", tmp_path / "scores.tif"
    predict_scene(
        pixelwise,
        [str(big_scene)],
        out,
        chip_size=192,
        overlap=48,
        n_outputs=3,
        mean=MEAN,
        std=STD,
        scores_path=scores,
        blend="linear",
        batch_size=5,
    )
    ref, ok = whole_scene(big_scene)
    with rasterio.open(out) as dst:
        cls = dst.read(1)
        assert dst.dtypes == ("uint8",) and dst.nodata == 255
    top2 = np.sort(ref, axis=0)[-2:]
    clear = ok & (top2[1] - top2[0] > 1e-5)  # float rounding may flip exact ties, nothing else
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(cls[clear], ref.argmax(axis=0)[clear])
    assert (cls[~ok] == 255).all()
    with rasterio.open(scores) as dst:
        np.testing.assert_allclose(dst.read()[:, ok], ref[:, ok], atol=2e-6)
    assert is_cog(out) and is_cog(scores)


def test_small_scene_and_coords(tmp_path: Path) -> None:
    # smaller than one chip (padded), two dated frames, the model receives the coordinates
    files = make.write_timeseries(tmp_path / "ts", frames=2, height=50, width=70, n_bands=3)
    seen: dict[str, torch.Tensor] = {}

    def model(x: torch.Tensor, temporal_coords: torch.Tensor, location_coords: torch.Tensor) -> torch.Tensor:
        seen["t"], seen["loc"], seen["x"] = temporal_coords, location_coords, x
        return x[:, :2, 1] - x[:, :2, 0]  # frame difference: 0.1 everywhere

    out = tmp_path / "diff.tif"
    predict_scene(
        model, [str(f) for f in files], out, chip_size=64, overlap=8, n_outputs=2, task="regression", with_coords=True
    )
    with rasterio.open(out) as dst:
        np.testing.assert_allclose(dst.read(), 0.1, atol=1e-5)
        assert dst.shape == (50, 70)
    assert seen["x"].shape[1:] == (3, 2, 64, 64)
    assert seen["t"].shape[1:] == (2, 2) and seen["t"][0, :, 0].tolist() == [2021.0, 2021.0]
    assert 45.0 < float(seen["loc"][0, 0]) < 47.0


def test_bad_arguments(big_scene: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        predict_scene(
            pixelwise, str(big_scene), tmp_path / "x.tif", chip_size=64, overlap=64, blend="cosin", n_outputs=1
        )
    text = str(err.value)
    assert "overlap" in text and "did you mean 'cosine'" in text and "n_outputs=1" in text
    with pytest.raises(ShapeError, match=r"model_fn returned \(.*\); expected"):
        predict_scene(
            lambda x: x[:, :2, 0, :10], str(big_scene), tmp_path / "x.tif", chip_size=64, overlap=0, n_outputs=2
        )
    with pytest.raises(DataError, match="band 'B05'"):
        predict_scene(pixelwise, str(big_scene), tmp_path / "x.tif", bands=["B05"])
    with pytest.raises(ConfigError, match="mean/std have 4 values but 2 bands"):
        predict_scene(pixelwise, str(big_scene), tmp_path / "x.tif", bands=["B02", "B03"], mean=MEAN, std=STD)


_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    def hwm_kb():
        # VmHWM is the peak RSS of this process image only; ru_maxrss also counts the pages of the
        # (large) pytest process this child was spawned from, which Linux folds in at exec.
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import torch
    torch.set_num_threads(1)
    from sciadapt.predict.tiles import predict_scene
    w = torch.tensor([[1.0, -1.0, 0.5], [0.2, 0.3, -0.7], [0.0, 0.0, 1.0]])
    def model(x):
        return torch.einsum("oc,bchw->bohw", w, x[:, :, 0])
    base = hwm_kb()
    rep = predict_scene(model, sys.argv[1], sys.argv[2], chip_size=256, overlap=32, n_outputs=3,
                        mean=[3000.0] * 3, std=[1000.0] * 3, batch_size=16)
    peak, maxrss = hwm_kb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"base_kb": base, "peak_kb": peak, "maxrss_kb": maxrss, "seconds": rep["seconds"], "tiles": rep["tiles"]}))
    """
)


@pytest.mark.slow
def test_20k_scene_peak_rss_under_2gb(tmp_path: Path) -> None:
    import resource
    import time

    scene = make.write_large_scene(tmp_path / "big.tif", size=20_000, n_bands=3)
    out = tmp_path / "big_pred.tif"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(scene), str(out)], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    # The child's own high-water mark. RUSAGE_CHILDREN (and the child's ru_maxrss) would also count
    # this pytest process's pages, which Linux folds into a child's maxrss at exec; it is an upper bound.
    peak_mb = info["peak_kb"] / 1024  # KiB on Linux
    upper_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"20k scene: {info['tiles']} tiles in {info['seconds']:.1f} s (process {wall:.1f} s), peak RSS {peak_mb:.0f} MB "
        f"(after imports {info['base_kb'] / 1024:.0f} MB; RUSAGE_CHILDREN upper bound {upper_mb:.0f} MB)"
    )
    assert peak_mb < 2048, f"peak RSS {peak_mb:.0f} MB"
    with rasterio.open(out) as dst:
        assert (dst.height, dst.width) == (20_000, 20_000) and dst.dtypes == ("uint8",)
        assert is_cog(out) and len(dst.overviews(1)) >= 4
        # spot check: a window away from the edges equals the model applied to that window
        win = rasterio.windows.Window(12_345, 7_777, 300, 200)
        got = dst.read(1, window=win)
    with rasterio.open(scene) as src:
        x = (src.read(window=win).astype(np.float32) - 3000) / 1000
    ref = np.einsum("oc,chw->ohw", np.array([[1.0, -1.0, 0.5], [0.2, 0.3, -0.7], [0.0, 0.0, 1.0]], np.float32), x)
    np.testing.assert_array_equal(got, ref.argmax(axis=0))
