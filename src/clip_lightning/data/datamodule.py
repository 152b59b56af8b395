"""LightningDataModule serving any caption dataset: Flickr30k, COCO, synthetic, ...

The datamodule receives only data-side facts from the model (the image encoder's timm data
config and the text tokenizer), so transforms always match the encoder; everything else comes
from the ``dataset`` config group.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from clip_lightning.data.datasets import CaptionCollator, CaptionEvalDataset, CaptionTrainDataset
from clip_lightning.data.formats import load_records
from clip_lightning.data.records import CaptionRecord, assign_splits, split_records
from clip_lightning.data.transforms import build_image_transforms


class CaptionDataModule(L.LightningDataModule):
    """Loads records once, splits them, and serves train/val/test loaders.

    ``batch_size`` is per device: with DDP on N devices the global (contrastive) batch is
    ``N * batch_size`` because the loss gathers features from every rank.
    """

    def __init__(
        self,
        image_config: Mapping[str, Any],
        tokenizer: Any,
        max_length: int,
        name: str = "dataset",
        format: str = "auto",
        root: str | None = None,
        options: Mapping[str, Any] | None = None,
        split_sizes: Mapping[str, int] | None = None,
        split_seed: int = 0,
        train_pairs: str = "random",
        augment: Mapping[str, Any] | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
    ):
        super().__init__()
        self.name = name
        self.format = format
        self.root = root
        self.options = dict(options or {})
        self.split_sizes = dict(split_sizes or {"val": 1000, "test": 1000})
        self.split_seed = split_seed
        self.train_pairs = train_pairs
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.loader_options = {
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "persistent_workers": persistent_workers and num_workers > 0,
            "prefetch_factor": prefetch_factor if num_workers > 0 else None,
        }
        self.train_transform, self.eval_transform = build_image_transforms(
            image_config, **dict(augment or {})
        )
        self.collate = CaptionCollator(tokenizer, max_length)
        self.splits: dict[str, list[CaptionRecord]] | None = None

    def load_splits(self) -> dict[str, list[CaptionRecord]]:
        """Read the records through the format adapter and split them (cached after first call)."""
        if self.splits is None:
            records = load_records(self.format, self.root, **self.options)
            if any(r.split is None for r in records):
                records = assign_splits(
                    records, self.split_sizes["val"], self.split_sizes["test"], self.split_seed
                )
            self.splits = split_records(records)
        return self.splits

    def setup(self, stage: str | None = None) -> None:
        self.load_splits()

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            collate_fn=self.collate,
            **self.loader_options,
        )

    def train_dataloader(self) -> DataLoader:
        records = self.load_splits()["train"]
        dataset = CaptionTrainDataset(records, self.train_transform, self.train_pairs)
        return self._loader(dataset, self.batch_size, shuffle=True)

    def eval_dataset(self, split: str) -> CaptionEvalDataset:
        return CaptionEvalDataset(self.load_splits()[split], self.eval_transform)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset("val"), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset("test"), self.eval_batch_size, shuffle=False)
