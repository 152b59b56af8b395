"""CLIPModule: the LightningModule that wraps both towers, their heads and the loss.

The module is built from plain config mappings (each with a ``_target_``) rather than from
ready-made objects, so ``CLIPModule.load_from_checkpoint(path)`` rebuilds the whole model from
the checkpoint alone -- no Hydra, no extra arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from clip_lightning.metrics import RetrievalRecall
from clip_lightning.models.freezing import count_parameters
from clip_lightning.optim import param_groups

Config = Mapping[str, Any]


def _plain(config: Config | None) -> dict[str, Any] | None:
    """Resolve a DictConfig into plain containers so checkpoints do not pickle OmegaConf."""
    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    return None if config is None else dict(config)


class CLIPModule(L.LightningModule):
    """Image encoder + text encoder -> projection heads -> contrastive loss.

    Args:
        image_encoder, text_encoder: configs of :class:`~clip_lightning.models.ImageEncoder`
            and :class:`~clip_lightning.models.TextEncoder`.
        head: config of a projection head class; ``in_features`` and ``embed_dim`` are filled
            in here, one head per tower.
        loss: config of a loss from :mod:`clip_lightning.losses` (it owns the temperature).
        optimizer: a ``_partial_`` optimizer config; its ``lr`` applies to heads and loss.
        scheduler: a ``_partial_`` config called with ``optimizer`` and ``num_training_steps``.
        tower_lr: per-tower learning rates, keys ``image_encoder`` / ``text_encoder``.
        compile: ``torch.compile`` both encoders in place (state-dict keys are unchanged).
    """

    def __init__(
        self,
        image_encoder: Config,
        text_encoder: Config,
        head: Config,
        loss: Config,
        optimizer: Config,
        scheduler: Config | None = None,
        embed_dim: int = 256,
        tower_lr: Mapping[str, float] | None = None,
        compile: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(
            {
                "image_encoder": _plain(image_encoder),
                "text_encoder": _plain(text_encoder),
                "head": _plain(head),
                "loss": _plain(loss),
                "optimizer": _plain(optimizer),
                "scheduler": _plain(scheduler),
                "embed_dim": embed_dim,
                "tower_lr": _plain(tower_lr) or {},
                "compile": compile,
            }
        )
        self.image_encoder = instantiate(self.hparams.image_encoder)
        self.text_encoder = instantiate(self.hparams.text_encoder)
        self.image_head = instantiate(
            self.hparams.head, in_features=self.image_encoder.num_features, embed_dim=embed_dim
        )
        self.text_head = instantiate(
            self.hparams.head, in_features=self.text_encoder.num_features, embed_dim=embed_dim
        )
        self.loss = instantiate(self.hparams.loss)
        if compile:
            self.image_encoder.compile()
            self.text_encoder.compile()
        self.val_retrieval = RetrievalRecall()
        self.test_retrieval = RetrievalRecall()

    # ----------------------------------------------------------------- embedding
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings for a preprocessed batch."""
        return F.normalize(self.image_head(self.image_encoder(images)), dim=-1)

    def embed_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings for a tokenized batch."""
        return F.normalize(self.text_head(self.text_encoder(input_ids, attention_mask)), dim=-1)

    @torch.no_grad()
    def encode_image(self, images: list[Image.Image] | torch.Tensor) -> torch.Tensor:
        """Inference API: PIL images (or an already preprocessed batch) -> embeddings."""
        if not isinstance(images, torch.Tensor):
            images = self.image_encoder.preprocess(images)
        return self.embed_images(images.to(self.device))

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Inference API: captions -> embeddings, tokenized with the tower's own tokenizer."""
        tokens = self.text_encoder.tokenize(list(texts))
        return self.embed_texts(**{k: v.to(self.device) for k, v in tokens.items()})

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        counts = {
            f"params/{name}_{kind}": float(n)
            for name, module in (
                ("image_encoder", self.image_encoder),
                ("text_encoder", self.text_encoder),
                ("total", self),
            )
            for kind, n in count_parameters(module).items()
        }
        for logger in self.loggers:
            logger.log_metrics(counts, step=0)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image_embeddings = self.embed_images(batch["images"])
        text_embeddings = self.embed_texts(batch["input_ids"], batch["attention_mask"])
        loss = self.loss(image_embeddings, text_embeddings)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at step {self.global_step}; "
                "lower optimizer.lr or use trainer.precision=bf16-mixed instead of 16-mixed. "
                "The last good checkpoint is kept in the run's checkpoints/ folder."
            )
        batch_size = batch["images"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/logit_scale", self.loss.scale, batch_size=batch_size)
        return loss

    # ---------------------------------------------------------------- evaluation
    def _retrieval_update(self, metric: RetrievalRecall, batch: dict[str, torch.Tensor]) -> None:
        metric.update(
            self.embed_images(batch["images"]),
            batch["image_ids"],
            self.embed_texts(batch["input_ids"], batch["attention_mask"]),
            batch["caption_ids"],
            batch["caption_image_ids"],
        )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._retrieval_update(self.val_retrieval, batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._retrieval_update(self.test_retrieval, batch)

    def _log_retrieval(self, metric: RetrievalRecall, prefix: str) -> None:
        results = metric.compute()
        metric.reset()
        self.log_dict({f"{prefix}/{k}": v.float() for k, v in results.items()}, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_retrieval(self.val_retrieval, "val")

    def on_test_epoch_end(self) -> None:
        self._log_retrieval(self.test_retrieval, "test")

    # ---------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        factory = instantiate(self.hparams.optimizer)
        keywords = getattr(factory, "keywords", {})
        groups = param_groups(
            towers={"image_encoder": self.image_encoder, "text_encoder": self.text_encoder},
            rest=self,
            tower_lr=self.hparams.tower_lr,
            lr=keywords.get("lr", 1e-3),
            weight_decay=keywords.get("weight_decay", 0.0),
        )
        optimizer = factory(groups)
        if self.hparams.scheduler is None:
            return {"optimizer": optimizer}
        scheduler = instantiate(self.hparams.scheduler)(
            optimizer=optimizer, num_training_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The weights are in the state dict: reloading must not download them again.
        hparams = checkpoint["hyper_parameters"]
        for tower in ("image_encoder", "text_encoder"):
            hparams[tower] = {**hparams[tower], "pretrained": False}
