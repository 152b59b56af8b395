"""Find records that cannot be trained on: missing or unreadable images, bad or no captions.

There is one image check and every caller uses it: training start-up, ``prepare`` and the
image-cache build all decode every pixel with :func:`~clip_lightning.data.records.load_rgb` and
name problems in one vocabulary ("missing", "unreadable (<error type>)"). A header-only check
would pass truncated JPEGs and corrupt bodies that later crash a DataLoader worker mid-epoch.

Decoding is CPU-bound, so :func:`check_images` spreads it over worker processes, and a JSON memo
remembers each image's verdict by its stamp -- path, size and mtime for a file; the arrow files
for a HF row whose bytes live inside the dataset -- so a second start decodes only what changed.
Sources without a stamp (rendered synthetic scenes, HF rows pointing at files outside the
dataset) are re-checked on every start. :func:`apply_policy` then raises one clear
:class:`DataError` (``on_bad_image=error``) or drops the records with a logged count
(``on_bad_image=skip``) -- bad data is never dropped silently.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from clip_lightning.data.records import BadImageError, CaptionRecord, ImageSource, load_rgb
from clip_lightning.errors import DataError

log = logging.getLogger(__name__)

POLICIES = ("error", "skip")
MEMO_NAME = "image-checks.json"
# The first images are decoded in this process to time them; the rest go to worker processes
# only when decoding them here would take longer than this (starting a pool costs ~0.1 s).
PROBE_IMAGES = 32
MIN_PARALLEL_SECONDS = 0.5


def image_problem(source: ImageSource) -> str | None:
    """None if every pixel of ``source`` decodes to RGB, else the reason."""
    try:
        load_rgb(source)
    except BadImageError as exc:
        return exc.reason
    return None


def source_stamp(source: ImageSource) -> tuple[str, str] | None:
    """``(key, version)`` of a source that has a cheap version (files: size and mtime); a
    verdict on it, or its cached pixels, stay valid while this is unchanged. None otherwise."""
    stamp = getattr(source, "stamp", None)
    return stamp() if callable(stamp) else None


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_all(
    sources: Sequence[ImageSource],
    workers: int | None = None,
    min_parallel_seconds: float = MIN_PARALLEL_SECONDS,
) -> list[str | None]:
    """:func:`image_problem` of every source, in order, over ``workers`` processes -- or in
    this process when there is one core, or the images are too few or too cheap (rendered
    synthetic scenes) to pay for the pool."""
    workers = workers or default_workers()
    start = time.perf_counter()
    problems = [image_problem(source) for source in sources[:PROBE_IMAGES]]
    rest = sources[PROBE_IMAGES:]
    estimate = (time.perf_counter() - start) / max(1, len(problems)) * len(rest)
    if workers <= 1 or estimate < min_parallel_seconds:
        return problems + [image_problem(source) for source in rest]
    chunksize = max(1, min(64, len(rest) // (8 * workers)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return problems + list(pool.map(image_problem, rest, chunksize=chunksize))


def _read_memo(path: Path) -> dict[str, list]:
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged: everything is checked again
        return {}
    return memo if isinstance(memo, dict) else {}


def _write_memo(path: Path, memo: dict[str, list]) -> None:
    partial = path.with_name(f"partial-{path.name}")
    partial.write_text(json.dumps(memo))
    os.replace(partial, path)


def check_images(
    sources: Sequence[ImageSource], memo: Path | None = None, workers: int | None = None
) -> list[str | None]:
    """The problem of each image (None: it decodes), in order.

    With ``memo`` (a JSON file), files whose size and mtime match a remembered verdict are not
    decoded again, and the new verdicts are written back; a file lock keeps concurrent ranks
    from checking the same files twice.
    """
    stamps = [source_stamp(source) for source in sources]
    if memo is None or not any(stamps):
        return _check(sources, stamps, {}, workers)[0]
    memo.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(memo.with_name(f"{memo.name}.lock"))):
        problems, remembered = _check(sources, stamps, _read_memo(memo), workers)
        _write_memo(memo, remembered)
    return problems


def _check(
    sources: Sequence[ImageSource],
    stamps: Sequence[tuple[str, str] | None],
    known: dict[str, list],
    workers: int | None,
) -> tuple[list[str | None], dict[str, list]]:
    """Verdicts for ``sources`` reusing ``known``; also the memo entries of the stamped ones."""
    start = time.perf_counter()
    problems: list[str | None] = [None] * len(sources)
    todo = []
    for index, stamp in enumerate(stamps):
        entry = known.get(stamp[0]) if stamp is not None else None
        if entry is not None and stamp is not None and entry[0] == stamp[1]:
            problems[index] = entry[1]
        else:
            todo.append(index)
    decoded = decode_all([sources[i] for i in todo], workers)
    for index, problem in zip(todo, decoded, strict=True):
        problems[index] = problem
    seconds = time.perf_counter() - start
    log.info(
        "image check: %d of %d images decoded in %.1f s (%d unchanged since their last check)",
        len(todo),
        len(sources),
        seconds,
        len(sources) - len(todo),
    )
    remembered = {
        stamp[0]: [stamp[1], problem]
        for stamp, problem in zip(stamps, problems, strict=True)
        if stamp is not None
    }
    return problems, remembered


def first_names(names: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` names for a one-line message, ``...`` marking the rest."""
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


