"""The raster datamodule on generated GeoTIFFs / eo-learn arrays, and (marked slow) on the real geo data."""

from __future__ import annotations

import importlib.util
import inspect
import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from sciadapt.datamodules import raster as rm
from sciadapt.datamodules.raster import RasterDataModule
from sciadapt.errors import ConfigError, DataError
from sciadapt.registry import DATAMODULES
from tests.conftest import SHARED_DATA

_spec = importlib.util.spec_from_file_location("raster_make", Path(__file__).parents[1] / "data/raster/make.py")
assert _spec is not None and _spec.loader is not None
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)

GEO = SHARED_DATA / "geo"
# Sentinel-2 L1C bands as the HLS/Prithvi band names (terratorch's HLSBands) name them.
S2_AS_HLS = [
    "COASTAL_AEROSOL",
    "BLUE",
    "GREEN",
    "RED",
    "RED_EDGE_1",
    "RED_EDGE_2",
    "RED_EDGE_3",
    "NIR_BROAD",
    "NIR_NARROW",
    "WATER_VAPOR",
    "CIRRUS",
    "SWIR_1",
    "SWIR_2",
]
PRITHVI_BANDS = ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]


@pytest.fixture(autouse=True)
def _close_files():
    yield
    rm.close_rasters()


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path]:
    image = make.write_scene(tmp_path / "scene.tif", height=96, width=128, nodata_box=(0, 0, 8, 8), date="2021-06-01")
    mask = make.write_mask(tmp_path / "mask.tif", image, thresholds=(0.5,))
    return image, mask


def _dm(image: Path, mask: Path | None = None, **kw) -> RasterDataModule:
    kw.setdefault("chip_size", 32)
    kw.setdefault("split_fractions", [0.5, 0.25, 0.25])
    return RasterDataModule(images=str(image), masks=str(mask) if mask else None, **kw)


def test_registered_builder_is_the_schema() -> None:
    assert DATAMODULES.get("raster") is RasterDataModule
    params = inspect.signature(RasterDataModule).parameters
    assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values())
    for key in ("images", "masks", "bands", "band_names", "frames", "chip_size", "sampler", "chips_per_epoch"):
        assert key in params
    for key in (
        "stride",
        "split",
        "normalise",
        "mean",
        "std",
        "ignore_index",
        "label_map",
        "task",
        "augment",
        "torchgeo",
    ):
        assert key in params


def test_sample_layout_facts_and_coords(scene: tuple[Path, Path]) -> None:
    dm = _dm(*scene, augment=True, chips_per_epoch=8)
    dm.setup()
    facts = dm.facts()
    assert facts == {
        "bands": ["B02", "B03", "B04", "B8A"],
        "n_bands": 4,
        "in_chans": 4,
        "num_frames": 1,
        "img_size": 32,
        "n_classes": 2,
        "ignore_index": -1,
        "class_names": None,
    }
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (dm.batch_size, 4, 1, 32, 32) and batch["x"].dtype == torch.float32
    assert batch["y"].shape == (dm.batch_size, 32, 32) and batch["y"].dtype == torch.int64
    assert batch["mask"].shape == (dm.batch_size, 32, 32) and batch["mask"].dtype == torch.float32
    assert batch["meta"]["window"].shape == (dm.batch_size, 4)
    assert batch["temporal_coords"].shape == (dm.batch_size, 1, 2)
    assert batch["temporal_coords"][0].tolist() == [[2021.0, 152.0]]  # 1 June 2021 is day 152
    lat, lon = batch["location_coords"][0].tolist()
    assert 45.0 < lat < 47.0 and 14.0 < lon < 15.5  # UTM 33N near Ljubljana
    # train chips stay in the left half (x split 0.5)
    assert int((batch["meta"]["window"][:, 1] + 32).max()) <= 64
    assert set(batch["y"].unique().tolist()) <= {-1, 0, 1}
    assert "2 classes" in dm.describe() and "chips train" in dm.describe()


