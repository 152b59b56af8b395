"""Torch datasets over caption records, and the collate functions that tokenize per batch.

Training and evaluation need different views of the same records:

* training yields one (image, caption) item per image per epoch with a random caption, or
  every (image, caption) pair (``train_pairs="all"``);
* evaluation yields every image with *all* of its captions, so Recall@K can count a hit for
  any of them.

Every item carries stable integer ids (image index, caption index within the split) so the
retrieval metric can drop the duplicates DistributedSampler pads in, and a frozen text tower
can cache caption embeddings.

An image that passed the start-up check but fails to decode later (the file changed during the
run) is never an exception in a DataLoader worker. A training item stands in the next good
record for it, so every batch keeps its size (the contrastive batch, and equal shapes for the
DDP all-gather); an evaluation item is dropped. Either way the item names the bad image, and
the collator lists it under :data:`SKIPPED` (``on_bad_image=skip``) or stops the run with one
line (``on_bad_image=error``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from clip_lightning.data.checks import check_policy, first_names
from clip_lightning.data.records import BadImageError, CaptionRecord, load_rgb, worker_message
from clip_lightning.errors import DataError
from clip_lightning.tokenization import tokenize

ImageLoader = Callable[[int], Image.Image]
# batch key listing the "<image>: <reason>" of items the collator dropped (on_bad_image=skip)
SKIPPED = "skipped_images"
# item key: the bad images an item stands in for (an item without "image" replaces none)
_BAD = "bad_images"
# how many following records a training item tries before it gives up and is dropped
MAX_STAND_INS = 8


class ImageChangedError(DataError):
    """An image that passed the start-up check failed to load during the run (one line, also
    when torch re-raises it from a DataLoader worker: see ``worker_message``)."""

    def __init__(self, message: str):
        super().__init__(worker_message(message, type(self)))


def _named(exc: BadImageError) -> str:
    return f"{exc.key}: {exc.reason}"


def caption_offsets(records: Sequence[CaptionRecord]) -> list[int]:
    """Index of each record's first caption when all captions of a split are numbered in order."""
    offsets, total = [], 0
    for record in records:
        offsets.append(total)
        total += len(record.captions)
    return offsets


class _RecordImages:
    """Decodes the image of record ``i`` through an optional cache, then converts to RGB."""

    def __init__(self, records: Sequence[CaptionRecord], loader: ImageLoader | None = None):
        self.records = records
        self.loader = loader

    def __call__(self, index: int) -> Image.Image:
        if self.loader is not None:
            return self.loader(index)
        return load_rgb(self.records[index].image)


class CaptionTrainDataset(Dataset):
    """Training view: one random caption per image, or every (image, caption) pair."""

    def __init__(
        self,
        records: Sequence[CaptionRecord],
        transform: Callable[[Image.Image], torch.Tensor],
        pairs: str = "random",
        image_loader: ImageLoader | None = None,
    ):
        if pairs not in ("random", "all"):
            raise DataError(f"dataset.train_pairs must be 'random' or 'all', got {pairs!r}")
        self.records = records
        self.transform = transform
        self.pairs = pairs
        self.images = _RecordImages(records, image_loader)
        self.offsets = caption_offsets(records)
        self.pair_index = (
            [(i, j) for i, r in enumerate(records) for j in range(len(r.captions))]
            if pairs == "all"
            else None
        )

    def __len__(self) -> int:
        return len(self.pair_index) if self.pair_index is not None else len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        bad: list[str] = []
        for stand_in in range(MAX_STAND_INS + 1):
            try:
                item = self._item((index + stand_in) % len(self))
            except BadImageError as exc:
                bad.append(_named(exc))
                continue
            return {**item, _BAD: bad} if bad else item
        return {_BAD: bad}

    def _item(self, index: int) -> dict[str, Any]:
        if self.pair_index is not None:
            image_index, caption_index = self.pair_index[index]
        else:
            image_index = index
            # torch seeds `random` per worker and per epoch, so this is reproducible.
            caption_index = random.randrange(len(self.records[index].captions))
        return {
            "image": self.transform(self.images(image_index)),
            "caption": self.records[image_index].captions[caption_index],
            "image_id": image_index,
            "caption_id": self.offsets[image_index] + caption_index,
        }


class CaptionEvalDataset(Dataset):
    """Evaluation view: every image once, with all of its captions."""

    def __init__(
        self,
        records: Sequence[CaptionRecord],
        transform: Callable[[Image.Image], torch.Tensor],
        image_loader: ImageLoader | None = None,
    ):
        self.records = records
        self.transform = transform
        self.images = _RecordImages(records, image_loader)
        self.offsets = caption_offsets(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        captions = self.records[index].captions
        try:
            image = self.images(index)
        except BadImageError as exc:
            return {_BAD: [_named(exc)]}
        return {
            "image": self.transform(image),
            "captions": list(captions),
            "image_id": index,
            "caption_ids": [self.offsets[index] + j for j in range(len(captions))],
        }


class CaptionCollator:
    """Stacks images and tokenizes the batch's captions with dynamic padding; applies
    ``on_bad_image`` to images that went bad after the start-up check.

    A class rather than a closure so DataLoader workers can pickle it.
    """

    def __init__(self, tokenizer: Any, max_length: int, on_bad_image: str = "error"):
        check_policy(on_bad_image)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.on_bad_image = on_bad_image

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        skipped = [name for item in items for name in item.get(_BAD, ())]
        if skipped:
            listed = first_names(skipped)
            if self.on_bad_image == "error":
                raise ImageChangedError(
                    f"{len(skipped)} image(s) failed to load after passing the start-up check "
                    f"({listed}); the files changed during the run -- restore them, or run "
                    "with dataset.on_bad_image=skip to train without them"
                )
            items = [item for item in items if "image" in item]
            if not items:
                raise ImageChangedError(
                    f"every image of a batch failed to load after passing the start-up check "
                    f"({listed}); the files changed during the run -- restore them and restart "
                    "(the start-up check then skips the bad ones)"
                )
        batch = self._collate(items)
        return {**batch, SKIPPED: skipped} if skipped else batch

    def _collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if "captions" in items[0]:
            captions = [c for item in items for c in item["captions"]]
            caption_ids = [c for item in items for c in item["caption_ids"]]
            caption_image_ids = [
                item["image_id"] for item in items for _ in range(len(item["captions"]))
            ]
            extra = {"caption_image_ids": torch.tensor(caption_image_ids)}
        else:
            captions = [item["caption"] for item in items]
            caption_ids = [item["caption_id"] for item in items]
            extra = {}
        return {
            "images": torch.stack([item["image"] for item in items]),
            "image_ids": torch.tensor([item["image_id"] for item in items]),
            "caption_ids": torch.tensor(caption_ids),
            **tokenize(self.tokenizer, captions, self.max_length),
            **extra,
        }
