"""Training steps/s with a frozen text tower: cached caption features vs recomputing them.

Captions come from the synthetic dataset, drawn as its training loader draws them (one random
caption per image per epoch), so they repeat across epochs as in the quickstart. The cache is
warmed over one epoch first; the timed steps then use the next epoch's batches (steady state).
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import torch
from omegaconf import DictConfig

from clip_lightning.benchmarks.common import (
    Batch,
    autocast_for,
    median,
    plain_train_step,
    random_images,
    seeded_model,
    timed_steps,
    to_device,
    trainer_device,
)
from clip_lightning.data.formats.synthetic import load_synthetic
from clip_lightning.data.records import CaptionRecord
from clip_lightning.module import CLIPModule


def epoch_captions(
    records: list[CaptionRecord], batch_size: int, rng: random.Random
) -> list[list[str]]:
    """One epoch of shuffled batches, one random caption per image (full batches only)."""
    order = list(range(len(records)))
    rng.shuffle(order)
    captions = [rng.choice(records[i].captions) for i in order]
    return [
        captions[start : start + batch_size]
        for start in range(0, len(captions) - batch_size + 1, batch_size)
    ]


def _model(cfg: DictConfig, cache: bool, seed: int) -> CLIPModule:
    return seeded_model(
        cfg, seed, {"text_encoder": {"freeze": True, "cache": "memory" if cache else None}}
    )


def run(
    cfg: DictConfig,
    batch_size: int = 128,
    dataset_size: int = 4000,
    steps: int = 8,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Steps/s with and without the feature cache (medians), their ratio and the hit rate."""
    if dataset_size < batch_size or steps < 1 or repeats < 1:
        raise ValueError("text_cache needs dataset_size >= batch_size and steps, repeats >= 1")
    device = trainer_device(cfg)
    autocast = autocast_for(cfg.trainer.precision, device)
    cached, uncached = _model(cfg, True, seed), _model(cfg, False, seed)
    size = int(cached.image_encoder.data_config["input_size"][-1])
    records = load_synthetic(train=dataset_size, val=0, test=0, image_size=size, seed=seed)
    rng = random.Random(seed)
    images = random_images(batch_size, size, seed)

    def batches(epoch: list[list[str]]) -> list[Batch]:
        tokenize = cached.text_encoder.tokenize
        return [to_device({"images": images, **tokenize(c)}, device) for c in epoch]

    cached.to(device).train()
    uncached.to(device).train()
    cache = cached.text_encoder.feature_cache
    assert cache is not None  # a frozen text tower with cache=memory
    for batch in batches(epoch_captions(records, batch_size, rng)):  # warm-up epoch
        cached.text_encoder(batch["input_ids"], batch["attention_mask"])
    timed_batches = batches(epoch_captions(records, batch_size, rng))
    hits, misses = cache.hits, cache.misses

    def measure(model: CLIPModule, optimizer: torch.optim.Optimizer, start: int) -> float:
        stream = itertools.islice(itertools.cycle(timed_batches), start, None)

        def step(batch: Batch) -> None:
            plain_train_step(model, optimizer, batch, autocast)

        return steps / timed_steps(step, stream, 1, steps, device)

    optimizers = {id(m): m.configure_optimizers()["optimizer"] for m in (cached, uncached)}
    rates: dict[str, list[float]] = {"cached": [], "uncached": []}
    for repeat in range(repeats):
        pairs = [("cached", cached), ("uncached", uncached)]
        for name, model in pairs if repeat % 2 == 0 else pairs[::-1]:
            rates[name].append(measure(model, optimizers[id(model)], repeat * (steps + 1)))
    ratios = [c / u for c, u in zip(rates["cached"], rates["uncached"], strict=True)]
    timed_hits, timed_misses = cache.hits - hits, cache.misses - misses
    return {
        "device": str(device),
        "batch_size": batch_size,
        "image_size": size,
        "steps": steps,
        "repeats": repeats,
        "cached_steps_per_s": median(rates["cached"]),
        "uncached_steps_per_s": median(rates["uncached"]),
        "speedup": median(ratios),
        "cache_size": len(cache),
        "timed_hit_rate": timed_hits / max(timed_hits + timed_misses, 1),
        "speedup_per_repeat": ratios,
    }
