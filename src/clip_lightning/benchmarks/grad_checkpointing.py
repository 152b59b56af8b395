"""Gradient checkpointing (``model.grad_checkpointing``): memory saved vs time spent.

Two copies of the same model (same weights, both towers trainable) train on the same batch, one
with checkpointing. Three figures per variant:

* ``saved_activations_mib``: what autograd keeps for the backward pass after one forward (unique
  tensor storages seen by ``saved_tensors_hooks``) -- the memory checkpointing trades away,
  exact and the same on every device;
* ``peak_mib``: the peak memory of one training step above the memory before it (CUDA: the
  allocator's peak; CPU: the process's peak resident set, reset through ``clear_refs``);
* ``step_s``: median seconds per training step, variants alternating in the same process so a
  noisy machine slows both alike.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from clip_lightning.benchmarks.common import (
    Batch,
    autocast_for,
    median,
    plain_train_step,
    random_images,
    synchronize,
    timed_steps,
    to_device,
    trainer_device,
)
from clip_lightning.models.targets import build
from clip_lightning.module import CLIPModule

VARIANTS = ("plain", "checkpointed")
MIB = 2**20


def _model(cfg: DictConfig, grad_checkpointing: bool, seed: int) -> CLIPModule:
    model_cfg = OmegaConf.merge(
        cfg.model,
        {
            "grad_checkpointing": grad_checkpointing,
            "image_encoder": {"freeze": False},
            "text_encoder": {"freeze": False, "cache": None},
        },
    )
    L.seed_everything(seed, verbose=False)  # both variants get the same weights
    return build(model_cfg, "model")


def _saved_activation_bytes(model: CLIPModule, batch: Batch, autocast: Callable[[], Any]) -> int:
    """Bytes of the distinct storages autograd saves for backward during one forward."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast():
        loss = model.loss(
            model.embed_images(batch["images"]),
            model.embed_texts(batch["input_ids"], batch["attention_mask"]),
        )
    saved = sum(size for ptr, size in storages.items() if ptr not in parameters)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return saved


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _peak_step_bytes(step: Callable[[], None], device: torch.device) -> int | None:
    """Peak memory of one ``step`` above the memory in use before it (``None``: unmeasurable)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM)
        before = _rss_kib("VmRSS")
    except OSError:
        return None
    step()
    return (_rss_kib("VmHWM") - before) * 1024


def run(
    cfg: DictConfig,
    batch_size: int = 64,
    steps: int = 4,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Figures of both variants and the checkpointed/plain ratios (see the module docstring)."""
    if steps < 1 or repeats < 1:
        raise ValueError("grad_checkpointing needs steps >= 1 and repeats >= 1")
    device = trainer_device(cfg)
    autocast = autocast_for(cfg.trainer.precision, device)
    models = {name: _model(cfg, name == "checkpointed", seed) for name in VARIANTS}
    size = int(models["plain"].image_encoder.data_config["input_size"][-1])
    captions = [f"a photo of {i} red circles and {i % 7} blue squares" for i in range(batch_size)]
    batch = to_device(
        {
            "images": random_images(batch_size, size, seed),
            **models["plain"].text_encoder.tokenize(captions),
        },
        device,
    )
    optimizers = {}
    for name, model in models.items():
        model.to(device).train()
        optimizers[name] = model.configure_optimizers()["optimizer"]

    def step(name: str) -> Callable[[Batch], None]:
        return lambda b: plain_train_step(models[name], optimizers[name], b, autocast)

    figures: dict[str, dict[str, Any]] = {}
    for name in VARIANTS:
        step(name)(batch)  # warm-up: allocator pools, optimizer state
        peak = _peak_step_bytes(functools.partial(step(name), batch), device)
        figures[name] = {
            "saved_activations_mib": _saved_activation_bytes(models[name], batch, autocast) / MIB,
            "peak_mib": None if peak is None else peak / MIB,
        }
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for repeat in range(repeats):
        for name in VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]:
            stream = iter([batch] * (steps + 1))
            times[name].append(timed_steps(step(name), stream, 1, steps, device) / steps)
    for name in VARIANTS:
        figures[name]["step_s"] = median(times[name])
    plain, checkpointed = figures["plain"], figures["checkpointed"]
    return {
        "device": str(device),
        "batch_size": batch_size,
        "image_size": size,
        "steps": steps,
        "repeats": repeats,
        **{f"{name}_{key}": value for name, f in figures.items() for key, value in f.items()},
        "saved_activations_ratio": checkpointed["saved_activations_mib"]
        / plain["saved_activations_mib"],
        "step_time_ratio": checkpointed["step_s"] / plain["step_s"],
    }
