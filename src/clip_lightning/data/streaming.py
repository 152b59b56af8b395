"""Train from WebDataset shards (img2dataset's layout) with the ``webdataset`` library.

Each sample of a shard is ``{key}.jpg`` (or png/webp) + ``{key}.txt`` (+ ``{key}.json``). The
caption comes from ``txt`` or from a field of the ``json`` (a list there gives one random caption
per epoch, like ``train_pairs=random``). Shard lists follow open_clip: brace expansion
(``/data/cc3m/{00000..00331}.tar``), several sources joined with ``::`` each with its own weight,
and any URL webdataset opens (local paths, ``pipe:``, http, s3 through ``pipe:aws s3 cp ...``).

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

Validation and test use a map-style folder (``eval_root``: any format ``CaptionDataModule``
detects) or eval shards (``val_urls`` / ``test_urls``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import multiprocessing
import os
import random
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import lightning as L
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data.dataloader import _BaseDataLoaderIter

from clip_lightning.data.checks import check_policy
from clip_lightning.data.datamodule import (
    CaptionDataModule,
    fit_batch_size,
    loader_options,
    model_side,
)
from clip_lightning.data.formats import group_for
from clip_lightning.data.records import (
    MISSING,
    BadImageError,
    CaptionRecord,
    clean_caption,
    load_rgb,
)
from clip_lightning.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SIZES_FILE = "sizes.json"
# under on_bad_image=skip, this many unreadable samples in a row mean the data is unusable
MAX_BAD_IN_A_ROW = 1000


# ----------------------------------------------------------------------------- shard lists
def expand_sources(
    urls: str | Sequence[str], weights: Sequence[float] | None = None
) -> tuple[list[str], list[float] | None]:
    """Shard URLs of ``"a/{0..9}.tar::b/{0..3}.tar"`` (or a list of sources), and one weight
    per shard: its source's weight (open_clip's upsampling factors), or None without weights."""
    sources = [s for s in (urls.split("::") if isinstance(urls, str) else urls) if s]
    if not sources:
        raise DataError(
            "dataset.urls is empty; set it to shard URLs, e.g. /data/cc3m/{00000..00331}.tar"
        )
    if weights is not None and len(weights) != len(sources):
        raise DataError(
            f"dataset.weights has {len(weights)} value(s) for {len(sources)} source(s) in "
            "dataset.urls (joined with '::'); give one weight per source"
        )
    shards: list[str] = []
    shard_weights: list[float] = []
    for index, source in enumerate(sources):
        expanded = [
            os.path.expanduser(url) if _is_local(url) else url
            for url in wds.shardlists.expand_urls(str(source))
        ]
        shards.extend(expanded)
        if weights is not None:
            shard_weights.extend([float(weights[index])] * len(expanded))
    return shards, (shard_weights if weights is not None else None)


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def check_local_shards(shards: Sequence[str]) -> None:
    """Fail at start-up when local shard files are missing or hold no samples (remote ones are
    opened lazily): a stream over empty shards would look for samples forever."""
    local = [url for url in shards if _is_local(url)]
    missing = [url for url in local if not Path(url).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(shards)} shards do not exist (first: {missing[0]}); check "
            "dataset.urls (brace ranges such as {00000..00331} must match the file names)"
        )
    empty = [url for url in local if _holds_no_files(Path(url))]
    if empty:
        others = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DataError(
            f"shard {empty[0]}{others} holds no samples (an empty tar); remove it from "
            "dataset.urls or write it again"
        )


def _holds_no_files(path: Path) -> bool:
    """An empty file or a tar without members (reads the first header only)."""
    if path.stat().st_size == 0:
        return True
    try:
        with tarfile.open(path) as tar:
            return tar.next() is None
    except tarfile.TarError:
        return False  # not a tar: reported as an unreadable shard when it is read


def count_samples(shards: Sequence[str]) -> int | None:
    """Samples in local ``shards``: ``sizes.json`` next to them (written by
    ``clip_lightning.prepare shards=DIR``, open_clip's convention) or img2dataset's per-shard
    ``*_stats.json``; None when any shard's size is unknown."""
    total = 0
    sizes_by_dir: dict[Path, dict[str, int]] = {}
    for url in shards:
        if not _is_local(url):
            return None
        path = Path(url)
        folder = path.parent
        if folder not in sizes_by_dir:
            sizes_file = folder / SIZES_FILE
            sizes_by_dir[folder] = (
                json.loads(sizes_file.read_text()) if sizes_file.is_file() else {}
            )
        if path.name in sizes_by_dir[folder]:
            total += int(sizes_by_dir[folder][path.name])
            continue
        stats = path.with_name(f"{path.stem}_stats.json")
        if not stats.is_file():
            return None
        total += int(json.loads(stats.read_text())["successes"])
    return total


def _resampled_shards(
    urls: Sequence[str], weights: Sequence[float] | None, rng: random.Random
) -> Iterator[dict[str, str]]:
    """Shards drawn with replacement, weighted per shard (open_clip's ResampledShards2)."""
    while True:
        yield {"url": rng.choices(urls, weights=weights)[0]}


# ----------------------------------------------------------------------------- samples
@dataclass(frozen=True)
class ShardImage:
    """The encoded image of one shard sample; its key names the shard and the sample."""

    data: bytes
    url: str
    sample_key: str

    @property
    def key(self) -> str:
        return f"{self.url} sample {self.sample_key}"

    def open(self) -> Image.Image:
        return Image.open(io.BytesIO(self.data))


def sample_image(sample: Mapping[str, Any]) -> ShardImage:
    """The encoded image of a raw webdataset sample, or :class:`BadImageError` (missing)."""
    data = next((sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample), None)
    image = ShardImage(data or b"", sample.get("__url__", "?"), sample.get("__key__", "?"))
    if data is None:
        raise BadImageError(image.key, MISSING)
    return image


def sample_captions(sample: Mapping[str, Any], key: str, caption_field: str | None) -> list[str]:
    """The cleaned caption(s) of a raw webdataset sample, or :class:`BadImageError` naming
    ``key`` when there is none."""
    try:
        if caption_field is None:
            captions: Any = sample["txt"].decode("utf-8")
        else:
            captions = json.loads(sample["json"])[caption_field]
    except (KeyError, TypeError, ValueError) as exc:
        source = "txt" if caption_field is None else f"json field {caption_field!r}"
        raise BadImageError(key, f"without a caption ({source})") from exc
    texts = [captions] if isinstance(captions, str) else list(captions or [])
    texts = [clean_caption(t) for t in texts if isinstance(t, str) and clean_caption(t)]
    if not texts:
        raise BadImageError(key, "without a caption (empty)")
    return texts


def decode_sample(
    sample: Mapping[str, Any], caption_field: str | None
) -> tuple[Image.Image, list[str]]:
    """The RGB image and the caption(s) of a raw webdataset sample, or :class:`BadImageError`
    naming the shard and the sample key, in the vocabulary of the image check."""
    image = sample_image(sample)
    texts = sample_captions(sample, image.key, caption_field)
    return load_rgb(image), texts


def stable_id(key: str) -> int:
    """A 48-bit integer id of a sample key, the same on every rank and worker."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:12], 16)


def worker_share(batches: int, worker: int, workers: int) -> int:
    """How many of batches ``0 .. batches-1`` a DataLoader worker serves: torch hands batch
    ``i`` to worker ``i % workers``."""
    return batches // workers + (1 if worker < batches % workers else 0)


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


class BadSampleError(DataError):
    """A shard sample that cannot be trained on, under ``on_bad_image=error``.

    torch re-raises an exception from a DataLoader worker as ``type(exc)(text)`` with the
    worker's traceback in ``text``; keeping only its last line leaves the user one line.
    """

    def __init__(self, message: str):
        last = message.strip().splitlines()[-1] if message.strip() else message
        super().__init__(last.removeprefix(f"{type(self).__module__}.{type(self).__qualname__}: "))


class _BadSamples:
    """Applies ``on_bad_image`` to unreadable shards and samples; under ``skip`` counts them
    and logs the count once per worker and epoch."""

    def __init__(self, policy: str, where: str):
        self.policy, self.where = policy, where
        self.count, self.first = 0, ""

    def __call__(self, exc: Exception) -> bool:
        """A webdataset error handler (True: continue), also called for bad samples."""
        message = " ".join(str(exc).split()) or repr(exc)
        if self.policy == "error":
            raise BadSampleError(
                f"{message}; skip bad samples with dataset.on_bad_image=skip"
            ) from exc
        self.count += 1
        self.first = self.first or message
        return True

    def report(self, epoch: int) -> None:
        if self.count:
            log.warning(
                "%s, epoch %d: skipped %d bad sample(s) (dataset.on_bad_image=skip), first: %s",
                self.where,
                epoch,
                self.count,
                self.first,
            )


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
        policy = _BadSamples(self.on_bad_image, f"shard stream worker {worker}")
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
        policy = _BadSamples(self.on_bad_image, "eval shards")
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


# ----------------------------------------------------------------------------- datamodule
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
        :func:`~clip_lightning.data.datamodule.fit_batch_size`); every rank yields whole
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
