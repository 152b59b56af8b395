"""Hugging Face datasets: a hub id, a local ``save_to_disk`` folder, or parquet files.

Images are either ``datasets.Image`` features (pixels inside the dataset; read lazily, one row
at a time) or file-path strings relative to ``image_dir`` (e.g. ``yerevann/coco-karpathy``,
whose ``filepath``/``filename`` columns point into a COCO 2014 image folder). Columns are
found by their feature type and common names, or set in ``dataset.columns`` (see
:mod:`.columns`); split and image-id columns are optional.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import huggingface_hub
from PIL import Image

from clip_lightning.data.formats.columns import Columns, caption_cell, resolve_columns
from clip_lightning.data.formats.common import ACCEPTED_LAYOUTS
from clip_lightning.data.records import (
    SPLIT_ALIASES,
    CaptionRecord,
    FileImage,
    ImageSource,
    group_captions,
    normalise_split,
)
from clip_lightning.errors import DataError

# The keys of `dataset.columns`; image and caption are required (null: found by name), the
# others optional (image_folder: a column of sub-folders the image paths are relative to).
COLUMN_KEYS = ("image", "caption", "split", "image_id", "image_folder")
_SPLIT_IN_NAME = re.compile(r"(?:^|[/_.-])(" + "|".join(SPLIT_ALIASES) + r")(?=[/_.-]|$)")


@dataclass(frozen=True, eq=False)
class DatasetRowImage:
    """An image stored in row ``row`` of a HF dataset with one ``Image(decode=False)`` column.

    Holding the (memory-mapped) dataset instead of the bytes keeps 31k images out of RAM; it
    pickles by file reference, so DataLoader workers share the same arrow files.
    ``arrow_version`` (see :func:`arrow_version`) versions the pixels when they live inside the
    arrow files.
    """

    dataset: datasets.Dataset
    column: str
    row: int
    name: str
    image_dir: Path | None = None
    arrow_version: str | None = None

    @property
    def key(self) -> str:
        return self.name

    def stamp(self) -> tuple[str, str] | None:
        if self.arrow_version is None:
            return None
        return f"hf:{self.arrow_version}:{self.column}[{self.row}]", self.arrow_version

    def open(self) -> Image.Image:
        value = self.dataset[self.row][self.column]
        if value is None:
            raise FileNotFoundError(f"row {self.row} has no image")
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"]))
        path = Path(value["path"] or "")
        return Image.open(
            path if path.is_absolute() or self.image_dir is None else self.image_dir / path
        )


def arrow_version(dataset: datasets.Dataset, column: str) -> str | None:
    """A digest of the arrow files (names, sizes, mtimes) behind ``dataset`` when every image of
    ``column`` is embedded in them, so it changes whenever a pixel can; None for an in-memory
    table or images stored as paths to files outside the dataset."""
    files = [entry["filename"] for entry in dataset.cache_files]
    images = dataset.data.column(column)
    if not files or any(chunk.field("bytes").null_count for chunk in images.chunks):
        return None
    digest = hashlib.sha1()
    for name in files:
        stat = os.stat(name)
        digest.update(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def hub_error(hub_id: str, exc: BaseException) -> DataError:
    """One paragraph: what failed, and the two offline ways forward."""
    cause = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    return DataError(
        f"could not load the Hugging Face dataset {hub_id!r} ({cause}). Without hub access, set "
        f"dataset.root=DIR to a local copy -- {'; '.join(ACCEPTED_LAYOUTS)}. With a cached "
        "copy, set HF_HUB_OFFLINE=1."
    )


def _load_hub(hub_id: str, hub_kwargs: Mapping[str, Any]) -> Mapping[str, datasets.Dataset]:
    """``load_dataset(hub_id)``; a quick metadata request first, so being offline fails in
    well under a second instead of after the hub client's retries."""
    try:
        if not huggingface_hub.constants.HF_HUB_OFFLINE:
            huggingface_hub.HfApi().dataset_info(hub_id, timeout=10)
        loaded = datasets.load_dataset(hub_id, **hub_kwargs)
    except Exception as exc:  # network, auth, cache and format errors come in many types
        raise hub_error(hub_id, exc) from exc
    return loaded if isinstance(loaded, Mapping) else {"data": loaded}


def _split_of_file(path: Path, root: Path) -> str:
    match = _SPLIT_IN_NAME.search(path.relative_to(root).as_posix().lower())
    return (normalise_split(match.group(1)) if match else None) or "data"


