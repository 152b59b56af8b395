"""The resumable part of streaming: the DataLoader tells its stream, through shared memory,
the epoch and the batches a resumed run already trained before the workers start."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _BaseDataLoaderIter

if TYPE_CHECKING:
    from clip_lightning.data.streaming.stream import ShardStream


class StreamPosition:
    """Where the next pass starts: the epoch and the batches already trained in it.

    Shared memory, so persistent DataLoader workers see each new epoch too.
    """

    def __init__(self) -> None:
        self._epoch = multiprocessing.Value("q", 0)
        self._consumed = multiprocessing.Value("q", 0)

    def set(self, epoch: int, consumed: int) -> None:
        self._epoch.value, self._consumed.value = epoch, consumed

    def get(self) -> tuple[int, int]:
        return int(self._epoch.value), int(self._consumed.value)


class StreamLoader(DataLoader):
    """A DataLoader that tells its :class:`ShardStream` where each pass starts (the epoch and
    the batches a resumed run already trained) just before the workers begin."""

    dataset: ShardStream

    def __init__(
        self, dataset: ShardStream, position: Callable[[], tuple[int, int]], **kwargs: Any
    ) -> None:
        super().__init__(dataset, **kwargs)
        self.position = position

    def __iter__(self) -> _BaseDataLoaderIter:
        self.dataset.position.set(*self.position())
        return super().__iter__()
