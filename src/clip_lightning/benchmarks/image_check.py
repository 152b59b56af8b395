"""Start-up image check throughput: ``python -m clip_lightning.bench only=[image_check]``.

Times :func:`~clip_lightning.data.checks.check_images` -- the full-decode check every training
start runs without ``dataset.cache`` -- on Flickr-sized JPEGs (500x375, the data-pipeline
benchmark's images): a first start (worker processes, memo written) and a second start (memo
read, nothing decoded), next to the same decode in one process and on a thread pool. Variants
alternate within each repetition so machine noise hits them alike; figures are medians.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from clip_lightning.benchmarks.data_pipeline import make_jpegs
from clip_lightning.data.checks import check_images, default_workers, image_problem
from clip_lightning.data.records import ImageSource


def _decode_on_threads(sources: Sequence[ImageSource], threads: int) -> None:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(image_problem, sources, chunksize=64))


def run(
    num_images: int = 1000,
    repeats: int = 3,
    workers: int | None = None,
    folder: str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Images/s of each variant (median of ``repeats``)."""
    workers = workers or default_workers()
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        sources = [r.image for r in make_jpegs(root / "images", num_images, seed=seed)]
        memo = root / "memo" / "image-checks.json"

        def first_start() -> None:
            memo.unlink(missing_ok=True)
            check_images(sources, memo, workers)

        variants: dict[str, Callable[[], object]] = {
            "full decode, 1 process": lambda: check_images(sources, None, workers=1),
            f"full decode, {workers} threads": lambda: _decode_on_threads(sources, workers),
            f"first start: full decode, {workers} processes, memo written": first_start,
            "second start: memo read, nothing decoded": lambda: check_images(sources, memo),
        }
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, variant in variants.items():
                start = time.perf_counter()
                variant()
                samples[name].append(num_images / (time.perf_counter() - start))
    rates = {name: statistics.median(values) for name, values in samples.items()}
    print(f"Start-up image check: {num_images} JPEGs 500x375, median of {repeats}")
    for name, rate in rates.items():
        print(f"  {name:<58} {rate:>10.0f} images/s")
    return {
        "num_images": num_images,
        "repeats": repeats,
        "workers": workers,
        "images_per_second": rates,
    }
