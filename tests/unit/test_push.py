"""``sciadapt push RUN --stage S --repo org/name``: against a local folder standing in for the Hub."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from sciadapt import cli
from sciadapt.peft import core
from sciadapt.registry import PEFT_METHODS


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run directory whose stage `lora` wrote an adapter and its model card."""
    net = nn.Sequential(nn.Linear(4, 4))
    core.attach(net, PEFT_METHODS.build("lora", r=2, alpha=4), "lora", targets=["0"])
    folder = core.save_adapter(net, tmp_path / "run" / "adapters" / "lora", "lora")
    (folder / "README.md").write_text("---\nlibrary_name: peft\n---\n# card\n")
    (tmp_path / "run" / "checkpoints" / "probe").mkdir(parents=True)
    return tmp_path / "run"


class LocalHub:
    """Where the patched ``HfApi`` writes: ``root/<repo>/<revision>/``, and the calls it got."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[str] = []


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalHub:
    """``HfApi`` writing into a local folder instead of the network."""
    import huggingface_hub

    local = LocalHub(tmp_path / "hub")
    root, calls = local.root, local.calls

    def create_repo(self: Any, repo_id: str, repo_type: str = "model", private: bool = False, **kw: Any) -> str:
        (root / repo_id).mkdir(parents=True, exist_ok=True)
        (root / repo_id / ("PRIVATE" if private else "PUBLIC")).touch()
        calls.append("create_repo")
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self: Any, repo_id: str, branch: str, **kw: Any) -> None:
        calls.append(f"create_branch {branch}")

    def upload_folder(self: Any, repo_id: str, folder_path: str, revision: str = "main", **kw: Any) -> str:
        shutil.copytree(folder_path, root / repo_id / revision)
        calls.append(f"upload_folder {kw['commit_message']}")
        return "commit"

    for name, fn in (("create_repo", create_repo), ("create_branch", create_branch), ("upload_folder", upload_folder)):
        monkeypatch.setattr(huggingface_hub.HfApi, name, fn)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return local


def test_push_uploads_the_adapter_folder_and_its_card(
    run: Path, hub: LocalHub, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["push", str(run), "--stage", "lora", "--repo", "org/ttm-lora", "--revision", "site-a", "--private"]
    assert cli.main(argv) == 0
    got = hub.root / "org" / "ttm-lora"
    assert sorted(p.name for p in (got / "site-a").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert (got / "site-a" / "adapter_model.safetensors").read_bytes() == (
        run / "adapters" / "lora" / "adapter_model.safetensors"
    ).read_bytes()
    assert (got / "PRIVATE").exists()
    assert hub.calls[:2] == ["create_repo", "create_branch site-a"] and hub.calls[2].startswith(
        "upload_folder sciadapt push"
    )
    assert "pushed to https://huggingface.co/org/ttm-lora" in capsys.readouterr().out


def test_a_stage_without_adapters(run: Path, hub: LocalHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["push", str(run), "--stage", "probe", "--repo", "org/x"]) == 2
    err = capsys.readouterr().err
    assert "has no adapter for stage 'probe' (stages with adapters: lora)" in err
    assert not hub.root.exists()
    shutil.rmtree(run / "adapters")
    assert cli.main(["push", str(run), "--stage", "lora", "--repo", "org/x"]) == 2
    assert "it trained no adapters" in capsys.readouterr().err


def test_offline_is_one_line(
    run: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["push", str(run), "--stage", "lora", "--repo", "org/x"]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE is set" in err and len(err.strip().splitlines()) == 1 and not hub.root.exists()


def test_no_network_is_one_line(
    run: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub

    class ConnectError(Exception):  # what the hub's HTTP client raises without network (httpx's name)
        pass

    ConnectError.__module__ = "httpx"
    ConnectError.__name__ = "TransportError"

    def unreachable(self: Any, *args: Any, **kwargs: Any) -> str:
        raise ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)
    assert cli.main(["push", str(run), "--stage", "lora", "--repo", "org/x"]) == 2
    err = capsys.readouterr().err
    assert "cannot be reached (no network?" in err and len(err.strip().splitlines()) == 1
