"""Weights & Biases glue: continue the same W&B run on resume, and always close it."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from clip_lightning.utils.resume import write_wandb_id


def _is_wandb(target: str) -> bool:
    return target.endswith("WandbLogger")


def continue_wandb_run(logger_cfg: DictConfig | None, run_id: str | None) -> None:
    """Point every WandbLogger entry at ``run_id`` (the logger resumes with ``resume="allow"``)."""
    if not logger_cfg or run_id is None:
        return
    for entry in logger_cfg.values():
        if isinstance(entry, DictConfig) and _is_wandb(str(entry.get("_target_", ""))):
            entry.id = run_id


def remember_wandb_run(loggers: Sequence[Any], run_dir: Path) -> None:
    """Store the W&B run id in the run directory, where a later ``ckpt_path=last`` finds it."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            write_wandb_id(run_dir, str(logger.experiment.id))


def finish_wandb(exit_code: int = 0) -> None:
    """Close the active W&B run, if any: a sweep runs many jobs in one process, and a failed
    job must not leave its run open for the next one to log into."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)
