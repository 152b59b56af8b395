"""EMA weights: ``callbacks=[default,ema]``.

Lightning's own :class:`~lightning.pytorch.callbacks.EMAWeightAveraging` keeps the moving
average: it swaps the averaged weights in for validation (so ``val/*`` and the best-checkpoint
choice judge them), writes them as every checkpoint's ``state_dict`` (so ``trainer.test`` of
the best checkpoint, ``clip_lightning.eval`` and ``clip_lightning.export`` use them) and copies
them into the model when training ends. :class:`EMAWeights` adds three things: the run says
so in one line; the raw weights come back only at the end of validation, after every callback
that scores the model during validation (zero-shot classification) has seen the averaged ones;
and a checkpoint loaded outside fitting keeps its averaged weights (Lightning's callback would
put the raw training weights of that checkpoint back when testing it right after ``fit``).
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from clip_lightning.errors import ConfigError

_UNSHARDED_AVERAGE = "You're using the WeightAveraging callback with a model that overrides"


class EMAWeights(EMAWeightAveraging):
    """Exponential moving average of the weights (``decay`` per update), evaluated and saved
    in place of the raw weights."""

    def __init__(self, decay: float = 0.999, **kwargs: Any):
        super().__init__(decay=decay, **kwargs)
        self.decay = decay

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == TrainerFn.FITTING and pl_module.device_mesh is not None:
            raise ConfigError(
                "callbacks=[default,ema] cannot average a model sharded by trainer=fsdp "
                "(Lightning's EMAWeightAveraging keeps a whole, unsharded copy of it); use "
                "trainer=ddp, or drop ema from callbacks"
            )
        with warnings.catch_warnings():
            # Lightning warns that the average of a model with a configure_model hook is not
            # sharded; CLIPModule's hook shards only under trainer=fsdp, refused above
            warnings.filterwarnings("ignore", message=_UNSHARDED_AVERAGE)
            super().setup(trainer, pl_module, stage)
        if stage == TrainerFn.FITTING:
            rank_zero_info(
                f"EMA of the weights (decay {self.decay:g}): validation, test, the best "
                "checkpoint and export use the averaged weights"
            )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the averaged weights in: other callbacks' epoch-end hooks still score them."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # before any checkpoint is written (Lightning runs checkpoint callbacks last)
        if self._average_model is not None:
            self._swap_models(pl_module)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Resuming a fit restores both weight sets; any other stage evaluates the checkpoint's
        # state_dict, which already holds the averaged weights.
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
