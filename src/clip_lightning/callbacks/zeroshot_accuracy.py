"""Zero-shot classification of an ImageFolder while training: ``zeroshot/top1``, ``zeroshot/top5``.

Retrieval recall measures the task the model trains on; zero-shot accuracy on a labelled
folder (e.g. an ImageNet subset) shows whether general recognition survives fine-tuning. The
classifier is :mod:`clip_lightning.zeroshot`'s, the one ``eval task=zeroshot`` uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from torchvision.datasets import ImageFolder

from clip_lightning.errors import ConfigError
from clip_lightning.module import CLIPModule
from clip_lightning.zeroshot import classify, folder_classnames, image_folder, read_lines


class ZeroShotClassification(L.Callback):
    """Every ``every_n_epochs`` validation epochs (and in ``trainer.validate``, e.g. the
    baseline before fitting), classify ``images`` and log ``zeroshot/top{k}`` (percent).

    Args:
        images: an ImageFolder, one sub-folder per class.
        templates: prompts with ``{}`` for the class name ...
        templates_file: ... or a file of them (one per line, or a YAML list).
        classnames_file: class names, one per line in sorted folder order (default: the
            folder names, ``_`` read as a space).
        every_n_epochs: run after every N-th validation epoch.
        top_k: accuracies to log.
        batch_size, num_workers: of the image loader.
    """

    def __init__(
        self,
        images: str,
        templates: Sequence[str] | None = None,
        templates_file: str | None = None,
        classnames_file: str | None = None,
        every_n_epochs: int = 1,
        top_k: Sequence[int] = (1, 5),
        batch_size: int = 64,
        num_workers: int = 0,
    ):
        if (templates is None) == (templates_file is None):
            raise ConfigError(
                "callbacks.zeroshot needs exactly one of templates (a list) and templates_file"
            )
        if every_n_epochs < 1:
            raise ConfigError(
                f"callbacks.zeroshot.every_n_epochs must be >= 1, got {every_n_epochs}"
            )
        self.images = images
        self.templates = list(templates) if templates is not None else None
        self.templates_file = templates_file
        self.classnames_file = classnames_file
        self.every_n_epochs = every_n_epochs
        self.top_k = list(top_k)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.dataset: ImageFolder | None = None
        self.classnames: list[str] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # a bad folder or file fails before training starts, not after the first epoch
        assert isinstance(pl_module, CLIPModule)
        self.dataset = image_folder(self.images, transform=pl_module.image_encoder.transform())
        self.classnames = folder_classnames(self.dataset, self.classnames_file)
        if self.templates is None:
            self.templates = read_lines(Path(str(self.templates_file)), "templates")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.dataset is None:
            return
        baseline = trainer.state.fn == TrainerFn.VALIDATING
        if not baseline and (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        assert isinstance(pl_module, CLIPModule) and self.templates is not None
        result = classify(
            pl_module,
            self.dataset,
            self.classnames,
            self.templates,
            ks=self.top_k,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
        )
        # every rank scores the whole folder, so the values agree without a sync
        pl_module.log_dict({f"zeroshot/top{k}": acc for k, acc in result.top_k.items()})
