"""User errors end with exit status 2, a message naming the file/column/key and the fix, no traceback,
and nothing half-written in runs/."""

from __future__ import annotations

from pathlib import Path

import pytest

from sciadapt.cli import main
from tests.conftest import tiny_pipeline


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.target_columns=[y0,y9]"], ["'y9'", "series.csv", "Available columns"]),
        (["data.path=/no/such.csv"], ["/no/such.csv", "data.path"]),
        (["data.context_length=2000"], ["context_length", "2012 rows", "lower data.context_length"]),
        (["stages.probe.frozen=[backbone.nope]"], ["stages[1] (probe).frozen", "backbone.nope"]),
        (["backbone.name=nhit"], ["did you mean 'nhits'"]),
        (["stages.probe.init_from=stage:sauce"], ["did you mean 'source'"]),
    ],
)
def test_bad_input_is_a_clear_error(
    tmp_path: Path,
    series_csv: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: list[str],
    expected: list[str],
) -> None:
    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    assert main(["fit", str(pipe), *overrides]) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    assert "Traceback" not in err
    assert not list((tmp_path / "runs").glob("*/*")), "an invalid run must leave nothing in runs/"


def test_unsorted_and_duplicated_timestamps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    rows = ["date,y0,y1"] + [f"2021-01-{1 + i // 24:02d} {i % 24:02d}:00,{i},{i}" for i in range(400)]
    rows.insert(30, rows[29])  # a duplicated timestamp
    bad.write_text("\n".join(rows) + "\n")
    pipe = tiny_pipeline(tmp_path / "p.yaml", bad, tmp_path / "runs")
    assert main(["fit", str(pipe)]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "'date'" in err and "Fix" in err


def test_nan_in_data_names_column_and_policy(
    tmp_path: Path, series_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = series_csv.read_text().splitlines()
    cells = text[100].split(",")
    cells[1] = ""
    text[100] = ",".join(cells)
    series_csv.write_text("\n".join(text) + "\n")
    pipe = tiny_pipeline(tmp_path / "p.yaml", series_csv, tmp_path / "runs")
    assert main(["fit", str(pipe), "stages.*.max_epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "y0" in err and "nan_policy" in err
    # the fix the message names works
    assert main(["fit", str(pipe), "stages.*.max_epochs=1", "data.nan_policy=interpolate"]) == 0
