"""Save ``last.ckpt`` when the job is told to stop (SIGTERM); the task then exits with 143."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM, write ``<dirpath>/last.ckpt`` at the next batch boundary.

    Lightning's signal connector already turns SIGTERM (what SLURM, Kubernetes and ``kill``
    send before a hard kill) into a :class:`SIGTERMException` raised after the current batch,
    but outside SLURM's auto-requeue nothing is saved, so up to an epoch of work is lost. This
    callback saves the full training state (mid-epoch position included) at that moment;
    ``ckpt_path=last`` resumes from it. Other exceptions (a NaN loss, a bug) save nothing, so
    ``last.ckpt`` stays the last good checkpoint. The task wrapper then exits with status
    143 (:data:`clip_lightning.cli.task.PREEMPTED_EXIT_CODE`), so the job does not look finished.
    """

    def __init__(self, dirpath: str, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            return
        trainer.save_checkpoint(self.path)
        if trainer.is_global_zero:
            log.warning(
                "SIGTERM at step %d: saved %s; resume with ckpt_path=last",
                trainer.global_step,
                self.path,
            )
