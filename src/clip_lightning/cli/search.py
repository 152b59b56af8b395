"""Text-to-image search: ``python -m clip_lightning.search ckpt_path=PATH images=DIR query=...``
over a folder, or ``python -m clip_lightning.search index=DIR query=...`` over an index built by
``clip_lightning.index`` (any size; the model is the checkpoint embed used, unless given).

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
from clip_lightning.cli.eval_model import load_eval_model, model_identity
from clip_lightning.cli.loading import resolve_device
from clip_lightning.cli.task import hydra_task, run_dir
from clip_lightning.data.records import FileImage, load_rgb
from clip_lightning.embedding import embed_texts
from clip_lightning.errors import ClipLightningError, DataError
from clip_lightning.indexing.folder import FolderIndex, build_folder_index, checkpoint_fingerprint
from clip_lightning.indexing.hits import Hit
from clip_lightning.indexing.store import IndexFolder
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


def folder_index(cfg: DictConfig, model: CLIPModule) -> FolderIndex:
    """The embeddings of the folder ``cfg.images``, cached or built."""
    cache_dir = cfg.cache_dir
    if cfg.get("index_dir"):
        log.warning("index_dir= is renamed cache_dir=; index_dir= stops working in 0.2")
        cache_dir = cfg.index_dir
    fingerprint = (
        checkpoint_fingerprint(cfg.ckpt_path) if cfg.ckpt_path else model_identity(cfg)["model"]
    )
    index = build_folder_index(
        model,
        cfg.images,
        fingerprint,
        cache_dir,
        cfg.batch_size,
        cfg.num_workers,
        cfg.on_bad_image,
    )
    skipped = f", {len(index.skipped)} unreadable skipped" if index.skipped else ""
    print(
        f"{'Reused' if index.reused else 'Built'} the index of {len(index.files)} images "
        f"in {index.root}{skipped}"
    )
    return index


def index_model(cfg: DictConfig, folder: IndexFolder) -> CLIPModule:
    """The model that embedded the indexed collection: ``ckpt_path=`` / ``model=`` when given
    (refused if it is another model), else the checkpoint the index names."""
    if not cfg.ckpt_path and cfg.get("model") is None:
        if folder.checkpoint is None:
            raise ClipLightningError(
                f"{folder.folder} was built with a pretrained pair; pass the same model=... "
                "overrides as to embed"
            )
        cfg = cfg.copy()
        cfg.ckpt_path = folder.checkpoint
    if not cfg.get("model") and not Path(cfg.ckpt_path).expanduser().is_file():
        raise ClipLightningError(
            f"checkpoint {cfg.ckpt_path!r} does not exist; pass ckpt_path= the checkpoint that "
            "embed used"
        )
    if model_identity(cfg)["model"] != folder.model:
        used = folder.checkpoint or "a pretrained pair"
        raise ClipLightningError(
            f"{folder.folder} holds embeddings of another model ({used}), so its neighbours "
            "would be meaningless for these queries; pass the model embed used (ckpt_path= or "
            "model=...), or embed and index again"
        )
    return load_eval_model(cfg, resolve_device(cfg.accelerator)).model


def search(cfg: DictConfig) -> list[tuple[str, list[Hit]]]:
    """Answer every query of ``cfg`` over the folder ``cfg.images`` or the built index
    ``cfg.index`` (a folder's embeddings can also be exported); returns each query's hits."""
    queries = read_queries(cfg.query, cfg.queries_file)
    if not queries and not cfg.export:
        raise ClipLightningError(
            "nothing to do: pass query=\"some text\" (or 'query=[one,two]', or queries_file=FILE) "
            "and/or export=FILE.npy"
        )
    if cfg.index and (cfg.images or cfg.export):
        raise ClipLightningError(
            "pass index=DIR (a built index) or images=DIR (a folder, which export= writes), "
            "not both"
        )
    root: Path | None = None
    if cfg.index:
        collection = IndexFolder.load(cfg.index)
        model = index_model(cfg, collection)
        source = {"index": str(collection.folder)}
        search_fn = collection.search
    else:
        model = load_eval_model(cfg, resolve_device(cfg.accelerator)).model
        folder = folder_index(cfg, model)
        if cfg.export:
            array, listing = folder.export(cfg.export)
            print(f"Exported embeddings {folder.embeddings.shape} to {array} (files: {listing})")
        root, source, search_fn = folder.root, {"images": str(folder.root)}, folder.search
    if not queries:
        return []
    results = search_fn(embed_texts(model, queries).numpy(), cfg.k)
    for query, hits in zip(queries, results, strict=True):
        print_hits(query, hits)
    out = run_dir(cfg)
    write_json(
        out / "search_results.json",
        {
            **source,
            "k": cfg.k,
            "results": [
                {"query": query, "hits": [hit.to_dict() for hit in hits]}
                for query, hits in zip(queries, results, strict=True)
            ],
        },
    )
    print(f"Results: {out / 'search_results.json'}")
    drawable = all(
        (root / hit.image if root else Path(hit.image)).is_file()
        for hits in results[:MAX_GRID_QUERIES]
        for hit in hits
    )
    if drawable and all(results):  # shard keys are not files: no grid for them
        draw_grid(queries, results, root or Path("/"), out / "search_results.png")
        drawn = "" if len(queries) <= MAX_GRID_QUERIES else f" (first {MAX_GRID_QUERIES} queries)"
        print(f"Grid{drawn}: {out / 'search_results.png'}")
    return list(zip(queries, results, strict=True))


@hydra_task("search")
def main(cfg: DictConfig) -> None:
    search(cfg)
