"""One search result, whichever index produced it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Hit:
    """The ``rank``-th best match (from 1) of a query: the image (a file path relative to the
    searched folder, an absolute path, or a shard key), its cosine score and its caption if the
    collection has one."""

    rank: int
    score: float
    image: str
    caption: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
