"""Two or more variants of one model trained on the same batch, measured alike.

Four figures per variant:

* ``saved_activations_mib``: what autograd keeps for the backward pass after one forward (unique
  tensor storages seen by ``saved_tensors_hooks``, parameters excluded), exact and the same on
  every device;
* ``training_state_mib``: the gradients (one per trainable parameter, of its size) and the
  optimizer's state tensors, what training holds besides the weights and the activations; exact;
* ``peak_mib``: the peak memory of one training step above the memory before it (CUDA: the
  allocator's peak; CPU: the process's peak resident set, reset through ``clear_refs``, after
  freed heap memory went back to the system, so one variant's pages do not hide the next one's);
* ``step_s``: median seconds per training step, variants alternating in the same process so a
  noisy machine slows all alike.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from omegaconf import DictConfig

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
from clip_lightning.benchmarks.process_memory import reset_peak_rss, rss_kib
from clip_lightning.module import CLIPModule

MIB = 2**20


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


def _training_state_bytes(model: CLIPModule, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the gradients and the optimizer's state tensors (after a step created them)."""
    gradients = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    state = sum(
        t.numel() * t.element_size()
        for per_parameter in optimizer.state.values()
        for t in per_parameter.values()
        if isinstance(t, torch.Tensor)
    )
    return gradients + state


def _release_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``), if there."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _peak_step_bytes(step: Callable[[], None], device: torch.device) -> int | None:
    """Peak memory of one ``step`` above the memory in use before it (``None``: unmeasurable)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _release_freed_memory()
    try:
        reset_peak_rss()
        before = rss_kib("VmRSS")
    except OSError:
        return None
    step()
    return (rss_kib("VmHWM") - before) * 1024


def measure_variants(
    cfg: DictConfig,
    models: Mapping[str, CLIPModule],
    batch_size: int,
    steps: int,
    repeats: int,
    seed: int,
) -> dict[str, Any]:
    """The figures of the module docstring for each of ``models`` (same batch, same device),
    plus ``device`` and ``image_size``, the run's own."""
    if steps < 1 or repeats < 1:
        raise ValueError("a variant benchmark needs steps >= 1 and repeats >= 1")
    names = list(models)
    first = models[names[0]]
    device = trainer_device(cfg)
    autocast = autocast_for(cfg.trainer.precision, device)
    size = int(first.image_encoder.data_config["input_size"][-1])
    captions = [f"a photo of {i} red circles and {i % 7} blue squares" for i in range(batch_size)]
    batch = to_device(
        {
            "images": random_images(batch_size, size, seed),
            **first.text_encoder.tokenize(captions),
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
    for name in names:
        step(name)(batch)  # warm-up: allocator pools, optimizer state
        peak = _peak_step_bytes(functools.partial(step(name), batch), device)
        figures[name] = {
            "saved_activations_mib": _saved_activation_bytes(models[name], batch, autocast) / MIB,
            "training_state_mib": _training_state_bytes(models[name], optimizers[name]) / MIB,
            "peak_mib": None if peak is None else peak / MIB,
        }
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            stream = iter([batch] * (steps + 1))
            times[name].append(timed_steps(step(name), stream, 1, steps, device) / steps)
    for name in names:
        figures[name]["step_s"] = median(times[name])
    return {"device": str(device), "image_size": size, **figures}
