"""The interface of a run's dataset, whichever ``dataset`` config built it.

:class:`~clip_lightning.data.datamodule.CaptionDataModule` (caption datasets read into records)
and :class:`~clip_lightning.data.streaming.WebDataModule` (WebDataset shards, streamed) are both
Lightning datamodules with this interface: the tasks check the data through it before the
model is built, then hand it the model's transforms and tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from clip_lightning.data.records import CaptionRecord


class DataModule(Protocol):
    """What the tasks ask of a dataset besides Lightning's ``*_dataloader`` hooks."""

    #: the dataset's name in messages and results
    name: str

    def check_sources(self, train: bool = True) -> None:
        """The cheap check: the data is found and its annotations read (nothing decoded);
        without ``train`` only what evaluation reads."""
        ...

    def load_splits(self) -> dict[str, list[CaptionRecord]]:
        """Load and check the data up front, so a bad file fails before training; the records
        by split (what the datamodule holds as records)."""
        ...

    def require_eval_data(self, splits: Sequence[str]) -> None:
        """Fail, naming the fix, when a split a run will evaluate has no data."""
        ...

    def use_model(
        self, image_config: Mapping[str, Any] | None, tokenizer: Any, max_length: int = 77
    ) -> None:
        """Take the model's data-side facts: its image preprocessing and tokenizer."""
        ...
