"""Exact search over a small image folder, its embeddings cached between calls.

Every image of the folder is embedded once into ``embeddings.npy`` + ``manifest.json`` under
``<cache_dir>/<key>/``, the key naming the model and the folder. The cache is reused while the
folder is unchanged -- same file names, sizes and modification times -- so a second search costs
one text embedding per query instead of a pass over every image. It is never written inside the
user's folder, which may be read-only, shared or synced; when the cache folder cannot be written
either, the search still answers and a warning says so.

A manifest is data: it is read as plain JSON and checked field by field, and anything unexpected
(another version, a damaged or edited file) means the folder is embedded again. For collections
beyond a few thousand images, ``embed`` -> ``index`` -> ``search index=`` scale instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from clip_lightning.data.checks import check_policy, decode_all, first_names
from clip_lightning.data.records import FileImage
from clip_lightning.embedding import embed_images
from clip_lightning.errors import DataError
from clip_lightning.indexing.hits import Hit
from clip_lightning.module import CLIPModule

log = logging.getLogger(__name__)

MANIFEST, EMBEDDINGS = "manifest.json", "embeddings.npy"


def list_images(root: Path) -> list[str]:
    """Image files under ``root`` (recursively, hidden folders skipped), relative and sorted."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.lower().endswith(IMG_EXTENSIONS):
                files.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(files)


def digest(*lines: str) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def folder_fingerprint(root: Path, files: Sequence[str]) -> str:
    """Changes whenever a file is added, removed, renamed, resized or touched."""
    lines = []
    for name in files:
        stat = (root / name).stat()
        lines.append(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}")
    return digest(*lines)


def checkpoint_fingerprint(ckpt_path: str | Path) -> str:
    """Path, size and mtime of the checkpoint: cheap, and a re-saved checkpoint gets a new cache."""
    path = Path(ckpt_path).expanduser().resolve()
    stat = path.stat()
    return digest(str(path), str(stat.st_size), str(stat.st_mtime_ns))[:16]


