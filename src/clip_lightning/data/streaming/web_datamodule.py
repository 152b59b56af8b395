"""The datamodule of ``dataset=webdataset``: training from shards, evaluation on a map-style
folder or on eval shards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from clip_lightning.data.checks import check_policy
from clip_lightning.data.datamodule import CaptionDataModule
from clip_lightning.data.formats import group_for
from clip_lightning.data.loader_settings import fit_batch_size, loader_options, model_side
from clip_lightning.data.records import CaptionRecord
from clip_lightning.data.streaming.loader import StreamLoader
from clip_lightning.data.streaming.shard_lists import (
    SIZES_FILE,
    check_local_shards,
    count_samples,
    expand_sources,
)
from clip_lightning.data.streaming.stream import EvalShardStream, ShardStream
from clip_lightning.errors import DataError


class WebDataModule(L.LightningDataModule):
    """Training from shards, evaluation on a map-style folder or eval shards.

    ``batch_size`` is per device; the contrastive batch is ``world_size * batch_size``. Image
    transforms and the collate function are the map-style datamodule's, so streaming and map-style
    training feed the model identically.

    Args (beyond the loader settings, which mean what they mean for ``CaptionDataModule``):
        urls: shard URLs: brace ranges, sources joined with ``::`` (or a list of sources).
        root: refused with a one-line hint (kept so the key exists in the config group).
        weights: one sampling weight per source (needs ``resampled``).
        train_num_samples: samples per epoch; null reads ``sizes.json`` / img2dataset stats.
        resampled: virtual epochs over shards drawn with replacement (true), or exact epochs.
        shuffle_buffer: samples each worker shuffles among (1: off).
        caption_field: null takes the caption from ``txt``; a name takes that ``json`` field.
        eval_root / eval_format: a local folder for val/test, read by ``CaptionDataModule``
            (its format detected like ``dataset.root``'s); ``columns`` are its table columns
            (csv and hf formats) and ``eval_options`` its other options.
        val_urls / test_urls: eval shards instead of ``eval_root``.
    """

    def __init__(
        self,
        image_config: Mapping[str, Any] | None = None,
        tokenizer: Any = None,
        max_length: int = 77,
        name: str = "webdataset",
        urls: str | Sequence[str] | None = None,
        root: str | None = None,
        weights: Sequence[float] | None = None,
        train_num_samples: int | None = None,
        resampled: bool = True,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        caption_field: str | None = None,
        augment: Mapping[str, Any] | None = None,
        on_bad_image: str = "error",
        eval_root: str | None = None,
        eval_format: str = "auto",
        columns: Mapping[str, str | None] | None = None,
        eval_options: Mapping[str, Any] | None = None,
        val_urls: str | Sequence[str] | None = None,
        test_urls: str | Sequence[str] | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
    ):
        super().__init__()
        check_policy(on_bad_image)
        if root is not None:
            group = group_for(Path(root).expanduser())
            raise DataError(
                f"dataset=webdataset reads shards from dataset.urls, not dataset.root={root}; "
                "set dataset.eval_root=DIR for a validation/test folder, or "
                + (f"dataset={group} to train on it" if group else "dataset=GROUP of that folder")
            )
        if weights is not None and not resampled:
            raise DataError(
                "dataset.weights needs dataset.resampled=true (sources are mixed by drawing "
                "shards with replacement); drop the weights or resample"
            )
        if eval_root is not None and (val_urls or test_urls):
            raise DataError("set dataset.eval_root or dataset.val_urls/test_urls, not both")
        self.name: str = name  # never None here, unlike LightningDataModule.name
        # training shards; evaluating on eval shards needs none
        self.shards, self.shard_weights = expand_sources(urls, weights) if urls else ([], None)
        self.train_num_samples = train_num_samples
        self.resampled, self.shuffle_buffer, self.seed = resampled, shuffle_buffer, seed
        self.caption_field, self.on_bad_image = caption_field, on_bad_image
        self.eval_urls = {"val": val_urls, "test": test_urls}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.loader_options = loader_options(
            num_workers, pin_memory, persistent_workers, prefetch_factor
        )
        self.augment = augment
        # The eval folder is a map-style dataset: reuse its datamodule, not a copy of it.
        options = {
            "name": name,
            "format": eval_format,
            "columns": columns,
            "augment": augment,
            "on_bad_image": on_bad_image,
            "batch_size": batch_size,
            "eval_batch_size": eval_batch_size,
            **self.loader_options,
            **dict(eval_options or {}),
        }
        self.eval_data = (
            CaptionDataModule(
                root=eval_root, eval_only=True, root_key="dataset.eval_root", **options
            )
            if eval_root is not None
            else None
        )
        self.use_model(image_config, tokenizer, max_length)

    # ------------------------------------------------------------------ set-up
    def use_model(
        self, image_config: Mapping[str, Any] | None, tokenizer: Any, max_length: int = 77
    ) -> None:
        """Take the model's data-side facts (transforms, tokenizer); see
        :meth:`CaptionDataModule.use_model`."""
        self.image_config = image_config
        self.train_transform, self.eval_transform, self.collate = model_side(
            image_config, tokenizer, max_length, self.augment, self.on_bad_image
        )
        if self.eval_data is not None:
            self.eval_data.use_model(image_config, tokenizer, max_length)

    def num_samples(self) -> int:
        """Samples per epoch (all ranks together)."""
        if self.train_num_samples is not None:
            return int(self.train_num_samples)
        counted = count_samples(self.shards)
        if counted is None:
            raise DataError(
                f"cannot tell how many samples {len(self.shards)} shards hold (no {SIZES_FILE} "
                "or *_stats.json next to them); set dataset.train_num_samples=N (the dataset "
                "size, or any virtual epoch length with resampling)"
            )
        return counted

    def require_eval_data(self, splits: Sequence[str]) -> None:
        """Fail before anything is built when a split a run will evaluate has no source."""
        if self.eval_data is not None:
            self.check_sources(train=False)
            self.eval_data.require_eval_data(splits)
            return
        missing = [split for split in splits if not self.eval_urls[split]]
        if missing:
            raise DataError(
                f"{self.name}: no {' or '.join(missing)} data; set dataset.eval_root=DIR (a "
                "folder in any format dataset.root reads) or "
                + " and ".join(f"dataset.{split}_urls=SHARDS" for split in missing)
            )

    def check_sources(self, train: bool = True) -> None:
        """The cheap part of loading: training shards exist and their size is known (only
        ``train``: evaluating reads no training shards), eval shards exist, the eval folder's
        annotations read."""
        if train:
            if not self.shards:
                raise DataError(
                    "dataset=webdataset needs shard URLs, e.g. "
                    "'dataset.urls=\"/data/cc3m/{00000..00331}.tar\"' (write shards with "
                    "`python -m clip_lightning.prepare ... shards=DIR`)"
                )
            check_local_shards(self.shards)
            self.num_samples()
        for urls in self.eval_urls.values():
            if urls:
                check_local_shards(expand_sources(urls)[0])
        if self.eval_data is not None:
            self.eval_data.check_sources()

    def load_splits(self) -> dict[str, list[CaptionRecord]]:
        """Check the shards (and load the eval folder) up front, so a bad path fails before
        training; returns the eval folder's records by split (none for eval shards)."""
        self.check_sources()
        return self.eval_data.load_splits() if self.eval_data is not None else {}

    def load_eval_data(self) -> dict[str, list[CaptionRecord]]:
        """Check the eval shards, or load the eval folder's records by split (returned)."""
        self.check_sources(train=False)
        return self.eval_data.load_splits() if self.eval_data is not None else {}

    def setup(self, stage: str | None = None) -> None:
        # validating or testing alone (eval) reads the eval data only
        if stage in (None, "fit"):
            self.load_splits()
        else:
            self.load_eval_data()

    def stream_position(self) -> tuple[int, int]:
        """(epoch, batches of it already trained): non-zero only when resuming mid-epoch."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        fit_loop = trainer.fit_loop
        if not fit_loop.restarting:
            return trainer.current_epoch, 0
        # restored from the checkpoint, before Lightning's own restart bookkeeping
        progress = fit_loop.epoch_loop.batch_progress.current
        # a _ProcessedTracker; Lightning hints the field as its base class
        return trainer.current_epoch, progress.processed  # type: ignore[attr-defined]

    def _require(self, part: Any, argument: str) -> Any:
        if part is None:
            raise ValueError(f"WebDataModule needs {argument}= to build data loaders")
        return part

    def ranks(self) -> tuple[int, int]:
        """(this process's rank, world size) as Lightning assigned them; (0, 1) without a
        trainer. Read here, in the main process: DataLoader workers may not see them."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_batch_size(self, world_size: int = 1) -> int:
        """The batch size an epoch of :meth:`num_samples` trains on (see
        :func:`~clip_lightning.data.loader_settings.fit_batch_size`); every rank yields whole
        batches only."""
        samples = self.num_samples()
        return fit_batch_size(
            self.name,
            self.batch_size,
            samples,
            world_size,
            samples // world_size,
            "raise dataset.train_num_samples or write more samples",
        )

    def train_dataset(
        self, rank: int = 0, world_size: int = 1, batch_size: int | None = None
    ) -> ShardStream:
        """The rank's stream of ``batch_size`` (default: :meth:`train_batch_size`) batches."""
        transform = self._require(self.train_transform, "image_config")
        batch_size = batch_size or self.train_batch_size(world_size)
        batches = self.num_samples() // (batch_size * world_size)
        workers = max(1, self.num_workers)
        if not self.resampled and len(self.shards) < world_size * workers:
            raise DataError(
                f"exact epochs (dataset.resampled=false) split {len(self.shards)} shards over "
                f"{world_size} rank(s) x {workers} worker(s), so some would get none; write "
                "more, smaller shards, lower dataset.num_workers, or set dataset.resampled=true"
            )
        return ShardStream(
            self.shards,
            self.shard_weights,
            transform,
            batch_size=batch_size,
            batches_per_rank=batches,
            resampled=self.resampled,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            caption_field=self.caption_field,
            on_bad_image=self.on_bad_image,
            rank=rank,
            world_size=world_size,
        )

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        rank, world_size = self.ranks()
        batch_size = self.train_batch_size(world_size)
        return StreamLoader(
            self.train_dataset(rank, world_size, batch_size),
            self.stream_position,
            batch_size=batch_size,
            drop_last=True,
            collate_fn=self._require(self.collate, "tokenizer"),
            **self.loader_options,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        if self.eval_data is not None:
            return getattr(self.eval_data, f"{split}_dataloader")()
        self.require_eval_data([split])
        urls = self.eval_urls[split]
        assert urls  # checked above
        stream = EvalShardStream(
            expand_sources(urls)[0],
            self._require(self.eval_transform, "image_config"),
            self.caption_field,
            self.on_bad_image,
            *self.ranks(),
        )
        return DataLoader(
            stream,
            batch_size=self.eval_batch_size,
            collate_fn=self._require(self.collate, "tokenizer"),
            **self.loader_options,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
