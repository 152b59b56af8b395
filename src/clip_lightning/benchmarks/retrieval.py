"""Time and peak memory of a retrieval evaluation at COCO-5k scale with ``RetrievalRecall``.

The measurement runs in a fresh Python subprocess so the peak resident memory it reports
belongs to the evaluation alone, not to whatever the parent process allocated before.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import Any

from clip_lightning.benchmarks.process_memory import reset_peak_rss, rss_kib

_CHILD = (
    "import json, sys\n"
    "from clip_lightning.benchmarks.retrieval import measure\n"
    "print(json.dumps(measure(**json.loads(sys.argv[1]))))\n"
)


def _reset_peak() -> str:
    """Reset the kernel's peak-RSS counter (VmHWM); fall back to ``ru_maxrss`` where it can't."""
    try:
        reset_peak_rss()
        return "VmHWM"
    except OSError:
        return "ru_maxrss"


def _peak_kib(method: str) -> int:
    if method == "VmHWM":
        return rss_kib("VmHWM")
    scale = 1024 if sys.platform == "darwin" else 1  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // scale


def measure(
    num_images: int, captions_per_image: int, dim: int, chunk_size: int, repeats: int, seed: int
) -> dict[str, Any]:
    """In this process: after a small warm-up, evaluate ``repeats`` times; median seconds and
    peak extra memory."""
    import torch

    from clip_lightning.metrics import RetrievalRecall

    generator = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(num_images, dim, generator=generator), dim=1)
    image_ids = torch.arange(num_images)
    text_image_ids = image_ids.repeat_interleave(captions_per_image)
    noise = torch.randn(text_image_ids.numel(), dim, generator=generator)
    texts = torch.nn.functional.normalize(images[text_image_ids] + 2.0 * noise, dim=1)
    text_ids = torch.arange(texts.shape[0])
    metric = RetrievalRecall(chunk_size=chunk_size)

    def evaluate(first_images: int) -> float:
        """Evaluate the first images and their captions (views: nothing is copied here)."""
        captions = first_images * captions_per_image
        metric.update(
            images[:first_images], image_ids[:first_images], texts[:captions],
            text_ids[:captions], text_image_ids[:captions],
        )  # fmt: skip
        rsum = float(metric.compute()["rsum"])
        metric.reset()
        return rsum

    # the one-off memory of loading the kernels is not the evaluation's
    evaluate(min(num_images, 100))
    method = _reset_peak()
    try:
        baseline = rss_kib("VmRSS")
    except OSError:
        baseline = _peak_kib(method)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        rsum = evaluate(num_images)
        seconds.append(time.perf_counter() - start)
    return {
        "num_images": num_images,
        "num_captions": int(text_ids.numel()),
        "dim": dim,
        "seconds": sorted(seconds)[len(seconds) // 2],
        "peak_extra_mib": (_peak_kib(method) - baseline) / 1024,
        "memory_method": f"{method} delta in a fresh subprocess",
        "rsum": rsum,
    }


def run(
    num_images: int = 5000,
    captions_per_image: int = 5,
    dim: int = 256,
    chunk_size: int = 1024,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Run :func:`measure` in a fresh interpreter and return its figures."""
    arguments = json.dumps(
        {
            "num_images": num_images,
            "captions_per_image": captions_per_image,
            "dim": dim,
            "chunk_size": chunk_size,
            "repeats": repeats,
            "seed": seed,
        }
    )
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, arguments], capture_output=True, text=True, check=False
    )
    if child.returncode != 0:
        raise RuntimeError(f"retrieval benchmark subprocess failed:\n{child.stderr[-2000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])