@dataclass
class FolderIndex:
    """Embeddings of the readable images of a folder.

    ``skipped`` lists the image files that could not be decoded (name, reason); ``reused`` says
    whether the embeddings came from the cache.
    """

    root: Path
    files: list[str]
    embeddings: np.ndarray
    reused: bool
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """The ``k`` files most similar to each normalised query embedding ``[Q, D]``, best
        first; equal scores keep the file order."""
        scores = queries @ self.embeddings.T
        results = []
        for row in scores:
            order = np.argsort(-row, kind="stable")[:k]
            results.append(
                [Hit(rank, float(row[i]), self.files[i]) for rank, i in enumerate(order, 1)]
            )
        return results

    def export(self, path: str | Path) -> tuple[Path, Path]:
        """Write the embeddings as ``.npy`` and the matching file list as ``<stem>.files.json``."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, self.embeddings)
        listing = path.with_suffix(".files.json")
        listing.write_text(json.dumps({"root": str(self.root), "files": self.files}, indent=2))
        return path, listing


def describe_skipped(skipped: Sequence[tuple[str, str]], total: int) -> str:
    """E.g. ``2 of 9 image files are unreadable (a.jpg: unreadable (...), ...)``."""
    listed = first_names([f"{name}: {why}" for name, why in skipped])
    return f"{len(skipped)} of {total} image files are unreadable ({listed})"


def apply_folder_policy(
    root: Path, skipped: Sequence[tuple[str, str]], total: int, policy: str
) -> None:
    """``on_bad_image`` for the unreadable files of a folder: stop (``error``, or when none is
    readable) or go on with a warning that names them (``skip``)."""
    check_policy(policy, key="on_bad_image")
    if not skipped:
        return
    summary = f"{root}: {describe_skipped(skipped, total)}"
    if len(skipped) == total:
        raise DataError(f"{summary}; pass images= a folder with readable images")
    if policy == "error":
        raise DataError(f"{summary}; remove or replace them, or pass on_bad_image=skip")
    log.warning("%s; skipped them (on_bad_image=skip; on_bad_image=error stops instead)", summary)


def image_folder(images_dir: str | Path | None) -> tuple[Path, list[str]]:
    """The resolved folder and its image files, or one line saying what is wrong with it."""
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
    return root, files


def build_folder_index(
    model: CLIPModule,
    images_dir: str | Path | None,
    model_fingerprint: str,
    cache_dir: str | Path,
    batch_size: int = 64,
    num_workers: int = 0,
    on_bad_image: str = "skip",
) -> FolderIndex:
    """Load the cached embeddings of ``images_dir`` for this model, or embed the folder.

    Every image file is decoded first (the check training uses); unreadable ones follow
    ``on_bad_image`` (see :func:`apply_folder_policy`) and are listed in
    :attr:`FolderIndex.skipped`.
    """
    root, files = image_folder(images_dir)
    cache = Path(cache_dir).expanduser() / digest(model_fingerprint, str(root))[:16]
    fingerprint = folder_fingerprint(root, files)
    cached = _read_cache(cache, fingerprint, set(files))
    if cached is not None:
        readable, skipped, embeddings = cached
        apply_folder_policy(root, skipped, len(files), on_bad_image)
        return FolderIndex(root, readable, embeddings, True, skipped)
    problems = decode_all([FileImage(root / name) for name in files])
    skipped = [(name, why) for name, why in zip(files, problems, strict=True) if why is not None]
    apply_folder_policy(root, skipped, len(files), on_bad_image)
    readable = [name for name, why in zip(files, problems, strict=True) if why is None]
    embeddings = embed_images(
        model, [root / name for name in readable], batch_size=batch_size, num_workers=num_workers
    ).numpy()
    manifest = {"fingerprint": fingerprint, "root": str(root), "files": readable}
    _write_cache(cache, embeddings, {**manifest, "skipped": skipped})
    return FolderIndex(root, readable, embeddings, False, skipped)


def _read_cache(
    cache: Path, fingerprint: str, listed: set[str]
) -> tuple[list[str], list[tuple[str, str]], np.ndarray] | None:
    """The cached files, skipped files and embeddings if they belong to ``fingerprint``, are
    well-formed and name only files ``listed`` in the folder (a manifest is data: it never
    points a search at a path of its own); None otherwise (the folder is embedded again)."""
    try:
        manifest: Any = json.loads((cache / MANIFEST).read_text())
        if not isinstance(manifest, dict) or manifest.get("fingerprint") != fingerprint:
            return None
        files, skipped = manifest.get("files"), manifest.get("skipped")
        if not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
            return None
        if not (isinstance(skipped, list) and all(_is_pair(s) for s in skipped)):
            return None
        if not {*files, *(name for name, _ in skipped)} <= listed:
            return None
        embeddings = np.load(cache / EMBEDDINGS, allow_pickle=False)
    except (OSError, ValueError):  # none yet, unreadable or damaged
        return None
    if embeddings.ndim != 2 or len(embeddings) != len(files) or embeddings.dtype.kind != "f":
        return None
    return files, [(name, why) for name, why in skipped], embeddings


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


def _write_cache(cache: Path, embeddings: np.ndarray, manifest: dict[str, Any]) -> None:
    """Write the embeddings, then the manifest (its presence means they are complete); a cache
    that cannot be written costs the next call a rebuild, not this one its answer."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / f"partial-{EMBEDDINGS}"
        np.save(partial, embeddings)
        os.replace(partial, cache / EMBEDDINGS)
        (cache / f"partial-{MANIFEST}").write_text(json.dumps(manifest))
        os.replace(cache / f"partial-{MANIFEST}", cache / MANIFEST)
    except OSError as exc:
        log.warning(
            "could not cache the embeddings in %s (%s), so the next search embeds the folder "
            "again; pass cache_dir= a writable folder",
            cache,
            exc.strerror or exc,
        )
