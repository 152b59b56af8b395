"""Every bad input fails with a message that names the problem and the fix (or is skipped
with a logged count)."""

from __future__ import annotations

import json
import logging
import time

import datasets
import huggingface_hub
import pytest
from hydra.utils import instantiate

from clip_lightning.data.datamodule import CaptionDataModule
from clip_lightning.data.formats import hf, load_records
from clip_lightning.errors import DataError
from tests.helpers import TINY_TRAIN_MODEL_OVERRIDES, compose_train
from tests.helpers.data import BUILDERS


def message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


def module(root, **kwargs) -> CaptionDataModule:
    return CaptionDataModule(name="flickr30k", root=str(root), **kwargs)


def test_missing_root_says_what_belongs_there_and_where_to_get_it(tmp_path):
    with pytest.raises(DataError) as info:
        module(tmp_path / "nowhere").load_splits()
    text = message(info)
    assert "does not exist" in text and str(tmp_path / "nowhere") in text
    assert "results.csv + flickr30k_images/" in text
    assert "annotations/captions_train2017.json" in text
    assert "nlphuji/flickr30k" in text
    assert "dataset_flickr30k.json from Karpathy's splits" in text
    assert "hsankesara/flickr-image-dataset" in text
    assert "\n" not in text


def test_unrecognised_root_lists_its_contents(tmp_path):
    (tmp_path / "readme.txt").write_text("?")
    with pytest.raises(DataError) as info:
        module(tmp_path).load_splits()
    assert "cannot tell the format" in message(info) and "readme.txt" in message(info)


def test_wrong_column_lists_the_available_columns(tmp_path):
    root = BUILDERS["hf_disk"](tmp_path / "hf")
    with pytest.raises(DataError) as info:
        load_records("hf", root, columns={"image": "image", "caption": "sentences"})
    text = message(info)
    assert "no column 'sentences' (dataset.columns.caption)" in text
    assert "['image', 'caption', 'split', 'img_id', 'filename']" in text
    assert "set dataset.columns.caption=<one of the columns>" in text


def corrupt(root, name: str, data: bytes = b"not an image at all") -> None:
    (root / name).write_bytes(data)


def test_corrupt_and_missing_images_raise_with_count_names_and_fix(tmp_path):
    root = BUILDERS["karpathy"](tmp_path / "k")
    corrupt(root / "images", "1005.jpg")
    (root / "images" / "1006.jpg").unlink()
    with pytest.raises(DataError) as info:
        module(root).load_splits()
    text = message(info)
    assert "2 of 14 images are missing or unreadable" in text
    assert "1005.jpg: unreadable" in text and "1006.jpg: missing" in text
    assert "dataset.on_bad_image=skip" in text
    assert "python -m clip_lightning.prepare dataset=flickr30k" in text


def test_skip_drops_bad_images_and_logs_the_count(tmp_path, caplog):
    root = BUILDERS["karpathy"](tmp_path / "k")
    corrupt(root / "images", "1005.jpg")
    with caplog.at_level(logging.WARNING):
        splits = module(root, on_bad_image="skip").load_splits()
    assert sum(len(s) for s in splits.values()) == 13
    assert "1005" not in {r.image_id for r in splits["train"]}
    assert "skipping bad records" in caplog.text and "1 of 14 images" in caplog.text


def test_images_with_no_caption_left_after_cleaning_are_reported(tmp_path):
    root = BUILDERS["karpathy"](tmp_path / "k")
    data = json.loads((root / "dataset_flickr30k.json").read_text())
    data["images"][2]["sentences"] = [{"raw": "  \n "}, {"raw": ""}]
    (root / "dataset_flickr30k.json").write_text(json.dumps(data))
    with pytest.raises(DataError) as info:
        module(root).load_splits()
    text = message(info)
    assert (
        "1 of 14 images have bad or no captions (image id 1002: caption 0 is empty, "
        "caption 1 is empty (none left))" in text
    )
    assert "dataset.on_bad_image=skip" in text
    splits = module(root, on_bad_image="skip").load_splits()
    assert sum(len(s) for s in splits.values()) == 13


def test_unknown_policy_is_rejected(tmp_path):
    root = BUILDERS["karpathy"](tmp_path / "k")
    corrupt(root / "images", "1005.jpg")
    with pytest.raises(DataError, match="on_bad_image='ignore'"):
        module(root, on_bad_image="ignore").load_splits()


def test_default_flickr30k_offline_fails_fast_in_one_paragraph(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    cfg = compose_train(
        [
            *TINY_TRAIN_MODEL_OVERRIDES,
            "dataset=flickr30k",
            f"+dataset.hub_kwargs.cache_dir={tmp_path / 'hf'}",
        ],
        output_dir=tmp_path,
    )
    datamodule = instantiate(cfg.dataset)
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        datamodule.load_splits()
    assert time.perf_counter() - start < 10
    text = message(info)
    assert "\n" not in text
    assert "'nlphuji/flickr30k'" in text
    assert "dataset.root=DIR" in text and "results.csv" in text and "dataset_flickr30k.json" in text
    assert "experiment=quickstart" not in text  # train-only: eval shares this message


def test_unreachable_hub_is_detected_before_the_slow_download_retries(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def unreachable(self, repo_id, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    def must_not_run(*args, **kwargs):
        raise AssertionError("load_dataset ran although the hub is unreachable")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unreachable)
    monkeypatch.setattr(datasets, "load_dataset", must_not_run)
    with pytest.raises(DataError) as info:
        CaptionDataModule(name="flickr30k", hub_id="nlphuji/flickr30k").load_splits()
    assert "OSError: [Errno -2] Name or service not known" in message(info)


def test_coco_hub_paths_without_an_image_folder_say_where_images_go(tmp_path, monkeypatch):
    root = BUILDERS["parquet"](tmp_path / "p")
    table = datasets.load_dataset("parquet", data_files=str(root / "data" / "train-00000.parquet"))
    monkeypatch.setattr(hf, "_load_hub", lambda hub_id, kwargs: table)  # the hub, offline
    datamodule = CaptionDataModule(
        name="coco",
        hub_id="yerevann/coco-karpathy",
        columns={"image": "file", "caption": "captions"},
    )
    with pytest.raises(DataError) as info:
        datamodule.load_splits()
    text = message(info)
    assert "yerevann/coco-karpathy stores image file paths" in text
    assert "dataset.image_dir=DIR" in text and "train2014/" in text
