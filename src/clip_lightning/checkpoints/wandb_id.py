"""The W&B run a resumed run continues: its id, stored in the run directory it logged from.

A run with a ``WandbLogger`` writes ``<run dir>/wandb_run_id``; resuming a checkpoint of that
run points every ``WandbLogger`` of the new run at the same id (the logger resumes with
``resume="allow"``), so the W&B charts continue instead of starting a new run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from clip_lightning.errors import CheckpointError

WANDB_ID_FILE = "wandb_run_id"
# what W&B generates (8 lowercase characters) and what it accepts as a chosen id
_WANDB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def read_wandb_id(run_dir: Path) -> str | None:
    """The W&B run id an earlier run stored, so a resume continues the same W&B run.

    The file is data from a run directory: a link, a large file or anything but an id is
    refused in one line, and its content is never shown.
    """
    path = run_dir / WANDB_ID_FILE
    if not path.is_symlink() and not path.exists():
        return None
    problem = "is a link" if path.is_symlink() else None
    if problem is None and (not path.is_file() or path.stat().st_size > 128):
        problem = "is not a small file"
    run_id = path.read_text(errors="replace").strip() if problem is None else ""
    if problem is None and not _WANDB_ID.fullmatch(run_id):
        problem = "does not hold a W&B run id"
    if problem is not None:
        raise CheckpointError(
            f"{str(path)!r} {problem}; it should hold the id of the W&B run to continue: "
            "delete it to log the resumed run as a new W&B run"
        )
    return run_id


def write_wandb_id(run_dir: Path, run_id: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / WANDB_ID_FILE).write_text(run_id + "\n")


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
