"""Panels of many series: long tables (CSV/parquet) and gluonts datasets (JSON lines/arrow) -> Panel."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sciadapt.datamodules.panel_readers import Panel, read_panel
from sciadapt.errors import DataError


def _long_frame() -> pd.DataFrame:
    """Two hourly series: 'b' first in the file, 'a' with a gap at 02:00 and two forecast rows."""
    b = pd.DataFrame(
        {
            "unique_id": "b",
            "ds": pd.date_range("2021-03-01", periods=4, freq="h"),
            "y": [1.0, 2.0, 3.0, 4.0],
            "temp": [0.1, 0.2, 0.3, 0.4],
            "region": "north",
            "area": 5.0,
        }
    )
    a = pd.DataFrame(
        {
            "unique_id": "a",
            "ds": pd.to_datetime(["2021-03-02 00:00", "2021-03-02 01:00", "2021-03-02 03:00"]).append(
                pd.to_datetime(["2021-03-02 04:00", "2021-03-02 05:00"])
            ),
            "y": [10.0, 11.0, 13.0, np.nan, np.nan],
            "temp": [1.0, 2.0, 4.0, 5.0, 6.0],
            "region": "south",
            "area": 7.0,
        }
    )
    # rows out of time order inside a series are sorted by the reader
    return pd.concat([b, a.iloc[::-1]], ignore_index=True)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("name", ["panel.csv", "panel.csv.gz", "panel.parquet"])
def test_long_panel(tmp_path: Path, name: str) -> None:
    path = _write(_long_frame(), tmp_path / name)
    panel = read_panel(str(path), static_columns=["region", "area"], known_columns=["temp"])
    assert isinstance(panel, Panel)
    assert panel.ids == ["b", "a"]  # first appearance
    assert panel.freq == "h"
    assert panel.starts == [pd.Timestamp("2021-03-01 00:00"), pd.Timestamp("2021-03-02 00:00")]
    np.testing.assert_array_equal(panel.target[0], [1, 2, 3, 4])
    # the gap at 02:00 is NaN; the target ends at the last observed value
    np.testing.assert_array_equal(panel.target[1], [10, 11, np.nan, 13])
    assert panel.target[1].dtype == np.float32
    # known runs two steps past the target: the forecast period
    assert panel.known[1].shape == (6, 1)
    np.testing.assert_allclose(panel.known[1][:, 0], [1, 2, np.nan, 4, 5, 6])
    assert panel.known[0].shape == (4, 1)
    assert panel.known_names == ["temp"]
    assert panel.static_names == ["region=north", "region=south", "area"]
    np.testing.assert_array_equal(panel.static, [[1, 0, 5], [0, 1, 7]])
    assert panel.static.dtype == np.float32
    assert list(panel.timestamps(1)) == list(pd.date_range("2021-03-02", periods=4, freq="h"))
    assert str(path) in panel.source
    assert len(panel) == 2


def test_long_defaults_without_covariates(tmp_path: Path) -> None:
    path = _write(_long_frame()[["unique_id", "ds", "y"]], tmp_path / "p.csv")
    panel = read_panel(str(path))
    assert panel.known[1].shape == (4, 0) and panel.static.shape == (2, 0)
    assert panel.known_names == [] and panel.static_names == []


def test_long_custom_columns_and_given_freq(tmp_path: Path) -> None:
    frame = _long_frame().rename(columns={"unique_id": "station", "ds": "time", "y": "ghi"})
    path = _write(frame[["station", "time", "ghi"]], tmp_path / "p.csv")
    panel = read_panel(str(path), id_column="station", time_column="time", target_column="ghi", freq="30min")
    assert panel.freq == "30min"
    assert len(panel.target[0]) == 7  # 4 hourly points on a half-hour grid
    assert np.isnan(panel.target[0][1])


def test_long_calendar_frequency_with_gap(tmp_path: Path) -> None:
    months = pd.to_datetime(["2020-01-01", "2020-02-01", "2020-03-01", "2020-04-01", "2020-06-01"])
    frame = pd.DataFrame(
        {
            "unique_id": ["x"] * 4 + ["y"] * 5,
            "ds": list(months[:4]) + list(months),
            "y": np.arange(9.0),
        }
    )
    panel = read_panel(str(_write(frame, tmp_path / "m.csv")))
    assert panel.freq == "MS"
    np.testing.assert_array_equal(panel.target[1], [4, 5, 6, 7, np.nan, 8])
    assert panel.timestamps(1)[-1] == pd.Timestamp("2020-06-01")


def test_long_weekly_and_short_series(tmp_path: Path) -> None:
    weeks = pd.date_range("2022-01-02", periods=5, freq="W-SUN")
    frame = pd.DataFrame({"unique_id": ["w"] * 5 + ["s"] * 2, "ds": list(weeks) + list(weeks[:2]), "y": np.ones(7)})
    panel = read_panel(str(_write(frame, tmp_path / "w.parquet")))
    assert panel.freq == "W-SUN"
    assert [len(t) for t in panel.target] == [5, 2]  # a 2-point series follows the panel's frequency


def test_long_gaps_everywhere_infer_commonest_step(tmp_path: Path) -> None:
    stamps = pd.to_datetime(["2020-01-01 00:00", "2020-01-01 01:00", "2020-01-01 03:00", "2020-01-01 04:00"])
    frame = pd.DataFrame({"unique_id": "g", "ds": stamps, "y": [1.0, 2, 3, 4]})
    panel = read_panel(str(_write(frame, tmp_path / "g.csv")))
    assert panel.freq == "h"
    np.testing.assert_array_equal(panel.target[0], [1, 2, np.nan, 3, 4])


def test_long_timestamp_parts(tmp_path: Path) -> None:
    stamps = pd.date_range("2019-06-01 00:00", periods=6, freq="30min")
    frame = pd.DataFrame(
        {
            "Site": ["s1"] * 3 + ["s2"] * 3,
            "Year": stamps.year,
            "Month": stamps.month,
            "Day": stamps.day,
            "Hour": stamps.hour,
            "Minute": stamps.minute,
            "GHI": np.arange(6.0),
        }
    )
    path = _write(frame, tmp_path / "nsrdb.csv")
    panel = read_panel(
        str(path),
        id_column="Site",
        time_column="time",
        target_column="GHI",
        timestamp_parts=["Year", "Month", "Day", "Hour", "Minute"],
    )
    assert panel.freq == "30min"
    assert panel.starts == [stamps[0], stamps[3]]
    with pytest.raises(DataError, match="already has that column"):
        read_panel(str(path), id_column="Site", time_column="Year", target_column="GHI", timestamp_parts=["Year"])


def test_long_speed_many_series(tmp_path: Path) -> None:
    n, length = 1200, 500
    frame = pd.DataFrame(
        {
            "unique_id": np.repeat([f"s{i}" for i in range(n)], length),
            "ds": np.tile(pd.date_range("2020-01-01", periods=length, freq="h").to_numpy(), n),
            "y": np.random.default_rng(0).random(n * length),
            "k": 1.0,
            "cls": np.repeat([f"c{i % 4}" for i in range(n)], length),
        }
    )
    path = _write(frame.sample(frac=1.0, random_state=0), tmp_path / "big.parquet")
    start = time.perf_counter()
    panel = read_panel(str(path), static_columns=["cls"], known_columns=["k"])
    assert time.perf_counter() - start < 10
    assert len(panel) == n and panel.static.shape == (n, 4)
    assert all(len(t) == length for t in panel.target)
    row = frame[frame.unique_id == "s7"].y.to_numpy(np.float32)
    np.testing.assert_array_equal(panel.target[panel.ids.index("s7")], row)


# -------------------------------------------------------------------------------------- long: bad input


def _raises(path: Path, match: str, **kwargs: object) -> str:
    with pytest.raises(DataError, match=match) as info:
        read_panel(str(path), **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert path.name in message
    return message


def test_long_missing_columns(tmp_path: Path) -> None:
    path = _write(_long_frame(), tmp_path / "p.csv")
    message = _raises(path, "not found", known_columns=["tmp"])
    assert "data.known_columns" in message and "Available columns: unique_id, ds, y, temp" in message
    _raises(path, "'item'", id_column="item")
    _raises(path, "data.target_column", target_column="value")


def test_long_nan_id(tmp_path: Path) -> None:
    frame = _long_frame()
    frame.loc[2, "unique_id"] = None
    message = _raises(_write(frame, tmp_path / "p.csv"), "empty in 1 row")
    assert "file line 4" in message  # header is line 1, data row 2 (0-based) is line 4


def test_long_duplicate_pairs(tmp_path: Path) -> None:
    frame = _long_frame()
    frame = pd.concat([frame, frame.iloc[[1, 6]]], ignore_index=True)
    message = _raises(_write(frame, tmp_path / "p.csv"), "2 duplicate")
    assert "id 'b' at 2021-03-01 01:00:00" in message and "file line 3" in message


def test_long_unparseable_timestamps(tmp_path: Path) -> None:
    frame = _long_frame()
    frame["ds"] = frame["ds"].astype(str)
    frame.loc[3, "ds"] = "not a date"
    message = _raises(_write(frame, tmp_path / "p.csv"), "cannot parse column 'ds'")
    assert "'not a date' at row 3 (file line 5)" in message
    frame.loc[3, "ds"] = None
    _raises(_write(frame, tmp_path / "q.csv"), "empty timestamp")


def test_long_mixed_frequencies(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "unique_id": ["hourly"] * 3 + ["daily"] * 3,
            "ds": list(pd.date_range("2020", periods=3, freq="h")) + list(pd.date_range("2020", periods=3, freq="D")),
            "y": np.ones(6),
        }
    )
    path = _write(frame, tmp_path / "p.csv")
    message = _raises(path, "mixed frequencies")
    assert "series 'hourly' has frequency h but series 'daily' has D" in message
    assert "data.freq" in message
    # with a frequency given, both series lie on its grid (the daily one with NaN between its days)
    panel = read_panel(str(path), freq="h")
    assert panel.freq == "h" and len(panel.target[1]) == 49
    # an off-grid timestamp under a given frequency is named
    message = _raises(path, "not on its grid", freq="2D")
    assert "'hourly'" in message


def test_long_static_varies(tmp_path: Path) -> None:
    frame = _long_frame()
    frame.loc[2, "region"] = "east"
    message = _raises(_write(frame, tmp_path / "p.csv"), "varies within series 'b'", static_columns=["region"])
    assert "'north' and 'east'" in message and "file line 4" in message


def test_long_corrupt_and_empty(tmp_path: Path) -> None:
    bad = tmp_path / "p.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet")
    _raises(bad, "cannot read")
    empty = tmp_path / "e.csv"
    empty.write_text("unique_id,ds,y\n")
    _raises(empty, "no data rows")
    with pytest.raises(DataError, match="does not exist"):
        read_panel(str(tmp_path / "missing.csv"))


def test_long_series_without_target(tmp_path: Path) -> None:
    frame = _long_frame()
    frame.loc[frame.unique_id == "b", "y"] = np.nan
    _raises(_write(frame, tmp_path / "p.csv"), "no observed 'y' value: 'b'")


def test_long_bad_freq_and_numbers(tmp_path: Path) -> None:
    path = _write(_long_frame(), tmp_path / "p.csv")
    _raises(path, "not a pandas frequency", freq="hourly")
    frame = _long_frame()
    frame["temp"] = frame["temp"].astype(object)
    frame.loc[1, "temp"] = "warm"
    _raises(_write(frame, tmp_path / "n.csv"), "not numbers", known_columns=["temp"])


# -------------------------------------------------------------------------------------------- gluonts


def _jsonl(path: Path, entries: list[dict[str, object]]) -> Path:
    text = "".join(json.dumps(e) + "\n" for e in entries)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_gluonts_jsonl_minimal(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "train.jsonl",
        [{"start": "2020-01-01 00:00:00", "target": [1, 2, "NaN", 4]}, {"start": "2020-01-02", "target": [5, 6]}],
    )
    panel = read_panel(str(path), freq="h")
    assert panel.ids == ["0", "1"]
    assert panel.freq == "h"
    assert panel.starts == [pd.Timestamp("2020-01-01"), pd.Timestamp("2020-01-02")]
    np.testing.assert_array_equal(panel.target[0], [1, 2, np.nan, 4])
    assert panel.known[0].shape == (4, 0) and panel.static.shape == (2, 0)
    assert list(panel.timestamps(1)) == list(pd.date_range("2020-01-02", periods=2, freq="h"))


def test_gluonts_jsonl_full(tmp_path: Path) -> None:
    entries: list[dict[str, object]] = [
        {
            "item_id": f"item_{i}",
            "start": "2021-05-01",
            "target": [float(i)] * 5,
            "feat_static_real": [0.5 * i, 1.0],
            "feat_static_cat": [i % 2, 3],
            "feat_dynamic_real": [list(range(8)), [1.0] * 8],  # 3 forecast steps past the target
        }
        for i in range(3)
    ]
    panel = read_panel(str(_jsonl(tmp_path / "d.json.gz", entries)), freq="D")
    assert panel.ids == ["item_0", "item_1", "item_2"]
    assert panel.freq == "D"
    assert panel.known[2].shape == (8, 2)
    np.testing.assert_array_equal(panel.known[2][:, 0], np.arange(8))
    assert panel.known_names == ["feat_dynamic_real_0", "feat_dynamic_real_1"]
    assert panel.static_names == [
        "feat_static_real_0",
        "feat_static_real_1",
        "feat_static_cat_0=0",
        "feat_static_cat_0=1",
        "feat_static_cat_1=3",
    ]
    np.testing.assert_array_equal(panel.static[1], [0.5, 1.0, 0, 1, 1])


def test_gluonts_weekly_periods(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "w.jsonl", [{"start": "2022-01-05", "target": [1, 2, 3]}])
    panel = read_panel(str(path), freq="W")
    # gluonts reads the start as the week Period that holds it; the grid runs through period starts
    assert panel.starts == [pd.Timestamp("2022-01-03")]
    assert panel.timestamps(0)[1] == pd.Timestamp("2022-01-10")


def test_gluonts_folder_with_metadata_freq(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "metadata.json").write_text(json.dumps({"freq": "15min", "prediction_length": 4}))
    train = tmp_path / "ds" / "train"
    train.mkdir()
    _jsonl(train / "part-0.json", [{"start": "2020-01-01 00:15", "target": [1, 2]}])
    _jsonl(train / "part-1.json", [{"start": "2020-01-01 00:30", "target": [3, 4, 5]}])
    panel = read_panel(str(train))
    assert panel.freq == "15min"
    assert panel.ids == ["0", "1"]
    assert [len(t) for t in panel.target] == [2, 3]


def test_gluonts_arrow(tmp_path: Path) -> None:
    arrow = pytest.importorskip("gluonts.dataset.arrow", reason="gluonts' arrow support needs pyarrow")
    data = [
        {"item_id": "x", "start": pd.Period("2020-01-01", "D"), "target": np.arange(5, dtype=np.float32)},
        {
            "item_id": "y",
            "start": pd.Period("2020-02-01", "D"),
            "target": np.ones(3, dtype=np.float32),
        },
    ]
    path = tmp_path / "data.arrow"
    arrow.ArrowWriter(metadata={"freq": "D"}).write_to_file(data, path)
    panel = read_panel(str(path))
    assert panel.ids == ["x", "y"] and panel.freq == "D"
    assert panel.starts[1] == pd.Timestamp("2020-02-01")
    np.testing.assert_array_equal(panel.target[0], np.arange(5))
    feather = tmp_path / "data.feather"
    arrow.ArrowWriter().write_to_file(data, feather)
    with pytest.raises(DataError, match="data.freq"):
        read_panel(str(feather))
    assert read_panel(str(feather), freq="D").ids == ["x", "y"]


def test_gluonts_parquet_auto(tmp_path: Path) -> None:
    frame = pd.DataFrame({"start": ["2020-01-01", "2020-01-03"], "target": [[1.0, 2.0], [3.0, 4.0, 5.0]]})
    path = tmp_path / "g.parquet"
    frame.to_parquet(path)
    panel = read_panel(str(path), freq="D")
    assert panel.ids == ["0", "1"] and [len(t) for t in panel.target] == [2, 3]


# ----------------------------------------------------------------------------------- gluonts: bad input


def test_gluonts_needs_freq(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"start": "2020-01-01", "target": [1, 2]}])
    message = _raises(path, "not a pandas Period")
    assert "line 1" in message and "data.freq" in message
    _raises(path, "not a pandas period frequency", freq="MS")


def test_gluonts_bad_start(tmp_path: Path) -> None:
    entries: list[dict[str, object]] = [
        {"start": "2020-01-01", "target": [1]},
        {"start": "2020-01-01", "target": [1]},
        {"start": "yesterday-ish", "target": [1]},
    ]
    message = _raises(_jsonl(tmp_path / "d.jsonl", entries), "does not parse", freq="D")
    assert "line 3" in message and "'yesterday-ish'" in message


def test_gluonts_2d_target(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"item_id": "m", "start": "2020-01-01", "target": [[1, 2], [3, 4]]}])
    message = _raises(path, "target is 2-D", freq="D")
    assert "series 'm'" in message and "one entry per variable" in message


def test_gluonts_corrupt_and_empty(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"start": "2020-01-01", "target": [1]}) + "\n{broken\n")
    message = _raises(path, "not valid JSON", freq="D")
    assert "line 2" in message
    gz = tmp_path / "d.json.gz"
    gz.write_bytes(b"\x1f\x8b\x08garbage")
    _raises(gz, "cannot read gluonts data file", freq="D")
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    _raises(empty, "holds no series", freq="D")
    table = _write(_long_frame(), tmp_path / "long.csv")
    _raises(table, "data.format=long", format="gluonts")
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no gluonts data file.*readme.txt"):
        read_panel(str(folder))


def test_gluonts_inconsistent_fields(tmp_path: Path) -> None:
    entries: list[dict[str, object]] = [
        {"item_id": "a", "start": "2020-01-01", "target": [1, 2], "feat_dynamic_real": [[1, 2, 3]]},
        {"item_id": "b", "start": "2020-01-01", "target": [1, 2]},
    ]
    message = _raises(_jsonl(tmp_path / "d.jsonl", entries), "feat_dynamic_real lacks it", freq="D")
    assert "series 'b'" in message
    entries[1] = {"item_id": "a", "start": "2020-01-01", "target": [1, 2], "feat_dynamic_real": [[1, 2]]}
    _raises(_jsonl(tmp_path / "e.jsonl", entries), "item_id 'a' occurs twice", freq="D")
    entries[1] = {"item_id": "b", "start": "2020-01-01", "target": [1, 2, 3], "feat_dynamic_real": [[1, 2]]}
    _raises(_jsonl(tmp_path / "f.jsonl", entries), "feat_dynamic_real has 2 steps but the target has 3", freq="D")
    _raises(_jsonl(tmp_path / "g.jsonl", [{"start": "2020-01-01"}]), "lacks field", freq="D")
