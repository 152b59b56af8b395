"""The decoded-image cache: layout, reuse, rebuild on change, decode failures, workers."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from clip_lightning.data.cache import ARRAY, INDEX, CachedImages, ImageCache, fingerprint
from clip_lightning.data.datamodule import CaptionDataModule
from clip_lightning.errors import DataError
from tests.helpers.data import BUILDERS, IMAGE_CONFIG, compose_data, truncate


def cached_module(root, cache, **kwargs) -> CaptionDataModule:
    return CaptionDataModule(
        image_config=IMAGE_CONFIG, root=str(root), cache=str(cache), cache_image_size=40, **kwargs
    )


def test_cache_stores_one_square_per_image_and_is_reused(tmp_path):
    root = BUILDERS["karpathy"](tmp_path / "k")
    dm = cached_module(root, tmp_path / "cache")
    splits = dm.load_splits()
    array = np.load(tmp_path / "cache" / ARRAY, mmap_mode="r")
    assert array.shape == (14, 40, 40, 3) and array.dtype == np.uint8
    index = json.loads((tmp_path / "cache" / INDEX).read_text())
    assert index["fingerprint"]["size"] == 40 and index["fingerprint"]["count"] == 14
    assert set(index["rows"]) == {r.image_id for s in splits.values() for r in s}
    image = dm.train_dataset().images(0)
    assert image.mode == "RGB" and image.size == (40, 40)
    assert dm.train_dataset()[0]["image"].shape == (3, 32, 32)
    built = (tmp_path / "cache" / INDEX).stat().st_mtime_ns
    cached_module(root, tmp_path / "cache").load_splits()
    assert (tmp_path / "cache" / INDEX).stat().st_mtime_ns == built


def test_cached_pixels_match_a_resized_centre_crop_of_the_original(tmp_path):
    root = BUILDERS["karpathy"](tmp_path / "k")
    dm = cached_module(root, tmp_path / "cache")
    record = dm.load_splits()["train"][5]
    cached = np.asarray(dm.train_dataset().images(5), dtype=float)
    original = Image.open(record.image.path).convert("RGB")  # 50x38 -> 40 high, 52 wide
    expected = np.asarray(original.resize((53, 40), Image.Resampling.BICUBIC), dtype=float)
    assert np.abs(cached - expected[:, 6:46]).mean() < 6


def test_changed_source_or_size_rebuilds_the_cache(tmp_path):
    root = BUILDERS["karpathy"](tmp_path / "k")
    cached_module(root, tmp_path / "cache").load_splits()
    data = json.loads((root / "dataset_flickr30k.json").read_text())
    data["images"].pop()
    (root / "dataset_flickr30k.json").write_text(json.dumps(data))
    cached_module(root, tmp_path / "cache").load_splits()
    assert np.load(tmp_path / "cache" / ARRAY, mmap_mode="r").shape[0] == 13
    CaptionDataModule(
        root=str(root), cache=str(tmp_path / "cache"), cache_image_size=24
    ).load_splits()
    assert np.load(tmp_path / "cache" / ARRAY, mmap_mode="r").shape[1:] == (24, 24, 3)


def test_images_that_fail_to_decode_follow_on_bad_image(tmp_path, caplog):
    root = BUILDERS["karpathy"](tmp_path / "k")
    truncate(root / "images" / "1007.jpg")
    with pytest.raises(DataError) as info:
        cached_module(root, tmp_path / "cache").load_splits()
    assert "1 of 14 images are missing or unreadable" in str(info.value)
    assert "1007.jpg" in str(info.value)
    splits = cached_module(root, tmp_path / "cache", on_bad_image="skip").load_splits()
    assert "1007" not in {r.image_id for s in splits.values() for r in s}
    assert "skipping bad records" in caplog.text


def test_cache_auto_lives_under_the_data_dir(tmp_path):
    root = BUILDERS["coco"](tmp_path / "c")
    cfg = compose_data("coco", root, tmp_path / "run", "dataset.cache=auto")
    dm = instantiate(cfg.dataset)
    dm.load_splits()
    assert (tmp_path / "run" / "data" / "cache" / "coco" / INDEX).is_file()


def test_cached_loader_pickles_without_its_memory_map(tmp_path):
    root = BUILDERS["karpathy"](tmp_path / "k")
    records = CaptionDataModule(root=str(root)).load_records()
    cache = ImageCache.build(tmp_path / "cache", records, fingerprint(records, "test", 16))
    loader = cache.loader(records[2:5])
    before = np.asarray(loader(1))
    clone: CachedImages = pickle.loads(pickle.dumps(loader))
    assert clone._array is None
    assert np.array_equal(np.asarray(clone(1)), before)


def test_an_interrupted_build_is_not_reused(tmp_path):
    root = BUILDERS["karpathy"](tmp_path / "k")
    records = CaptionDataModule(root=str(root)).load_records()
    expected = fingerprint(records, "test", 16)
    ImageCache.build(tmp_path / "cache", records, expected)
    assert ImageCache.open(tmp_path / "cache", expected) is not None
    (tmp_path / "cache" / INDEX).unlink()  # what a crash before the index write leaves
    assert ImageCache.open(tmp_path / "cache", expected) is None
