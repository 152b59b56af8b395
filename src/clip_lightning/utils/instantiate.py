"""Instantiate the optional lists of callbacks and loggers from their config groups."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig


def instantiate_list(cfg: DictConfig | None) -> list[Any]:
    """Every entry of a mapping that has a ``_target_`` (others, e.g. ``null``, are skipped)."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]
