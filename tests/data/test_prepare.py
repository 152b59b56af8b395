"""``python -m clip_lightning.prepare``: statistics, the full decode check, the cache build."""

from __future__ import annotations

import pytest

from clip_lightning.cli.prepare import prepare
from clip_lightning.data.datamodule import CaptionDataModule
from clip_lightning.errors import DataError
from tests.helpers.data import BUILDERS, truncate
from tests.helpers.tasks import compose_config, task_in_process


def compose_prepare(*overrides: str):
    return compose_config("prepare", overrides=list(overrides))


def test_prepare_prints_statistics_without_a_model(tmp_path, capsys):
    root = BUILDERS["coco"](tmp_path / "c")
    stats = prepare(compose_prepare("dataset=coco", f"dataset.root={root}"))
    assert stats["images"] == 16 and stats["captions"] == sum(5 + i % 3 for i in range(16))
    assert (stats["captions_per_image_min"], stats["captions_per_image_max"]) == (5, 7)
    assert (stats["train_images"], stats["val_images"], stats["test_images"]) == (10, 3, 3)
    assert stats["bad_images"] == 0
    out = capsys.readouterr().out
    assert "Dataset coco (coco:" in out and "captions_per_image_mean" in out


def test_prepare_and_training_start_up_find_the_same_truncated_file(tmp_path, capsys):
    root = BUILDERS["karpathy"](tmp_path / "k")
    truncate(root / "images" / "1007.jpg")  # a valid header: only a full decode sees it
    stats = prepare(compose_prepare("dataset=flickr30k", f"dataset.root={root}"))
    assert stats["bad_images"] == 1
    out = capsys.readouterr().out
    assert f"bad image: {root / 'images' / '1007.jpg'}: unreadable (OSError)" in out
    assert "dataset.on_bad_image=skip" in out
    with pytest.raises(DataError, match="1 of 14 images are missing or unreadable"):
        CaptionDataModule(name="flickr30k", root=str(root)).load_splits()


def test_prepare_builds_the_configured_cache(tmp_path, capsys):
    root = BUILDERS["kaggle_csv"](tmp_path / "kg")
    cfg = compose_prepare(
        "dataset=flickr30k",
        f"dataset.root={root}",
        "dataset.cache=auto",
        f"paths.data_dir={tmp_path / 'data'}",
        "dataset.split_sizes.val=3",
        "dataset.split_sizes.test=3",
    )
    stats = prepare(cfg)
    assert stats["images"] == 16 and stats["val_images"] == 3
    assert (tmp_path / "data" / "cache" / "flickr30k" / "index.json").is_file()
    assert "Image cache:" in capsys.readouterr().out


def test_cli_reports_a_missing_root_as_one_line(tmp_path):
    result = task_in_process(
        prepare,
        "prepare",
        tmp_path,
        "dataset=flickr30k",
        f"dataset.root={tmp_path / 'none'}",
        check=False,
    )
    assert result.code == 1
    output = result.output
    errors = [line for line in output.splitlines() if "does not exist" in line]
    assert len(errors) == 1 and "dataset_flickr30k.json from Karpathy's splits" in errors[0]
