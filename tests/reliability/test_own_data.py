"""Your own data on the first try: a CSV table, a Hugging Face folder, parquet files, shards with
a CSV folder for evaluation. Each path is driven the way a user meets it (the train command,
or the composed config and task in-process where that shows the same thing); every problem is
one line naming the key to set, and a folder is never silently swapped for other data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from clip_lightning.cli.train import train
from clip_lightning.data.formats import load_records
from clip_lightning.data.shards import write_shards
from clip_lightning.errors import ClipLightningError, DataError, find_user_error
from clip_lightning.module import CLIPModule
from tests.helpers import (
    TINY_MODEL_OVERRIDES,
    TINY_TRAIN_OVERRIDES,
    compose_train,
    read_metrics,
    run_dirs,
)
from tests.helpers.data import (
    IMAGE_CONFIG,
    build_hf_disk,
    build_hf_minimal,
    build_karpathy,
    build_open_clip_csv,
    build_parquet,
    compose_data,
)
from tests.helpers.tasks import train_in_process

# the tiny subprocess model, without the quickstart's synthetic data
TINY_MODEL = [o for o in TINY_MODEL_OVERRIDES if not o.startswith("dataset")]


# -- the train command ------------------------------------------------------------------------


def test_a_40_image_csv_trains_from_dataset_root_alone_first_try(tmp_path: Path) -> None:
    """open_clip's filepath,title table, no split or id column: dataset.root picks dataset=csv,
    the columns are found by name, 5 % val/test give 2 images each, and the default batch
    of 64 shrinks to the 36 training images with one line."""
    data = build_open_clip_csv(tmp_path / "own")
    run = train_in_process(tmp_path, *TINY_MODEL, "dataset.num_workers=0", f"dataset.root={data}")
    output = run.output
    assert f"dataset.root={data} holds csv data: using dataset=csv" in output
    assert "using columns image='filepath', caption='title'" in output
    assert "csv: 36 training samples per epoch, fewer than dataset.batch_size=64" in output
    (run_dir,) = run_dirs(tmp_path, "train")
    assert read_metrics(run_dir)["test/rsum"] >= 0
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)
    dataset = saved["clip_lightning_dataset"]
    assert dataset["name"] == "csv" and dataset["root"] == str(data)
    assert dataset["split_sizes"] == {"val": 0.05, "test": 0.05}


def test_the_quickstart_with_a_dataset_root_stops_instead_of_training_synthetic(
    tmp_path: Path,
) -> None:
    """It used to train on the synthetic scenes with exit 0, ignoring the user's folder."""
    data = build_hf_minimal(tmp_path / "mine", total=6)
    cfg = compose_train([*TINY_TRAIN_OVERRIDES, f"dataset.root={data}"], output_dir=tmp_path)
    with pytest.raises(ClipLightningError) as info:
        train(cfg)
    message = str(find_user_error(info.value))
    assert message.startswith(f"dataset.root={data} is set")
    assert "but the dataset group is synthetic" in message
    assert message.endswith(f"to train on {data}, add dataset=hf (what {data} holds)")
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "checkpoints").exists()


# -- the formats, composed as the command line composes them -----------------------------------


def test_hf_save_to_disk_with_only_image_and_text_columns_loads_with_dataset_hf(tmp_path) -> None:
    """One train split, no split or id column (5 tries before): val and test by fractions."""
    root = build_hf_minimal(tmp_path / "hf", total=40)
    cfg = compose_data("hf", root, tmp_path)
    splits = instantiate(cfg.dataset).load_splits()
    assert {name: len(records) for name, records in splits.items()} == {
        "train": 36,
        "val": 2,
        "test": 2,
    }
    first = next(iter(splits["train"]))
    assert first.captions[0].startswith("image ")


def test_parquet_files_and_a_save_to_disk_folder_need_no_column_settings(tmp_path) -> None:
    parquet = load_records("hf", build_parquet(tmp_path / "parquet"))  # file, captions columns
    assert len(parquet) == 14 and all(len(r.captions) == 5 for r in parquet)
    disk = load_records("hf", build_hf_disk(tmp_path / "disk"))  # image, caption, split, img_id
    assert {r.image_id for r in disk} == {str(i) for i in range(14)}
    assert {r.split for r in disk} == {"train", "val", "test"}


