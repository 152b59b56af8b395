"""dataset.format=csv: CSV / TSV / parquet tables with configurable columns and separator."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hydra.utils import instantiate

from clip_lightning.data.formats import load_records
from clip_lightning.errors import DataError
from tests.helpers.data import compose_data, write_image


def image_rows(root: Path, count: int, captions: int = 2) -> list[tuple[str, str]]:
    """``count`` images under root/images and ``captions`` (path, caption) rows for each."""
    rows = []
    for i in range(count):
        write_image(root / "images" / f"{i}.jpg", 5 + i)
        rows += [(f"images/{i}.jpg", f"picture {i} caption {j}") for j in range(captions)]
    return rows


def test_tsv_rows_of_one_image_become_one_record_through_the_datamodule(tmp_path: Path) -> None:
    rows = image_rows(tmp_path, 12)
    lines = ["filepath\ttitle"] + [f"{path}\t{caption}" for path, caption in rows]
    (tmp_path / "data.tsv").write_text("\n".join(lines) + "\n")
    cfg = compose_data(
        "csv", tmp_path, tmp_path, "dataset.split_sizes.val=2", "dataset.split_sizes.test=2"
    )
    splits = instantiate(cfg.dataset).load_splits()
    assert {name: len(records) for name, records in splits.items()} == {
        "train": 8,
        "val": 2,
        "test": 2,
    }
    record = next(r for r in splits["train"] if r.image_id == "images/0.jpg")
    assert record.captions == ("picture 0 caption 0", "picture 0 caption 1")
    assert record.image.path == tmp_path / "images" / "0.jpg"


def test_split_files_custom_columns_separator_and_parquet(tmp_path: Path) -> None:
    rows = image_rows(tmp_path, 6, captions=1)
    for split, part in (("train", rows[:4]), ("val", rows[4:5])):
        lines = ["caption;image"] + [f"{caption};{path}" for path, caption in part]
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    pd.DataFrame({"image": [rows[5][0]], "caption": [rows[5][1]]}).to_parquet(
        tmp_path / "test.parquet"
    )
    records = load_records(
        "csv",
        tmp_path,
        columns={"image": "image", "caption": "caption"},
        separator=";",
    )
    assert sorted((r.split, r.captions[0]) for r in records) == [
        ("test", "picture 5 caption 0"),
        *[("train", f"picture {i} caption 0") for i in range(4)],
        ("val", "picture 4 caption 0"),
    ]


def test_wrong_column_and_non_utf8_file_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("path,text\na.jpg,a dog\n")
    with pytest.raises(
        DataError, match=r"\(columns \['path', 'text'\]\): no column 'filepath' \(dataset.columns"
    ):
        load_records("csv", tmp_path, columns={"image": "filepath", "caption": "text"})
    (tmp_path / "data.csv").write_bytes("path,text\na.jpg,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="is not UTF-8 text"):
        load_records("csv", tmp_path, columns={"image": "path", "caption": "text"})


def test_empty_caption_cells_are_reported_not_read_as_nan(tmp_path: Path) -> None:
    image_rows(tmp_path, 2)
    (tmp_path / "data.csv").write_text("path,text\nimages/0.jpg,\nimages/1.jpg,a cat\n")
    records = load_records("csv", tmp_path, columns={"image": "path", "caption": "text"})
    by_id = {r.image_id: r for r in records}
    assert by_id["images/0.jpg"].captions == () and by_id["images/0.jpg"].caption_problems
    assert by_id["images/1.jpg"].captions == ("a cat",)
