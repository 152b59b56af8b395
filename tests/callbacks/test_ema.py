"""EMA weights (callbacks=[default,ema]): validation (also callbacks scoring at its end), the
best checkpoint, testing it right after fit, and eval/export loading use the averaged weights,
not the raw training ones; a resumed fit trains on from the raw weights and averages on from the
saved average."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from clip_lightning.callbacks import EMAWeights
from clip_lightning.cli.loading import build_datamodule, load_model
from clip_lightning.errors import ConfigError
from clip_lightning.models.targets import build
from clip_lightning.utils.instantiate import instantiate_list
from tests.helpers import compose_train, quiet_trainer
from tests.helpers.pretrained import open_clip_cfg


class Snapshot(L.Callback):
    """The weights each validation and test loop runs with."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, torch.Tensor]] = {}

    def _keep(self, stage: str, module: L.LightningModule) -> None:
        self.seen[stage] = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        self._keep("train", pl_module)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self._keep("train_end", pl_module)

    def on_validation_batch_start(self, trainer, pl_module, *args) -> None:
        self._keep("val", pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._keep("val_end", pl_module)  # where the zero-shot callback classifies

    def on_test_batch_start(self, trainer, pl_module, *args) -> None:
        self._keep("test", pl_module)


def same(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(state[key], expected[key]) for key in expected)


def test_validation_best_checkpoint_test_and_eval_use_the_ema_weights(tmp_path, caplog, recwarn):
    cfg = open_clip_cfg(
        tmp_path,
        extra=["optimizer.lr=1e-2", "model.tower_lr={image_encoder:1e-2,text_encoder:1e-2}"],
    )
    model = build(cfg.model, "model")
    snapshot = Snapshot()
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/rsum", mode="max")
    trainer = quiet_trainer(
        tmp_path,
        max_steps=3,
        val_check_interval=3,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_checkpointing=True,
        callbacks=[EMAWeights(decay=0.5), snapshot, best],
    )
    datamodule = build_datamodule(cfg.dataset, model)
    with caplog.at_level(logging.INFO):
        trainer.fit(model, datamodule=datamodule)
    assert "EMA of the weights (decay 0.5): validation, test, the best checkpoint" in caplog.text
    # without trainer=fsdp nothing is sharded: Lightning's warning that the average is not is noise
    assert not [w for w in recwarn if "WeightAveraging callback" in str(w.message)]
    saved = torch.load(best.best_model_path, weights_only=True)
    averaged, raw = saved["state_dict"], saved["current_model_state"]
    tower = "image_encoder.model.conv1.weight"
    assert not torch.equal(averaged[tower], raw[tower])  # the average lags the raw weights
    assert same(snapshot.seen["val"], averaged) and same(snapshot.seen["val_end"], averaged)
    trainer.test(model, datamodule=datamodule, ckpt_path=best.best_model_path, verbose=False)
    assert same(snapshot.seen["test"], averaged)
    assert same(load_model(best.best_model_path).state_dict(), averaged)  # eval and export

    # resumed for one more step: from the raw weights, and the average continues from the
    # saved one (decay 0.5: half the average, half the weights after the step)
    resumed = Snapshot()
    trainer = quiet_trainer(
        tmp_path, max_steps=4, limit_val_batches=0, callbacks=[EMAWeights(decay=0.5), resumed]
    )
    model = build(cfg.model, "model")
    trainer.fit(model, datamodule=datamodule, ckpt_path=best.best_model_path)
    assert same(resumed.seen["train"], raw)
    stepped = resumed.seen["train_end"][tower]
    torch.testing.assert_close(model.state_dict()[tower], 0.5 * averaged[tower] + 0.5 * stepped)


def test_the_ema_option_adds_the_callback_to_the_default_ones(tmp_path):
    cfg = compose_train(["callbacks=[default,ema]"], output_dir=tmp_path)
    callbacks = instantiate_list(cfg.callbacks)
    assert any(isinstance(c, EMAWeights) and c.decay == 0.999 for c in callbacks)
    assert any(isinstance(c, ModelCheckpoint) for c in callbacks)


def test_a_model_sharded_by_fsdp_is_refused_in_one_line():
    module = L.LightningModule()
    module._device_mesh = object()  # what trainer=fsdp's strategy sets before callbacks set up
    with pytest.raises(ConfigError, match=r"trainer=fsdp .* use trainer=ddp") as error:
        EMAWeights().setup(L.Trainer(logger=False), module, "fit")
    assert "\n" not in str(error.value)
