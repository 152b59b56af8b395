"""The config and tokenizer files a checkpoint carries for a tower, handled as data only.

Text towers (and the HF CLIP towers) store the files ``save_pretrained`` writes in their config
(``saved_files``), so a checkpoint rebuilds them offline without the original folder. Read back,
those files come from a file that may have been crafted, so they are a closed set:

* only the file names transformers writes for configs, tokenizers and image processors
  (:data:`CARRIED_NAMES`): plain base names, never a path;
* each at most :data:`MAX_FILE_BYTES`, together at most :data:`MAX_TOTAL_BYTES`;
* no JSON file may hold an ``auto_map`` (transformers' pointer to code shipped with a model);
* they are written into a fresh private temporary folder (mode 0700, removed afterwards) and
  loaded from there with ``trust_remote_code=False`` and ``local_files_only=True``
  (:func:`loading_options`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from clip_lightning.errors import ConfigError
from clip_lightning.models.targets import ValueRule

log = logging.getLogger(__name__)

CARRIED_NAMES = frozenset(
    {
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "spiece.model",
        "sentencepiece.bpe.model",
        "tokenizer.model",
        "preprocessor_config.json",
        "processor_config.json",
    }
)
# the largest tokenizer files in use are ~35 MB (Gemma's tokenizer.json, used by SigLIP 2)
MAX_FILE_BYTES = 64 * 2**20
MAX_TOTAL_BYTES = 128 * 2**20


class CarriedFilesRule(ValueRule):
    """The ``saved_files`` argument of a tower: checked by :func:`check_carried_files`."""

    def check(self, value: Any, key: str) -> None:
        check_carried_files(value, key)


#: A tower's ``saved_files``: file name -> content, checked as described above.
CarriedFiles = Annotated[Mapping[str, bytes], CarriedFilesRule()]


def check_carried_files(files: Mapping[str, bytes], key: str) -> None:
    """Raise :class:`ConfigError` unless ``files`` keeps to the rules of this module."""
    total = 0
    for name, content in files.items():
        if not isinstance(name, str) or name not in CARRIED_NAMES:
            shown = repr(str(name) if len(str(name)) <= 60 else str(name)[:57] + "...")
            raise ConfigError(
                f"{key} holds a file named {shown}; a tower carries only config and tokenizer "
                f"files by base name ({', '.join(sorted(CARRIED_NAMES))})"
            )
        if not isinstance(content, bytes):
            raise ConfigError(f"{key}[{name!r}] must be bytes, got {type(content).__name__}")
        if len(content) > MAX_FILE_BYTES:
            raise ConfigError(
                f"{key}[{name!r}] is {len(content) / 2**20:.0f} MiB, over the "
                f"{MAX_FILE_BYTES // 2**20} MiB a carried file may have"
            )
        total += len(content)
        if name.endswith(".json"):
            _check_json(content, f"{key}[{name!r}]")
    if total > MAX_TOTAL_BYTES:
        raise ConfigError(
            f"{key} carries {total / 2**20:.0f} MiB of files, over {MAX_TOTAL_BYTES // 2**20} MiB"
        )


def _check_json(content: bytes, key: str) -> None:
    try:
        data = json.loads(content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key} is not valid JSON ({type(exc).__name__})") from exc
    if _has_auto_map(data):
        raise ConfigError(
            f"{key} holds an auto_map, which points transformers at code shipped with a "
            "model; carried files are data only"
        )


def _has_auto_map(data: Any) -> bool:
    if isinstance(data, dict):
        return "auto_map" in data or any(_has_auto_map(v) for v in data.values())
    if isinstance(data, list):
        return any(_has_auto_map(v) for v in data)
    return False


def loading_options(local: bool) -> dict[str, bool]:
    """``from_pretrained`` options: never code shipped with a model; ``local`` (a folder of
    carried files): nothing downloaded either."""
    return {"trust_remote_code": False, "local_files_only": local}


@contextmanager
def written_out(files: Mapping[str, bytes], key: str) -> Iterator[str]:
    """``files`` checked and written into a fresh private folder, yielded as its path; the
    folder is removed afterwards."""
    check_carried_files(files, key)
    folder = tempfile.mkdtemp(prefix="clip-lightning-carried-")  # mode 0700
    try:
        for name, content in files.items():
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            descriptor = os.open(os.path.join(folder, name), flags, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def collect(*parts: Any) -> dict[str, bytes]:
    """The files the ``save_pretrained`` of ``parts`` (a config, tokenizer, image processor)
    write, by name: what a checkpoint carries. Files outside :data:`CARRIED_NAMES` are not
    needed to rebuild a tower and are left out."""
    with tempfile.TemporaryDirectory(prefix="clip-lightning-carried-") as folder:
        for part in parts:
            part.save_pretrained(folder)
        files = {path.name: path.read_bytes() for path in sorted(Path(folder).iterdir())}
    left_out = sorted(name for name in files if name not in CARRIED_NAMES)
    if left_out:
        log.debug("not carried in the checkpoint: %s", ", ".join(left_out))
    return {name: content for name, content in files.items() if name in CARRIED_NAMES}
