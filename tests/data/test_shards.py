"""Writing shards: img2dataset's layout, sizes.json, resizing, and a lossless round trip."""

from __future__ import annotations

import collections
import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from clip_lightning.cli.prepare import prepare
from clip_lightning.data.formats import load_records
from clip_lightning.data.shards import write_shards
from clip_lightning.data.streaming import WebDataModule
from clip_lightning.errors import DataError
from tests.data.test_prepare import compose_prepare
from tests.helpers.data import IMAGE_CONFIG, build_kaggle, build_karpathy, truncate


def test_shards_hold_jpg_txt_json_per_image_resized_with_sizes(tmp_path: Path) -> None:
    records = load_records("synthetic", train=10, val=3, test=3, image_size=64, seed=0)
    patterns = write_shards(records, tmp_path / "shards", max_size=40, samples_per_shard=4)

    train = tmp_path / "shards" / "train"
    assert patterns["train"] == f"{train}/{{00000..00002}}.tar"
    assert json.loads((train / "sizes.json").read_text()) == {
        "00000.tar": 4,
        "00001.tar": 4,
        "00002.tar": 2,
    }
    with tarfile.open(train / "00000.tar") as tar:
        names = tar.getnames()
        first = {n.rsplit(".", 1)[1]: tar.extractfile(n).read() for n in names[:3]}
    assert sorted(names[:3]) == ["000000000.jpg", "000000000.json", "000000000.txt"]
    meta = json.loads(first["json"])
    by_id = {r.image_id: r for r in records}
    record = by_id[meta["image_id"]]
    assert meta["captions"] == list(record.captions) and meta["split"] == "train"
    assert first["txt"].decode() == record.captions[0]
    image = Image.open(io.BytesIO(first["jpg"]))
    assert image.format == "JPEG" and max(image.size) == 40  # 64 px scenes, downscaled
    assert (meta["original_width"], meta["width"]) == (64, 40)


def test_exact_epoch_over_flickr_shards_sees_every_image_once(tmp_path: Path) -> None:
    """Round trip: a Flickr30k-format folder -> shards -> one non-resampled epoch."""
    records = load_records(
        "karpathy", build_karpathy(tmp_path / "flickr", total=26, n_val=3, n_test=3)
    )
    train = [r for r in records if r.split == "train"]
    patterns = write_shards(records, tmp_path / "shards", samples_per_shard=6)
    datamodule = WebDataModule(
        image_config=IMAGE_CONFIG,
        urls=patterns["train"],
        resampled=False,
        shuffle_buffer=8,
        batch_size=5,
    )
    stream = datamodule.train_dataset()
    assert len(stream) == len(train) == 20  # sizes.json gives the epoch length
    captions = collections.Counter(item["caption"] for item in stream)
    assert captions == collections.Counter(r.captions[0] for r in train)


def test_bad_settings_and_a_used_folder_are_one_line_errors(tmp_path: Path) -> None:
    records = load_records("synthetic", train=4, val=2, test=2, image_size=32, seed=0)
    with pytest.raises(DataError, match="JPEG quality"):
        write_shards(records, tmp_path / "a", quality=0)
    write_shards(records, tmp_path / "b")
    with pytest.raises(DataError, match="already holds shards"):
        write_shards(records, tmp_path / "b")


def test_prepare_writes_checked_images_as_shards(tmp_path: Path, capsys) -> None:
    root = build_kaggle(tmp_path / "kaggle", total=16)
    truncate(root / "flickr30k_images" / "1005.jpg")
    shards = tmp_path / "shards"
    overrides = ["dataset=flickr30k", f"dataset.root={root}", f"shards={shards}"]
    overrides += ["dataset.split_sizes.val=2", "dataset.split_sizes.test=2", "shard_samples=5"]
    with pytest.raises(DataError, match="1 of 16 images"):
        prepare(compose_prepare(*overrides))  # on_bad_image=error: nothing written
    assert not shards.exists()

    prepare(compose_prepare(*overrides, "dataset.on_bad_image=skip"))
    out = capsys.readouterr().out
    sizes = {
        split: json.loads((shards / split / "sizes.json").read_text())
        for split in ("train", "val", "test")
    }
    assert sum(sum(s.values()) for s in sizes.values()) == 15  # the truncated image left out
    assert sizes["train"] == {"00000.tar": 5, "00001.tar": 5, "00002.tar": 1}
    assert f'dataset.urls="{shards}/train/{{00000..00002}}.tar"' in out
    assert f"val shards: {shards}/val/00000.tar" in out
