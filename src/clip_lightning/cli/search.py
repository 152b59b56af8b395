"""Text-to-image search: ``python -m clip_lightning.search ckpt_path=PATH images=DIR query=...``.

A folder is embedded once into an index (``embeddings.npy`` + ``files.json``) cached under
``<index_dir>/<checkpoint fingerprint>/``. The index is reused while the folder is unchanged --
same file names, sizes and modification times -- and the checkpoint is the same file, so a
second query costs one text embedding instead of a pass over every image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from torchvision.datasets.folder import IMG_EXTENSIONS

from clip_lightning import plots
from clip_lightning.cli.loading import load_model, resolve_device
from clip_lightning.cli.task import hydra_task, run_dir
from clip_lightning.data.checks import POLICIES, decode_all
from clip_lightning.data.records import FileImage, load_rgb
from clip_lightning.embedding import embed_images, embed_texts
from clip_lightning.errors import ClipLightningError, DataError
from clip_lightning.module import CLIPModule

log = logging.getLogger(__name__)

INDEX_DIRNAME = ".clip_lightning_index"


def list_images(root: Path) -> list[str]:
    """Image files under ``root`` (recursively, hidden folders skipped), relative and sorted."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.lower().endswith(IMG_EXTENSIONS):
                files.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(files)


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def folder_fingerprint(root: Path, files: list[str]) -> str:
    """Changes whenever a file is added, removed, renamed, resized or touched."""
    lines = []
    for name in files:
        stat = (root / name).stat()
        lines.append(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}")
    return _digest(lines)


def checkpoint_fingerprint(ckpt_path: str | Path) -> str:
    """Path, size and mtime of the checkpoint: cheap, and a re-saved checkpoint gets a new index."""
    path = Path(ckpt_path).expanduser().resolve()
    stat = path.stat()
    return _digest([str(path), str(stat.st_size), str(stat.st_mtime_ns)])[:16]


