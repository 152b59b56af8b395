"""Gradient checkpointing (``model.grad_checkpointing``): memory saved vs time spent.

Two copies of the same model (same weights, both towers trainable) train on the same batch, one
with checkpointing, measured by :func:`~clip_lightning.benchmarks.variants.measure_variants`:
saved activations (the memory checkpointing trades away), peak step memory and step time.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from clip_lightning.benchmarks.common import seeded_model
from clip_lightning.benchmarks.variants import measure_variants
from clip_lightning.module import CLIPModule

VARIANTS = ("plain", "checkpointed")


def _model(cfg: DictConfig, grad_checkpointing: bool, seed: int) -> CLIPModule:
    return seeded_model(
        cfg,
        seed,
        {
            "grad_checkpointing": grad_checkpointing,
            "image_encoder": {"freeze": False},
            "text_encoder": {"freeze": False, "cache": None},
        },
    )


def run(
    cfg: DictConfig,
    batch_size: int = 64,
    steps: int = 4,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Figures of both variants and the checkpointed/plain ratios (see the module docstring)."""
    models = {name: _model(cfg, name == "checkpointed", seed) for name in VARIANTS}
    measured = measure_variants(cfg, models, batch_size, steps, repeats, seed)
    figures = {name: measured[name] for name in VARIANTS}
    plain, checkpointed = figures["plain"], figures["checkpointed"]
    return {
        "device": measured["device"],
        "batch_size": batch_size,
        "image_size": measured["image_size"],
        "steps": steps,
        "repeats": repeats,
        **{f"{name}_{key}": value for name, f in figures.items() for key, value in f.items()},
        "saved_activations_ratio": checkpointed["saved_activations_mib"]
        / plain["saved_activations_mib"],
        "step_time_ratio": checkpointed["step_s"] / plain["step_s"],
    }
