"""Generic CSV / TSV / parquet tables of (image path, caption) rows, open_clip's csv convention.

open_clip trains from ``--train-data train.csv --csv-img-key filepath --csv-caption-key title
--csv-separator "\\t"``; here ``dataset.format=csv dataset.root=DIR`` reads the tables in DIR
(every ``*.csv``, ``*.tsv`` and ``*.parquet``, or ``files=[...]``), with the column names in
``columns`` (``image``, ``caption``; optional ``split`` and ``image_id``). Rows that share an
image become one record with several captions. A file named after a split (``train.csv``,
``val.tsv``) gives its rows that split; other rows get one from ``dataset.split_sizes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

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


def _column(
    table: pd.DataFrame, columns: Mapping[str, str | None], key: str, path: Path
) -> str | None:
    name = columns.get(key)
    if name is not None and name not in table.columns:
        raise DataError(
            f"column {name!r} (dataset.columns.{key}) is not in {path}; available columns: "
            f"{list(table.columns)}; set dataset.columns.{key}=<one of them>"
        )
    return name


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
        raise DataError("dataset.format=csv needs dataset.root=DIR (the folder of the tables)")
    columns = dict(columns or {})
    unknown = set(columns) - set(COLUMN_KEYS)
    if unknown:
        raise DataError(f"unknown dataset.columns keys {sorted(unknown)}; use {COLUMN_KEYS}")
    if not columns.get("image") or not columns.get("caption"):
        raise DataError(
            "dataset.format=csv needs dataset.columns.image and dataset.columns.caption "
            "(open_clip's --csv-img-key / --csv-caption-key), e.g. filepath and title"
        )
    paths = [root / name for name in files] if files else find_tables(root)
    if not paths:
        raise DataError(f"no *.csv, *.tsv or *.parquet file in {root}; point dataset.root there")
    rows: list[tuple[str, str, Any, str | None]] = []
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path} does not exist; fix dataset.adapter_options.files")
        table = read_table(path, separator)
        image_col = _column(table, columns, "image", path)
        caption_col = _column(table, columns, "caption", path)
        split_col = _column(table, columns, "split", path)
        id_col = _column(table, columns, "image_id", path)
        images = table[image_col].astype(str).tolist()
        ids = table[id_col].astype(str).tolist() if id_col else images
        splits = (
            [normalise_split(s) if s else None for s in table[split_col].tolist()]
            if split_col
            else [_split_of_file(path)] * len(table)
        )
        rows.extend(zip(ids, images, table[caption_col].tolist(), splits, strict=True))
    samples = [Path(image) for _, image, _, _ in rows[:100:5]]
    base = resolve_image_dir(root, image_dir, samples, IMAGE_FOLDERS)
    return group_captions(
        (image_id, FileImage(base / image), [caption], split)
        for image_id, image, caption, split in rows
    )