@dataclass
class ImageIndex:
    """Embeddings of the readable images of a folder.

    ``skipped`` lists the image files that could not be decoded (name, reason); ``reused`` says
    whether the embeddings came from the cache.
    """

    root: Path
    files: list[str]
    embeddings: np.ndarray
    reused: bool
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def search(self, text_embedding: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The ``k`` files most similar to a normalised text embedding, best first."""
        scores = self.embeddings @ text_embedding
        order = np.argsort(-scores, kind="stable")[:k]
        return [(self.files[i], float(scores[i])) for i in order]

    def export(self, path: str | Path) -> tuple[Path, Path]:
        """Write the embeddings as ``.npy`` and the matching file list as ``<stem>.files.json``."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, self.embeddings)
        listing = path.with_suffix(".files.json")
        listing.write_text(json.dumps({"root": str(self.root), "files": self.files}, indent=2))
        return path, listing


def describe_skipped(skipped: list[tuple[str, str]], total: int, limit: int = 5) -> str:
    """E.g. ``2 of 9 image files are unreadable (a.jpg: unreadable (...), ...)``."""
    shown = ", ".join(f"{name}: {why}" for name, why in skipped[:limit])
    more = ", ..." if len(skipped) > limit else ""
    return f"{len(skipped)} of {total} image files are unreadable ({shown}{more})"


def build_index(
    model: CLIPModule,
    images_dir: str | Path | None,
    model_fingerprint: str,
    index_dir: str | Path | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    on_bad_image: str = "skip",
) -> ImageIndex:
    """Load the cached index of ``images_dir`` for this model, or embed the folder and cache it.

    Every image file is decoded first (the check training uses); unreadable ones are skipped
    and listed in :attr:`ImageIndex.skipped` (``on_bad_image="skip"``) or stop the build
    (``"error"``).
    """
    if on_bad_image not in POLICIES:
        raise ClipLightningError(f"on_bad_image={on_bad_image!r}; choose one of {POLICIES}")
    if not images_dir:
        raise DataError("no image folder given; pass images=DIR")
    root = Path(images_dir).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist; pass images=DIR")
    files = list_images(root)
    if not files:
        raise DataError(
            f"no images in {str(root)!r} (looked for {', '.join(IMG_EXTENSIONS)}); "
            "pass images= a folder that holds image files"
        )
    cache = Path(index_dir).expanduser() if index_dir else root / INDEX_DIRNAME
    cache = cache / model_fingerprint
    fingerprint = folder_fingerprint(root, files)
    manifest, array = cache / "files.json", cache / "embeddings.npy"
    if manifest.is_file() and array.is_file():
        cached = json.loads(manifest.read_text())
        if cached.get("fingerprint") == fingerprint and "skipped" in cached:
            skipped = [(name, why) for name, why in cached["skipped"]]
            _apply_policy(root, skipped, len(files), on_bad_image)
            return ImageIndex(root, cached["files"], np.load(array), True, skipped)
    problems = decode_all([FileImage(root / name) for name in files])
    skipped = [(name, why) for name, why in zip(files, problems, strict=True) if why is not None]
    _apply_policy(root, skipped, len(files), on_bad_image)
    readable = [name for name, why in zip(files, problems, strict=True) if why is None]
    embeddings = embed_images(
        model, [root / name for name in readable], batch_size=batch_size, num_workers=num_workers
    ).numpy()
    cache.mkdir(parents=True, exist_ok=True)
    np.save(array, embeddings)
    # the manifest is written last: its presence means the embeddings are complete
    manifest.write_text(
        json.dumps({"fingerprint": fingerprint, "files": readable, "skipped": skipped})
    )
    return ImageIndex(root, readable, embeddings, False, skipped)


def _apply_policy(root: Path, skipped: list[tuple[str, str]], total: int, policy: str) -> None:
    if not skipped:
        return
    summary = f"{root}: {describe_skipped(skipped, total)}"
    if len(skipped) == total:
        raise DataError(f"{summary}; pass images= a folder with readable images")
    if policy == "error":
        raise DataError(f"{summary}; remove or replace them, or pass on_bad_image=skip")
    log.warning("%s; skipped them (on_bad_image=skip; on_bad_image=error stops instead)", summary)


def search(cfg: DictConfig) -> list[tuple[str, float]]:
    """Build or reuse the index, then answer ``cfg.query`` and/or export the embeddings."""
    if not cfg.query and not cfg.export:
        raise ClipLightningError('nothing to do: pass query="some text" and/or export=FILE.npy')
    model = load_model(cfg.ckpt_path, resolve_device(cfg.accelerator))
    index = build_index(
        model,
        cfg.images,
        checkpoint_fingerprint(cfg.ckpt_path),
        cfg.index_dir,
        cfg.batch_size,
        cfg.num_workers,
        cfg.on_bad_image,
    )
    skipped = f", {len(index.skipped)} unreadable skipped" if index.skipped else ""
    print(
        f"{'Reused' if index.reused else 'Built'} the index of {len(index.files)} images "
        f"in {index.root}{skipped}"
    )
    if cfg.export:
        array, listing = index.export(cfg.export)
        print(f"Exported embeddings {index.embeddings.shape} to {array} (files: {listing})")
    if not cfg.query:
        return []
    query = embed_texts(model, [str(cfg.query)])[0].numpy()
    hits = index.search(query, cfg.k)
    table = Table(title=f"Top {len(hits)} images for {cfg.query!r}")
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    table.add_column("file")
    for rank, (name, value) in enumerate(hits, start=1):
        table.add_row(str(rank), f"{value:.4f}", name)
    Console().print(table)
    grid = run_dir(cfg) / "search_results.png"
    plots.text_to_image_grid(
        [str(cfg.query)],
        np.array([[value for _, value in hits]]),
        [load_rgb(FileImage(index.root / name)) for name, _ in hits],
        grid,
        k=len(hits),
        labels=[name for name, _ in hits],
    )
    print(f"Grid: {grid}")
    return hits


@hydra_task("search")
def main(cfg: DictConfig) -> None:
    search(cfg)
