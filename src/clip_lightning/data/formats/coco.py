"""COCO's official captions: ``annotations/captions_{train,val}2017.json`` + ``train2017/``,
``val2017/``.

``train*`` images train; ``val*`` images carry no split here, so the datamodule divides them
deterministically into val and test (``dataset.split_sizes``, by default half and half).
"""

from __future__ import annotations

from pathlib import Path

from clip_lightning.data.formats.common import malformed, read_json, require
from clip_lightning.data.records import CaptionRecord, FileImage, make_record
from clip_lightning.errors import DataError

PATTERN = "annotations/captions_*.json"
FILE = "COCO captions JSON: {'images': [...], 'annotations': [...]}"
IMAGE = "an object like {'id': 9, 'file_name': '000000000009.jpg'}"
ANNOTATION = "an object like {'image_id': 9, 'caption': 'a caption'}"


def find_caption_files(root: Path) -> list[Path]:
    """The train/val caption files (``captions_test*`` does not exist: test has no captions)."""
    return [
        p
        for p in sorted(root.glob(PATTERN))
        if p.stem.removeprefix("captions_").startswith(("train", "val"))
    ]


def load_coco(root: Path | None, image_dir: str | Path | None = None) -> list[CaptionRecord]:
    """One record per image listed in the caption files; images live in ``<image_dir>/<part>``."""
    if root is None:
        raise DataError("dataset.format=coco needs dataset.root=DIR (the folder with annotations/)")
    files = find_caption_files(root)
    if not files:
        raise DataError(
            f"no annotations/captions_train2017.json or captions_val2017.json under {root}; "
            "download annotations_trainval2017.zip from https://cocodataset.org and unzip it there"
        )
    base = Path(image_dir).expanduser() if image_dir is not None else root
    base = base if base.is_absolute() else root / base
    records = []
    for path in files:
        part = path.stem.removeprefix("captions_")  # e.g. train2017
        split = "train" if part.startswith("train") else None
        data = read_json(path)
        for key in ("images", "annotations"):
            if not isinstance(data, dict) or not isinstance(data.get(key), list):
                raise malformed(path, "the file", f"has no {key!r} list", FILE)
        names: dict[int | str, str] = {}
        for index, image in enumerate(data["images"]):
            where = f"images[{index}]"
            image_id = require(image, "id", (int, str), path, where, IMAGE)
            names[image_id] = require(image, "file_name", str, path, where, IMAGE)
        captions: dict[int | str, list[object]] = {image_id: [] for image_id in names}
        for index, annotation in enumerate(data["annotations"]):
            where = f"annotations[{index}]"
            image_id = require(annotation, "image_id", (int, str), path, where, ANNOTATION)
            caption = require(annotation, "caption", object, path, where, ANNOTATION)
            captions.setdefault(image_id, []).append(caption)
        for image_id, texts in captions.items():
            if image_id not in names:
                raise DataError(
                    f"{path} has captions for image id {image_id} that is not in its 'images' "
                    "list; the annotation file is damaged -- re-download it"
                )
            records.append(
                make_record(str(image_id), FileImage(base / part / names[image_id]), texts, split)
            )
    return records
