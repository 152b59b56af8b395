"""The training stream of one rank over shards, and the in-order stream of eval shards.

Epochs:

* ``resampled=true`` (default): every DataLoader worker draws shards with replacement (weighted
  by source), so epochs are *virtual*: ``train_num_samples`` samples, whatever the shard count.
* ``resampled=false``: exact epochs. The shard list is shuffled the same way on every rank,
  split across ranks (the rank Lightning gave this process) and DataLoader workers
  (``wds.split_by_worker``), and read once.

Either way each rank yields exactly ``num_samples // (batch_size * world_size)`` batches per
epoch (a worker whose shards run out starts them again), so DDP ranks never wait on each other
and the progress bar has a total. An exact epoch therefore sees every sample once when each
worker's shards hold the same number of samples (equal shards, a multiple of ranks x workers of
them); otherwise a worker short of samples repeats a few and a worker with extra drops some.

Where a stream starts depends only on (seed, epoch, batches already trained this epoch, rank,
worker): a run resumed mid-epoch draws a *different*, reproducible stream (resampled) or skips
exactly what its worker already served (exact epochs), so it does not replay what it has seen.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset

from clip_lightning.data.records import BadImageError
from clip_lightning.data.streaming.bad_samples import BadSamples
from clip_lightning.data.streaming.decode import decode_sample, stable_id
from clip_lightning.data.streaming.loader import StreamPosition
from clip_lightning.errors import DataError

# under on_bad_image=skip, this many unreadable samples in a row mean the data is unusable
MAX_BAD_IN_A_ROW = 1000


def _resampled_shards(
    urls: Sequence[str], weights: Sequence[float] | None, rng: random.Random
) -> Iterator[dict[str, str]]:
    """Shards drawn with replacement, weighted per shard (open_clip's ResampledShards2)."""
    while True:
        yield {"url": rng.choices(urls, weights=weights)[0]}


def worker_share(batches: int, worker: int, workers: int) -> int:
    """How many of batches ``0 .. batches-1`` a DataLoader worker serves: torch hands batch
    ``i`` to worker ``i % workers``."""
    return batches // workers + (1 if worker < batches % workers else 0)


class ShardStream(IterableDataset):
    """The training stream of one rank: ``batches_per_rank * batch_size`` transformed samples
    per epoch, spread over the DataLoader workers (see the module docstring)."""

    def __init__(
        self,
        urls: Sequence[str],
        weights: Sequence[float] | None,
        transform: Callable[[Image.Image], Any],
        batch_size: int,
        batches_per_rank: int,
        resampled: bool = True,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        caption_field: str | None = None,
        on_bad_image: str = "error",
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__()
        self.urls, self.weights = list(urls), weights
        self.rank, self.world_size = rank, world_size
        self.transform = transform
        self.batch_size, self.batches_per_rank = batch_size, batches_per_rank
        self.resampled, self.shuffle_buffer, self.seed = resampled, shuffle_buffer, seed
        self.caption_field, self.on_bad_image = caption_field, on_bad_image
        self.position = StreamPosition()

    def __len__(self) -> int:
        return self.batches_per_rank * self.batch_size

    def raw_samples(
        self, epoch: int, consumed: int, handler: Callable[[Exception], bool]
    ) -> Iterator[dict[str, Any]]:
        """Undecoded samples of this worker from where its share of the epoch continues;
        ``handler`` gets the errors of unreadable shards."""
        _, _, worker, workers = wds.utils.pytorch_worker_info()
        rank = self.rank
        if self.resampled:
            rng = random.Random(wds.utils.make_seed(self.seed, epoch, consumed, rank, worker))
            shards: Any = functools.partial(_resampled_shards, self.urls, self.weights, rng)
            skip = 0
        else:
            # the same shard order on every rank, then disjoint parts of it
            order = wds.utils.make_seed(self.seed, epoch)
            shards = [
                wds.SimpleShardList(self.urls, seed=order),
                wds.slice(rank, None, self.world_size),
                wds.split_by_worker,
            ]
            rng = random.Random(wds.utils.make_seed(self.seed, epoch, rank, worker))
            skip = worker_share(consumed, worker, workers) * self.batch_size
        stages = [wds.tarfile_to_samples(handler=handler)]
        if self.shuffle_buffer > 1:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng))
        # a worker whose shards run out reads them again (shuffled anew) to fill its share;
        # the shuffle buffer empties at the end of each pass, so one pass is one exact epoch
        samples = _passes(wds.DataPipeline(shards, *stages), f"worker {worker} of rank {rank}")
        return islice(samples, skip, None)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, consumed = self.position.get()
        _, _, worker, workers = wds.utils.pytorch_worker_info()
        budget = self.batch_size * (
            worker_share(self.batches_per_rank, worker, workers)
            - worker_share(min(consumed, self.batches_per_rank), worker, workers)
        )
        if budget <= 0:
            return
        policy = BadSamples(self.on_bad_image, f"shard stream worker {worker}")
        rng = random.Random(wds.utils.make_seed(self.seed, epoch, consumed, self.rank, worker, 1))
        served, bad_in_a_row = 0, 0
        for sample in self.raw_samples(epoch, consumed, policy):
            try:
                image, captions = decode_sample(sample, self.caption_field)
            except BadImageError as exc:
                policy(exc)
                bad_in_a_row += 1
                if bad_in_a_row == MAX_BAD_IN_A_ROW:  # skipping would never end
                    raise DataError(
                        f"{bad_in_a_row} samples in a row could not be read (first: "
                        f"{policy.first}); check dataset.urls and the shards"
                    ) from exc
                continue
            bad_in_a_row = 0
            yield {
                "image": self.transform(image),
                "caption": rng.choice(captions),
                "image_id": served,
                "caption_id": served,
            }
            served += 1
            if served == budget:
                policy.report(epoch)
                return


