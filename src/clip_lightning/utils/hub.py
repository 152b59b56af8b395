"""Hugging Face hub access decided once per process: online, or local files only.

Offline, every hub client (timm, transformers, datasets, open_clip) otherwise retries each file
five times with back-off and logs every try: a minute of warnings before the first error. Here
one quick probe (skipped when ``HF_HUB_OFFLINE`` is already set) decides, and offline mode is
switched on for every client of this process and of the processes it starts (DDP ranks).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import datasets
import httpx
import huggingface_hub
from huggingface_hub import constants

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0


@functools.cache
def offline_reason() -> str | None:
    """Why the hub is not used (``HF_HUB_OFFLINE`` is set, or one HEAD request failed), or
    None when it answers. Not reachable switches this process to local files only
    (:func:`use_local_files_only`)."""
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        httpx.head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S, follow_redirects=True)
    except httpx.HTTPError as exc:
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        log.info("the Hugging Face hub is not reachable (%s): using local files only", detail)
        use_local_files_only()
        return f"the Hugging Face hub is not reachable ({detail})"
    return None


def use_local_files_only() -> None:
    """Offline mode for the hub clients of this process and its children, without retries."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True  # read at call time by huggingface_hub and transformers
    datasets.config.HF_HUB_OFFLINE = True  # datasets copies the flag at import


def cached_file(repo_id: str, filenames: tuple[str, ...], repo_type: str = "model") -> bool:
    """Whether one of ``filenames`` of the hub repo is in the local cache."""
    return any(
        isinstance(huggingface_hub.try_to_load_from_cache(repo_id, name, repo_type=repo_type), str)
        for name in filenames
    )


def cached_dataset(hub_id: str) -> bool:
    """Whether a copy of the hub dataset ``hub_id`` is cached (hub files or prepared arrow)."""
    hub_copy = Path(constants.HF_HUB_CACHE) / f"datasets--{hub_id.replace('/', '--')}"
    prepared = Path(datasets.config.HF_DATASETS_CACHE) / hub_id.replace("/", "___")
    return hub_copy.is_dir() or prepared.is_dir()
