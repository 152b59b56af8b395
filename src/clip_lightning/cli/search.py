"""Text-to-image search: ``python -m clip_lightning.search ckpt_path=PATH images=DIR query=...``.

Several queries per call (``'query=[a dog,a cat]'`` or ``queries_file=FILE``, one per line) are
embedded in one batch and answered together: a table per query, ``search_results.json`` and a
grid of the best images in the run directory. The folder's embeddings are cached by
:mod:`clip_lightning.indexing.folder` under ``cache_dir`` (the data directory by default).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, ListConfig
from rich.console import Console
from rich.table import Table

from clip_lightning import plots
from clip_lightning.cli.loading import load_model, resolve_device
from clip_lightning.cli.task import hydra_task, run_dir
from clip_lightning.data.records import FileImage, load_rgb
from clip_lightning.embedding import embed_texts
from clip_lightning.errors import ClipLightningError, DataError
from clip_lightning.indexing.folder import FolderIndex, build_folder_index, checkpoint_fingerprint
from clip_lightning.indexing.hits import Hit
from clip_lightning.module import CLIPModule
from clip_lightning.utils.results import write_json

log = logging.getLogger(__name__)

# rows of the results grid: a long queries_file gets its first ones drawn
MAX_GRID_QUERIES = 16


def read_queries(query: str | list[str] | ListConfig | None, queries_file: str | None) -> list[str]:
    """The queries of ``query`` (one or a list) followed by the non-empty lines of
    ``queries_file``."""
    queries = [query] if isinstance(query, str) else [str(q) for q in query or []]
    if queries_file:
        path = Path(queries_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(
                f"cannot read queries_file {str(path)!r} ({exc}); pass a UTF-8 text file with "
                "one query per line"
            ) from exc
        queries += lines
    return [q.strip() for q in queries if q.strip()]


def print_hits(query: str, hits: list[Hit]) -> None:
    table = Table(title=f"Top {len(hits)} images for {query!r}")
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    table.add_column("image")
    if any(hit.caption for hit in hits):
        table.add_column("caption")
    for hit in hits:
        caption = [hit.caption or ""] if any(h.caption for h in hits) else []
        table.add_row(str(hit.rank), f"{hit.score:.4f}", hit.image, *caption)
    Console().print(table)


def draw_grid(queries: list[str], results: list[list[Hit]], root: Path, path: Path) -> None:
    """One row per query (the first :data:`MAX_GRID_QUERIES`), its best images from ``root``."""
    shown = list(zip(queries, results, strict=True))[:MAX_GRID_QUERIES]
    k = min(len(hits) for _, hits in shown)
    images = [load_rgb(FileImage(root / hit.image)) for _, hits in shown for hit in hits[:k]]
    # each row ranks its own k images, laid out one block of k per query
    scores = np.full((len(shown), len(images)), -np.inf)
    for row, (_, hits) in enumerate(shown):
        scores[row, row * k : (row + 1) * k] = [hit.score for hit in hits[:k]]
    plots.text_to_image_grid(
        [query for query, _ in shown],
        scores,
        images,
        path,
        k=k,
        labels=[hit.image for _, hits in shown for hit in hits[:k]],
    )


def folder_index(cfg: DictConfig) -> tuple[FolderIndex, CLIPModule]:
    """The folder's index and the model that embeds the queries."""
    model = load_model(cfg.ckpt_path, resolve_device(cfg.accelerator))
    cache_dir = cfg.cache_dir
    if cfg.get("index_dir"):
        log.warning("index_dir= is renamed cache_dir=; index_dir= stops working in 0.2")
        cache_dir = cfg.index_dir
    index = build_folder_index(
        model,
        cfg.images,
        checkpoint_fingerprint(cfg.ckpt_path),
        cache_dir,
        cfg.batch_size,
        cfg.num_workers,
        cfg.on_bad_image,
    )
    return index, model


def search(cfg: DictConfig) -> list[tuple[str, list[Hit]]]:
    """Answer every query of ``cfg`` over the folder ``cfg.images`` (and/or export its
    embeddings); returns the hits of each query."""
    queries = read_queries(cfg.query, cfg.queries_file)
    if not queries and not cfg.export:
        raise ClipLightningError(
            "nothing to do: pass query=\"some text\" (or 'query=[one,two]', or queries_file=FILE) "
            "and/or export=FILE.npy"
        )
    index, model = folder_index(cfg)
    skipped = f", {len(index.skipped)} unreadable skipped" if index.skipped else ""
    print(
        f"{'Reused' if index.reused else 'Built'} the index of {len(index.files)} images "
        f"in {index.root}{skipped}"
    )
    if cfg.export:
        array, listing = index.export(cfg.export)
        print(f"Exported embeddings {index.embeddings.shape} to {array} (files: {listing})")
    if not queries:
        return []
    results = index.search(embed_texts(model, queries).numpy(), cfg.k)
    for query, hits in zip(queries, results, strict=True):
        print_hits(query, hits)
    out = run_dir(cfg)
    write_json(
        out / "search_results.json",
        {
            "images": str(index.root),
            "k": cfg.k,
            "results": [
                {"query": query, "hits": [hit.to_dict() for hit in hits]}
                for query, hits in zip(queries, results, strict=True)
            ],
        },
    )
    draw_grid(queries, results, index.root, out / "search_results.png")
    drawn = "" if len(queries) <= MAX_GRID_QUERIES else f" (first {MAX_GRID_QUERIES} queries)"
    print(f"Results: {out / 'search_results.json'}; grid{drawn}: {out / 'search_results.png'}")
    return list(zip(queries, results, strict=True))


@hydra_task("search")
def main(cfg: DictConfig) -> None:
    search(cfg)
