"""Check a dataset and build its cache.

``python -m clip_lightning.prepare dataset=flickr30k dataset.root=DIR [dataset.cache=auto]``

Training only opens image headers (fast); this command decodes every image, so it lists every
truncated or corrupt file once, up front, together with the dataset's statistics. With
``dataset.cache`` set it builds the decoded-image cache, which is that same full decode.
No model is needed: the datamodule loads and checks records without a tokenizer.
"""

from __future__ import annotations

import logging
import os
import statistics
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from clip_lightning.data.cache import ImageCache, fingerprint
from clip_lightning.data.datamodule import CaptionDataModule
from clip_lightning.data.records import SPLITS, CaptionRecord
from clip_lightning.data.validation import BadRecords, decode_check, find_bad_records
from clip_lightning.utils.config import register_resolvers
from clip_lightning.utils.entry import exit_on_user_error

log = logging.getLogger(__name__)
register_resolvers()


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
        "empty_caption_images": len(bad.empty),
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
    if datamodule.cache_folder is not None:
        expected = fingerprint(records, datamodule.source, datamodule.cache_size)
        cache = ImageCache.open_or_build(datamodule.cache_folder, records, expected)
        bad = cache.bad_records(records)
        print(f"Image cache: {datamodule.cache_folder} ({datamodule.cache_size} px)")
    else:
        bad = find_bad_records(records, check=decode_check)
    stats = dataset_stats(records, bad)
    print(f"Dataset {datamodule.name} ({datamodule.source})")
    for key, value in stats.items():
        print(f"  {key:<26} {value}")
    listed = cfg.get("max_listed")
    for record, why in bad.images[:listed]:
        print(f"  bad image: {record.image.key}: {why}")
    for record in bad.empty[:listed]:
        print(f"  no captions: image id {record.image_id} ({record.image.key})")
    if bad:
        print(
            "Training stops on these with dataset.on_bad_image=error; fix or remove the files, "
            "or train with dataset.on_bad_image=skip."
        )
    return stats


@hydra.main(version_base="1.3", config_path="conf", config_name="prepare")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    prepare(cfg)


if __name__ == "__main__":
    main()
