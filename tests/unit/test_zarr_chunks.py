"""Direct chunk decoding (``sciadapt.datamodules.zarr_chunks``) against zarr's own reads."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, GzipCodec, TransposeCodec, ZstdCodec

from sciadapt.datamodules.gridded import GriddedDataModule
from sciadapt.datamodules.zarr_chunks import blosc_content_size, chunk_decoder, decode_all, zstd_content_size
from sciadapt.errors import DataError
from tests.data.gridded import make


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCIADAPT_CACHE_DIR", str(tmp_path / "cache"))


def _array(path: Path, fmt: int, compression: str | None, chunks: tuple[int, ...] = (1, 3, 5, 7), **kw: Any) -> Any:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(6, 3, 5, 7)).astype(kw.pop("dtype", np.float32))
    if fmt == 3:
        comp = {"zstd": [ZstdCodec(level=3)], "blosc": [BloscCodec()], "gzip": [GzipCodec()], None: None}[compression]
        arr = zarr.create_array(path, shape=data.shape, chunks=chunks, dtype=data.dtype, compressors=comp, **kw)
    else:
        comp = {"zstd": numcodecs.Zstd(), "blosc": numcodecs.Blosc(), "gzip": numcodecs.GZip(), None: None}[compression]
        arr = zarr.create_array(
            path, shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=2, compressors=comp, **kw
        )
    arr[:] = data
    return zarr.open_array(path, mode="r")


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("compression", ["zstd", "blosc", None])
def test_decodes_every_supported_layout_bit_exactly(tmp_path: Path, fmt: int, compression: str | None) -> None:
    arr = _array(tmp_path / "a.zarr", fmt, compression)
    decoder = chunk_decoder(arr)
    assert decoder is not None
    out = np.full((6, 3, 5, 7), -1.0, np.float32)
    assert all(decode_all(decoder, [((t, 0, 0, 0), out[t]) for t in range(6)], threads=2))
    np.testing.assert_array_equal(out, arr[:])


@pytest.mark.parametrize(
    ("chunks", "kw", "compression"),
    [
        ((2, 3, 5, 7), {}, "zstd"),  # two time steps per chunk
        ((1, 3, 5, 4), {}, "zstd"),  # a field split over chunks
        ((1, 3, 5, 7), {"dtype": np.float64}, "zstd"),
        ((1, 3, 5, 7), {}, "gzip"),
        ((1, 3, 5, 7), {"filters": [TransposeCodec(order=(0, 1, 3, 2))]}, "zstd"),
    ],
)
def test_other_layouts_keep_zarrs_path(tmp_path: Path, chunks: tuple[int, ...], kw: dict, compression: str) -> None:
    assert chunk_decoder(_array(tmp_path / "a.zarr", 3, compression, chunks, **kw)) is None


def test_chunk_checks(tmp_path: Path) -> None:
    arr = _array(tmp_path / "a.zarr", 3, "zstd")
    decoder = chunk_decoder(arr)
    assert decoder is not None
    out = np.zeros((3, 5, 7), np.float32)
    chunk = tmp_path / "a.zarr" / "c" / "2" / "0" / "0" / "0"
    frame = chunk.read_bytes()
    assert zstd_content_size(frame) == 3 * 5 * 7 * 4
    chunk.unlink()  # absent: zarr's fill value applies, so the caller takes zarr's path
    assert decoder.read_into((2, 0, 0, 0), out) is False and not out.any()
    chunk.write_bytes(frame[:-9])  # truncated
    with pytest.raises(RuntimeError, match="(?i)zstd"):
        decoder.read_into((2, 0, 0, 0), out)
    small = zarr.create_array(tmp_path / "c.zarr", shape=(2, 3, 5, 6), chunks=(1, 3, 5, 6), dtype=np.float32)
    small[:] = 1.0
    shutil.copy(tmp_path / "c.zarr" / "c" / "0" / "0" / "0" / "0", chunk)  # a chunk of another shape
    with pytest.raises(ValueError, match="decodes to 360 bytes, not the 420"):
        decoder.read_into((2, 0, 0, 0), out)


@pytest.mark.parametrize("nbytes", [0, 40, 255, 256, 300, 65791, 65792, 1 << 20])
def test_frame_headers_declare_their_size(nbytes: int) -> None:
    data = np.arange(nbytes, dtype=np.uint8)
    assert zstd_content_size(numcodecs.Zstd().encode(data)) == nbytes  # 1-, 2- (+256), 4-byte fields
    assert blosc_content_size(numcodecs.Blosc().encode(data)) == nbytes
    assert zstd_content_size(b"not a zstd frame") is None


def _store(tmp_path: Path, **kw: Any) -> Path:
    return make.write_zarr(make.make_dataset(n_time=24, **kw), tmp_path / "s.zarr")


def _batches(dm: GriddedDataModule, direct: bool) -> list[dict[str, torch.Tensor]]:
    ds = dm.dataset("train")
    if not direct:
        ds.reader._open()
        ds.reader._direct = {}
    return [ds.__getitems__(list(range(k, min(k + 4, len(ds))))) for k in range(0, len(ds), 4)]


@pytest.mark.parametrize(
    ("store_kw", "dm_kw"),
    [
        ({}, {"variables": ["t2m", "z", "t"]}),  # the store's levels in reverse channel order
        ({"levels": (500, 700, 850)}, {"variables": ["z", "t"]}),  # levels in store order: no copy
        ({"lat_descending": False}, {"variables": ["t2m", "z"], "levels": [850]}),  # flipped, one level
    ],
)
def test_datamodule_batches_equal_zarrs_path(tmp_path: Path, store_kw: dict, dm_kw: dict) -> None:
    path = _store(tmp_path, **store_kw)
    dm = GriddedDataModule(str(path), n_input=2, n_lead=3, num_workers=0, **dm_kw)
    reader = dm.dataset("train").reader
    reader._open()
    assert set(reader._direct) == set(dm_kw["variables"])  # every variable takes the direct path
    fast, slow = _batches(dm, True), _batches(dm, False)
    assert len(fast) > 1
    for a, b in zip(fast, slow, strict=True):
        for key in ("x", "y", "forcings"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # and the zarr path is right: one state against xarray
    item = dm.dataset("train")[0]
    ref = xr.open_zarr(path, consolidated=False)["z"].sel(level=850).isel(time=int(item["meta"]["time_index"]))
    c = dm.variables.index("z_850")
    expected = (ref.sortby("latitude", ascending=False).values - dm.stats["mean"][c]) / dm.stats["std"][c]
    # float32 normalisation of geopotential (~5e3) against float64: a few ulp of the raw values
    np.testing.assert_allclose(item["x"][-1, c].numpy(), expected, rtol=1e-5, atol=1e-4)


def test_member_axis_keeps_zarrs_path(tmp_path: Path) -> None:
    path = _store(tmp_path, members=2)
    reader = GriddedDataModule(str(path), variables=["t2m"], member=1, num_workers=0).dataset("train").reader
    reader._open()
    assert reader._direct == {}


def test_missing_and_corrupt_chunks_in_the_datamodule(tmp_path: Path) -> None:
    path = _store(tmp_path)
    GriddedDataModule(str(path), variables=["t2m"], num_workers=0).setup()  # statistics while intact
    (path / "t2m" / "c" / "7" / "0" / "0").unlink()  # missing: NaN fill value -> masked
    ds = GriddedDataModule(str(path), variables=["t2m"], num_workers=0).dataset("train")
    k = int(np.flatnonzero(ds.indices == 6)[0])  # reads time indices 6 and 7
    item = ds[k]
    assert torch.all(item["mask"] == 0) and torch.all(item["x_mask"] == 1)
    chunk = path / "t2m" / "c" / "6" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-5])  # truncated zstd frame
    with pytest.raises(DataError, match=r"variable 't2m' at time index 6 .*corrupt"):
        ds[k]
