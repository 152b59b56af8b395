"""LoRA (``model.lora``) vs full fine-tuning of the same open_clip pair.

Both variants are the same random-init open_clip model (``arch``, built offline), one with
LoRA adapters of rank ``r`` on both towers' attention and MLP projections, trained on the same
batch and measured by :func:`~clip_lightning.benchmarks.variants.measure_variants` (step time,
peak step memory, saved activations, gradient + optimizer-state memory), with their throughput
(image-text pairs per second) and trainable and total parameter counts.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from clip_lightning.benchmarks.variants import measure_variants
from clip_lightning.models.freezing import count_parameters
from clip_lightning.models.open_clip import open_clip_module
from clip_lightning.module import CLIPModule

VARIANTS = ("full", "lora")


def _model(cfg: DictConfig, arch: str, r: int | None, lr: float, seed: int) -> CLIPModule:
    L.seed_everything(seed, verbose=False)  # both variants start from the same weights
    return open_clip_module(
        arch,
        None,
        image_encoder={"_target_": "clip_lightning.models.open_clip.OpenCLIPImageTower"},
        text_encoder={"_target_": "clip_lightning.models.open_clip.OpenCLIPTextTower"},
        head={"_target_": "clip_lightning.models.heads.IdentityHead"},
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=None,
        tower_lr={"image_encoder": lr, "text_encoder": lr},
        clip_grad_norm=None,
        lora={"r": r, "alpha": 2 * r} if r else None,
    )


def run(
    cfg: DictConfig,
    arch: str = "ViT-S-32",
    r: int = 8,
    batch_size: int = 32,
    steps: int = 3,
    repeats: int = 3,
    lr: float = 1e-5,
    seed: int = 0,
) -> dict[str, Any]:
    """Figures of both variants and the LoRA/full ratios."""
    models = {name: _model(cfg, arch, r if name == "lora" else None, lr, seed) for name in VARIANTS}
    counts = {name: count_parameters(model) for name, model in models.items()}
    measured = measure_variants(cfg, models, batch_size, steps, repeats, seed)
    figures = {
        name: {
            **measured[name],
            "pairs_per_s": batch_size / measured[name]["step_s"],
            "trainable_params": counts[name]["trainable"],
            "total_params": counts[name]["trainable"] + counts[name]["frozen"],
        }
        for name in VARIANTS
    }
    full, lora = figures["full"], figures["lora"]
    peak_ratio = (
        lora["peak_mib"] / full["peak_mib"] if lora["peak_mib"] and full["peak_mib"] else None
    )
    return {
        "arch": arch,
        "r": r,
        "device": measured["device"],
        "precision": str(cfg.trainer.precision),
        "batch_size": batch_size,
        "image_size": measured["image_size"],
        "steps": steps,
        "repeats": repeats,
        **{f"{name}_{key}": value for name, f in figures.items() for key, value in f.items()},
        "step_time_ratio": lora["step_s"] / full["step_s"],
        "peak_memory_ratio": peak_ratio,
    }
