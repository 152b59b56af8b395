"""One raw webdataset sample read as an RGB image and its caption(s), failing with
:class:`~clip_lightning.data.records.BadImageError` in the vocabulary of the image check."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from clip_lightning.data.records import MISSING, BadImageError, clean_caption, load_rgb

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


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
