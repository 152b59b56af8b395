"""Pieces shared by the training benchmarks: the plain PyTorch step, precision and timing."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from clip_lightning.models.targets import build
from clip_lightning.module import CLIPModule

Batch = dict[str, torch.Tensor]

# Lightning precision flags the plain loop reproduces exactly (16-mixed would need a GradScaler).
_AUTOCAST = {"32-true": None, "32": None, "bf16-mixed": torch.bfloat16}


def autocast_for(precision: str | int, device: torch.device) -> Callable[[], Any]:
    """A context factory doing what Lightning's ``precision`` flag does around the forward."""
    key = str(precision)
    if key not in _AUTOCAST:
        raise ValueError(
            f"the benchmark's plain loop supports trainer.precision in {sorted(_AUTOCAST)}, "
            f"got {precision!r}; use bf16-mixed for mixed precision"
        )
    dtype = _AUTOCAST[key]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def seeded_model(
    cfg: DictConfig, seed: int, overrides: Mapping[str, Any] | None = None
) -> CLIPModule:
    """``cfg.model`` with ``overrides``, built right after seeding: every variant a benchmark
    compares starts from the same weights."""
    L.seed_everything(seed, verbose=False)
    model: CLIPModule = build(OmegaConf.merge(cfg.model, overrides or {}), "model")
    return model


def trainer_device(cfg: DictConfig) -> torch.device:
    """The device ``cfg.trainer`` would train on (``accelerator: auto`` picks a GPU if any)."""
    return instantiate(cfg.trainer, logger=False).strategy.root_device


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_train_step(
    model: CLIPModule,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    autocast: Callable[[], Any],
) -> None:
    """Exactly forward + loss + backward + optimizer step + zero_grad, nothing else."""
    with autocast():
        loss = model.loss(
            model.embed_images(batch["images"]),
            model.embed_texts(batch["input_ids"], batch["attention_mask"]),
        )
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Copy a batch like Lightning does (asynchronously from pinned memory)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class RepeatedBatch(Dataset):
    """One in-memory batch served ``length`` times, so no step pays for data loading."""

    def __init__(self, batch: Batch, length: int):
        self.batch = batch
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Batch:
        return self.batch


def repeated_loader(batch: Batch, steps: int, pin_memory: bool) -> DataLoader:
    """A DataLoader yielding ``batch`` ``steps`` times (``batch_size=None``: no collation)."""
    return DataLoader(RepeatedBatch(batch, steps), batch_size=None, pin_memory=pin_memory)


def random_images(batch_size: int, image_size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 3, image_size, image_size, generator=generator)


def timed_steps(
    step: Callable[[Batch], None],
    batches: Iterator[Batch],
    warmup: int,
    steps: int,
    device: torch.device,
) -> float:
    """Seconds for ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step(next(batches))
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    synchronize(device)
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))
