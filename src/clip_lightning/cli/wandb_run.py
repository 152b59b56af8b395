"""Weights & Biases glue: always close the active run (continuing a run on resume is
:mod:`clip_lightning.checkpoints.wandb_id`)."""

from __future__ import annotations

import sys


def finish_wandb(exit_code: int = 0) -> None:
    """Close the active W&B run, if any: a sweep runs many jobs in one process, and a failed
    job must not leave its run open for the next one to log into."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)
