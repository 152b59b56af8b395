"""Every format adapter on an on-disk fixture: detection, records, splits, captions, RGB."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from clip_lightning.data.formats import detect_format, load_records
from clip_lightning.data.formats.kaggle_csv import parse_line
from clip_lightning.data.records import assign_splits, load_rgb, make_record
from clip_lightning.errors import DataError
from tests.helpers.data import BUILDERS

EXPECTED_FORMAT = {
    "karpathy": "karpathy",
    "coco": "coco",
    "kaggle_csv": "kaggle_csv",
    "hf_disk": "hf",
    "parquet": "hf",
}
HF_OPTIONS = {
    "hf_disk": {
        "columns": {"image": "image", "caption": "caption", "split": "split", "image_id": "img_id"}
    },
    "parquet": {"columns": {"image": "file", "caption": "captions"}},
}


def records_of(kind: str, tmp_path):
    root = BUILDERS[kind](tmp_path / kind)
    return load_records("auto", root, **HF_OPTIONS.get(kind, {}))


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_auto_detection_picks_the_format_of_each_folder(kind, tmp_path):
    root = BUILDERS[kind](tmp_path / kind)
    assert detect_format(root) == EXPECTED_FORMAT[kind]


def test_an_unrelated_folder_is_not_recognised(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert detect_format(tmp_path) is None


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_every_image_decodes_to_rgb_and_captions_are_clean(kind, tmp_path):
    records = records_of(kind, tmp_path)
    for record in records:
        image = load_rgb(record.image)
        assert image.mode == "RGB"
        assert record.captions
        for caption in record.captions:
            assert caption == caption.strip() and "\n" not in caption and "  " not in caption
    assert len({r.image_id for r in records}) == len(records)


def test_rgba_is_composited_on_white_and_cmyk_keeps_its_colours(tmp_path):
    records = records_of("karpathy", tmp_path)
    rgba = np.asarray(load_rgb(records[3].image), dtype=float)
    plain = np.asarray(load_rgb(records[4].image), dtype=float)
    assert rgba.mean() > plain.mean()  # half-transparent pixels blend towards white
    cmyk = np.asarray(load_rgb(records[1].image), dtype=float)
    assert cmyk.std() > 10  # not a flat (mis-converted) image


def test_karpathy_flickr_splits_come_from_the_json(tmp_path):
    records = records_of("karpathy", tmp_path)
    assert Counter(r.split for r in records) == {"train": 8, "val": 3, "test": 3}
    assert records[0].image_id == "1000" and len(records[0].captions) == 5


def test_karpathy_coco_counts_restval_as_train(tmp_path):
    root = BUILDERS["karpathy"](tmp_path / "coco-karpathy", coco=True)
    records = load_records("auto", root)
    assert Counter(r.split for r in records) == {"train": 8, "val": 3, "test": 3}
    assert records[0].image_id == "500"
    assert records[0].image.key.endswith("val2014/COCO_val2014_000000000000.jpg")


def test_coco_official_trains_on_train2017_and_has_5_to_7_captions(tmp_path):
    records = records_of("coco", tmp_path)
    assert Counter(r.split for r in records) == {"train": 10, None: 6}
    assert {len(r.captions) for r in records} == {5, 6, 7}
    assert all("val2017" in r.image.key for r in records if r.split is None)


def test_coco_val2017_is_split_into_val_and_test_half_and_half(tmp_path):
    records = assign_splits(records_of("coco", tmp_path), 0.5, 0.5)
    assert Counter(r.split for r in records) == {"train": 10, "val": 3, "test": 3}


def test_kaggle_csv_repairs_the_malformed_row(tmp_path):
    records = {r.image_id: r for r in records_of("kaggle_csv", tmp_path)}
    assert len(records) == 16
    assert all(len(r.captions) == 5 for r in records.values())
    assert records["1004"].captions[-1] == "A dog runs across the grass ."
    assert all(r.split is None for r in records.values())


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        ("1000092795.jpg| 0| Two young guys .", ("1000092795.jpg", "Two young guys .")),
        (
            "2199200615.jpg| 4   A dog runs across the grass .",
            ("2199200615.jpg", "A dog runs across the grass ."),
        ),
        ("1.jpg| 1| a | pipe inside", ("1.jpg", "a | pipe inside")),
        ("just text", None),
        ("1.jpg| no number here", None),
    ],
)
def test_kaggle_line_parser(line, parsed):
    assert parse_line(line) == parsed


def test_kaggle_unparseable_lines_are_reported(tmp_path, caplog):
    root = BUILDERS["kaggle_csv"](tmp_path / "k")
    with (root / "results.csv").open("a") as handle:
        handle.write("garbage line without separators\n")
    records = load_records("kaggle_csv", root)
    assert len(records) == 16
    assert "skipped 1 line(s)" in caplog.text and "lines 82" in caplog.text


def test_hf_save_to_disk_keeps_pixels_and_the_split_column(tmp_path):
    records = records_of("hf_disk", tmp_path)  # the source JPEGs were deleted after saving
    assert Counter(r.split for r in records) == {"train": 8, "val": 3, "test": 3}
    assert records[0].image_id == "0" and records[0].captions[0] == "image 0 caption 0"
    assert load_rgb(records[3].image).size == (50, 38)


def test_parquet_splits_come_from_file_names_and_paths_from_the_folder(tmp_path):
    records = records_of("parquet", tmp_path)
    assert Counter(r.split for r in records) == {"train": 8, "val": 3, "test": 3}
    assert all(r.image.key.startswith(str(tmp_path / "parquet" / "images")) for r in records)


def test_forcing_the_wrong_format_names_what_is_missing(tmp_path):
    root = BUILDERS["coco"](tmp_path / "coco")
    with pytest.raises(DataError, match=re.escape("dataset_flickr30k.json or dataset_coco.json")):
        load_records("karpathy", root)


def test_assign_splits_is_deterministic_and_order_free():
    records = [make_record(str(i), None, ["c"]) for i in range(50)]  # type: ignore[arg-type]
    forward = {r.image_id: r.split for r in assign_splits(records, 5, 5, seed=3)}
    backward = {r.image_id: r.split for r in assign_splits(records[::-1], 5, 5, seed=3)}
    assert forward == backward
    assert Counter(forward.values()) == {"train": 40, "val": 5, "test": 5}
    other_seed = {r.image_id: r.split for r in assign_splits(records, 5, 5, seed=4)}
    assert other_seed != forward


def test_assign_splits_rejects_sizes_that_leave_no_training_images():
    records = [make_record(str(i), None, ["c"]) for i in range(10)]  # type: ignore[arg-type]
    with pytest.raises(DataError, match=re.escape("dataset.split_sizes")):
        assign_splits(records, 5, 5)
