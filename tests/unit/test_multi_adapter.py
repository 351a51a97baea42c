"""One frozen base, many adapters: ``predict --backbone ttm --weights W --adapter A --adapter B``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from sciadapt import cli
from sciadapt.peft import core
from sciadapt.predict.adapters import applied, parse_adapter_refs
from sciadapt.predict.forecast import forecast_frame, zero_shot_task
from sciadapt.registry import BACKBONES, PEFT_METHODS
from tests.conftest import make_series_csv


def _adapter(weights: Path, data: Path, folder: Path, seed: int) -> Path:
    """A LoRA adapter on the zero-shot task of ``weights`` with random, non-zero B matrices."""
    task, _, _ = zero_shot_task("ttm", str(weights), str(data), folder.parent / "unused.csv")
    core.attach(task, PEFT_METHODS.build("lora", r=2, alpha=4), "x")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in core.peft_layers(task).values():
            b = layer.lora_B["x"].weight
            b.copy_(torch.randn(b.shape, generator=gen) * 0.5)
    return core.save_adapter(task, folder, "x")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("multi_adapter")
    data = make_series_csv(tmp / "s.csv", n=120, channels=1, exog=False)
    torch.manual_seed(0)
    base = BACKBONES.build("ttm_tiny").save_pretrained(tmp / "base")
    torch.manual_seed(1)
    other = BACKBONES.build("ttm_tiny").save_pretrained(tmp / "other_base")
    return {
        "tmp": tmp,
        "data": data,
        "base": Path(base),
        "a": _adapter(Path(base), data, tmp / "site_a", 1),
        "b": _adapter(Path(base), data, tmp / "site_b", 2),
        "foreign": _adapter(Path(other), data, tmp / "foreign", 3),
    }


def _fresh(base: Path, adapter: Path, data: Path) -> np.ndarray[Any, Any]:
    """The forecast of a freshly read base with one adapter loaded: what every switch must equal."""
    task, dm, inputs = zero_shot_task("ttm", str(base), str(data), data.parent / "unused.csv")
    core.load_adapter(task, adapter, "fresh")
    frame, _ = forecast_frame(task, dm, inputs)
    return frame.to_numpy()


def _predict(s: dict[str, Path], out: Path, *adapters: str, extra: tuple[str, ...] = ()) -> int:
    argv = ["predict", "--backbone", "ttm", "--weights", str(s["base"]), "--data", str(s["data"]), "--out", str(out)]
    for a in adapters:
        argv += ["--adapter", a]
    return cli.main(argv + list(extra))


def test_each_adapter_forecasts_as_a_fresh_load_of_base_and_adapter(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "y.csv"
    assert _predict(setup, out, str(setup["a"]), f"second={setup['b']}") == 0
    got_a = pd.read_csv(tmp_path / "y.site_a.csv", index_col="timestamp")
    got_b = pd.read_csv(tmp_path / "y.second.csv", index_col="timestamp")
    assert (tmp_path / "y.site_a.png").is_file() and (tmp_path / "y.second.png").is_file() and not out.exists()
    assert list(got_a.columns) == ["y0"] and len(got_a) == 16
    assert not np.allclose(got_a.to_numpy(), got_b.to_numpy(), atol=1e-4)  # the adapters matter
    np.testing.assert_allclose(got_a.to_numpy(), _fresh(setup["base"], setup["a"], setup["data"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_b.to_numpy(), _fresh(setup["base"], setup["b"], setup["data"]), rtol=1e-5, atol=1e-5)


def test_switching_leaves_the_base_as_loaded(setup: dict[str, Path]) -> None:
    task, dm, inputs = zero_shot_task("ttm", str(setup["base"]), str(setup["data"]), setup["tmp"] / "unused.csv")
    before = {k: v.clone() for k, v in task.state_dict().items()}
    plain, _ = forecast_frame(task, dm, inputs)
    for folder in (setup["a"], setup["b"], setup["a"]):
        with applied(task, folder, "live"):
            assert core.adapters(task).keys() == {"live"}
    assert not core.peft_layers(task) and not core.adapters(task)
    after = task.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    np.testing.assert_array_equal(forecast_frame(task, dm, inputs)[0].to_numpy(), plain.to_numpy())


def test_an_adapter_for_another_base_writes_nothing(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "y.csv"
    assert _predict(setup, out, str(setup["a"]), str(setup["foreign"])) == 2
    err = capsys.readouterr().err
    assert "--adapter foreign:" in err and "different base model" in err and "nothing was written" in err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_named_adapter_per_group(setup: dict[str, Path], tmp_path: Path) -> None:
    one = pd.read_csv(setup["data"])
    two = pd.read_csv(make_series_csv(tmp_path / "s2.csv", n=100, seed=5, channels=1, exog=False))
    both = pd.concat([one.assign(site="north"), two.assign(site="south")])
    both.to_csv(tmp_path / "panel.csv", index=False)
    out = tmp_path / "out" / "y.csv"
    argv = ["predict", "--backbone", "ttm", "--weights", str(setup["base"]), "--data", str(tmp_path / "panel.csv")]
    argv += ["--out", str(out), "--adapter", f"north={setup['a']}", "--adapter", f"south={setup['b']}"]
    assert cli.main([*argv, "--group-column", "site"]) == 0
    north = pd.read_csv(out.parent / "y.north.csv", index_col="timestamp").to_numpy()
    south = pd.read_csv(out.parent / "y.south.csv", index_col="timestamp").to_numpy()
    np.testing.assert_allclose(north, _fresh(setup["base"], setup["a"], setup["data"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(south, _fresh(setup["base"], setup["b"], tmp_path / "s2.csv"), rtol=1e-5, atol=1e-5)


def test_a_group_without_its_adapter_is_one_line(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pd.read_csv(setup["data"]).assign(site="east").to_csv(tmp_path / "panel.csv", index=False)
    argv = ["predict", "--backbone", "ttm", "--weights", str(setup["base"]), "--data", str(tmp_path / "panel.csv")]
    argv += ["--out", str(tmp_path / "o" / "y.csv"), "--adapter", f"north={setup['a']}", "--group-column", "site"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "groups without an adapter: east" in err and "adapters without a group: north" in err
    assert not (tmp_path / "o").exists()


def test_hub_adapter_references_resolve_through_the_hub_reader(
    setup: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sciadapt.hub as hub

    asked: list[tuple[str, str | None, str | None]] = []

    def fake_download(ref: hub.HubRef, patterns: list[str]) -> Path:
        asked.append((ref.repo_id, ref.subfolder, ref.revision))
        assert "adapter_model.safetensors" in patterns
        return setup["tmp"] / (ref.subfolder or "")

    monkeypatch.setattr(hub, "_download", fake_download)
    assert _predict(setup, tmp_path / "y.csv", "hf://org/adapters/site_b@v1") == 0
    assert asked == [("org/adapters", "site_b", "v1")] and (tmp_path / "y.site_b.csv").is_file()


def test_offline_hub_adapter_is_one_line(
    setup: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub

    def offline(*args: object, **kwargs: object) -> str:
        raise huggingface_hub.errors.LocalEntryNotFoundError("no connection and not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _predict(setup, tmp_path / "y.csv", str(setup["a"]), "hf://org/repo") == 2
    err = capsys.readouterr().err
    assert "cannot fetch hf://org/repo" in err and "HF_HUB_OFFLINE is set" in err and list(tmp_path.iterdir()) == []


def test_adapter_references() -> None:
    refs = parse_adapter_refs(["runs/x/adapters/lora", "b=hf://org/repo/sub@main", "hf://org/repo2"])
    assert [(r.name, r.source) for r in refs] == [
        ("lora", "runs/x/adapters/lora"),
        ("b", "hf://org/repo/sub@main"),
        ("repo2", "hf://org/repo2"),
    ]
    from sciadapt.errors import ConfigError

    with pytest.raises(ConfigError, match="two adapters are named 'lora'"):
        parse_adapter_refs(["a/lora", "b/lora"])