def test_every_column_problem_of_a_table_is_one_message(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("picture,words\na.jpg,a dog\n")
    with pytest.raises(DataError) as info:
        load_records("csv", tmp_path, columns={"split": "fold"})
    message = str(info.value)
    assert (
        "\n" not in message and f"{tmp_path / 'data.csv'} (columns ['picture', 'words'])" in message
    )
    assert "no column 'fold' (dataset.columns.split)" in message
    assert "no image column (none is named image/img/jpg" in message
    assert "no caption column (none is named caption/captions/text/txt/title" in message
    assert "set dataset.columns.image=<one of the columns>" in message

    hf = build_hf_minimal(tmp_path / "hf", total=4)
    with pytest.raises(DataError) as info:
        load_records("hf", hf, columns={"split": "split", "image_id": "img_id"})
    message = str(info.value)
    assert "no column 'split' (dataset.columns.split)" in message
    assert "no column 'img_id' (dataset.columns.image_id)" in message


def test_a_folder_without_a_known_layout_names_dataset_root_and_no_download_page(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    cfg = compose_data("csv", None, tmp_path, "dataset.format=auto", f"dataset.root={tmp_path}")
    with pytest.raises(DataError) as info:
        instantiate(cfg.dataset).load_records()
    message = str(info.value)
    assert f"cannot tell the format of dataset.root={tmp_path}" in message
    assert "CSV/TSV tables of image paths and captions (dataset=csv)" in message
    assert "download page" not in message and "Get csv" not in message


# -- shards with a CSV folder for evaluation (6 tries before) ----------------------------------


@pytest.fixture(scope="module")
def shard_urls(tmp_path_factory) -> str:
    root = build_karpathy(tmp_path_factory.mktemp("flickr"), total=24, n_val=2, n_test=2)
    folder = tmp_path_factory.mktemp("shards")
    return write_shards(load_records("karpathy", root), folder, samples_per_shard=10)["train"]


def test_webdataset_with_a_csv_eval_root_detects_it_and_takes_dataset_columns(
    tmp_path: Path, shard_urls: str
) -> None:
    data = tmp_path / "eval"
    build_open_clip_csv(data, total=8)
    (data / "data.csv").write_text((data / "data.csv").read_text().replace("filepath,", "pic,"))
    cfg = compose_data(
        "webdataset",
        None,
        tmp_path,
        f'dataset.urls="{shard_urls}"',
        f"dataset.eval_root={data}",
        "dataset.columns.image=pic",  # was "not in struct"
    )
    splits = instantiate(cfg.dataset).load_splits()  # no train split needed, half val, half test
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (0, 4, 4)


def test_webdataset_eval_root_errors_name_dataset_eval_root(tmp_path, shard_urls) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    cfg = compose_data(
        "webdataset",
        None,
        tmp_path,
        f'dataset.urls="{shard_urls}"',
        f"dataset.eval_root={tmp_path}",
    )
    with pytest.raises(DataError) as info:
        instantiate(cfg.dataset).load_splits()
    message = str(info.value)
    assert f"cannot tell the format of dataset.eval_root={tmp_path}" in message
    assert "Get webdataset" not in message and "download page" not in message


def test_webdataset_without_val_data_stops_before_the_model_is_built(
    tmp_path, shard_urls, monkeypatch
) -> None:
    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(CLIPModule, "__init__", no_model)
    cfg = compose_data("webdataset", None, tmp_path, f'dataset.urls="{shard_urls}"')
    with pytest.raises(ClipLightningError) as info:
        train(cfg)
    assert "no val or test data; set dataset.eval_root=DIR" in str(info.value)
    assert "dataset.val_urls=SHARDS and dataset.test_urls=SHARDS" in str(info.value)


def test_shards_smaller_than_a_batch_train_on_smaller_batches_in_one_line(
    tmp_path, shard_urls, caplog
) -> None:
    cfg = compose_data("webdataset", None, tmp_path, f'dataset.urls="{shard_urls}"')
    datamodule = instantiate(cfg.dataset, image_config=IMAGE_CONFIG)  # 20 samples, batch 4
    assert datamodule.train_batch_size() == 4
    datamodule.batch_size = 64
    with caplog.at_level(logging.WARNING):
        assert datamodule.train_batch_size(world_size=2) == 10
        assert datamodule.train_dataset(0, 2, 10).batches_per_rank == 1
    assert "20 training samples per epoch (10 per device on 2), fewer than" in caplog.text


def test_webdataset_refuses_a_dataset_root_in_one_line(tmp_path, shard_urls) -> None:
    cfg = compose_data(
        "webdataset", None, tmp_path, f'dataset.urls="{shard_urls}"', f"dataset.root={tmp_path}"
    )
    build_open_clip_csv(tmp_path, total=2)
    with pytest.raises(Exception) as info:
        instantiate(cfg.dataset)
    message = str(find_user_error(info.value))
    assert f"reads shards from dataset.urls, not dataset.root={tmp_path}" in message
    assert message.endswith("or dataset=csv to train on it")


def test_a_train_split_of_one_image_is_an_error_not_a_batch_of_one(tmp_path, caplog) -> None:
    data = build_open_clip_csv(tmp_path / "tiny", total=3)
    cfg = compose_data("csv", data, tmp_path, "dataset.batch_size=64")
    datamodule = instantiate(cfg.dataset)
    datamodule.load_splits()
    with pytest.raises(DataError, match=r"1 training samples per epoch are too few for a"):
        datamodule.train_batch_size(1)
    with caplog.at_level(logging.WARNING):
        assert datamodule.train_batch_size(36) == 36
    assert "training on batches of 36" in caplog.text
