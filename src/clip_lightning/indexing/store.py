"""An index folder, as ``index`` writes it and ``search index=`` reads it.

::

    INDEX/image.index      the faiss index of the image embeddings (text.index: of the captions)
    INDEX/metadata/        the embed output's metadata parts, unchanged (row i = vector id i)
    INDEX/index.json       the model, the embeddings it came from, each index's shape
    INDEX/recall.json      recall@k against exact search on held-out queries, and latencies

This is the folder layout of clip-retrieval's ``clip_index`` (``image.index``, ``text.index``,
``metadata/``). ``index.json`` is data: it is read as JSON and checked field by field.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from clip_lightning.errors import DataError
from clip_lightning.indexing import layout
from clip_lightning.indexing.hits import Hit
from clip_lightning.indexing.vectors import IndexShape, Measurement, set_nprobe

MANIFEST, RECALL = "index.json", "recall.json"


def index_file(folder: Path, field: str) -> Path:
    return folder / f"{field}.index"


def write_index_folder(
    folder: Path,
    embeddings: Path,
    embed_manifest: Mapping[str, Any],
    part_names: Sequence[str],
    built: Mapping[str, tuple[faiss.Index, IndexShape, Measurement]],
) -> None:
    """Write the indexes, the metadata parts, ``recall.json`` and (last) ``index.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until it is rewritten
    metadata = folder / layout.METADATA
    shutil.rmtree(metadata, ignore_errors=True)
    metadata.mkdir()
    for name in part_names:
        source = layout.metadata_file(embeddings, name)
        shutil.copyfile(source, metadata / source.name)
    for field, (index, _, _) in built.items():
        faiss.write_index(index, str(index_file(folder, field)))
    recall = {field: measured.to_dict() for field, (_, _, measured) in built.items()}
    (folder / RECALL).write_text(json.dumps(recall, indent=2) + "\n")
    manifest = {
        "format": 1,
        "model": embed_manifest["model"],
        "checkpoint": embed_manifest.get("checkpoint"),
        "embeddings": str(embeddings),
        "rows": built[next(iter(built))][1].ntotal,
        "indexes": {
            field: {**shape.__dict__, "recall": measured.recall, "k": measured.k}
            for field, (_, shape, measured) in built.items()
        },
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


@dataclass
class IndexFolder:
    """A loaded index folder: one faiss index, the metadata rows, and what made them."""

    folder: Path
    field: str
    index: faiss.Index
    metadata: pa.Table
    model: str
    checkpoint: str | None

    @classmethod
    def load(cls, folder: str | Path, field: str = "image") -> IndexFolder:
        """Read ``folder`` (built by ``python -m clip_lightning.index``), checking its manifest
        and that index and metadata agree; one line for anything that does not fit."""
        folder = Path(folder).expanduser().resolve()
        manifest = _read_manifest(folder)
        indexes = manifest["indexes"]
        if field not in indexes:
            raise DataError(
                f"{folder} has no {field} index (it has {', '.join(indexes)}); build it with "
                f"`python -m clip_lightning.index ... 'index.fields=[{field}]'`"
            )
        index = faiss.read_index(str(index_file(folder, field)))
        nprobe = indexes[field].get("nprobe")
        if isinstance(nprobe, int):
            set_nprobe(index, nprobe)
        parts = sorted((folder / layout.METADATA).glob("*.parquet"))
        metadata = layout.concat_parquet(parts)
        if index.ntotal != metadata.num_rows or index.ntotal != manifest["rows"]:
            raise DataError(
                f"{folder}: the {field} index holds {index.ntotal} vectors but the metadata "
                f"{metadata.num_rows} rows; build the index folder again"
            )
        return cls(folder, field, index, metadata, manifest["model"], manifest["checkpoint"])

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """The ``k`` best rows for each normalised query ``[Q, D]``, best first."""
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        paths = self.metadata.column("image_path")
        captions = (
            self.metadata.column("caption") if "caption" in self.metadata.column_names else None
        )
        results = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            hits: list[Hit] = []
            for score, i in zip(row_scores, row_ids, strict=True):
                if i < 0:  # fewer than k vectors reachable
                    break
                caption = captions[int(i)].as_py() if captions is not None else None
                image = str(paths[int(i)].as_py())
                hits.append(Hit(len(hits) + 1, float(score), image, caption))
            results.append(hits)
        return results


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    hint = "pass index= a folder written by `python -m clip_lightning.index`"
    try:
        manifest = json.loads(path.read_text())
    except OSError as exc:
        raise DataError(f"{folder} has no {MANIFEST} ({exc.strerror}); {hint}") from exc
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); {hint}") from exc
    valid = (
        isinstance(manifest, dict)
        and manifest.get("format") == 1
        and isinstance(manifest.get("model"), str)
        and isinstance(manifest.get("checkpoint"), str | None)
        and isinstance(manifest.get("rows"), int)
        and isinstance(manifest.get("indexes"), dict)
        and all(
            name in layout.FIELDS and isinstance(entry, dict)
            for name, entry in manifest["indexes"].items()
        )
    )
    if not valid:
        raise DataError(f"{path} is not an index manifest of this version; {hint}")
    return manifest