def _load_local(root: Path, hub_kwargs: Mapping[str, Any]) -> Mapping[str, datasets.Dataset]:
    """A ``save_to_disk`` folder, or parquet files grouped into splits by their path names."""
    try:
        if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
            loaded = datasets.load_from_disk(str(root))
            return loaded if isinstance(loaded, Mapping) else {"data": loaded}
        files = sorted(root.rglob("*.parquet"))
        if not files:
            raise DataError(f"no save_to_disk dataset or parquet files in {root}")
        data_files: dict[str, list[str]] = {}
        for path in files:
            data_files.setdefault(_split_of_file(path, root), []).append(str(path))
        return datasets.load_dataset("parquet", data_files=data_files, **hub_kwargs)
    except DataError:
        raise
    except Exception as exc:  # arrow and datasets errors come in many types
        raise DataError(
            f"cannot read the Hugging Face dataset in {root} ({type(exc).__name__}: {exc}); "
            "it must be a datasets.save_to_disk folder or a folder of parquet files"
        ) from exc


def _records_of(
    dataset: datasets.Dataset,
    split_name: str,
    names: Columns,
    image_dir: Path | None,
    where: str,
) -> list[tuple[str, ImageSource, list[object], str | None]]:
    image_col, caption_col = names["image"], names["caption"]
    assert image_col is not None and caption_col is not None  # required: resolve_columns
    split_col, id_col, folder_col = names["split"], names["image_id"], names["image_folder"]
    meta_cols = [c for c in (caption_col, split_col, id_col, folder_col) if c is not None]
    feature = dataset.features[image_col]
    is_image = isinstance(feature, datasets.Image)
    if not is_image:
        if getattr(feature, "dtype", None) not in ("string", "large_string"):
            raise DataError(
                f"column {image_col!r} of {where} holds {feature}, not images or file paths; "
                "set dataset.columns.image to the image column"
            )
        if image_dir is None:
            raise DataError(
                f"{where} stores image file paths (column {image_col!r}), not the images; set "
                "dataset.image_dir=DIR to the folder they are relative to (for COCO Karpathy: "
                "the folder holding train2014/ and val2014/ from https://cocodataset.org)"
            )
        meta_cols.append(image_col)
    meta = dataset.select_columns(sorted(set(meta_cols))).to_dict()
    pixels = (
        dataset.select_columns([image_col]).cast_column(image_col, datasets.Image(decode=False))
        if is_image
        else None
    )
    version = arrow_version(pixels, image_col) if pixels is not None else None
    default_split = normalise_split(split_name) if split_name in SPLIT_ALIASES else None
    rows: list[tuple[str, ImageSource, list[object], str | None]] = []
    for row in range(len(dataset)):
        image_id = str(meta[id_col][row]) if id_col else f"{split_name}/{row}"
        source: ImageSource
        if pixels is not None:
            source = DatasetRowImage(
                pixels, image_col, row, f"{where}[{image_id}]", image_dir, version
            )
        else:
            assert image_dir is not None  # path columns require it (checked above)
            folder = str(meta[folder_col][row]) if folder_col else ""
            source = FileImage(image_dir / folder / meta[image_col][row])
            image_id = image_id if id_col else str(Path(folder) / meta[image_col][row])
        split = normalise_split(meta[split_col][row]) if split_col else default_split
        rows.append((image_id, source, caption_cell(meta[caption_col][row]), split))
    return rows


def load_hf(
    root: Path | None = None,
    hub_id: str | None = None,
    columns: Mapping[str, str | None] | None = None,
    image_dir: str | Path | None = None,
    hub_kwargs: Mapping[str, Any] | None = None,
) -> list[CaptionRecord]:
    """Records from a local HF folder (``root``) or, when ``root`` is None, the hub ``hub_id``.

    Rows sharing an image id are merged (datasets with one caption per row). Without an id
    column, path images are identified by their path and embedded images by their row.
    """
    folder = Path(image_dir).expanduser() if image_dir is not None else None
    if root is not None:
        table, where = _load_local(root, dict(hub_kwargs or {})), str(root)
        folder = root if folder is None else folder if folder.is_absolute() else root / folder
    elif hub_id:
        table, where = _load_hub(hub_id, dict(hub_kwargs or {})), hub_id
    else:
        raise DataError("dataset.format=hf needs dataset.root=DIR or dataset.hub_id=OWNER/NAME")
    names = resolve_columns(
        {_table_name(where, split): dataset.column_names for split, dataset in table.items()},
        dict(columns or {}),
        COLUMN_KEYS,
        image_columns={
            _table_name(where, split): [
                name
                for name, feature in dataset.features.items()
                if isinstance(feature, datasets.Image)
            ]
            for split, dataset in table.items()
        },
    )
    rows = []
    for split_name, dataset in table.items():
        rows.extend(
            _records_of(dataset, split_name, names[_table_name(where, split_name)], folder, where)
        )
    return group_captions(rows)


def _table_name(where: str, split: str) -> str:
    return f"{where} [{split}]"
