"""Training throughput of the CLIPModule in a real ``lightning.Trainer`` vs a plain PyTorch loop.

Both sides run the same module object (same encoders, heads and loss), the same in-memory batch
and the same precision, alternating step by step (one Trainer step, one plain step, ...) so a
load burst on a shared machine hits both; median step times discard the bursts. The ratio
``plain step time / Trainer step time`` is the framework's cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from clip_lightning.benchmarks.common import (
    Batch,
    autocast_for,
    median,
    plain_train_step,
    random_images,
    repeated_loader,
    seeded_model,
    synchronize,
    to_device,
    trainer_device,
)
from clip_lightning.data.formats.synthetic import load_synthetic
from clip_lightning.module import CLIPModule
from clip_lightning.utils.instantiate import instantiate_list


class InterleavedSteps(L.Callback):
    """After each Trainer step, one plain step: both timed, so load bursts hit both alike.

    A Trainer step's time runs from the end of the previous plain step (or the start of the
    first batch) to this step's ``on_train_batch_end``: everything Lightning does per step
    (fetching the batch, hooks, logging, the closure) and nothing of the plain step.
    """

    def __init__(self, plain_step: Callable[[], None], warmup: int, device: torch.device):
        self.plain_step = plain_step
        self.warmup = warmup
        self.device = device
        self.trainer_seconds: list[float] = []
        self.plain_seconds: list[float] = []
        self.mark = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0:
            synchronize(self.device)
            self.mark = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        synchronize(self.device)
        trainer_done = time.perf_counter()
        self.plain_step()
        synchronize(self.device)
        plain_done = time.perf_counter()
        if batch_idx >= self.warmup:
            self.trainer_seconds.append(trainer_done - self.mark)
            self.plain_seconds.append(plain_done - trainer_done)
        self.mark = plain_done


def caption_batch(
    model: CLIPModule, batch_size: int, image_size: int, seed: int, text_length: int | None
) -> Batch:
    """Random images plus real synthetic-dataset captions, tokenized by the model's tokenizer.

    ``text_length`` pads (or truncates) every caption to exactly that many tokens, to time a
    fixed sequence length; ``None`` pads to the longest caption as the training collator does.
    """
    records = load_synthetic(train=batch_size, val=0, test=0, image_size=image_size, seed=seed)
    captions = [record.captions[i % len(record.captions)] for i, record in enumerate(records)]
    if text_length is None:
        tokens = model.text_encoder.tokenize(captions)
    else:
        encoded = model.text_encoder.tokenizer(
            captions, padding="max_length", truncation=True, max_length=text_length,
            return_tensors="pt",
        )  # fmt: skip
        tokens = {k: encoded[k] for k in ("input_ids", "attention_mask")}
    return {"images": random_images(batch_size, image_size, seed), **tokens}


def run(
    cfg: DictConfig,
    batch_size: int = 128,
    image_size: int | None = None,
    text_length: int | None = None,
    warmup_steps: int = 3,
    steps: int = 30,
    seed: int = 0,
) -> dict[str, Any]:
    """Pairs/s of both loops (from median step times) and their ratio.

    ``cfg`` is the composed bench config: ``model``, ``optimizer``, ``trainer`` and ``logger``
    are used as a training run would use them. Both loops share the module, so both train it.
    """
    if warmup_steps < 1 or steps < 1:
        raise ValueError("train_step needs warmup_steps and steps >= 1")
    model = seeded_model(cfg, seed)
    size = image_size or int(model.image_encoder.data_config["input_size"][-1])
    device = trainer_device(cfg)
    batch = caption_batch(model, batch_size, size, seed, text_length)
    loader = repeated_loader(batch, warmup_steps + steps, device.type == "cuda")
    plain_batches = iter(repeated_loader(batch, warmup_steps + steps, device.type == "cuda"))
    optimizer = model.configure_optimizers()["optimizer"]
    autocast = autocast_for(cfg.trainer.precision, device)

    def plain_step() -> None:
        plain_train_step(model, optimizer, to_device(next(plain_batches), device), autocast)

    timer = InterleavedSteps(plain_step, warmup_steps, device)
    trainer = instantiate(
        cfg.trainer,
        max_steps=warmup_steps + steps,
        max_epochs=-1,
        callbacks=[timer],
        logger=instantiate_list(cfg.get("logger")) or False,
    )
    trainer.fit(model, train_dataloaders=loader)
    trainer_step, plain_step_s = median(timer.trainer_seconds), median(timer.plain_seconds)
    return {
        "device": str(device),
        "precision": str(cfg.trainer.precision),
        "batch_size": batch_size,
        "image_size": size,
        "text_length": int(batch["input_ids"].shape[1]),
        "steps": steps,
        "trainer_pairs_per_s": batch_size / trainer_step,
        "plain_pairs_per_s": batch_size / plain_step_s,
        "ratio": plain_step_s / trainer_step,
        "ratio_of_totals": sum(timer.plain_seconds) / sum(timer.trainer_seconds),
        "overhead_ms_per_step": 1000 * (trainer_step - plain_step_s),
    }
