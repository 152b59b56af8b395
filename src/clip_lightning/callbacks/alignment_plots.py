"""AlignmentPlots: pictures of image-text alignment at the end of fitting and testing.

Numbers such as Recall@K say *how much* a model retrieves; these plots show *what* it
confuses. The callback always draws the same few validation pairs, so plots of different runs
(or of the last and the best checkpoint) can be compared side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

from clip_lightning import plots
from clip_lightning.data.records import CaptionRecord, load_rgb
from clip_lightning.embedding import embed_images, embed_texts

if TYPE_CHECKING:
    from clip_lightning.module import CLIPModule

_CURVE_KEYS = ("i2t_r1", "t2i_r1", "i2t_r10", "t2i_r10")
# whose embeddings a stage's plots show (the pairs are validation pairs either way)
_WEIGHTS = {"fit": "weights at the end of fit", "test": "tested weights"}


class AlignmentPlots(L.Callback):
    """Draws PNGs into ``dirpath/<stage>/`` on global rank 0 and logs them to W&B if it is on.

    At the end of ``fit`` (last weights) and of ``test`` (the tested, usually best, weights):

    * ``similarity_heatmap.png``: caption x image similarities of ``heatmap_pairs`` matching
      validation pairs (their first captions);
    * ``text_to_image.png``: for the first captions of ``num_queries`` images, the ``k`` best
      images among the ``num_samples`` sample images;
    * ``image_to_text.png``: for ``num_queries`` images, the ``k`` best captions among all
      captions of the sample (correct ones in green);
    * ``curves.png`` (fit only): training loss per step and validation recall per epoch,
      collected by this callback (kept in its state, so a resumed run draws whole curves).

    Args:
        dirpath: output folder; default ``<trainer.default_root_dir>/plots``.
        num_samples: how many validation images (the first ones, a fixed sample) to embed.
        heatmap_pairs: how many of them appear in the heatmap.
        num_queries: rows of the two retrieval plots.
        k: retrieved items per row.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        num_samples: int = 16,
        heatmap_pairs: int = 8,
        num_queries: int = 4,
        k: int = 5,
    ):
        super().__init__()
        if min(num_samples, heatmap_pairs, num_queries, k) < 1:
            raise ValueError("AlignmentPlots sizes (num_samples, heatmap_pairs, ...) must be >= 1")
        self.dirpath = dirpath
        self.num_samples = num_samples
        self.heatmap_pairs = heatmap_pairs
        self.num_queries = num_queries
        self.k = k
        self.losses: list[tuple[int, float]] = []
        self.recalls: dict[str, list[tuple[int, float]]] = {key: [] for key in _CURVE_KEYS}

    # ------------------------------------------------------------------- curves
    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self.losses.append((trainer.global_step, float(loss)))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for key, points in self.recalls.items():
            value = trainer.callback_metrics.get(f"val/{key}")
            if value is not None:
                points.append((trainer.current_epoch, float(value)))

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": list(self.losses),
            "recalls": {k: list(v) for k, v in self.recalls.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.losses = [tuple(p) for p in state_dict["losses"]]
        self.recalls = {k: [tuple(p) for p in v] for k, v in state_dict["recalls"].items()}

    # -------------------------------------------------------------------- plots
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            paths = self.draw(trainer, pl_module, "fit")
            paths.append(
                plots.training_curves(
                    self.losses, self.recalls, self._dir(trainer, "fit") / "curves.png"
                )
            )
            self._log_images(trainer, "fit", paths)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._log_images(trainer, "test", self.draw(trainer, pl_module, "test"))

    def _dir(self, trainer: L.Trainer, stage: str) -> Path:
        return Path(self.dirpath or Path(trainer.default_root_dir) / "plots") / stage

    def _sample(self, trainer: L.Trainer) -> list[CaptionRecord]:
        datamodule = getattr(trainer, "datamodule", None)  # set at runtime, not in Trainer's hints
        if datamodule is None or not hasattr(datamodule, "load_splits"):
            rank_zero_warn("AlignmentPlots needs a CaptionDataModule; no plots drawn")
            return []
        return list(datamodule.load_splits().get("val", []))[: self.num_samples]

    @torch.no_grad()
    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> list[Path]:
        """Embed the fixed sample with ``pl_module`` and write the three alignment plots."""
        records = self._sample(trainer)
        if not records:
            return []
        out = self._dir(trainer, stage)
        images = [load_rgb(record.image) for record in records]
        captions = [c for record in records for c in record.captions]
        owners = [i for i, record in enumerate(records) for _ in record.captions]
        first = [owners.index(i) for i in range(len(records))]
        model = cast("CLIPModule", pl_module)
        image_emb = embed_images(model, images, batch_size=len(images))
        text_emb = embed_texts(model, captions)

        pairs = min(self.heatmap_pairs, len(records))
        queries = min(self.num_queries, len(records))
        plots.similarity_heatmap(
            image_emb[:pairs],
            text_emb[first[:pairs]],
            images[:pairs],
            [captions[t] for t in first[:pairs]],
            out / "similarity_heatmap.png",
            title=f"Similarity of {pairs} validation pairs, {_WEIGHTS[stage]}",
        )
        plots.text_to_image_grid(
            [captions[t] for t in first[:queries]],
            text_emb[first[:queries]] @ image_emb.T,
            images,
            out / "text_to_image.png",
            k=self.k,
            targets=list(range(queries)),
        )
        plots.image_to_text_topk(
            images[:queries],
            image_emb[:queries] @ text_emb.T,
            captions,
            out / "image_to_text.png",
            k=self.k,
            correct=[{t for t, owner in enumerate(owners) if owner == i} for i in range(queries)],
        )
        return [
            out / name
            for name in ("similarity_heatmap.png", "text_to_image.png", "image_to_text.png")
        ]

    @staticmethod
    def _log_images(trainer: L.Trainer, stage: str, paths: list[Path]) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for path in paths:
                    logger.log_image(
                        key=f"{stage}/alignment/{path.stem}",
                        images=[str(path)],
                        step=trainer.global_step,
                    )
