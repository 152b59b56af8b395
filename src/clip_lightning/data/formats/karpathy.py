"""Karpathy's split JSON (``dataset_flickr30k.json``, ``dataset_coco.json``) + an image folder.

These files carry the standard retrieval splits: Flickr30k 29,000 / 1,014 / 1,000 and COCO
113,287 / 5,000 / 5,000, where COCO's ``restval`` images count as training images.
"""

from __future__ import annotations

from pathlib import Path

from clip_lightning.data.formats.common import malformed, read_json, require, resolve_image_dir
from clip_lightning.data.records import (
    CaptionRecord,
    FileImage,
    group_captions,
    normalise_split,
)
from clip_lightning.errors import DataError

PATTERN = "dataset_*.json"
# where the images usually sit relative to the json (Flickr's own zip: flickr30k-images/)
IMAGE_FOLDERS = ("", "images", "flickr30k-images", "flickr30k_images", "Images")


# files of a HF save_to_disk folder that also match the pattern
_HF_FILES = {"dataset_dict.json", "dataset_info.json"}


def find_split_json(root: Path) -> Path | None:
    """The first ``dataset_*.json`` in ``root`` (pass ``annotation=`` to pick another)."""
    found = sorted(p for p in root.glob(PATTERN) if p.name not in _HF_FILES)
    return found[0] if found else None


ENTRY = (
    'an object like {"filename": "1000.jpg", "split": "train", "sentences": [{"raw": "a '
    'caption"}, ...]}'
)


def _captions(entry: dict, path: Path, where: str) -> list[object]:
    """The raw captions of one entry; their values are checked by ``make_record``."""
    sentences = entry.get("sentences", [])
    if not isinstance(sentences, list):
        raise malformed(path, where, f"has 'sentences' of type {type(sentences).__name__}", ENTRY)
    return [
        s if isinstance(s, str) else require(s, "raw", object, path, f"{where} sentence {j}", ENTRY)
        for j, s in enumerate(sentences)
    ]


def load_karpathy(
    root: Path | None, image_dir: str | Path | None = None, annotation: str | None = None
) -> list[CaptionRecord]:
    """One record per image of ``images``; ``annotation`` picks the json when there are several."""
    if root is None:
        raise DataError("dataset.format=karpathy needs dataset.root=DIR (the split json folder)")
    path = root / annotation if annotation else find_split_json(root)
    if path is None or not path.is_file():
        raise DataError(
            f"no {annotation or PATTERN} in {root}; download dataset_flickr30k.json or "
            "dataset_coco.json from Karpathy's splits and put it there"
        )
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path} has no 'images' list; is it one of Karpathy's split files?")
    entries = data["images"]
    # checked first: a null or string entry has no fields to read
    names = [
        require(entry, "filename", str, path, f"images[{index}]", ENTRY)
        for index, entry in enumerate(entries)
    ]
    relative = [
        Path(str(entry.get("filepath", ""))) / name
        for entry, name in zip(entries, names, strict=True)
    ]
    base = resolve_image_dir(root, image_dir, relative, IMAGE_FOLDERS)
    # one record per image: an image listed twice with different splits is refused
    return group_captions(
        (
            str(entry.get("cocoid", Path(name).stem)),
            FileImage(base / rel),
            _captions(entry, path, f"images[{index}] ({name})"),
            normalise_split(entry.get("split")),
        )
        for index, (entry, name, rel) in enumerate(zip(entries, names, relative, strict=True))
    )
