"""Index an embed output: ``python -m clip_lightning.index embeddings=DIR out=INDEX_DIR``.

Builds a faiss index per field (``index.fields``, images by default) with
:mod:`clip_lightning.indexing.vectors`, measures its recall@k against exact search on held-out
queries -- the collection's caption embeddings when it has them (the queries text-to-image
search answers), else a sample of the indexed vectors -- and writes the folder
``search index=`` reads (:mod:`clip_lightning.indexing.store`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from clip_lightning.cli.task import hydra_task
from clip_lightning.errors import DataError
from clip_lightning.indexing import layout
from clip_lightning.indexing.store import RECALL, write_index_folder
from clip_lightning.indexing.vectors import build_and_measure, choose_shape, parse_memory

OTHER = {"image": "text", "text": "image"}


def held_out_queries(
    embeddings: Path,
    manifest: dict[str, Any],
    names: list[str],
    field: str,
    vectors: np.ndarray,
    count: int,
    seed: int,
) -> tuple[np.ndarray, str]:
    """Up to ``count`` queries for the ``field`` index and what they are."""
    rng = np.random.default_rng(seed)
    other = OTHER[field]
    if other in manifest["fields"]:
        pool, source = layout.load_embeddings(embeddings, other, names), f"{other} embeddings"
    else:
        pool, source = vectors, f"indexed {field} embeddings"
    chosen = rng.choice(len(pool), min(count, len(pool)), replace=False)
    return pool[np.sort(chosen)], source


def index(cfg: DictConfig) -> dict[str, Any]:
    """Build the indexes of ``cfg.embeddings`` into ``cfg.out``; returns the recall report."""
    if not cfg.embeddings:
        raise DataError("pass embeddings= the out= folder of `python -m clip_lightning.embed`")
    if not cfg.out:
        raise DataError("pass out=INDEX_DIR, the folder to write the index to")
    embeddings = Path(cfg.embeddings).expanduser().resolve()
    out = Path(cfg.out).expanduser().resolve()
    manifest = layout.read_manifest(embeddings)
    names = layout.check_complete(embeddings, manifest)
    options = cfg.index
    missing = [f for f in options.fields if f not in manifest["fields"]]
    if missing:
        held = ", ".join(manifest["fields"])
        raise DataError(
            f"{embeddings} holds no {missing[0]} embeddings (only {held}); "
            f"pass 'index.fields=[{manifest['fields'][0]}]' or embed with fields=[image,text]"
        )
    built = {}
    for field in options.fields:
        vectors = layout.load_embeddings(embeddings, field, names)
        if not len(vectors):
            raise DataError(f"{embeddings} holds no {field} embeddings (0 rows); nothing to index")
        queries, source = held_out_queries(
            embeddings, manifest, names, field, vectors, options.recall_queries, options.seed
        )
        shape = choose_shape(
            len(vectors),
            vectors.shape[1],
            options.kind,
            options.flat_below,
            parse_memory(options.max_memory),
            options.nlist,
        )
        built[field] = build_and_measure(
            vectors, queries, shape, options.k, options.target_recall, source, seed=options.seed
        )
    write_index_folder(out, embeddings, manifest, names, built)
    report = {field: measured.to_dict() for field, (_, _, measured) in built.items()}
    table = Table(title=f"Index {out}")
    for column in ("field", "index", "vectors", "build s", "recall", "ms/query", "exact ms/query"):
        table.add_column(column, justify="left" if column in ("field", "index") else "right")
    for field, (_, shape, measured) in built.items():
        table.add_row(
            field,
            shape.describe(),
            str(shape.ntotal),
            f"{measured.build_seconds:.1f}",
            f"{measured.recall:.3f}",
            f"{measured.index_ms_per_query:.3f}",
            f"{measured.exact_ms_per_query:.3f}",
        )
    table.caption = "; ".join(
        f"{field}: recall@{m.k} against exact search on {m.queries} {m.query_source}"
        for field, (_, _, m) in built.items()
    )
    Console().print(table)
    print(f"Recall: {out / RECALL}")
    return report


@hydra_task("index")
def main(cfg: DictConfig) -> None:
    index(cfg)
