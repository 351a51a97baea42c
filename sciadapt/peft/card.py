"""Model cards of adapter directories: ``README.md`` in Hugging Face's model-card format.

A card is YAML front matter (``library_name``, ``base_model``, ``tags``, ``pipeline_tag``) and a
Markdown body: the base model and the fingerprint of the base weights the adapter was trained on
(from the adapter's own saved description), the method with its configuration and targets, the
data, the stage's test metrics and comparison rows, and the command that made the run. The
runner writes one into every ``adapters/<stage>/`` when the run finishes (again when a resumed run
finishes), so the folder describes itself wherever it is copied or pushed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sciadapt.peft import core as _core  # noqa: F401  # io needs core complete, and core imports io last
from sciadapt.peft.io import adapter_meta

#: ``pipeline_tag`` of each task (Hugging Face's task names); a task without a fitting one has none
PIPELINE_TAGS = {
    "forecasting": "time-series-forecasting",
    "solar_forecasting": "time-series-forecasting",
    "segmentation": "image-segmentation",
}

CARD_NAME = "README.md"


@dataclass(frozen=True)
class CardFacts:
    """What a card says beyond the adapter's own files (the run knows these).

    Attributes:
        pipeline: The pipeline's name.
        stage: The stage that trained the adapter.
        backbone: The backbone's registered name.
        weights: The base weights reference (``hf://org/repo@rev``, a path), if any.
        task: The task's registered name.
        data: The data the stage trained on (the datamodule's ``describe()`` line or its config).
        command: The command that made the run.
        base: Where the base weights under the adapter came from (pretrained weights, an earlier
            stage of the run, a checkpoint, scratch), one line.
        run_dir: The run directory (the ``predict --run`` line of the card).
        test: The stage's test metrics (``summary.json``), if scored.
        comparison: The run's comparison (``summary.json`` ``evaluation``), if present.
    """

    pipeline: str
    stage: str
    backbone: str
    weights: str | None
    task: str
    data: str
    command: str
    base: str = ""
    run_dir: str = ""
    test: dict[str, Any] | None = None
    comparison: dict[str, Any] = field(default_factory=dict)


def base_model_id(backbone: str, weights: str | None) -> str:
    """The card's ``base_model``: the Hub id of ``hf://org/repo@rev`` weights, else the weights
    reference, else the backbone's name (a local path would name nothing on the Hub)."""
    if weights and weights.startswith("hf://"):
        return weights.removeprefix("hf://").split("@")[0].strip("/")
    return backbone


def render_card(directory: str | Path, facts: CardFacts) -> str:
    """The ``README.md`` text of the adapter in ``directory``."""
    meta = adapter_meta(directory) or {}
    method = str(meta.get("method") or _hf_method(directory) or "adapter")
    tags = list(dict.fromkeys(["sciadapt", method, facts.task, facts.backbone, "peft"]))
    front: dict[str, Any] = {
        "library_name": "sciadapt",
        "base_model": base_model_id(facts.backbone, facts.weights),
        "tags": tags,
    }
    tag = PIPELINE_TAGS.get(facts.task)
    if tag is not None:
        front["pipeline_tag"] = tag
    fp = meta.get("fingerprint") or {}
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {facts.pipeline}: adapter `{facts.stage}`",
        "",
        f"A {method} adapter trained by sciadapt in stage `{facts.stage}` of pipeline "
        f"`{facts.pipeline}`, on top of the `{facts.backbone}` backbone.",
        "",
        "## Base model",
        "",
        f"- backbone: `{facts.backbone}`",
        f"- weights: `{facts.weights}`" if facts.weights else "- weights: none named (see below)",
    ]
    if facts.base:
        lines.append(f"- the adapter was trained on: {facts.base}")
    if fp.get("sha256"):
        lines.append(
            f"- base fingerprint (sha256 of the {len(fp.get('tensors') or {})} targeted base tensors): `{fp['sha256']}`"
        )
        lines.append("  (loading the adapter onto other base weights is refused)")
    lines += ["", "## Adapter", "", f"- method: `{method}`"]
    if meta.get("config"):
        lines.append(f"- config: `{json.dumps(meta['config'], sort_keys=True)}`")
    targets = meta.get("targets") or []
    if targets:
        shown = ", ".join(f"`{t}`" for t in targets[:24])
        more = f" and {len(targets) - 24} more" if len(targets) > 24 else ""
        lines.append(f"- targets ({len(targets)}): {shown}{more}")
    lines += ["", "## Data", "", f"- task: `{facts.task}`", f"- trained on: {facts.data}", ""]
    lines += _metrics(facts)
    lines += [
        "## How it was made",
        "",
        "```bash",
        facts.command,
        "```",
        "",
        "## Use",
        "",
        "```python",
        "from sciadapt.peft.core import load_adapter",
        "",
        "# model: the base the adapter was trained on (its fingerprint is checked)",
        f'load_adapter(model, "adapters/{facts.stage}", adapter="{facts.stage}")',
        "```",
        "",
    ]
    if facts.run_dir:
        lines += [f"With the whole run: `sciadapt predict --run {facts.run_dir} --out forecast.csv`", ""]
    return "\n".join(lines)


def write_card(directory: str | Path, facts: CardFacts) -> Path:
    """Write (atomically) ``directory/README.md``; returns its path."""
    from sciadapt.runs import atomic_write_text

    path = Path(directory) / CARD_NAME
    atomic_write_text(path, render_card(directory, facts))
    return path


def _hf_method(directory: str | Path) -> str | None:
    """The method of an adapter saved without sciadapt's description (``adapter_config.json``)."""
    path = Path(directory) / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    value = (cfg.get("sciadapt_method") or cfg.get("peft_type")) if isinstance(cfg, dict) else None
    return str(value).lower() if value else None


def _number(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "-" if v is None else str(v)
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def _metrics(facts: CardFacts) -> list[str]:
    lines = ["## Metrics", ""]
    test = {k: v for k, v in (facts.test or {}).items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if test:
        lines += [f"Test split of the stage's data (`summary.json`, `stages.{facts.stage}.test`):", ""]
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_number(v)} |" for k, v in sorted(test.items())]
        lines.append("")
    rows = facts.comparison.get("rows") or []
    metrics = [str(m) for m in facts.comparison.get("metrics") or []]
    if rows and metrics:
        where = facts.comparison.get("data", "the last stage's test split")
        lines += [f"Comparison on {where} (this stage's rows in bold):", ""]
        lines += ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        for r in rows:
            name = str(r.get("model", ""))
            if r.get("stage") == facts.stage:
                name = f"**{name}**"
            lines.append(f"| {name} | " + " | ".join(_number(r.get(m)) for m in metrics) + " |")
        lines.append("")
    if len(lines) == 2:
        lines += ["The stage was not scored (`evaluate: false`, and not in the comparison).", ""]
    return lines
