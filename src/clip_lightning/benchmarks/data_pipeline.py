"""Data pipeline throughput: a JPEG folder vs the preprocessing cache vs WebDataset shards,
0 and 2 workers.

Builds a temporary folder of Flickr-sized JPEGs (500x375, procedural content), the same images
as shards (re-encoded at the same size and quality, 128 per shard) and the decoded-image cache,
and times whole epochs through a DataLoader at the model resolution: the map-style
:class:`~clip_lightning.data.datasets.CaptionTrainDataset` over files or the cache, and the
streaming :class:`~clip_lightning.data.streaming.ShardStream` (exact epoch, shuffle buffer of
1,000) -- the image side only (no tokenizer), which is what these change.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset

from clip_lightning.data.cache import ImageCache, fingerprint
from clip_lightning.data.datasets import CaptionTrainDataset
from clip_lightning.data.records import CaptionRecord, FileImage, make_record
from clip_lightning.data.shards import write_split
from clip_lightning.data.streaming import ShardStream
from clip_lightning.data.transforms import build_image_transforms

# ImageNet statistics and a 0.875 crop, like most timm CNNs
DATA_CONFIG = {
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "interpolation": "bicubic",
    "crop_pct": 0.875,
}


def make_jpegs(
    folder: Path, count: int, size: tuple[int, int] = (500, 375), seed: int = 0
) -> list[CaptionRecord]:
    """``count`` JPEGs of smooth colour fields plus grain (photo-like file sizes)."""
    rng = np.random.default_rng(seed)
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    records = []
    for index in range(count):
        phase = rng.uniform(0, 2 * np.pi, 3)
        freq = rng.uniform(0.005, 0.03, 3)
        channels = [127 + 100 * np.sin(freq[c] * (xs + 0.7 * ys) + phase[c]) for c in range(3)]
        pixels = np.stack(channels, axis=-1) + rng.normal(0, 12, (height, width, 3))
        path = folder / f"{index:06d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        records.append(make_record(str(index), FileImage(path), [f"image {index}"], "train"))
    return records


def _stack_images(items: list[dict[str, Any]]) -> torch.Tensor:
    return torch.stack([item["image"] for item in items])


def images_per_second(dataset: Dataset, workers: int, batch_size: int) -> float:
    """One full epoch (the first batch is warm-up) -> images per second.

    With 0 workers torch runs single-threaded here, as DataLoader workers do: per-image tensor
    ops are too small for intra-op threads, which on a busy machine slow them down many-fold.
    """
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=not isinstance(dataset, IterableDataset),  # a stream shuffles itself
        num_workers=workers,
        collate_fn=_stack_images,
    )
    threads = torch.get_num_threads()
    if workers == 0:
        torch.set_num_threads(1)
    try:
        start, seen = None, 0
        for batch in loader:
            if start is None:  # exclude worker start-up: paid once per run, not per epoch
                start = time.perf_counter()
                continue
            seen += len(batch)
        elapsed = time.perf_counter() - (start or time.perf_counter())
    finally:
        torch.set_num_threads(threads)
    return seen / elapsed if elapsed > 0 else float("nan")


def run(
    num_images: int = 1024,
    image_size: int = 224,
    cache_image_size: int = 256,
    batch_size: int = 64,
    workers: Sequence[int] = (0, 2),
    folder: str | Path | None = None,
    seed: int = 0,
    repeats: int = 3,
    samples_per_shard: int = 128,
) -> dict[str, Any]:
    """Images/s (median of ``repeats`` epochs) for raw JPEGs, the cache and shards, per worker
    count, plus the cache build and shard write times."""
    if num_images < 2 * batch_size:
        raise ValueError("data_pipeline needs num_images >= 2 * batch_size (one batch is warm-up)")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        records = make_jpegs(root / "images", num_images, seed=seed)
        config = {**DATA_CONFIG, "input_size": (3, image_size, image_size)}
        train_transform, _ = build_image_transforms(config)
        start = time.perf_counter()
        expected = fingerprint(records, f"benchmark:{root}", cache_image_size)
        cache = ImageCache.build(root / "cache", records, expected)
        build_seconds = time.perf_counter() - start
        start = time.perf_counter()
        sizes = write_split(
            records, root / "shards", max_size=None, quality=90, samples_per_shard=samples_per_shard
        )
        shard_seconds = time.perf_counter() - start
        datasets: dict[str, Dataset] = {
            "raw": CaptionTrainDataset(records, train_transform),
            "cache": CaptionTrainDataset(
                records, train_transform, image_loader=cache.loader(records)
            ),
            "shards": ShardStream(
                [str(root / "shards" / name) for name in sizes],
                None,
                train_transform,
                batch_size=batch_size,
                batches_per_rank=num_images // batch_size,
                resampled=False,
                seed=seed,
            ),
        }
        # the variants alternate, epoch by epoch, so machine noise hits all alike; medians
        samples: dict[str, dict[str, list[float]]] = {
            n: {str(w): [] for w in workers} for n in datasets
        }
        for _ in range(repeats):
            for w in workers:
                for name, dataset in datasets.items():
                    samples[name][str(w)].append(images_per_second(dataset, w, batch_size))
        rates = {
            name: {w: statistics.median(values) for w, values in per_worker.items()}
            for name, per_worker in samples.items()
        }
    cache_speedup = {w: rates["cache"][w] / rates["raw"][w] for w in rates["raw"]}
    shards_vs_jpeg = {w: rates["shards"][w] / rates["raw"][w] for w in rates["raw"]}
    result = {
        "num_images": num_images,
        "repeats": repeats,
        "image_size": image_size,
        "cache_image_size": cache_image_size,
        "cache_build_seconds": build_seconds,
        "shard_write_seconds": shard_seconds,
        "num_shards": len(sizes),
        "images_per_second": rates,
        "cache_speedup": cache_speedup,
        "shards_vs_jpeg": shards_vs_jpeg,
    }
    print(f"Data pipeline: {num_images} JPEGs 500x375 -> {image_size} px (batch {batch_size})")
    print(
        f"{'workers':>8} {'raw img/s':>10} {'cache img/s':>12} {'speed-up':>9} "
        f"{'shards img/s':>13} {'vs raw':>7}"
    )
    for key in rates["raw"]:  # the worker count, as a str
        print(
            f"{key:>8} {rates['raw'][key]:>10.1f} {rates['cache'][key]:>12.1f} "
            f"{cache_speedup[key]:>8.2f}x {rates['shards'][key]:>13.1f} "
            f"{shards_vs_jpeg[key]:>6.2f}x"
        )
    print(f"cache build: {build_seconds:.1f} s ({num_images / build_seconds:.0f} img/s)")
    print(f"shard write: {shard_seconds:.1f} s ({len(sizes)} shards)")
    return result
