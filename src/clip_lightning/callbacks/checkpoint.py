"""Best checkpoint by a metric, plus a ``last.ckpt`` written at every save point."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from clip_lightning.plugins import link_checkpoint


class BestAndLastCheckpoint(ModelCheckpoint):
    """Lightning's :class:`ModelCheckpoint` whose ``last.ckpt`` is always the newest state.

    With ``save_last=True``, Lightning 2.6 writes ``last.ckpt`` only when it also writes a top-k
    checkpoint: after an epoch that is not the best, ``last.ckpt`` keeps the best epoch's state,
    so a resume repeats work and a finished run's final weights are never on disk. Here
    ``last.ckpt`` is also written at every other save point: the end of each training epoch,
    each validation during fit (``trainer.val_check_interval``) and every
    ``every_n_train_steps`` steps.

    When the best checkpoint was written at the same step, ``last.ckpt`` becomes a hard link to
    it instead of a second copy: both names hold the same bytes, and the storage is paid once
    (``du`` counts it once). Every later write replaces a name with a new file through a rename
    (:class:`~clip_lightning.plugins.AtomicCheckpointIO`) and removing the old best removes
    only its name, so neither name ever changes the other's content. Where hard links are not
    available (remote URLs, filesystems without them, sharded checkpoint folders) ``last.ckpt``
    is written in full, as before. Resuming reads ``last.ckpt`` like any other file, linked or
    not. ``last.ckpt`` keeps its name (no ``last-v1.ckpt``): ``ckpt_path=last`` looks for it.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):  # else top-k saves after this
            self._save_last_if_missed(trainer)

    def _save_last_if_missed(self, trainer: L.Trainer) -> None:
        # skipped when anything was saved at this step: Lightning saves last with every top-k
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_topk_checkpoint(
        self, trainer: L.Trainer, monitor_candidates: dict[str, Tensor]
    ) -> None:
        if self.save_last:  # the best file's own state then names last.ckpt as last.ckpt's does
            self.last_model_path = self._last_path(monitor_candidates)
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(
        self, trainer: L.Trainer, monitor_candidates: dict[str, Tensor]
    ) -> None:
        if not self.save_last:
            return
        filepath = self._last_path(monitor_candidates)
        previous, self.last_model_path = self.last_model_path, filepath
        if not self._link_to_checkpoint_of_this_step(trainer, filepath):
            self._save_checkpoint(trainer, filepath)
        if (
            previous
            and previous != filepath
            and self._should_remove_checkpoint(trainer, previous, filepath)
        ):
            self._remove_checkpoint(trainer, previous)

    def _last_path(self, monitor_candidates: dict[str, Tensor]) -> str:
        return self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)

    def _link_to_checkpoint_of_this_step(self, trainer: L.Trainer, filepath: str) -> bool:
        """Hard-link ``filepath`` to the top-k checkpoint just written at this step, if any."""
        source = self._last_checkpoint_saved
        if not (
            source
            and self._last_global_step_saved == trainer.global_step
            and os.path.abspath(source) != os.path.abspath(filepath)
            and _is_local_file_protocol(filepath)
        ):
            return False
        linked = trainer.is_global_zero and link_checkpoint(Path(source), Path(filepath))
        return bool(trainer.strategy.broadcast(linked))  # every rank saves a copy, or none