@dataclass
class BadRecords:
    """Records with a bad image (and why) and records with bad or no captions (and which)."""

    images: list[tuple[CaptionRecord, str]] = field(default_factory=list)
    captions: list[tuple[CaptionRecord, str]] = field(default_factory=list)

    @classmethod
    def find(
        cls, records: Sequence[CaptionRecord], image_problems: Sequence[str | None]
    ) -> BadRecords:
        """Pair ``records`` with their image problems; collect their caption problems."""
        captions = []
        for record in records:
            problems = ", ".join(record.caption_problems)
            if not record.captions:
                captions.append((record, f"{problems} (none left)" if problems else "no captions"))
            elif problems:
                captions.append((record, problems))
        return cls(
            images=[
                (record, problem)
                for record, problem in zip(records, image_problems, strict=True)
                if problem is not None
            ],
            captions=captions,
        )

    def __bool__(self) -> bool:
        return bool(self.images or self.captions)

    @property
    def unusable_ids(self) -> set[str]:
        """Images that cannot train: a bad image, or no caption left."""
        return {r.image_id for r, _ in self.images} | {
            r.image_id for r, _ in self.captions if not r.captions
        }

    def describe(self, total: int, limit: int = 5) -> str:
        """E.g. ``2 of 100 images are missing or unreadable (a.jpg: missing, ...)``."""
        parts = []
        if self.images:
            listed = first_names([f"{r.image.key}: {why}" for r, why in self.images], limit)
            parts.append(
                f"{len(self.images)} of {total} images are missing or unreadable ({listed})"
            )
        if self.captions:
            listed = first_names([f"image id {r.image_id}: {w}" for r, w in self.captions], limit)
            parts.append(
                f"{len(self.captions)} of {total} images have bad or no captions ({listed})"
            )
        return " and ".join(parts)


def apply_policy(
    records: Sequence[CaptionRecord], bad: BadRecords, policy: str, name: str = "dataset"
) -> list[CaptionRecord]:
    """Raise for bad records (``error``) or drop them with a warning (``skip``).

    Under ``skip`` an image keeps its good captions; it is dropped when its image is bad or no
    caption is left.
    """
    check_policy(policy)
    if not bad:
        return list(records)
    summary = bad.describe(len(records))
    if policy == "error":
        raise DataError(
            f"{name}: {summary}. Skip them with dataset.on_bad_image=skip, or list them all "
            f"with `python -m clip_lightning.prepare dataset={name} dataset.root=...`"
        )
    unusable = bad.unusable_ids
    log.warning(
        "%s: skipping bad records (dataset.on_bad_image=skip), %d of %d images dropped: %s",
        name,
        len(unusable),
        len(records),
        summary,
    )
    return [r for r in records if r.image_id not in unusable]


def check_policy(policy: str, key: str = "dataset.on_bad_image") -> None:
    """One line naming ``key`` when ``policy`` is not one of :data:`POLICIES`."""
    if policy not in POLICIES:
        raise DataError(f"{key}={policy!r}; choose one of {POLICIES}")
