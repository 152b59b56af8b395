"""Helpers the file-based format adapters share: finding the image folder, reading JSON and
text, naming malformed annotation structure."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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
    "a Hugging Face save_to_disk folder or a folder of parquet files (dataset=hf)",
    "CSV/TSV tables of image paths and captions (dataset=csv)",
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


def read_text(path: Path) -> str:
    """A UTF-8 text file; one line naming the file and the fix when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); "
            f"re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > utf8.tmp && "
            f"mv utf8.tmp {path.name}`"
        ) from exc
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc}); check the file and its permissions") from exc


def malformed(path: Path, where: str, problem: str, expected: str) -> DataError:
    """One line naming the annotation file, the record, what is wrong and the expected shape."""
    return DataError(
        f"{path}: {where} {problem}; expected {expected} -- fix the file or re-download it"
    )


def require(
    entry: Any, key: str, kind: type | tuple[type, ...], path: Path, where: str, expected: str
) -> Any:
    """``entry[key]`` if ``entry`` is an object with a ``kind`` there, else :func:`malformed`."""
    if not isinstance(entry, Mapping):
        raise malformed(path, where, f"is a {type(entry).__name__}", expected)
    if key not in entry:
        raise malformed(path, where, f"has no {key!r}", expected)
    value = entry[key]
    if not isinstance(value, kind):
        raise malformed(path, where, f"has {key!r} of type {type(value).__name__}", expected)
    return value
