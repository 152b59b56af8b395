"""What ``embed`` reads, cut into parts that DDP ranks and DataLoader workers share.

A part is the unit of work and of output: one WebDataset shard, or ``part_size`` consecutive
images of a folder or caption dataset. The parts still to do are dealt out round-robin over
``num_workers`` streams per rank, so each sample is read by exactly one stream however the
counts divide, and a part is always embedded and written whole by one stream. A rank with fewer
cores than ``num_workers`` starts fewer loader workers, and they share its streams: the
dealing depends on the settings only, never on the machine.

Each stream yields ready batches (images transformed by the model's evaluation transform,
captions tokenized by its tokenizer) that never mix parts, so the writer can write a part as
soon as its last batch is embedded. Unreadable samples follow ``on_bad_image``: ``error`` stops
with one line naming the sample, ``skip`` leaves them out and counts them in the part's record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from clip_lightning.data.checks import check_policy
from clip_lightning.data.loader_settings import capped_workers
from clip_lightning.data.records import BadImageError, CaptionRecord, ImageSource, load_rgb
from clip_lightning.data.streaming import sample_captions, sample_image
from clip_lightning.errors import DataError
from clip_lightning.indexing.layout import LISTED_BAD, PartRecord, finished_parts, part_name
from clip_lightning.tokenization import tokenize

Transform = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class Item:
    """One image of a map-style source: where its pixels are, its name in the metadata, and
    its caption (the first one of a caption record; None for a bare image folder)."""

    image: ImageSource
    name: str
    caption: str | None = None


class Source:
    """Parts of a collection; subclasses say how many and what each part holds."""

    #: whether samples have captions (a ``caption`` metadata column, text embeddings)
    has_captions: bool = True
    #: metadata columns besides ``image_path`` and ``caption``
    extra_columns: tuple[str, ...] = ()

    def columns(self) -> tuple[str, ...]:
        """The metadata columns, in clip-retrieval's order."""
        return ("image_path", *(("caption",) if self.has_captions else ()), *self.extra_columns)

    def num_parts(self) -> int:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Changes when the collection does: an output is only continued on the same data."""
        raise NotImplementedError

    def samples(
        self, part: int, on_error: Callable[[str], None], captions: bool
    ) -> Iterator[tuple[dict[str, str | None], ImageSource]]:
        """The metadata and image of each sample of ``part``; problems that lose samples
        without reaching the image decode (a corrupt shard) go to ``on_error``."""
        raise NotImplementedError


class ItemSource(Source):
    """A folder of images or the records of a caption dataset, ``part_size`` items a part."""

    def __init__(self, items: Sequence[Item], part_size: int, origin: str) -> None:
        self.items, self.part_size, self.origin = list(items), part_size, origin
        self.has_captions = any(item.caption is not None for item in self.items)

    def num_parts(self) -> int:
        return -(-len(self.items) // self.part_size)

    def fingerprint(self) -> str:
        names = "\n".join(item.name for item in self.items)
        return f"{self.origin}:{len(self.items)}:{hashlib.sha256(names.encode()).hexdigest()[:16]}"

    def samples(
        self, part: int, on_error: Callable[[str], None], captions: bool
    ) -> Iterator[tuple[dict[str, str | None], ImageSource]]:
        for item in self.items[part * self.part_size : (part + 1) * self.part_size]:
            if captions and item.caption is None:
                on_error(f"{item.name}: without a caption")
                continue
            yield {"image_path": item.name, "caption": item.caption}, item.image


def record_items(records: Sequence[CaptionRecord]) -> list[Item]:
    """One item per record (every split): its image and first caption."""
    return [
        Item(record.image, record.image.key, record.captions[0] if record.captions else None)
        for record in records
    ]


class ShardSource(Source):
    """WebDataset shards (img2dataset's layout), one shard a part."""

    extra_columns = ("shard",)

    def __init__(self, urls: Sequence[str], caption_field: str | None = None) -> None:
        self.urls, self.caption_field = list(urls), caption_field

    def num_parts(self) -> int:
        return len(self.urls)

    def fingerprint(self) -> str:
        digest = hashlib.sha256("\n".join(self.urls).encode()).hexdigest()[:16]
        return f"shards:{len(self.urls)}:{digest}"

    def samples(
        self, part: int, on_error: Callable[[str], None], captions: bool
    ) -> Iterator[tuple[dict[str, str | None], ImageSource]]:
        url = self.urls[part]

        def handler(exc: Exception) -> bool:
            on_error(f"{url}: {' '.join(str(exc).split()) or type(exc).__name__}")
            return False  # the rest of a broken shard is lost: stop reading it

        for sample in wds.tarfile_to_samples(handler=handler)([{"url": url}]):
            key = f"{url} sample {sample.get('__key__', '?')}"
            try:
                image = sample_image(sample)
                caption = sample_captions(sample, key, self.caption_field)[0] if captions else None
            except BadImageError as exc:
                on_error(str(exc))
                continue
            yield {"image_path": sample.get("__key__"), "caption": caption, "shard": url}, image


class PartStream(IterableDataset):
    """The batches of this process's share of ``parts`` (see the module docstring).

    Each batch is a dict with ``part``, ``last`` (the part's final batch), the metadata columns
    as lists, ``images`` and/or ``input_ids`` + ``attention_mask`` (absent in an empty final
    batch), and on the final batch the part's ``bad`` count and ``first_bad`` names.
    """

    def __init__(
        self,
        source: Source,
        parts: Sequence[int],
        fields: Sequence[str],
        transform: Transform,
        tokenizer: Any,
        max_length: int,
        batch_size: int,
        on_bad_image: str,
        rank: int = 0,
        world_size: int = 1,
        streams_per_rank: int = 1,
    ) -> None:
        super().__init__()
        check_policy(on_bad_image, key="on_bad_image")
        self.source, self.parts, self.fields = source, list(parts), tuple(fields)
        self.transform, self.tokenizer, self.max_length = transform, tokenizer, max_length
        self.batch_size, self.on_bad_image = batch_size, on_bad_image
        self.rank, self.world_size, self.streams_per_rank = rank, world_size, streams_per_rank

    def my_parts(self) -> list[int]:
        """This loader worker's parts: stream ``s`` of the ``world_size · streams_per_rank``
        takes every stream-th part from the ``s``-th; a rank's streams are shared out over its
        workers."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        streams = self.world_size * self.streams_per_rank
        first = self.rank * self.streams_per_rank
        mine = range(first + worker, first + self.streams_per_rank, workers)
        return sorted(part for stream in mine for part in self.parts[stream::streams])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for part in self.my_parts():
            yield from self.part_batches(part)

    def part_batches(self, part: int) -> Iterator[dict[str, Any]]:
        bad: list[str] = []

        def skip(problem: str) -> None:
            if self.on_bad_image == "error":
                raise DataError(f"{problem}; skip bad samples with on_bad_image=skip")
            bad.append(problem)

        pending: list[tuple[dict[str, str | None], torch.Tensor | None]] = []
        captions = "text" in self.fields
        for metadata, source in self.source.samples(part, skip, captions):
            try:
                pixels = self.transform(load_rgb(source)) if "image" in self.fields else None
            except BadImageError as exc:
                skip(str(exc))
                continue
            pending.append((metadata, pixels))
            if len(pending) == self.batch_size:
                yield self.collate(part, pending)
                pending = []
        final = self.collate(part, pending)
        final.update(last=True, bad=len(bad), first_bad=bad[:LISTED_BAD])
        yield final

    def collate(
        self, part: int, samples: list[tuple[dict[str, str | None], torch.Tensor | None]]
    ) -> dict[str, Any]:
        batch: dict[str, Any] = {"part": part, "last": False}
        batch.update({c: [m.get(c) for m, _ in samples] for c in self.source.columns()})
        if samples and "image" in self.fields:
            batch["images"] = torch.stack([pixels for _, pixels in samples if pixels is not None])
        if samples and "text" in self.fields:
            texts = [m["caption"] or "" for m, _ in samples]
            batch.update(tokenize(self.tokenizer, texts, self.max_length))
        return batch


class EmbedDataModule(L.LightningDataModule):
    """Serves ``trainer.predict`` the parts of ``source`` not yet finished in ``out``.

    The unfinished parts are listed in ``setup``, which every rank runs between Lightning's
    pre- and post-setup barriers: no rank has written anything yet, so all ranks deal out the
    same list.
    """

    def __init__(
        self,
        source: Source,
        out: Path,
        fields: Sequence[str],
        transform: Transform,
        tokenizer: Any,
        max_length: int,
        batch_size: int = 256,
        num_workers: int = 0,
        on_bad_image: str = "skip",
    ) -> None:
        super().__init__()
        self.source, self.out, self.fields = source, out, tuple(fields)
        self.transform, self.tokenizer, self.max_length = transform, tokenizer, max_length
        self.batch_size, self.num_workers, self.on_bad_image = batch_size, num_workers, on_bad_image
        self.pending: list[int] = []
        self.finished: dict[str, PartRecord] = {}

    def setup(self, stage: str | None = None) -> None:
        count = self.source.num_parts()
        names = [part_name(part, count) for part in range(count)]
        self.finished = finished_parts(self.out, names, self.fields)
        self.pending = [part for part, name in enumerate(names) if name not in self.finished]

    def predict_dataloader(self) -> DataLoader:
        rank, world_size = (
            (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        )
        stream = PartStream(
            self.source,
            self.pending,
            self.fields,
            self.transform,
            self.tokenizer,
            self.max_length,
            self.batch_size,
            self.on_bad_image,
            rank,
            world_size,
            streams_per_rank=max(1, self.num_workers),
        )
        workers = capped_workers(self.num_workers, key="num_workers")
        return DataLoader(stream, batch_size=None, num_workers=workers)