def test_bands_by_name_and_band_names(scene: tuple[Path, Path]) -> None:
    image, mask = scene
    dm = _dm(image, mask, bands=["B8A", "b02"], normalise="none")
    s = dm.dataset("val")[0]
    r, c, h, w = s["meta"]["window"].tolist()
    with rasterio.open(image) as src:
        raw = src.read([4, 1], window=rasterio.windows.Window(c, r, w, h)).astype(np.float32)
    valid = s["mask"].numpy() > 0
    np.testing.assert_array_equal(s["x"][:, 0].numpy()[:, valid], raw[:, valid])
    assert dm.bands == ["B8A", "b02"]
    # band_names renames the file's bands (here to Prithvi's names)
    dm = _dm(image, mask, band_names=["BLUE", "GREEN", "RED", "NIR_NARROW"], bands=["NIR_NARROW", "BLUE"])
    assert dm.bands == ["NIR_NARROW", "BLUE"] and dm.n_bands == 2


def test_normalisation_computed_on_train_pixels_and_from_config(scene: tuple[Path, Path]) -> None:
    image, mask = scene
    dm = _dm(image, mask)
    with rasterio.open(image) as src:
        left = src.read(window=rasterio.windows.Window(0, 0, 64, 96)).astype(np.float64)
    valid = ~(left == 0).any(axis=0)
    np.testing.assert_allclose(dm.mean, left[:, valid].mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(dm.std, left[:, valid].std(axis=1), rtol=1e-7)
    dm2 = _dm(image, mask, mean=[1.0, 2.0, 3.0, 4.0], std=[10.0, 10.0, 10.0, 10.0])
    assert dm2.mean == [1.0, 2.0, 3.0, 4.0] and dm2.std == [10.0] * 4
    x = dm2.dataset("test")[0]["x"]
    back = dm2.denormalise(x)
    assert back.shape == x.shape
    assert dm2.scaler_state()["mean"] == [1.0, 2.0, 3.0, 4.0]
    assert dm2.prediction_settings()["bands"] == dm2.bands


def test_nodata_pixels_are_ignored(scene: tuple[Path, Path]) -> None:
    image, mask = scene
    dm = _dm(image, mask, split_fractions=[0.5, 0.25, 0.25], sampler="grid")
    s = dm.dataset("train")[0]  # the grid's first chip is the top-left corner, with the 8x8 nodata box
    assert s["meta"]["window"].tolist() == [0, 0, 32, 32]
    assert (s["y"][:8, :8] == -1).all() and (s["mask"][:8, :8] == 0).all() and (s["x"][:, :, :8, :8] == 0).all()
    assert (s["mask"][8:, 8:] == 1).all() and (s["y"][8:, 8:] >= 0).all()


def test_label_map_n_classes_and_bad_labels(tmp_path: Path) -> None:
    image = make.write_scene(tmp_path / "s.tif", height=64, width=64, nodata=None)
    mask = make.write_mask(tmp_path / "m.tif", image, thresholds=(0.4, 0.6))  # labels 0, 1, 2
    dm = _dm(image, mask, label_map={0: 7, 2: -1}, n_classes=8, split_fractions=[0.5, 0.0, 0.5])
    dm.setup()
    assert set(dm.class_counts["train"]) <= {1, 7} and dm.n_classes == 8
    s = dm.dataset("test")[0]
    assert set(s["y"].unique().tolist()) <= {-1, 1, 7}
    assert (s["mask"] == (s["y"] != -1).float()).all()
    counted = _dm(image, mask, split_fractions=[0.5, 0.0, 0.5])
    assert counted.n_classes == 3 and counted.majority_class() in (0, 1, 2)
    with pytest.raises(DataError, match=r"label 2.*data.label_map"):
        _dm(image, mask, n_classes=2, split_fractions=[0.5, 0.0, 0.5]).setup()


def test_augmentation_keeps_frames_and_mask_aligned(tmp_path: Path) -> None:
    # frame t = frame 0 + 0.1 t everywhere; the label is a threshold of band 0 of frame 0
    files = make.write_timeseries(tmp_path / "ts", frames=3, height=64, width=64, n_bands=3, step=0.1)
    lab = make.labels_from(make.field(64, 64, 3, 0)[0], (0.5,))
    with rasterio.open(files[0]) as src:
        profile = src.profile
    profile.update(count=1, dtype="int16", nodata=None)
    with rasterio.open(tmp_path / "mask.tif", "w", **profile) as dst:
        dst.write(lab[None])
    dm = RasterDataModule(
        images=[str(f) for f in files],
        masks=str(tmp_path / "mask.tif"),
        frames=3,
        chip_size=24,
        normalise="none",
        augment=True,
        split_fractions=[0.5, 0.5, 0.0],
        chips_per_epoch=24,
        seed=3,
    )
    ds = dm.dataset("train")
    changed = 0
    for j in range(24):
        s = ds[j]
        x, y = s["x"].numpy(), s["y"].numpy()
        assert x.shape == (3, 3, 24, 24)
        for t in (1, 2):
            np.testing.assert_allclose(x[:, t] - x[:, 0], 0.1 * t, atol=1e-5)
        np.testing.assert_array_equal(y, make.labels_from(x[0, 0], (0.5,)))
        r, c, _, _ = s["meta"]["window"].tolist()
        changed += not np.array_equal(x[0, 0], make.field(64, 64, 3, 0)[0, r : r + 24, c : c + 24].astype(np.float32))
        assert s["temporal_coords"][:, 0].tolist() == [2021.0] * 3
    assert changed > 0, "augmentation never changed a chip"


def test_random_chips_depend_on_seed_and_epoch_only(scene: tuple[Path, Path]) -> None:
    dm = _dm(*scene, chips_per_epoch=10, seed=1, augment=True)

    def windows(epoch: int) -> list[list[int]]:
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return [w.tolist() for b in loader for w in b["meta"]["window"]]

    assert windows(0) == windows(0)
    assert sorted(windows(0)) != sorted(windows(1))
    # DataLoader workers (each opens its own files) read exactly the chips the main process reads
    dm_workers = _dm(*scene, chips_per_epoch=10, seed=1, augment=True, num_workers=2)
    loader = dm_workers.train_dataloader()
    assert [w.tolist() for b in loader for w in b["meta"]["window"]] == windows(0)
    ds = dm.dataset("train")
    a = ds[13]
    b = pickle.loads(pickle.dumps(ds))[13]  # what a DataLoader worker sees
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])