def _passes(samples: Iterable[dict[str, Any]], reader: str) -> Iterator[dict[str, Any]]:
    """The samples of pass after pass over ``samples``; a pass that yields none is an error,
    as repeating it would never yield one (remote shards are not checked at start-up)."""
    while True:
        empty = True
        for sample in samples:
            empty = False
            yield sample
        if empty:
            raise DataError(
                f"the shards of {reader} hold no samples (empty or unreadable tars); check "
                "the shards of dataset.urls"
            )


class EvalShardStream(IterableDataset):
    """Every sample of eval shards with all of its captions, in order (no shuffle).

    Ranks share the shards when there are at least as many shards as ranks; with fewer, every
    rank reads them all (a rank without samples would leave the metric's gather waiting) and
    the retrieval metric keeps one copy of each id.
    """

    def __init__(
        self,
        urls: Sequence[str],
        transform: Callable[[Image.Image], Any],
        caption_field: str | None = None,
        on_bad_image: str = "error",
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__()
        self.urls, self.transform = list(urls), transform
        self.caption_field, self.on_bad_image = caption_field, on_bad_image
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        policy = BadSamples(self.on_bad_image, "eval shards")
        stages = [wds.SimpleShardList(self.urls)]
        if len(self.urls) >= self.world_size:
            stages.append(wds.slice(self.rank, None, self.world_size))
        shards = wds.DataPipeline(*stages, wds.split_by_worker)
        for sample in wds.tarfile_to_samples(handler=policy)(shards):
            try:
                image, captions = decode_sample(sample, self.caption_field)
            except BadImageError as exc:
                policy(exc)
                continue
            image_id = stable_id(sample["__key__"])
            yield {
                "image": self.transform(image),
                "captions": captions,
                "image_id": image_id,
                "caption_ids": [image_id * 64 + j for j in range(len(captions))],
            }
        policy.report(0)
