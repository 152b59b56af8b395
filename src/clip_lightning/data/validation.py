"""Find records that cannot be trained on: missing or unreadable images, no captions left.

Two depths: :func:`header_check` opens each image's header only (fast enough for every
``setup``: 31k files in seconds on a thread pool), :func:`decode_check` decodes every pixel
(``clip_lightning.prepare`` and the cache build). :func:`apply_policy` then raises one clear
:class:`DataError` (``on_bad_image=error``) or drops the records with a logged count
(``on_bad_image=skip``) -- bad data is never dropped silently.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from clip_lightning.data.records import CaptionRecord, FileImage, ImageSource, load_rgb
from clip_lightning.errors import DataError

log = logging.getLogger(__name__)

POLICIES = ("error", "skip")
# file reads wait on the disk, not the CPU, so more threads than cores pay off
THREADS = min(32, 4 * (os.cpu_count() or 1))


def header_check(source: ImageSource) -> str | None:
    """None if the image exists and PIL recognises its header, else the reason."""
    if isinstance(source, FileImage) and not source.path.is_file():
        return "missing"
    try:
        with source.open():
            return None
    except Exception as exc:  # PIL, OS and dataset errors come in many types
        return f"unreadable ({type(exc).__name__})"


def decode_check(source: ImageSource) -> str | None:
    """None if every pixel decodes to RGB, else the reason (truncated files fail here)."""
    if isinstance(source, FileImage) and not source.path.is_file():
        return "missing"
    try:
        load_rgb(source)
    except Exception as exc:  # PIL, OS and dataset errors come in many types
        return f"unreadable ({type(exc).__name__})"
    return None


@dataclass
class BadRecords:
    """Records with a bad image (and why) and records left without captions."""

    images: list[tuple[CaptionRecord, str]] = field(default_factory=list)
    empty: list[CaptionRecord] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.images or self.empty)

    @property
    def ids(self) -> set[str]:
        return {r.image_id for r, _ in self.images} | {r.image_id for r in self.empty}

    def describe(self, total: int, limit: int = 5) -> str:
        """E.g. ``2 of 100 images are missing or unreadable (a.jpg: missing, ...)``."""
        parts = []
        if self.images:
            shown = ", ".join(f"{r.image.key}: {why}" for r, why in self.images[:limit])
            more = ", ..." if len(self.images) > limit else ""
            parts.append(
                f"{len(self.images)} of {total} images are missing or unreadable ({shown}{more})"
            )
        if self.empty:
            shown = ", ".join(r.image_id for r in self.empty[:limit])
            more = ", ..." if len(self.empty) > limit else ""
            parts.append(
                f"{len(self.empty)} of {total} images have no caption left after cleaning "
                f"(image ids {shown}{more})"
            )
        return " and ".join(parts)


def find_bad_records(
    records: Sequence[CaptionRecord],
    check: Callable[[ImageSource], str | None] = header_check,
    threads: int = THREADS,
) -> BadRecords:
    """Run ``check`` on every image in a thread pool; collect empty-caption records too."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        reasons = list(pool.map(check, (r.image for r in records), chunksize=64))
    return BadRecords(
        images=[(r, why) for r, why in zip(records, reasons, strict=True) if why is not None],
        empty=[r for r in records if not r.captions],
    )


def apply_policy(
    records: Sequence[CaptionRecord], bad: BadRecords, policy: str, name: str = "dataset"
) -> list[CaptionRecord]:
    """Raise for bad records (``error``) or drop them with a warning (``skip``)."""
    if policy not in POLICIES:
        raise DataError(f"dataset.on_bad_image={policy!r}; choose one of {POLICIES}")
    if not bad:
        return list(records)
    summary = bad.describe(len(records))
    if policy == "error":
        raise DataError(
            f"{name}: {summary}. Skip them with dataset.on_bad_image=skip, or list them all "
            f"with `python -m clip_lightning.prepare dataset={name} dataset.root=...`"
        )
    log.warning("%s: skipping bad records (dataset.on_bad_image=skip): %s", name, summary)
    ids = bad.ids
    return [r for r in records if r.image_id not in ids]
