"""Run results: flat ``val/...`` and ``test/...`` metrics, as JSON and as a table."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

log = logging.getLogger(__name__)

RECALL_COLUMNS = ("r1", "r5", "r10")
# below this many images a split's Recall@K moves by a point or more per image
SMALL_SPLIT = 100
TRIVIAL_MARK = "*"
_RECALL = re.compile(r"(i2t|t2i)_r(\d+)")


def to_floats(metrics: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Tensors and numbers -> plain floats, sorted by key."""
    return {
        key: float(value.item() if isinstance(value, torch.Tensor) else value)
        for key, value in sorted(metrics.items())
    }


def read_json_object(
    path: Path, error: type[Exception], what: str = "an object", fix: str = ""
) -> dict[str, Any]:
    """A result file read back as a JSON object; anything else raises ``error`` in one line
    naming the file, what it holds instead of ``what`` and the ``fix``."""
    fix = f"; {fix}" if fix else ""
    try:
        loaded = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path} is not readable JSON ({exc}){fix}") from None
    if not isinstance(loaded, dict):
        raise error(f"{path} holds {type(loaded).__name__}, not {what}{fix}")
    return loaded


def write_json(path: Path, results: Mapping[str, Any]) -> None:
    """Write ``results`` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.write_text(json.dumps(dict(results), indent=2) + "\n")
    except OSError as exc:
        exc.filename = exc.filename or str(path)  # a failed write() names no file
        raise


def trivial_recalls(metrics: Mapping[str, float], prefix: str) -> list[str]:
    """The Recall@K of ``prefix`` that are 100 by construction: K >= the candidates ranked
    (the split's captions for image → text, its images for text → image)."""
    candidates = {"i2t": metrics[f"{prefix}/captions"], "t2i": metrics[f"{prefix}/images"]}
    return [
        name
        for name in (key.removeprefix(f"{prefix}/") for key in metrics)
        if (match := _RECALL.fullmatch(name)) and int(match[2]) >= candidates[match[1]]
    ]


def print_recall_table(metrics: Mapping[str, float], prefix: str, title: str) -> None:
    """``title``, then image->text and text->image Recall@K (percent) and RSUM.

    Trivial figures (:func:`trivial_recalls`) are marked, and a split of fewer than
    :data:`SMALL_SPLIT` images gets one warning. Nothing is printed for a split that was not
    evaluated (``trainer.limit_val_batches=0``).
    """
    if f"{prefix}/images" not in metrics:
        return
    trivial = trivial_recalls(metrics, prefix)
    table = Table()
    table.add_column("direction")
    for column in RECALL_COLUMNS:
        table.add_column(f"R@{column[1:]}", justify="right")
    for direction, label in (("i2t", "image → text"), ("t2i", "text → image")):
        cells = []
        for column in RECALL_COLUMNS:
            value = metrics.get(f"{prefix}/{direction}_{column}")
            mark = TRIVIAL_MARK if f"{direction}_{column}" in trivial else ""
            cells.append("-" if value is None else f"{value:.2f}{mark}")
        table.add_row(label, *cells)
    lines = [f"RSUM {metrics[f'{prefix}/rsum']:.2f}"] if f"{prefix}/rsum" in metrics else []
    if trivial:
        lines.append(f"{TRIVIAL_MARK} trivial: K ≥ the candidates ranked, 100 by construction")
    # title and notes as plain lines: a table's own title wraps at the table's width
    console = Console(highlight=False)
    console.print(title)
    console.print(table)
    for line in lines:
        console.print(line)
    images = int(metrics[f"{prefix}/images"])
    if images < SMALL_SPLIT:
        log.warning(
            "the %s split has only %s: one image moves image → text Recall@K by %.1f points; "
            "use a split of %d or more images for figures worth comparing",
            prefix,
            f"{images} image{'' if images == 1 else 's'}",
            100 / images,
            SMALL_SPLIT,
        )
