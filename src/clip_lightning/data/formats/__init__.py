"""Format adapters: each turns one on-disk or hub layout into :class:`CaptionRecord` lists.

Adapters only *describe* data (records); loading, splitting and sampling live in the shared
core, so a new format is one small function registered in :data:`FORMATS`. ``format=auto``
recognises a local folder by its files (:func:`detect_format`), or uses the hub id when there
is no folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from clip_lightning.data.formats.coco import find_caption_files, load_coco
from clip_lightning.data.formats.common import ACCEPTED_LAYOUTS
from clip_lightning.data.formats.csv import find_tables, load_csv
from clip_lightning.data.formats.hf import load_hf
from clip_lightning.data.formats.kaggle_csv import find_csv, load_kaggle_csv
from clip_lightning.data.formats.karpathy import find_split_json, load_karpathy
from clip_lightning.data.formats.synthetic import load_synthetic
from clip_lightning.data.records import CaptionRecord
from clip_lightning.errors import DataError
from clip_lightning.utils.paths import MISSING, path_problem

FORMATS: dict[str, Callable[..., list[CaptionRecord]]] = {
    "synthetic": load_synthetic,
    "hf": load_hf,
    "karpathy": load_karpathy,
    "coco": load_coco,
    "kaggle_csv": load_kaggle_csv,
    "csv": load_csv,
}

# Where to get each named dataset, for the error raised when nothing is found locally.
DOWNLOADS = {
    "flickr30k": (
        "the hub dataset nlphuji/flickr30k (set dataset.root=null), dataset_flickr30k.json from "
        "Karpathy's splits with the Flickr30k images, or the Kaggle dataset "
        "hsankesara/flickr-image-dataset"
    ),
    "coco": (
        "dataset_coco.json from Karpathy's splits with the COCO 2014 images, or the official "
        "annotations_trainval2017.zip + train2017.zip + val2017.zip from https://cocodataset.org"
    ),
}


def detect_format(root: Path) -> str | None:
    """The format of a local folder, recognised by its files; None when nothing matches."""
    if find_split_json(root) is not None:
        return "karpathy"
    if find_caption_files(root):
        return "coco"
    if find_csv(root) is not None:
        return "kaggle_csv"
    if any(path.suffix.lower() in (".csv", ".tsv") for path in find_tables(root)):
        return "csv"
    if (
        (root / "dataset_dict.json").is_file()
        or (root / "state.json").is_file()
        or next(root.rglob("*.parquet"), None) is not None
    ):
        return "hf"
    return None


def group_for(root: Path) -> str | None:
    """The ``dataset=`` group that reads the folder ``root`` as what it is; None if unknown."""
    detected = detect_format(root) if root.is_dir() else None
    if detected == "karpathy":
        split_json = find_split_json(root)
        return "coco" if split_json is not None and "coco" in split_json.name else "flickr30k"
    return {"coco": "coco", "kaggle_csv": "flickr30k", "csv": "csv", "hf": "hf"}.get(detected or "")


def missing_data_error(name: str, root: Path | None, problem: str, key: str) -> DataError:
    """One paragraph: what is wrong with ``root``, the accepted layouts, and where to download."""
    download = f" Download {name}: {DOWNLOADS[name]}." if name in DOWNLOADS else ""
    return DataError(f"{problem}. {key} must be one of: {'; '.join(ACCEPTED_LAYOUTS)}.{download}")


def resolve_format(
    format: str,
    root: Path | None,
    name: str = "dataset",
    hub_id: str | None = None,
    key: str = "dataset.root",
) -> str:
    """Turn ``auto`` into a concrete format, checking that ``root`` exists and is recognised.

    ``key`` is the setting ``root`` came from (``dataset.root``, ``dataset.eval_root``), for
    the messages. A root given to the synthetic format, which reads none, is an error: the
    run would otherwise train on other data than the user named.
    """
    if format != "auto" and format not in FORMATS:
        raise DataError(
            f"unknown dataset.format={format!r}; choose auto or one of {sorted(FORMATS)}"
        )
    if format == "synthetic" and root is not None:
        group = group_for(root) if root.exists() else None
        fix = f"add dataset={group} (what {root} holds)" if group else f"check {root}"
        raise DataError(
            f"{key}={root} is set, but the dataset group is synthetic (chosen by "
            f"dataset=synthetic or an experiment such as quickstart), which generates its "
            f"images and reads no folder; to train on {root}, {fix}"
        )
    if root is not None and format != "synthetic" and root.is_file():
        raise DataError(
            f"{key}={root} is a file, not a folder; set {key}={root.parent} "
            "(the folder that holds it and the images)"
        )
    if root is not None and format != "synthetic" and not root.is_dir():
        problem = path_problem(root)
        if problem != MISSING:  # a broken link: its own fix, not a download
            raise DataError(f"{key}={root} {problem}")
        raise missing_data_error(name, root, f"{key}={root} does not exist", key)
    if format != "auto":
        return format
    if root is None:
        if not hub_id:
            raise missing_data_error(name, None, f"{key} is not set (and no dataset.hub_id)", key)
        return "hf"
    detected = detect_format(root)
    if detected is None:
        listing = sorted(p.name for p in root.iterdir())[:10]
        raise missing_data_error(
            name, root, f"cannot tell the format of {key}={root} (it holds {listing})", key
        )
    return detected


def load_records(
    format: str, root: str | Path | None = None, **options: Any
) -> list[CaptionRecord]:
    """Dispatch to the adapter named by ``format`` (``auto``: detected) with its ``options``."""
    folder = Path(root).expanduser() if root is not None else None
    format = resolve_format(format, folder, hub_id=options.get("hub_id"))
    if format == "synthetic":
        return FORMATS[format](**options)
    return FORMATS[format](folder, **options)
