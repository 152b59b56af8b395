"""The one caption-dataset core that every data format feeds.

A format adapter (``clip_lightning.data.formats``) turns whatever the user downloaded into a
list of :class:`CaptionRecord` (one image, all of its captions, and its split). Everything
downstream -- splitting, validation, sampling, caching, loading -- works on records only, so
adding a format never means copying a loader.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from clip_lightning.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@runtime_checkable
class ImageSource(Protocol):
    """Anything that can open one image: a file, a row of a HF dataset, a rendered scene.

    A source may also define ``stamp() -> (key, version) | None``: a stable name and a cheap
    version (e.g. size and mtime) that changes whenever its pixels can. The image check's memo
    and the image cache use it to skip unchanged images; sources without it are re-checked.
    """

    @property
    def key(self) -> str:
        """A human-readable name for error messages (usually a file name)."""
        ...

    def open(self) -> Image.Image:
        """Return the image, possibly lazily decoded; :func:`load_rgb` converts it."""
        ...


@dataclass(frozen=True)
class FileImage:
    """An image file on disk."""

    path: Path

    @property
    def key(self) -> str:
        return str(self.path)

    def open(self) -> Image.Image:
        return Image.open(self.path)

    def stamp(self) -> tuple[str, str] | None:
        """``(absolute path, "size:mtime_ns")``; None while the file is missing."""
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return str(self.path.absolute()), f"{stat.st_size}:{stat.st_mtime_ns}"


@dataclass(frozen=True)
class CaptionRecord:
    """One image with all of its captions. ``split`` is None when the format carries none.

    ``caption_problems`` names the captions the format gave but that cannot be trained on
    (not a string, or empty after cleaning); they are not in ``captions``, and the datamodule
    applies ``dataset.on_bad_image`` to them instead of training on ``"None"`` or dropping
    them without a word.
    """

    image_id: str
    image: ImageSource
    captions: tuple[str, ...]
    split: str | None = None
    caption_problems: tuple[str, ...] = ()


# The one vocabulary for bad images, shared by the start-up check, `prepare`, the cache build
# and the data loaders: "missing", or "unreadable (<the decoder's error type>)".
MISSING = "missing"


def unreadable(exc: BaseException) -> str:
    return f"unreadable ({type(exc).__name__})"


def worker_message(message: str, error: type[BaseException]) -> str:
    """The one-line message of ``error`` inside ``message``.

    torch re-raises an exception from a DataLoader worker as ``type(exc)(text)``, where
    ``text`` holds the worker's traceback ending in ``<module>.<Name>: <message>``; user errors
    keep only that message, so the user still reads one line.
    """
    lines = message.strip().splitlines()
    if len(lines) <= 1:
        return message
    return lines[-1].removeprefix(f"{error.__module__}.{error.__qualname__}: ")


class BadImageError(DataError):
    """An image that is missing, truncated or not an image at all; ``reason`` says which.

    Raised as ``BadImageError(key, reason)``; the one-argument form is torch re-raising it
    from a DataLoader worker (see :func:`worker_message`).
    """

    def __init__(self, key: str, reason: str | None = None):
        if reason is None:
            super().__init__(worker_message(key, type(self)))
        else:
            super().__init__(f"image {key} is {reason}; replace or remove the file")
        self.key, self.reason = key, reason

    def __reduce__(self) -> tuple[type[BadImageError], tuple[str, str | None]]:
        # picklable with its two arguments (process pools, loader workers)
        return type(self), (self.key, self.reason)


def load_rgb(source: ImageSource) -> Image.Image:
    """Decode ``source`` fully and convert it to 8-bit RGB (:func:`to_rgb`), or raise
    :class:`BadImageError`."""
    try:
        image = source.open()
        image.load()
    except FileNotFoundError as exc:
        raise BadImageError(source.key, MISSING) from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, struct.error, ... on bad bytes
        raise BadImageError(source.key, unreadable(exc)) from exc
    return to_rgb(image, source.key)


def to_rgb(image: Image.Image, key: str = "given as a PIL image") -> Image.Image:
    """``image`` as 8-bit RGB: the one conversion every image goes through before a model.

    * Grayscale, CMYK and palette images are converted by PIL.
    * Transparent pixels (RGBA, LA, PA, palette with a transparency key) are composited onto
      white so they do not turn black.
    * 16-bit images (``I;16``: 16-bit PNG and TIFF) are scaled, 65535 -> 255; PIL's own
      conversion clips them, turning almost every pixel white.
    * ``I`` (32-bit integers) and ``F`` (32-bit floats) do not record their bit depth, so their
      values tell it: ``I`` within 0..255 is 8-bit, within 0..65535 16-bit; ``F`` within
      0..1 is scaled by 255, within 0..255 kept. Other ranges (negative, HDR, depth maps) have
      no 8-bit reading and raise :class:`BadImageError`.

    ``key`` names the image in that error.
    """
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = _to_8_bit(image, key)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.getchannel("A"))
        return background
    return image.convert("RGB") if image.mode != "RGB" else image


def _to_8_bit(image: Image.Image, key: str) -> Image.Image:
    """An ``L`` image from a single-channel 16-bit, 32-bit integer or float image."""
    values = np.asarray(image, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16") or (image.mode == "I" and 255 < high <= 65535 and low >= 0):
        values = values / 257
    elif image.mode == "F" and low >= 0 and high <= 1:
        values = values * 255
    elif not (low >= 0 and high <= 255):  # also NaN
        kind = "float" if image.mode == "F" else "32-bit integer"
        raise BadImageError(
            key, f"a {kind} image with values from {low:g} to {high:g}, which has no 8-bit reading"
        )
    return Image.fromarray(np.round(values).astype(np.uint8))


_WHITESPACE = re.compile(r"\s+")


def clean_caption(caption: str) -> str:
    """Collapse newlines, tabs and repeated spaces; strip the ends."""
    return _WHITESPACE.sub(" ", caption).strip()


def make_record(
    image_id: str, image: ImageSource, captions: Sequence[object], split: str | None = None
) -> CaptionRecord:
    """Build a record with cleaned captions; non-strings and empty ones become
    ``caption_problems`` (never coerced with ``str()``, never dropped silently)."""
    cleaned, problems = [], []
    for index, caption in enumerate(captions):
        if not isinstance(caption, str):
            what = "null" if caption is None else f"a {type(caption).__name__}, not text"
            problems.append(f"caption {index} is {what}")
        elif not clean_caption(caption):
            problems.append(f"caption {index} is empty")
        else:
            cleaned.append(clean_caption(caption))
    return CaptionRecord(str(image_id), image, tuple(cleaned), split, tuple(problems))


def _stable_fraction(image_id: str, seed: int) -> float:
    digest = hashlib.sha1(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# Split names used by the common formats, mapped to ours ("restval" is Karpathy's extra
# COCO training images).
SPLIT_ALIASES = {
    "train": "train",
    "restval": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
}


def normalise_split(name: str | None) -> str | None:
    """Map a format's split name to ``train``/``val``/``test`` (None stays None)."""
    if name is None:
        return None
    split = SPLIT_ALIASES.get(str(name).strip().lower())
    if split is None:
        raise DataError(
            f"unknown split name {name!r}; expected one of {sorted(SPLIT_ALIASES)} "
            "(or drop the split column so splits are assigned by image id)"
        )
    return split


