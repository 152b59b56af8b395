"""Helpers the file-based format adapters share: finding the image folder, reading JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clip_lightning.errors import DataError

# What `dataset.root` may point at, for error messages (one line each, joined with "; ").
ACCEPTED_LAYOUTS = (
    "a Karpathy split folder (dataset_flickr30k.json or dataset_coco.json + the images, "
    "directly or under images/)",
    "a COCO folder (annotations/captions_train2017.json, annotations/captions_val2017.json, "
    "train2017/, val2017/)",
    "the Kaggle Flickr30k folder (results.csv + flickr30k_images/)",
    "a Hugging Face save_to_disk folder or a folder of parquet files",
)


def resolve_image_dir(
    root: Path | None,
    image_dir: str | Path | None,
    samples: Sequence[Path],
    candidates: Sequence[str] = ("",),
) -> Path:
    """The folder that the relative image paths ``samples`` live under.

    ``image_dir`` wins when set (relative to ``root``); otherwise the first ``root/candidate``
    that holds one of the first few samples, so both ``root/x.jpg`` and ``root/images/x.jpg``
    work without configuration. Falls back to ``root``: the bad-image check then reports the
    missing files by name.
    """
    base = root if root is not None else Path.cwd()
    if image_dir is not None:
        folder = Path(image_dir).expanduser()
        return folder if folder.is_absolute() else base / folder
    for candidate in candidates:
        folder = base / candidate
        if any((folder / sample).is_file() for sample in samples[:20]):
            return folder
    return base


def read_json(path: Path) -> Any:
    """Parse a JSON annotation file, naming the file when it is not JSON."""
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read {path} as JSON ({exc}); re-download it or point dataset.root elsewhere"
        ) from exc
