"""The prediction writer of ``embed``: each rank writes the parts it embedded, whole.

Lightning's ``BasePredictionWriter`` receives every predicted batch on the rank that embedded it;
nothing is gathered across ranks. The batches of one part come from one DataLoader worker, in
order, so a part is buffered until its final batch arrives and then written with
:func:`~clip_lightning.indexing.layout.write_part`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from clip_lightning.indexing.layout import PartRecord, part_name, write_part


class _PartBuffer:
    """The embeddings and metadata of one part, batch after batch."""

    def __init__(self, fields: Sequence[str], columns: Sequence[str]) -> None:
        self.embeddings: dict[str, list[np.ndarray]] = {f: [] for f in fields}
        self.metadata: dict[str, list[str | None]] = {c: [] for c in columns}

    def add(self, prediction: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> None:
        for name, chunks in self.embeddings.items():
            if name in prediction:
                chunks.append(prediction[name].float().cpu().numpy())
        for column, values in self.metadata.items():
            values.extend(batch[column])


class EmbeddingWriter(BasePredictionWriter):
    """Writes each part of ``num_parts`` under ``out`` when its last batch is embedded.

    ``fields`` are the embeddings written (``image``, ``text``), ``columns`` the metadata
    columns, ``dtype`` the stored float type. ``written`` lists this rank's parts.
    """

    def __init__(
        self,
        out: Path,
        num_parts: int,
        fields: Sequence[str],
        columns: Sequence[str],
        dim: int,
        dtype: str = "float16",
    ) -> None:
        super().__init__(write_interval="batch")
        self.out, self.num_parts, self.fields, self.columns = out, num_parts, fields, columns
        self.dim, self.dtype = dim, np.dtype(dtype)
        self.buffers: dict[int, _PartBuffer] = {}
        self.written: list[str] = []

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        part = batch["part"]
        buffer = self.buffers.setdefault(part, _PartBuffer(self.fields, self.columns))
        buffer.add(prediction, batch)
        if not batch["last"]:
            return
        del self.buffers[part]
        rows = len(buffer.metadata[self.columns[0]])
        embeddings = {
            name: (np.concatenate(chunks) if chunks else np.empty((0, self.dim))).astype(self.dtype)
            for name, chunks in buffer.embeddings.items()
        }
        name = part_name(part, self.num_parts)
        record = PartRecord(rows=rows, bad=batch["bad"], first_bad=list(batch["first_bad"]))
        write_part(self.out, name, embeddings, buffer.metadata, record)
        self.written.append(name)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.buffers:  # a stream stopped inside a part: the data loader is broken
            raise RuntimeError(f"parts {sorted(self.buffers)} ended without their last batch")
        trainer.strategy.barrier("embed_written")  # every rank's parts are on disk
