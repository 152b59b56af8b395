"""``last.ckpt`` is the newest state after every save point, whatever the best is, and shares its
file with the best checkpoint when both hold the same step."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from torch.utils.data import DataLoader

from clip_lightning.callbacks import BestAndLastCheckpoint
from clip_lightning.plugins import AtomicCheckpointIO
from tests.helpers import TINY_TRAIN_OVERRIDES, compose_train, quiet_trainer


def saved_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


class ScriptedModel(BoringModel):
    """A boring model whose validations report the given ``val/rsum`` values in turn."""

    def __init__(self, values: list[float]):
        super().__init__()
        self.values = values
        self.validations = 0

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.log("val/rsum", self.values[self.validations])
            self.validations += 1

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 6))  # 6 steps an epoch

    def val_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 2))


class LastCheckpointLog(L.Callback):
    """Records, at each step, which step ``last.ckpt`` holds and whether it is the best's file."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.seen: list[tuple[int, int, bool]] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        last, best = self.folder / "last.ckpt", trainer.checkpoint_callback.best_model_path
        if last.is_file():
            shared = bool(best) and os.path.samefile(last, best)
            self.seen.append((trainer.global_step, saved_step(last), shared))


def fit_scripted(tmp_path: Path, values: list[float], **trainer_options) -> LastCheckpointLog:
    folder = tmp_path / "checkpoints"
    checkpoint = BestAndLastCheckpoint(
        dirpath=folder,
        filename="best_{step}",
        auto_insert_metric_name=False,
        monitor="val/rsum",
        mode="max",
        save_last=True,
    )
    log = LastCheckpointLog(folder)
    trainer = quiet_trainer(
        tmp_path,
        enable_checkpointing=True,
        callbacks=[checkpoint, log],
        plugins=[AtomicCheckpointIO()],
        **trainer_options,
    )
    trainer.fit(ScriptedModel(values))
    return log


def test_last_ckpt_holds_the_final_step_when_the_last_epoch_is_not_the_best(tmp_path):
    # the shipped callbacks and trainer plugins, 6 steps an epoch, epoch 2 validating worse
    cfg = compose_train(TINY_TRAIN_OVERRIDES, output_dir=tmp_path)
    checkpoint = instantiate(cfg.callbacks.model_checkpoint)
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=2,
        enable_checkpointing=True,
        callbacks=[checkpoint],
        plugins=instantiate(cfg.trainer.plugins),
    )
    trainer.fit(ScriptedModel([50.0, 10.0]))

    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    assert saved_step(checkpoints / "epoch_000.ckpt") == 6  # the best
    assert saved_step(checkpoints / "last.ckpt") == 12  # the end of training
    assert not os.path.samefile(checkpoints / "last.ckpt", checkpoints / "epoch_000.ckpt")


def test_each_validation_mid_epoch_writes_last_ckpt_and_a_new_best_shares_its_file(tmp_path):
    log = fit_scripted(tmp_path, [5.0, 3.0, 4.0, 9.0], max_epochs=2, val_check_interval=3)

    # validations at steps 3, 6, 9, 12; the best (step 3) is linked, later ones are new files
    assert log.seen[:2] == [(3, 3, True), (4, 3, True)]
    assert (6, 6, False) in log.seen and (9, 9, False) in log.seen
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best_12.ckpt", "last.ckpt"]
    assert os.path.samefile(folder / "last.ckpt", folder / "best_12.ckpt")  # the new best
    assert saved_step(folder / "last.ckpt") == 12


def test_without_hard_links_last_ckpt_is_written_in_full(tmp_path, monkeypatch):
    def no_links(*args: object) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    fit_scripted(tmp_path, [5.0], max_epochs=1)

    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best_6.ckpt", "last.ckpt"]
    assert not os.path.samefile(folder / "last.ckpt", folder / "best_6.ckpt")
    assert saved_step(folder / "last.ckpt") == saved_step(folder / "best_6.ckpt") == 6
