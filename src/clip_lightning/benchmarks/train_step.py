"""Training throughput of the CLIPModule in a real ``lightning.Trainer`` vs a plain PyTorch loop.

Both sides run the same module object (same encoders, heads and loss), the same in-memory batch
and the same precision; repetitions alternate between them (Trainer first, then plain first) so
drift on a shared machine hits both. The ratio ``trainer / plain`` is the framework's cost.
"""

from __future__ import annotations

import time
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
    synchronize,
    timed_steps,
    to_device,
    trainer_device,
)
from clip_lightning.data.formats.synthetic import load_synthetic
from clip_lightning.module import CLIPModule
from clip_lightning.utils.instantiate import instantiate_list


class StepTimer(L.Callback):
    """Wall-clock time of the Trainer's steps after ``warmup`` untimed ones."""

    def __init__(self, warmup: int, steps: int, device: torch.device):
        self.warmup, self.last = warmup, warmup + steps
        self.device = device
        self.start = self.stop = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx + 1 in (self.warmup, self.last):
            synchronize(self.device)
            now = time.perf_counter()
            if batch_idx + 1 == self.warmup:
                self.start = now
            else:
                self.stop = now

    @property
    def seconds(self) -> float:
        return self.stop - self.start


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


def _trainer(cfg: DictConfig, timer: StepTimer, max_steps: int) -> L.Trainer:
    return instantiate(
        cfg.trainer,
        max_steps=max_steps,
        max_epochs=-1,
        callbacks=[timer],
        logger=instantiate_list(cfg.get("logger")) or False,
    )


def run(
    cfg: DictConfig,
    batch_size: int = 128,
    image_size: int | None = None,
    text_length: int | None = None,
    warmup_steps: int = 3,
    steps: int = 10,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Pairs/s of both loops (medians over ``repeats``) and their ratio.

    ``cfg`` is the composed bench config: ``model``, ``optimizer``, ``trainer`` and ``logger``
    are used as a training run would use them.
    """
    if warmup_steps < 1 or steps < 1 or repeats < 1:
        raise ValueError("train_step needs warmup_steps, steps and repeats >= 1")
    L.seed_everything(seed, verbose=False)
    model: CLIPModule = instantiate(cfg.model)
    size = image_size or int(model.image_encoder.data_config["input_size"][-1])
    device = trainer_device(cfg)
    loader = repeated_loader(
        caption_batch(model, batch_size, size, seed, text_length),
        warmup_steps + steps,
        device.type == "cuda",
    )
    optimizer = model.configure_optimizers()["optimizer"]
    autocast = autocast_for(cfg.trainer.precision, device)

    def plain() -> float:
        model.to(device).train()  # the Trainer's teardown may have moved it back to the CPU
        batches = (to_device(batch, device) for batch in loader)

        def step(batch: Batch) -> None:
            plain_train_step(model, optimizer, batch, autocast)

        return timed_steps(step, batches, warmup_steps, steps, device)

    def trainer() -> float:
        timer = StepTimer(warmup_steps, steps, device)
        _trainer(cfg, timer, warmup_steps + steps).fit(model, train_dataloaders=loader)
        return timer.seconds

    trainer_rates, plain_rates = [], []
    for repeat in range(repeats):
        order = (trainer, plain) if repeat % 2 == 0 else (plain, trainer)
        for measure in order:
            rate = batch_size * steps / measure()
            (trainer_rates if measure is trainer else plain_rates).append(rate)
    ratios = [t / p for t, p in zip(trainer_rates, plain_rates, strict=True)]
    trainer_rate, plain_rate = median(trainer_rates), median(plain_rates)
    return {
        "device": str(device),
        "precision": str(cfg.trainer.precision),
        "batch_size": batch_size,
        "image_size": size,
        "text_length": int(loader.dataset.batch["input_ids"].shape[1]),
        "steps": steps,
        "repeats": repeats,
        "trainer_pairs_per_s": trainer_rate,
        "plain_pairs_per_s": plain_rate,
        "ratio": median(ratios),
        "overhead_ms_per_step": 1000 * batch_size * (1 / trainer_rate - 1 / plain_rate),
        "ratio_per_repeat": ratios,
    }
