"""Write caption records as WebDataset shards in img2dataset's layout.

One sample per image: ``{key}.jpg`` (re-encoded so its longest side is at most ``max_size``),
``{key}.txt`` (its first caption) and ``{key}.json`` (``captions``: all of them, ``image_id``,
``split``, sizes). Each split goes to its own folder (``DIR/train/00000.tar``, ...) with a
``sizes.json`` that ``dataset=webdataset`` reads for the epoch length, so the train shards are
``DIR/train/{00000..NNNNN}.tar`` and the val/test shards can serve as eval shards.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from pathlib import Path

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from clip_lightning.data.records import SPLITS, CaptionRecord, load_rgb
from clip_lightning.data.streaming import SIZES_FILE
from clip_lightning.errors import DataError


def encode_jpeg(
    image: Image.Image, max_size: int | None, quality: int
) -> tuple[bytes, tuple[int, int]]:
    """JPEG bytes of ``image`` downscaled (never upscaled) to ``max_size`` on its longest side."""
    if max_size is not None and max(image.size) > max_size:
        image = image.copy()
        image.thumbnail((max_size, max_size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), image.size


def write_split(
    records: Sequence[CaptionRecord],
    folder: Path,
    max_size: int | None = 512,
    quality: int = 95,
    samples_per_shard: int = 1000,
    desc: str = "shards",
) -> dict[str, int]:
    """Write ``records`` as ``folder/00000.tar, ...`` plus ``sizes.json``; returns the sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    with wds.ShardWriter(str(folder / "%05d.tar"), maxcount=samples_per_shard, verbose=0) as writer:
        for index, record in enumerate(tqdm(records, desc=desc, unit="img")):
            original = load_rgb(record.image)
            data, size = encode_jpeg(original, max_size, quality)
            metadata = {
                "image_id": record.image_id,
                "captions": list(record.captions),
                "split": record.split,
                "width": size[0],
                "height": size[1],
                "original_width": original.size[0],
                "original_height": original.size[1],
            }
            writer.write(
                {
                    "__key__": f"{index:09d}",
                    "jpg": data,
                    "txt": record.captions[0],
                    "json": json.dumps(metadata).encode("utf-8"),
                }
            )
            name = Path(writer.fname).name
            sizes[name] = sizes.get(name, 0) + 1
    (folder / SIZES_FILE).write_text(json.dumps(sizes, indent=1))
    return sizes


def write_shards(
    records: Sequence[CaptionRecord],
    out_dir: str | Path,
    max_size: int | None = 512,
    quality: int = 95,
    samples_per_shard: int = 1000,
    seed: int = 0,
) -> dict[str, str]:
    """Write every split of ``records`` (already checked: each image decodes, each has a
    caption), in a seeded random order, under ``out_dir/<split>/``; returns the brace URL
    pattern per split."""
    if not 1 <= quality <= 100:
        raise DataError(
            f"shards_quality={quality}; a JPEG quality is between 1 and 100 (95 keeps detail)"
        )
    if samples_per_shard < 1:
        raise DataError(f"shards_samples={samples_per_shard}; use a positive count, e.g. 1000")
    root = Path(out_dir).expanduser()
    if root.exists() and any(root.glob("*/*.tar")):
        raise DataError(f"{root} already holds shards; pass an empty or new folder as shards=DIR")
    patterns = {}
    for split in SPLITS:
        members = [r for r in records if r.split == split]
        if not members:
            continue
        # formats list images grouped (by folder, class, source); a seeded shuffle makes every
        # shard a sample of the whole split, which the streaming shuffle buffer relies on
        random.Random(seed).shuffle(members)
        sizes = write_split(
            members, root / split, max_size, quality, samples_per_shard, desc=f"{split} shards"
        )
        names = "00000" if len(sizes) == 1 else f"{{00000..{len(sizes) - 1:05d}}}"
        patterns[split] = str(root / split / f"{names}.tar")
    return patterns