def test_splits_do_not_share_pixels(scene: tuple[Path, Path]) -> None:
    image, mask = scene
    dm = _dm(image, mask, split="x", split_fractions=[0.5, 0.25, 0.25], sampler="grid", stride=16)
    cols = {k: [(int(w[2]), int(w[2]) + 32) for w in dm._dataset(k).positions] for k in ("train", "val", "test")}
    assert max(b for _, b in cols["train"]) <= 64 and min(a for a, _ in cols["val"]) >= 64
    assert max(b for _, b in cols["val"]) <= 96 and min(a for a, _ in cols["test"]) >= 96
    dm = _dm(image, mask, split="boxes", split_boxes={"train": [[0, 0, 1, 0.5]], "test": [[0, 0.5, 1, 1]]})
    assert len(dm.dataset("val")) == 0 and len(dm.dataset("test")) == 6  # 3 rows x 2 columns of 32 in 96 x 64
    scenes = RasterDataModule(
        images=[str(image)] * 2,
        masks=[str(mask)] * 2,
        chip_size=32,
        split="scenes",
        split_scenes={"train": [0], "test": [1]},
    )
    assert {int(p[0]) for p in scenes.dataset("test").positions} == {1}


def test_multitemporal_band_stack_and_eopatch_arrays(tmp_path: Path) -> None:
    (stack,) = make.write_timeseries(tmp_path / "stack", frames=2, height=48, width=48, layout="bands")
    dm = RasterDataModule(
        images=str(stack),
        frames=2,
        frame_layout="bands",
        chip_size=16,
        normalise="none",
        band_names=["R", "G", "B"],
        split_fractions=[0.5, 0.5, 0.0],
    )
    s = dm.dataset("train")[0]
    np.testing.assert_allclose(s["x"][:, 1] - s["x"][:, 0], 0.1, atol=1e-5)
    assert dm.bands == ["R", "G", "B"] and "y" not in s
    patch = make.write_eopatch(tmp_path / "eopatch", frames=3, height=41, width=40)
    dm = RasterDataModule(
        images=str(patch / "REFERENCE_SCENES.npy"),
        masks=str(patch / "LULC.npy"),
        frames=3,
        chip_size=16,
        band_names=list(make.S2_BANDS),
        bands=["B02", "B03", "B04"],
        label_map={0: -1, 1: 0, 2: 1, 3: 2, 4: 3, 8: 4},
        split="boxes",
        split_boxes={"train": [[0, 0, 1, 0.5]], "test": [[0, 0.5, 1, 1]]},
    )
    s = dm.dataset("test")[0]
    assert s["x"].shape == (3, 3, 16, 16) and dm.n_classes == 5
    assert s["temporal_coords"].shape == (3, 2) and s["location_coords"].shape == (2,)


