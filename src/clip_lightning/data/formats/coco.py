"""COCO's official captions: ``annotations/captions_{train,val}2017.json`` + ``train2017/``,
``val2017/``.

``train*`` images train; ``val*`` images carry no split here, so the datamodule divides them
deterministically into val and test (``dataset.split_sizes``, by default half and half).
"""

from __future__ import annotations

from pathlib import Path

from clip_lightning.data.formats.common import read_json
from clip_lightning.data.records import CaptionRecord, FileImage, make_record
from clip_lightning.errors import DataError

PATTERN = "annotations/captions_*.json"


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
        captions: dict[int, list[str]] = {image["id"]: [] for image in data["images"]}
        for annotation in data["annotations"]:
            captions.setdefault(annotation["image_id"], []).append(annotation["caption"])
        names = {image["id"]: image["file_name"] for image in data["images"]}
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
