"""The Kaggle Flickr30k download: ``results.csv`` (``image_name| comment_number| comment``,
pipe-separated with spaces) next to ``flickr30k_images/``.

The public file has a malformed row whose separator before the comment is missing
(``2199200615.jpg| 4   A dog runs across the grass .``); such rows are repaired, not dropped.
It carries no split: the datamodule assigns one by image id.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from clip_lightning.data.formats.common import read_text, resolve_image_dir
from clip_lightning.data.records import CaptionRecord, FileImage, group_captions
from clip_lightning.errors import DataError

log = logging.getLogger(__name__)

CSV_NAMES = ("results.csv", "flickr30k_images/results.csv")
IMAGE_FOLDERS = ("flickr30k_images", "images", "")
_NUMBER_THEN_COMMENT = re.compile(r"\s*(\d+)\s+(.*)")


def find_csv(root: Path) -> Path | None:
    return next((root / name for name in CSV_NAMES if (root / name).is_file()), None)


def parse_line(line: str) -> tuple[str, str] | None:
    """``(image_name, comment)`` of one data row, or None when it cannot be parsed."""
    parts = [part.strip() for part in line.split("|", 2)]
    if len(parts) == 3 and parts[0]:
        return parts[0], parts[2]
    if len(parts) == 2 and parts[0]:
        match = _NUMBER_THEN_COMMENT.fullmatch(parts[1])
        if match:
            return parts[0], match.group(2)
    return None


def load_kaggle_csv(root: Path | None, image_dir: str | Path | None = None) -> list[CaptionRecord]:
    """One record per image name; unparseable rows are reported, never silently skipped."""
    if root is None:
        raise DataError("dataset.format=kaggle_csv needs dataset.root=DIR (the results.csv folder)")
    path = find_csv(root)
    if path is None:
        raise DataError(
            f"no results.csv in {root}; download the Kaggle dataset "
            "hsankesara/flickr-image-dataset and point dataset.root at its flickr30k_images folder"
        )
    lines = read_text(path).splitlines()
    if not lines or "image_name" not in lines[0]:
        raise DataError(
            f"{path} does not start with the header 'image_name| comment_number| comment'; "
            "is it the Kaggle Flickr30k results.csv?"
        )
    rows, unparsed = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parsed = parse_line(line)
        if parsed is None:
            unparsed.append(number)
        else:
            rows.append(parsed)
    if unparsed:
        log.warning(
            "%s: skipped %d line(s) that are not 'image| number| comment' (lines %s)",
            path,
            len(unparsed),
            ", ".join(map(str, unparsed[:10])),
        )
    samples = [Path(name) for name, _ in rows[:100:5]]
    base = resolve_image_dir(root if image_dir else path.parent, image_dir, samples, IMAGE_FOLDERS)
    return group_captions(
        (Path(name).stem, FileImage(base / name), [comment], None) for name, comment in rows
    )
