"""LightningDataModule serving any caption dataset: Flickr30k, COCO, synthetic, ...

The datamodule receives only data-side facts from the model (the image encoder's timm data
config and the text tokenizer), so transforms always match the encoder; everything else comes
from the ``dataset`` config group. Without them it can still load, check and cache records
(``clip_lightning.prepare`` needs no model).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from clip_lightning.data.cache import CachedImages, ImageCache, fingerprint
from clip_lightning.data.checks import (
    MEMO_NAME,
    BadRecords,
    apply_policy,
    check_images,
    check_policy,
    first_names,
)
from clip_lightning.data.datasets import (
    SKIPPED,
    CaptionEvalDataset,
    CaptionTrainDataset,
)
from clip_lightning.data.formats import load_records, resolve_format
from clip_lightning.data.loader_settings import (
    check_loader_numbers,
    fit_batch_size,
    loader_options,
    model_side,
)
from clip_lightning.data.records import SPLITS, CaptionRecord, assign_splits, split_records
from clip_lightning.errors import DataError
from clip_lightning.utils.renamed_keys import renamed_argument

log = logging.getLogger(__name__)


class CaptionDataModule(L.LightningDataModule):
    """Loads records once, checks and splits them, and serves train/val/test loaders.

    ``batch_size`` is per device: with DDP on N devices the global (contrastive) batch is
    ``N * batch_size`` because the loss gathers features from every rank. Lightning adds the
    DistributedSampler; the retrieval metric drops the samples it pads in by id.

    Args (beyond the loader settings):
        format: ``auto`` (detected from ``root``; the hub when ``root`` is null) or one of
            ``clip_lightning.data.formats.FORMATS``.
        root: a local dataset folder. hub_id / hub_kwargs: the hub dataset used without a root
            (``hub_kwargs`` go to ``datasets.load_dataset``).
        columns: the table columns of the csv and hf formats (null: found by common names).
        image_dir: the folder image paths are relative to (default: found under ``root``).
        split_sizes: val/test sizes (counts, or fractions) for images without a split.
        eval_only: the folder only serves val and test (``dataset.eval_root`` of a streaming
            run): no train split is needed, and split-less images go half to val, half to test.
        root_key: the setting ``root`` came from, for messages (``dataset.eval_root``).
        on_bad_image: ``error`` or ``skip`` for missing/unreadable images and bad or missing
            captions, at start-up and for images that go bad during the run.
        cache: null, a folder, or ``auto`` (= ``cache_auto_dir``) for the decoded-image cache.
        cache_image_size: the side, in pixels, of the cached square images.
        cache_auto_dir: also holds the memo of the start-up image check (unchanged files are
            not decoded again); null: no memo.
        cache_size: the old name of ``cache_image_size``, read until the next release.
    """

    def __init__(
        self,
        image_config: Mapping[str, Any] | None = None,
        tokenizer: Any = None,
        max_length: int = 77,
        name: str = "dataset",
        format: str = "auto",
        root: str | None = None,
        hub_id: str | None = None,
        hub_kwargs: Mapping[str, Any] | None = None,
        columns: Mapping[str, str | None] | None = None,
        image_dir: str | None = None,
        adapter_options: Mapping[str, Any] | None = None,
        split_sizes: Mapping[str, float] | None = None,
        split_seed: int = 0,
        train_pairs: str = "random",
        augment: Mapping[str, Any] | None = None,
        on_bad_image: str = "error",
        cache: str | None = None,
        cache_image_size: int = 256,
        cache_auto_dir: str | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        eval_only: bool = False,
        root_key: str = "dataset.root",
        cache_size: int | None = None,
    ):
        super().__init__()
        check_loader_numbers(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            prefetch_factor=prefetch_factor,
        )
        self.name: str = name  # never None here, unlike LightningDataModule.name
        self.root = Path(root).expanduser() if root is not None else None
        self.hub_id = hub_id
        self.format = format
        self.root_key = root_key
        self.adapter_options = dict(adapter_options or {})
        if format != "synthetic":
            self.adapter_options["image_dir"] = image_dir
        self.columns = dict(columns or {})
        self.hub_options = {"hub_id": hub_id, "hub_kwargs": dict(hub_kwargs or {})}
        self.eval_only = eval_only
        default_sizes = {"val": 0.5, "test": 0.5} if eval_only else {"val": 1000, "test": 1000}
        self.split_sizes = dict(split_sizes or default_sizes)
        self.split_seed = split_seed
        self.train_pairs = train_pairs
        check_policy(on_bad_image)
        self.on_bad_image = on_bad_image
        self.cache_folder = self._cache_folder(cache, cache_auto_dir)
        self.check_memo = Path(cache_auto_dir).expanduser() / MEMO_NAME if cache_auto_dir else None
        self.cache_image_size = renamed_argument(
            cache_image_size, cache_size, "dataset.cache_size", "dataset.cache_image_size"
        )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.loader_options = loader_options(
            num_workers, pin_memory, persistent_workers, prefetch_factor
        )
        self.augment = augment
        self.use_model(image_config, tokenizer, max_length)
        self.image_cache: ImageCache | None = None
        self.records: list[CaptionRecord] | None = None
        self.splits: dict[str, list[CaptionRecord]] | None = None
        # "<image>: <reason>" of images that went bad during the run (on_bad_image=skip)
        self.skipped_during_run: list[str] = []

    def use_model(
        self, image_config: Mapping[str, Any] | None, tokenizer: Any, max_length: int = 77
    ) -> None:
        """Take the model's data-side facts (transforms, tokenizer), e.g. once the model is
        built after the data was loaded and checked."""
        self.image_config = image_config
        self.train_transform, self.eval_transform, self.collate = model_side(
            image_config, tokenizer, max_length, self.augment, self.on_bad_image
        )

    def _cache_folder(self, cache: str | None, auto_dir: str | None) -> Path | None:
        if cache in (None, "", "none", "null"):
            return None
        if cache == "auto":
            if not auto_dir:
                raise DataError("dataset.cache=auto needs dataset.cache_auto_dir (or a folder)")
            return Path(auto_dir).expanduser()
        return Path(cache).expanduser()

    @property
    def source(self) -> str:
        """Where the records come from, for the cache fingerprint and messages."""
        return f"{self.format}:{self.root.resolve() if self.root else self.hub_id}"

    def load_records(self) -> list[CaptionRecord]:
        """All records from the format adapter, each with a split; nothing checked or dropped."""
        if self.records is None:
            fmt = resolve_format(self.format, self.root, self.name, self.hub_id, self.root_key)
            options = dict(self.adapter_options)
            if fmt in ("csv", "hf"):
                options["columns"] = self.columns
            if fmt == "hf":
                options.update(self.hub_options)
            records = load_records(fmt, self.root, **options)
            if not records:
                raise DataError(f"{self.name}: the {fmt} data at {self.source} has no images")
            records = assign_splits(
                records,
                self.split_sizes["val"],
                self.split_sizes["test"],
                self.split_seed,
                need_train=not self.eval_only,
            )
            self.format, self.records = fmt, records
        return self.records

    def check_sources(self, train: bool = True) -> None:
        """Find the data and read its annotations (no image is decoded): the cheap part of
        :meth:`load_splits`, which a run checks before building its model. ``train`` changes
        nothing: every split is read from the one source."""
        self.load_records()

    def require_eval_data(self, splits: Sequence[str]) -> None:
        """Fail, naming the fix, when one of the evaluation ``splits`` has no images."""
        empty = [split for split in splits if not self.load_splits().get(split)]
        if empty:
            raise DataError(
                f"{self.name}: no {' or '.join(empty)} images in {self.source}; check "
                "dataset.split_sizes or the dataset's own split files"
            )

    def find_bad_records(self) -> BadRecords:
        """Fully decode every image and collect caption problems; nothing is dropped here.

        With ``dataset.cache`` the cache build is the decode (a matching cache costs nothing);
        without, the memoised image check. Training start-up and ``prepare`` both call this,
        so they always report the same images.
        """
        records = self.load_records()
        if self.cache_folder is not None:
            expected = fingerprint(records, self.source, self.cache_image_size)
            self.image_cache = ImageCache.open_or_build(self.cache_folder, records, expected)
            problems = self.image_cache.image_problems(records)
        else:
            problems = check_images([r.image for r in records], self.check_memo)
        return BadRecords.find(records, problems)

    def load_splits(self) -> dict[str, list[CaptionRecord]]:
        """Records checked (``on_bad_image``), cached if configured, and split (memoised)."""
        if self.splits is None:
            records = self.load_records()
            good = apply_policy(records, self.find_bad_records(), self.on_bad_image, self.name)
            splits = split_records(good)
            needed = SPLITS[1:] if self.eval_only else SPLITS
            empty = [name for name in needed if not splits[name]]
            if empty:
                raise DataError(
                    f"{self.name}: no images in split(s) {empty} after checking {self.source}; "
                    "check the split column, or dataset.split_sizes for data without splits"
                )
            self.splits = splits
        return self.splits

    def setup(self, stage: str | None = None) -> None:
        self.load_splits()

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        if self.collate is None:
            raise ValueError("CaptionDataModule needs tokenizer= to build data loaders")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            collate_fn=self.collate,
            **self.loader_options,
        )

    def _image_loader(self, records: list[CaptionRecord]) -> CachedImages | None:
        return self.image_cache.loader(records) if self.image_cache is not None else None

    def _transform(self, transform: Callable | None) -> Callable:
        if transform is None or self.image_config is None:
            raise ValueError("CaptionDataModule needs image_config= to build data loaders")
        size = max(self.image_config["input_size"][1:])
        if self.image_cache is not None and size > self.cache_image_size:
            log.warning(
                "the model reads %d px but dataset.cache_image_size=%d: cached images are "
                "upsampled; raise dataset.cache_image_size",
                size,
                self.cache_image_size,
            )
        return transform

    def train_dataset(self) -> CaptionTrainDataset:
        records = self.load_splits()["train"]
        return CaptionTrainDataset(
            records,
            self._transform(self.train_transform),
            self.train_pairs,
            self._image_loader(records),
        )

    def eval_dataset(self, split: str) -> CaptionEvalDataset:
        records = self.load_splits()[split]
        return CaptionEvalDataset(
            records, self._transform(self.eval_transform), self._image_loader(records)
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset()
        world_size = self.trainer.world_size if self.trainer is not None else 1
        return self._loader(dataset, self.train_batch_size(len(dataset), world_size), shuffle=True)

    def train_batch_size(self, samples: int, world_size: int = 1) -> int:
        """The batch size to train ``samples`` on (see :func:`fit_batch_size`); the
        distributed sampler pads every rank to the same share."""
        return fit_batch_size(
            self.name,
            self.batch_size,
            samples,
            world_size,
            math.ceil(samples / world_size),
            "add images or lower dataset.split_sizes.val / dataset.split_sizes.test",
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset("val"), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset("test"), self.eval_batch_size, shuffle=False)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count and log the images the collator dropped because they went bad mid-run."""
        skipped = batch.pop(SKIPPED, None) if isinstance(batch, dict) else None
        if skipped:
            self.skipped_during_run.extend(skipped)
            names = self.skipped_during_run
            log.warning(
                "%s: %d image(s) failed to load after the start-up check and were skipped so "
                "far (dataset.on_bad_image=skip): %s",
                self.name,
                len(names),
                first_names(names),
            )
        return batch