def test_regression_targets(tmp_path: Path) -> None:
    image = make.write_scene(tmp_path / "s.tif", height=64, width=64, nodata_box=(0, 0, 4, 4))
    target = make.write_mask(tmp_path / "t.tif", image, regression=True, nodata=-9999.0)
    dm = _dm(image, target, task="regression", sampler="grid", split_fractions=[0.5, 0.5, 0.0])
    s = dm.dataset("train")[0]
    assert s["y"].dtype == torch.float32 and dm.n_classes is None and dm.facts()["n_classes"] is None
    assert (s["mask"][:4, :4] == 0).all() and (s["y"][:4, :4] == 0).all() and (s["mask"][4:, 4:] == 1).all()
    with pytest.raises(ConfigError, match="label_map"):
        _dm(image, target, task="regression", label_map={1: 0})


def test_torchgeo_dataset_by_name(tmp_path: Path) -> None:
    # torchgeo's NAIP finds m_*.tif files and dates them from the name (..._20181104.tif)
    root = tmp_path / "naip"
    image = make.write_scene(
        root / "m_3807511_ne_18_060_20181104.tif", height=64, width=64, descriptions=None, nodata=None
    )
    make.write_mask(tmp_path / "mask.tif", image)
    dm = RasterDataModule(
        images=str(root),
        masks=str(tmp_path / "mask.tif"),
        torchgeo="NAIP",
        chip_size=32,
        bands=["NIR", "R"],
        split_fractions=[0.5, 0.0, 0.5],
    )
    s = dm.dataset("train")[0]
    assert dm.bands == ["NIR", "R"] and s["x"].shape == (2, 1, 32, 32)
    assert s["temporal_coords"].tolist() == [[2018.0, 308.0]]
    with pytest.raises(ConfigError, match="did you mean 'NAIP'"):
        _ = RasterDataModule(images=str(root), torchgeo="NAIPP").bands


def test_bad_input_messages(tmp_path: Path, scene: tuple[Path, Path]) -> None:
    image, mask = scene
    with pytest.raises(DataError, match=r"scene\.tif: band 'B05' \(data\.bands\) is not in the file.*B02"):
        _ = _dm(image, mask, bands=["B05"]).bands
    other = make.write_mask(tmp_path / "crs.tif", image, crs="EPSG:4326")
    with pytest.raises(DataError, match=r"crs\.tif has CRS EPSG:4326 but image .*EPSG:32633.*gdalwarp"):
        _ = _dm(image, other).bands
    shifted = make.write_mask(tmp_path / "shift.tif", image, shift_pixels=0.5)
    with pytest.raises(DataError, match=r"misaligned.*0\.5 px"):
        _ = _dm(image, shifted).bands
    small = make.write_mask(tmp_path / "small.tif", image, shape=(90, 128))
    with pytest.raises(DataError, match=r"90 x 128 px but image .* 96 x 128"):
        _ = _dm(image, small).bands
    with pytest.raises(DataError, match=r"smaller than one chip \(data\.chip_size=224\).*at most 96"):
        _ = _dm(image, mask, chip_size=224).bands
    with pytest.raises(DataError, match=r"val region .* smaller than one chip"):
        _dm(image, mask, split_fractions=[0.8, 0.1, 0.1]).setup()
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(image.read_bytes()[:300])
    with pytest.raises(DataError, match=r"corrupt\.tif"):
        _dm(corrupt).setup()
    with pytest.raises(DataError, match="does not exist"):
        _ = _dm(tmp_path / "nope.tif").bands
    with pytest.raises(DataError, match="one mask per scene"):
        _ = RasterDataModule(images=[str(image)] * 2, masks=str(mask), chip_size=32).bands
    with pytest.raises(ConfigError) as err:
        RasterDataModule(images=str(image), sampler="randm", split_fractions=[0.5, 0.6, 0.1], mean=[1.0], chip_size=0)
    text = str(err.value)
    assert "did you mean 'random'" in text and "split_fractions" in text and "data.mean and data.std" in text
    with pytest.raises(ConfigError, match="overlaps"):
        RasterDataModule(
            images=str(image), split="boxes", split_boxes={"train": [[0, 0, 1, 0.6]], "test": [[0, 0.5, 1, 1]]}
        )


