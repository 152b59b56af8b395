"""The exported folder's ``README.md``: how to load it, what it was trained on and how it
scores, written from the run directory the checkpoint came from."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from omegaconf import OmegaConf

from clip_lightning.export.faithful import ExportError
from clip_lightning.module import CLIPModule
from clip_lightning.protocols import Protocol
from clip_lightning.utils.results import RECALL_COLUMNS, read_json_object

LOAD = {
    "open_clip": """```python
import open_clip

model, _, preprocess = open_clip.create_model_and_transforms("{source}")
tokenizer = open_clip.get_tokenizer("{source}")
```""",
    "hf": """```python
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{source}")
processor = AutoProcessor.from_pretrained("{source}")
```""",
}


def model_card(
    model: CLIPModule,
    format: str,
    out: Path,
    run_dir: Path | None,
    notes: list[str],
    hub_repo: str | None = None,
) -> str:
    """Markdown: loading snippet, data, recall table (from ``metrics.json``), training config.

    The snippet loads the hub repository ``hub_repo`` if the folder is uploaded there, else the
    folder by its name (relative to where it lies, so the card stays right when it moves).
    """
    if format == "open_clip":
        source = f"hf-hub:{hub_repo}" if hub_repo else f"local-dir:{out.name}"
    else:
        source = hub_repo or out.name
    run_config = _run_config(run_dir)
    library = "open_clip" if format == "open_clip" else "transformers"
    sections = [
        f"---\nlibrary_name: {library}\n"
        "tags: [clip, clip-lightning, zero-shot-image-classification]\n---",
        f"# {out.name}",
        "A CLIP-style image-text dual encoder trained with clip-lightning.",
        "## Load\n\n" + LOAD[format].format(source=source),
    ]
    if notes:
        sections.append("## Notes\n\n" + "\n".join(f"- {note}" for note in notes))
    dataset = (run_config or {}).get("dataset")
    if dataset:
        described = ", ".join(
            f"{key}: {dataset[key]}" for key in ("name", "format", "root") if dataset.get(key)
        )
        sections.append(f"## Training data\n\n{described}")
    metrics_file = run_dir / "metrics.json" if run_dir else None
    if metrics_file is not None and metrics_file.is_file():
        protocols = (run_config or {}).get("protocol")
        protocols = protocols if isinstance(protocols, Mapping) else {}
        sections.append("## Retrieval\n\n" + recall_table(read_metrics(metrics_file), protocols))
    config = run_config or {"model": _readable(dict(model.hparams))}
    sections.append(
        "## Training config\n\n```yaml\n" + OmegaConf.to_yaml(OmegaConf.create(config)) + "```"
    )
    return "\n\n".join(sections) + "\n"


def recall_table(metrics: dict[str, float], protocols: Mapping[str, Any]) -> str:
    """Recall@K (percent) of the run, test split when it has one, as a Markdown table under
    the protocol the run scored that split by (``protocols``: the run's ``protocol`` config)."""
    split = "test" if any(k.startswith("test/") for k in metrics) else "val"
    header = "| direction | " + " | ".join(f"R@{c[1:]}" for c in RECALL_COLUMNS) + " |"
    rows = [header, "|---" * (len(RECALL_COLUMNS) + 1) + "|"]
    for direction, label in (("i2t", "image → text"), ("t2i", "text → image")):
        values = [metrics.get(f"{split}/{direction}_{c}") for c in RECALL_COLUMNS]
        cells = " | ".join("-" if v is None else f"{v:.2f}" for v in values)
        rows.append(f"| {label} | {cells} |")
    protocol = Protocol(str(protocols.get(split, "split")))
    images, captions = metrics.get(f"{split}/images"), metrics.get(f"{split}/captions")
    if images is not None and captions is not None:
        scored = protocol.describe(split, images, captions)
    else:  # a metrics.json without the counts
        scored = f"protocol {protocol.name}, {split} split"
    rsum = metrics.get(f"{split}/rsum")
    caption = f"\n\n{scored}" + (f", RSUM {rsum:.2f}" if rsum is not None else "")
    return "\n".join(rows) + caption


def read_metrics(path: Path) -> dict[str, float]:
    """The run's ``metrics.json`` as numbers; anything else is refused in one line (the card
    would otherwise show a table it cannot vouch for)."""
    fix = f"fix {path} or move it away to export without the recall table"
    metrics = read_json_object(path, ExportError, fix=fix)
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ExportError(f"{path}: {key!r} is {value!r}, not a number; {fix}")
    return metrics


def _run_config(run_dir: Path | None) -> dict | None:
    path = run_dir / ".hydra" / "config.yaml" if run_dir else None
    if path is None or not path.is_file():
        return None
    return cast(dict, OmegaConf.to_container(OmegaConf.load(path), resolve=False))


def _readable(hparams: dict[str, Any]) -> dict[str, Any]:
    """The module's hyperparameters without the files a checkpoint inlines (binary blobs)."""
    return {
        key: {k: v for k, v in value.items() if k != "saved_files"}
        if isinstance(value, dict)
        else value
        for key, value in hparams.items()
    }
