"""Run results: flat ``val/...`` and ``test/...`` metrics, as JSON and as a table."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

RECALL_COLUMNS = ("r1", "r5", "r10")


def to_floats(metrics: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Tensors and numbers -> plain floats, sorted by key."""
    return {
        key: float(value.item() if isinstance(value, torch.Tensor) else value)
        for key, value in sorted(metrics.items())
    }


def write_json(path: Path, results: Mapping[str, Any]) -> None:
    """Write ``results`` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.write_text(json.dumps(dict(results), indent=2) + "\n")
    except OSError as exc:
        exc.filename = exc.filename or str(path)  # a failed write() names no file
        raise


def print_recall_table(metrics: Mapping[str, float], prefix: str, title: str) -> None:
    """Image->text and text->image Recall@K (percent) plus RSUM, one row per direction."""
    table = Table(title=title)
    table.add_column("direction")
    for column in RECALL_COLUMNS:
        table.add_column(f"R@{column[1:]}", justify="right")
    for direction, label in (("i2t", "image → text"), ("t2i", "text → image")):
        values = [metrics.get(f"{prefix}/{direction}_{c}") for c in RECALL_COLUMNS]
        table.add_row(label, *("-" if v is None else f"{v:.2f}" for v in values))
    if f"{prefix}/rsum" in metrics:
        table.caption = f"RSUM {metrics[f'{prefix}/rsum']:.2f}"
    Console().print(table)
