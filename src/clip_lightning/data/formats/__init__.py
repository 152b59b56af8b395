"""Format adapters: each turns one on-disk or hub layout into :class:`CaptionRecord` lists.

Adapters only *describe* data (records); loading, splitting and sampling live in the shared
core, so a new format is one small function registered in :data:`FORMATS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from clip_lightning.data.formats.synthetic import load_synthetic
from clip_lightning.data.records import CaptionRecord
from clip_lightning.errors import DataError

FORMATS: dict[str, Callable[..., list[CaptionRecord]]] = {
    "synthetic": load_synthetic,
}


def load_records(format: str, root: str | Path | None = None, **options: Any) -> list[CaptionRecord]:
    """Dispatch to the adapter named by ``format`` with the adapter's own ``options``."""
    if format not in FORMATS:
        raise DataError(
            f"unknown dataset.format={format!r}; choose one of {sorted(FORMATS)}"
        )
    if format == "synthetic":
        return FORMATS[format](**options)
    return FORMATS[format](Path(root) if root is not None else None, **options)
