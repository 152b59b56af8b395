"""Generic CSV / TSV / parquet tables of (image path, caption) rows, open_clip's csv convention.

open_clip trains from ``--train-data train.csv --csv-img-key filepath --csv-caption-key title
--csv-separator "\\t"``; here ``dataset=csv dataset.root=DIR`` reads the tables in DIR (every
``*.csv``, ``*.tsv`` and ``*.parquet``, or ``files=[...]``). The image and caption columns are
found by their common names or set in ``columns`` (``image``, ``caption``; optional ``split``
and ``image_id``; see :mod:`.columns`). Rows that share an image become one record with several
captions. A file named after a split (``train.csv``, ``val.tsv``) gives its rows that split;
other rows get one from ``dataset.split_sizes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from clip_lightning.data.formats.columns import caption_cell, resolve_columns
from clip_lightning.data.formats.common import resolve_image_dir
from clip_lightning.data.records import (
    SPLIT_ALIASES,
    CaptionRecord,
    FileImage,
    group_captions,
    normalise_split,
)
from clip_lightning.errors import DataError

SUFFIXES = (".csv", ".tsv", ".parquet")
COLUMN_KEYS = ("image", "caption", "split", "image_id")
IMAGE_FOLDERS = ("", "images")


def find_tables(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())


def read_table(path: Path, separator: str | None) -> pd.DataFrame:
    """Every cell as text (an empty cell stays empty, never ``"nan"``), naming the file on
    failure. The separator defaults to a tab for ``.tsv`` and a comma otherwise."""
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        sep = separator if separator is not None else "\t" if path.suffix.lower() == ".tsv" else ","
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8"
        ) from exc
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise DataError(
            f"cannot read {path} as a table ({type(exc).__name__}: {detail}); check the file and "
            "dataset.adapter_options.separator"
        ) from exc


def _split_of_file(path: Path) -> str | None:
    stem = path.stem.lower()
    return normalise_split(stem) if stem in SPLIT_ALIASES else None


def load_csv(
    root: Path | None,
    image_dir: str | Path | None = None,
    columns: Mapping[str, str | None] | None = None,
    files: Sequence[str] | None = None,
    separator: str | None = None,
) -> list[CaptionRecord]:
    """One record per image of the tables in ``root``; image paths are relative to
    ``image_dir`` (default: ``root`` or ``root/images``) unless absolute."""
    if root is None:
        raise DataError("dataset=csv needs dataset.root=DIR (the folder of the tables)")
    paths = [root / name for name in files] if files else find_tables(root)
    if not paths:
        raise DataError(f"no *.csv, *.tsv or *.parquet file in {root}; point dataset.root there")
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise DataError(f"{', '.join(missing)} not found; fix dataset.adapter_options.files")
    tables = {str(path): read_table(path, separator) for path in paths}
    found = resolve_columns(
        {name: list(map(str, table.columns)) for name, table in tables.items()},
        dict(columns or {}),
        COLUMN_KEYS,
    )
    rows: list[tuple[str, str, list[object], str | None]] = []
    for path in paths:
        table, names = tables[str(path)], found[str(path)]
        images = table[names["image"]].astype(str).tolist()
        ids = table[names["image_id"]].astype(str).tolist() if names["image_id"] else images
        splits = (
            [normalise_split(s) if s else None for s in table[names["split"]].tolist()]
            if names["split"]
            else [_split_of_file(path)] * len(table)
        )
        captions = [caption_cell(cell) for cell in table[names["caption"]].tolist()]
        rows.extend(zip(ids, images, captions, splits, strict=True))
    samples = [Path(image) for _, image, _, _ in rows[:100:5]]
    base = resolve_image_dir(root, image_dir, samples, IMAGE_FOLDERS)
    return group_captions(
        (image_id, FileImage(base / image), captions, split)
        for image_id, image, captions, split in rows
    )
