"""Training throughput in samples per second, for the whole (global) batch."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class Throughput(L.Callback):
    """Logs ``train/samples_per_sec``: image-caption pairs per second over all devices.

    Measured from batch start to batch end (data loading excluded, optimizer step included)
    and averaged over ``window`` batches, so one slow step does not dominate the curve.
    Lightning's ``ThroughputMonitor`` needs a filled window of 100 batches by default and
    reports per-device numbers only on one device; this one always reports the global rate.
    """

    def __init__(self, window: int = 10):
        if window < 1:
            raise ValueError(f"callbacks.throughput.window must be >= 1, got {window}")
        self.window = window
        self._start = 0.0
        self._samples = 0
        self._seconds = 0.0
        self._batches = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._seconds += time.perf_counter() - self._start
        self._samples += len(batch["images"])
        self._batches += 1
        if self._batches < self.window:
            return
        rate = self._samples * trainer.world_size / max(self._seconds, 1e-9)
        pl_module.log("train/samples_per_sec", rate, rank_zero_only=True, batch_size=1)
        self._samples, self._seconds, self._batches = 0, 0.0, 0
