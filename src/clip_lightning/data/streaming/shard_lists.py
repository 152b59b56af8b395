"""Shard lists: open_clip's URL syntax expanded to shards, local shards checked before a run,
and the samples they hold counted from the sizes files written next to them."""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import webdataset as wds

from clip_lightning.errors import DataError

SIZES_FILE = "sizes.json"


def expand_sources(
    urls: str | Sequence[str], weights: Sequence[float] | None = None
) -> tuple[list[str], list[float] | None]:
    """Shard URLs of ``"a/{0..9}.tar::b/{0..3}.tar"`` (or a list of sources), and one weight
    per shard: its source's weight (open_clip's upsampling factors), or None without weights."""
    sources = [s for s in (urls.split("::") if isinstance(urls, str) else urls) if s]
    if not sources:
        raise DataError(
            "dataset.urls is empty; set it to shard URLs, e.g. /data/cc3m/{00000..00331}.tar"
        )
    if weights is not None and len(weights) != len(sources):
        raise DataError(
            f"dataset.weights has {len(weights)} value(s) for {len(sources)} source(s) in "
            "dataset.urls (joined with '::'); give one weight per source"
        )
    shards: list[str] = []
    shard_weights: list[float] = []
    for index, source in enumerate(sources):
        expanded = [
            os.path.expanduser(url) if _is_local(url) else url
            for url in wds.shardlists.expand_urls(str(source))
        ]
        shards.extend(expanded)
        if weights is not None:
            shard_weights.extend([float(weights[index])] * len(expanded))
    return shards, (shard_weights if weights is not None else None)


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def check_local_shards(shards: Sequence[str]) -> None:
    """Fail at start-up when local shard files are missing or hold no samples (remote ones are
    opened lazily): a stream over empty shards would look for samples forever."""
    local = [url for url in shards if _is_local(url)]
    missing = [url for url in local if not Path(url).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(shards)} shards do not exist (first: {missing[0]}); check "
            "dataset.urls (brace ranges such as {00000..00331} must match the file names)"
        )
    empty = [url for url in local if _holds_no_files(Path(url))]
    if empty:
        others = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DataError(
            f"shard {empty[0]}{others} holds no samples (an empty tar); remove it from "
            "dataset.urls or write it again"
        )


def _holds_no_files(path: Path) -> bool:
    """An empty file or a tar without members (reads the first header only)."""
    if path.stat().st_size == 0:
        return True
    try:
        with tarfile.open(path) as tar:
            return tar.next() is None
    except tarfile.TarError:
        return False  # not a tar: reported as an unreadable shard when it is read


def count_samples(shards: Sequence[str]) -> int | None:
    """Samples in local ``shards``: ``sizes.json`` next to them (written by
    ``clip_lightning.prepare shards=DIR``, open_clip's convention) or img2dataset's per-shard
    ``*_stats.json``; None when any shard's size is unknown."""
    total = 0
    sizes_by_dir: dict[Path, dict[str, int]] = {}
    for url in shards:
        if not _is_local(url):
            return None
        path = Path(url)
        folder = path.parent
        if folder not in sizes_by_dir:
            sizes_file = folder / SIZES_FILE
            sizes_by_dir[folder] = (
                json.loads(sizes_file.read_text()) if sizes_file.is_file() else {}
            )
        if path.name in sizes_by_dir[folder]:
            total += int(sizes_by_dir[folder][path.name])
            continue
        stats = path.with_name(f"{path.stem}_stats.json")
        if not stats.is_file():
            return None
        total += int(json.loads(stats.read_text())["successes"])
    return total
