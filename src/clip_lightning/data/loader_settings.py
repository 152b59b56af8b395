"""What both datamodules (map-style and streaming) build their loaders from: the batch size an
epoch trains on, the worker count, the DataLoader options, and the transforms and collate
function made from the model's data facts."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only

from clip_lightning.data.datasets import CaptionCollator
from clip_lightning.data.transforms import build_image_transforms
from clip_lightning.errors import DataError

log = logging.getLogger(__name__)


def fit_batch_size(
    name: str, batch_size: int, samples: int, world_size: int, per_device: int, fix: str
) -> int:
    """``batch_size``, or each device's share of the ``samples`` of an epoch when that is
    smaller than one batch (incomplete batches are dropped, so no step would run): small data
    trains with the defaults, saying so in one line. A share under 2 pairs has no negatives
    to contrast: an error naming ``fix``."""
    if per_device >= batch_size:
        return batch_size
    devices = f" ({per_device} per device on {world_size})" if world_size > 1 else ""
    if per_device < 2:
        raise DataError(
            f"{name}: {samples} training samples per epoch{devices} are too few for a "
            f"contrastive batch (at least 2 pairs); {fix}"
        )
    log.warning(
        "%s: %d training samples per epoch%s, fewer than dataset.batch_size=%d: training on "
        "batches of %d (set dataset.batch_size to at most %d to choose)",
        name,
        samples,
        devices,
        batch_size,
        per_device,
        per_device,
    )
    return per_device


def check_loader_numbers(**values: Any) -> None:
    """Fail at start-up, naming the key, when a loader setting is not a number it can use."""
    for key, value in values.items():
        minimum = 0 if key == "num_workers" else 1
        if value is None and key in ("eval_batch_size", "prefetch_factor"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise DataError(
                f"dataset.{key} must be an integer >= {minimum}, got {value!r}; "
                f"fix the override, e.g. dataset.{key}={max(minimum, 2)}"
            )


def loader_options(
    num_workers: int, pin_memory: bool, persistent_workers: bool, prefetch_factor: int | None
) -> dict[str, Any]:
    """DataLoader keyword arguments; the worker-only ones are dropped without workers."""
    num_workers = capped_workers(num_workers)
    return {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "persistent_workers": persistent_workers and num_workers > 0,
        "prefetch_factor": prefetch_factor if num_workers > 0 else None,
    }


def capped_workers(num_workers: int, key: str = "dataset.num_workers") -> int:
    """``num_workers`` (set by the override ``key``), at most the CPU cores: more workers only
    compete with each other and the model's step for the same cores; said in one line."""
    cores = available_cores()
    if num_workers > cores:
        rank_zero_only(log.warning)(
            "%s=%d is more than the %d CPU cores available: using %d loader workers",
            key,
            num_workers,
            cores,
            cores,
        )
    return min(num_workers, cores)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under SLURM or taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def model_side(
    image_config: Mapping[str, Any] | None,
    tokenizer: Any,
    max_length: int,
    augment: Mapping[str, Any] | None,
    on_bad_image: str,
) -> tuple[Callable | None, Callable | None, CaptionCollator | None]:
    """The train and eval transforms and the collate function built from the model's data
    facts; None where the model did not provide them (checking data needs no model)."""
    train, evaluate = (
        build_image_transforms(image_config, **dict(augment or {}))
        if image_config
        else (None, None)
    )
    collate = (
        CaptionCollator(tokenizer, max_length, on_bad_image) if tokenizer is not None else None
    )
    return train, evaluate, collate
