"""Preprocessing cache: decode every image once into a memory-mapped ``uint8`` array.

Decoding a 500x375 JPEG costs more than the whole training transform, and it is repeated every
epoch. The cache stores each image resized (shorter side) and centre-cropped to an ``S x S``
square (``dataset.cache_image_size``, default 256) in ``images.npy``, plus ``index.json`` mapping
image id -> row and a *fingerprint* of the source (format, location, record ids, files with
their sizes and mtimes, ``S``). Training then only crops and normalises: the train
RandomResizedCrop works on the square, the eval resize + centre crop sees the same centre as
it would on the original. Any change to the fingerprint -- a replaced or repaired image
included -- rebuilds the whole cache (simple, and never stale); so does an array file that does
not match its index (e.g. truncated by a full disk). Images that fail to decode are recorded in
the index in the image check's words, so the datamodule applies ``dataset.on_bad_image`` to
them exactly as without a cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from PIL import Image, ImageOps

from clip_lightning.data.checks import source_stamp
from clip_lightning.data.records import BadImageError, CaptionRecord, load_rgb
from clip_lightning.errors import DataError

log = logging.getLogger(__name__)

ARRAY = "images.npy"
INDEX = "index.json"
VERSION = 2


def fingerprint(records: Sequence[CaptionRecord], source: str, size: int) -> dict[str, Any]:
    """What the cache content depends on (each file's size and mtime included); any change
    means a rebuild."""
    digest = hashlib.sha1()
    for record in records:
        stamp = source_stamp(record.image)
        digest.update(f"{record.image_id}\t{record.image.key}\t{stamp and stamp[1]}\n".encode())
    return {
        "version": VERSION,
        "source": source,
        "count": len(records),
        "size": size,
        "records": digest.hexdigest(),
    }


def square(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and centre-crop the longer one: ``(size, size, 3)``."""
    fitted = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
    return np.asarray(fitted, dtype=np.uint8)


def _fill(array: np.ndarray, records: Sequence[CaptionRecord], size: int, row: int) -> str | None:
    """Decode one record into its row; the reason when it fails (the image check's words)."""
    try:
        array[row] = square(load_rgb(records[row].image), size)
    except BadImageError as exc:
        return exc.reason
    return None


class CachedImages:
    """An ``image_loader`` for the datasets: split-local index -> cached RGB square.

    The memory map is opened lazily in each DataLoader worker (it is not pickled), so workers
    share the page cache instead of copying the array.
    """

    def __init__(self, array_path: Path, rows: Sequence[int]):
        self.array_path = array_path
        self.rows = list(rows)
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}

    def __call__(self, index: int) -> Image.Image:
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r")
        return Image.fromarray(np.array(self._array[self.rows[index]]))


class ImageCache:
    """A built cache folder: rows by image id and the images that failed to decode."""

    def __init__(self, folder: Path, rows: Mapping[str, int], failed: Mapping[str, str]):
        self.folder = folder
        self.rows = dict(rows)
        self.failed = dict(failed)

    @classmethod
    def open(cls, folder: Path, expected: Mapping[str, Any]) -> ImageCache | None:
        """The cache in ``folder`` if it exists and matches ``expected``, else None."""
        try:
            index = json.loads((folder / INDEX).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(index, dict) or index.get("fingerprint") != dict(expected):
            return None
        size = int(expected["size"])
        try:
            array = np.load(folder / ARRAY, mmap_mode="r")
        except (OSError, ValueError) as exc:  # missing, or shorter than its header says
            log.warning("the image cache %s is damaged (%s); rebuilding it", folder / ARRAY, exc)
            return None
        if array.shape != (int(expected["count"]), size, size, 3) or array.dtype != np.uint8:
            log.warning("the image cache %s does not match its index; rebuilding it", folder)
            return None
        return cls(folder, index["rows"], index["failed"])

    @classmethod
    def build(
        cls,
        folder: Path,
        records: Sequence[CaptionRecord],
        expected: Mapping[str, Any],
        threads: int = os.cpu_count() or 1,
    ) -> ImageCache:
        """Decode every record's image into ``folder`` (the index is written last, so an
        interrupted build is never mistaken for a finished one)."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / INDEX).unlink(missing_ok=True)
        size = int(expected["size"])
        partial = folder / f"partial-{ARRAY}"
        array = np.lib.format.open_memmap(
            partial, mode="w+", dtype=np.uint8, shape=(len(records), size, size, 3)
        )
        start = time.perf_counter()
        fill = functools.partial(_fill, array, records, size)
        log.info("building the image cache in %s (%d images at %d px)", folder, len(records), size)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            reasons = list(pool.map(fill, range(len(records)), chunksize=16))
        array.flush()
        del array
        os.replace(partial, folder / ARRAY)
        rows = {r.image_id: i for i, r in enumerate(records)}
        failed = {r.image_id: why for r, why in zip(records, reasons, strict=True) if why}
        index = {"fingerprint": dict(expected), "rows": rows, "failed": failed}
        (folder / f"partial-{INDEX}").write_text(json.dumps(index))
        os.replace(folder / f"partial-{INDEX}", folder / INDEX)
        seconds = time.perf_counter() - start
        log.info("image cache built: %d images in %.1f s", len(records), seconds)
        return cls(folder, rows, failed)

    @classmethod
    def open_or_build(
        cls, folder: Path, records: Sequence[CaptionRecord], expected: Mapping[str, Any]
    ) -> ImageCache:
        """Reuse a matching cache or build one; a file lock keeps concurrent ranks from
        building the same cache twice."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(
                f"cannot create the cache folder {folder} ({exc}); set dataset.cache to a "
                "writable folder, or dataset.cache=null to read the images directly"
            ) from exc
        with FileLock(str(folder / ".lock")):
            cache = cls.open(folder, expected)
            if cache is None:
                cache = cls.build(folder, records, expected)
        return cache

    def image_problems(self, records: Sequence[CaptionRecord]) -> list[str | None]:
        """Why each record's image failed to decode while building (None: it is cached)."""
        return [self.failed.get(r.image_id) for r in records]

    def loader(self, records: Sequence[CaptionRecord]) -> CachedImages:
        """The ``image_loader`` for a dataset over ``records`` (all must be in the cache)."""
        return CachedImages(self.folder / ARRAY, [self.rows[r.image_id] for r in records])