@pytest.mark.slow
def test_real_sen1floods11_left_right() -> None:
    folder = GEO / "sen1floods11"
    if not folder.is_dir():
        pytest.skip(f"{folder} absent")
    dm = RasterDataModule(
        images=str(folder / "Spain_7370579_S2Hand.tif"),
        masks=str(folder / "Spain_7370579_LabelHand.tif"),
        band_names=S2_AS_HLS,
        bands=PRITHVI_BANDS,
        chip_size=128,
        split="boxes",
        split_boxes={"train": [[0, 0, 0.6, 0.5]], "val": [[0.6, 0, 1, 0.5]], "test": [[0, 0.5, 1, 1]]},
        n_classes=2,
        class_names=["land", "water"],
    )
    dm.setup()
    assert dm.facts()["in_chans"] == 6 and dm.n_classes == 2
    test = dm.dataset("test")
    assert all(int(p[2]) >= 256 for p in test.positions)  # right half only
    assert all(int(c) + 128 <= 256 for _, _, c, _, _ in dm.regions("train"))
    s = test[0]
    assert s["x"].shape == (6, 1, 128, 128) and set(s["y"].unique().tolist()) <= {-1, 0, 1}
    water = dm.class_counts["test"].get(1, 0) / sum(dm.class_counts["test"].values())
    assert 0.1 < water < 0.6
    lat, lon = s["location_coords"].tolist()
    assert 37.5 < lat < 38.5 and -1.0 < lon < -0.5  # Spain


@pytest.mark.slow
def test_real_eolearn_patch() -> None:
    folder = GEO / "eolearn-s2"
    if not folder.is_dir():
        pytest.skip(f"{folder} absent")
    dm = RasterDataModule(
        images=str(folder / "REFERENCE_SCENES.npy"),
        masks=str(folder / "LULC.npy"),
        frames=5,
        band_names=list(make.S2_BANDS),
        chip_size=32,
        label_map={0: -1, 1: 0, 2: 1, 3: 2, 4: 3, 8: 4},
        class_names=["cultivated", "forest", "grassland", "shrubland", "artificial"],
        split="boxes",
        split_boxes={"train": [[0, 0, 1, 0.5]], "val": [[0, 0.5, 0.4, 1]], "test": [[0.4, 0.5, 1, 1]]},
    )
    dm.setup()
    assert dm.facts() == {
        "bands": list(make.S2_BANDS),
        "n_bands": 13,
        "in_chans": 13,
        "num_frames": 5,
        "img_size": 32,
        "n_classes": 5,
        "ignore_index": -1,
        "class_names": ["cultivated", "forest", "grassland", "shrubland", "artificial"],
    }
    assert dm.majority_class() == 1  # forest dominates the patch
    s = dm.dataset("val")[0]
    assert s["x"].shape == (13, 5, 32, 32) and s["y"].shape == (32, 32)
    lat, lon = s["location_coords"].tolist()
    assert 45.5 < lat < 46.5 and 14.0 < lon < 15.0  # Slovenia