def _count(size: float, pool: int) -> int:
    """A split size is a count (int >= 0) or a fraction of the pool (0 < float < 1), which
    gives at least one image, so a 40-image table still gets a val and a test image."""
    if isinstance(size, float) and 0 < size < 1:
        return max(1, round(size * pool))
    return int(size)


def assign_splits(
    records: Sequence[CaptionRecord],
    val_size: float,
    test_size: float,
    seed: int = 0,
    need_train: bool = True,
) -> list[CaptionRecord]:
    """Give split-less records a deterministic split by image id; others keep theirs.

    The split-less records (the *pool*) are ordered by a seeded hash of their image id, so the
    split does not depend on file order and all captions of an image land in the same split.
    The first ``val_size`` go to val, the next ``test_size`` to test and the rest to train.
    Sizes are counts, or fractions of the pool (COCO's official val2017 is split 0.5 / 0.5).
    Data whose every record says ``train`` (a ``save_to_disk`` of one train split, a lone
    ``train.csv``) is pooled whole: it has nothing to validate on otherwise. ``need_train``
    false (an evaluation-only folder) lets val and test take the whole pool.
    """
    if records and all(r.split == "train" for r in records):
        log.info("every image is in the train split: val and test come from dataset.split_sizes")
        records = [replace(r, split=None) for r in records]
    pool = [r for r in records if r.split is None]
    if not pool:
        return list(records)
    val, test = _count(val_size, len(pool)), _count(test_size, len(pool))
    has_train = len(pool) > val + test or any(r.split == "train" for r in records)
    if val + test > len(pool) or (need_train and not has_train):
        raise DataError(
            f"split sizes val={val_size} + test={test_size} do not fit the {len(pool)} images "
            "without a split while leaving some for training; lower dataset.split_sizes.val / "
            "dataset.split_sizes.test (counts, or fractions such as 0.05)"
        )
    order = sorted(pool, key=lambda r: _stable_fraction(r.image_id, seed))
    names = ["val"] * val + ["test"] * test
    names += ["train"] * (len(order) - len(names))
    by_id = {r.image_id: s for r, s in zip(order, names, strict=True)}
    return [r if r.split is not None else replace(r, split=by_id[r.image_id]) for r in records]


def group_captions(
    rows: Iterable[tuple[str, ImageSource, Sequence[object], str | None]],
) -> list[CaptionRecord]:
    """Merge rows of ``(image_id, image, captions, split)`` into one record per image.

    Formats that store one caption per row (COCO annotations, the Kaggle CSV, some parquet
    exports) go through here, and Karpathy's JSON, whose entries may list an image twice. The
    first row's image source wins; an image whose rows disagree on the split is an error,
    because its captions would otherwise leak across splits.
    """
    images: dict[str, ImageSource] = {}
    captions: dict[str, list[object]] = {}
    splits: dict[str, str | None] = {}
    for image_id, image, texts, split in rows:
        key = str(image_id)
        if key not in images:
            images[key], captions[key], splits[key] = image, [], split
        elif splits[key] != split:
            raise DataError(
                f"image {key!r} appears in splits {splits[key]!r} and {split!r}; the captions "
                "of one image must stay in one split -- give all its rows or entries one split"
            )
        captions[key].extend(texts)
    return [make_record(key, images[key], captions[key], splits[key]) for key in images]


def split_records(records: Sequence[CaptionRecord]) -> dict[str, list[CaptionRecord]]:
    """Group records by split name, checking that every record has a known split."""
    groups: dict[str, list[CaptionRecord]] = {name: [] for name in SPLITS}
    for record in records:
        if record.split not in groups:
            raise DataError(
                f"record {record.image_id!r} has split {record.split!r}; expected one of {SPLITS}"
            )
        groups[record.split].append(record)
    return groups
