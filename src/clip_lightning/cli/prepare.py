"""Check a dataset and build its cache.

``python -m clip_lightning.prepare dataset=flickr30k dataset.root=DIR [dataset.cache=auto]``

It runs the same full-decode check as training start-up (``CaptionDataModule.find_bad_records``,
memoised by file size and mtime), so it reports exactly the images training would stop on or
skip, and lists them with the dataset's statistics. With ``dataset.cache`` set that check is
the decoded-image cache build. No model is needed: the datamodule works without a tokenizer.
"""

from __future__ import annotations

import statistics
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from clip_lightning.cli.task import hydra_task
from clip_lightning.data.checks import BadRecords, apply_policy
from clip_lightning.data.datamodule import CaptionDataModule
from clip_lightning.data.records import SPLITS, CaptionRecord
from clip_lightning.data.shards import write_shards


def dataset_stats(records: list[CaptionRecord], bad: BadRecords) -> dict[str, Any]:
    """Image and caption counts overall and per split, captions per image, bad records."""
    per_image = [len(r.captions) for r in records]
    stats: dict[str, Any] = {
        "images": len(records),
        "captions": sum(per_image),
        "captions_per_image_min": min(per_image),
        "captions_per_image_mean": round(statistics.fmean(per_image), 3),
        "captions_per_image_max": max(per_image),
        "bad_images": len(bad.images),
        "bad_caption_images": len(bad.captions),
    }
    for split in SPLITS:
        members = [r for r in records if r.split == split]
        stats[f"{split}_images"] = len(members)
        stats[f"{split}_captions"] = sum(len(r.captions) for r in members)
    return stats


def prepare(cfg: DictConfig) -> dict[str, Any]:
    """Load, fully check (and cache) the configured dataset; print and return its statistics."""
    datamodule: CaptionDataModule = instantiate(cfg.dataset)
    records = datamodule.load_records()
    bad = datamodule.find_bad_records()
    if datamodule.cache_folder is not None:
        print(f"Image cache: {datamodule.cache_folder} ({datamodule.cache_image_size} px)")
    stats = dataset_stats(records, bad)
    print(f"Dataset {datamodule.name} ({datamodule.source})")
    for key, value in stats.items():
        print(f"  {key:<26} {value}")
    listed = cfg.get("max_listed")
    for record, why in bad.images[:listed]:
        print(f"  bad image: {record.image.key}: {why}")
    for record, why in bad.captions[:listed]:
        print(f"  bad captions: image id {record.image_id} ({record.image.key}): {why}")
    if bad:
        print(
            "Training stops on these with dataset.on_bad_image=error; fix or remove the files, "
            "or train with dataset.on_bad_image=skip."
        )
    if cfg.get("shards"):
        usable = apply_policy(records, bad, datamodule.on_bad_image, datamodule.name)
        patterns = write_shards(
            usable, cfg.shards, cfg.shard_max_size, cfg.shard_quality, cfg.shard_samples
        )
        for split, pattern in patterns.items():
            print(f"  {split} shards: {pattern}")
        if "train" in patterns:
            print(f"Train on them: dataset=webdataset 'dataset.urls=\"{patterns['train']}\"'")
    return stats


@hydra_task("prepare")
def main(cfg: DictConfig) -> None:
    prepare(cfg)
