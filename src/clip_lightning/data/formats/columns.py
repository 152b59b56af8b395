"""Which column of a table holds what: the one lookup shared by the CSV and Hugging Face formats.

A column the user names in ``dataset.columns`` must exist; a key left null is found by the
names people commonly give it (open_clip's ``filepath``/``title``, HF's ``image``/``caption``,
img2dataset's ``jpg``/``txt``, ...). Image and caption are required, the split and image-id
columns optional. Every problem of every table is reported in one message, so a user fixes
them in one run instead of one per run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clip_lightning.errors import DataError

log = logging.getLogger(__name__)

# dataset.columns keys -> the names such a column commonly has, the preferred first.
COMMON_NAMES: dict[str, tuple[str, ...]] = {
    "image": ("image", "img", "jpg", "png", "filepath", "file_path", "image_path", "path", "file"),
    "caption": ("caption", "captions", "text", "txt", "title", "sentence", "sentences"),
    "split": ("split",),
    "image_id": ("image_id", "img_id", "imgid"),
}
REQUIRED = ("image", "caption")

Columns = dict[str, str | None]


def resolve_columns(
    tables: Mapping[str, Sequence[str]],
    requested: Mapping[str, str | None],
    keys: Sequence[str],
    image_columns: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Columns]:
    """The column of each key in ``keys`` for every table (name -> its column names).

    ``requested`` holds what the user set in ``dataset.columns`` (None: find it by name).
    ``image_columns`` names, per table, columns known to hold images (a HF ``Image``
    feature); they win over names. Raises one :class:`DataError` listing every problem.
    """
    unknown = sorted(key for key, name in requested.items() if key not in keys and name)
    if unknown:
        raise DataError(f"unknown dataset.columns key(s) {unknown}; the keys are {', '.join(keys)}")
    found: dict[str, Columns] = {}
    problems: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for where, available in tables.items():
        images = (image_columns or {}).get(where, ())
        found[where], issues = _find(available, requested, keys, images)
        if issues:
            problems.setdefault((tuple(available), tuple(issues)), []).append(where)
    if problems:
        raise DataError(
            " | ".join(
                f"{', '.join(wheres)} (columns {list(available)}): {'; '.join(issues)}"
                for (available, issues), wheres in problems.items()
            )
        )
    _log_found(found, requested)
    return found


def _find(
    available: Sequence[str],
    requested: Mapping[str, str | None],
    keys: Sequence[str],
    image_columns: Sequence[str],
) -> tuple[Columns, list[str]]:
    by_lower = {name.lower(): name for name in reversed(available)}  # the first spelling wins
    found: Columns = {}
    problems: list[str] = []
    for key in keys:
        name = requested.get(key)
        if name is not None:
            if name not in available:
                problems.append(
                    f"no column {name!r} (dataset.columns.{key}); set dataset.columns.{key}="
                    "<one of the columns>" + ("" if key in REQUIRED else " or null")
                )
            found[key] = name
            continue
        candidates = [*image_columns] if key == "image" else []
        candidates += [by_lower[n] for n in COMMON_NAMES.get(key, ()) if n in by_lower]
        found[key] = candidates[0] if candidates else None
        if found[key] is None and key in REQUIRED:
            problems.append(
                f"no {key} column (none is named {'/'.join(COMMON_NAMES[key])}); "
                f"set dataset.columns.{key}=<one of the columns>"
            )
    return found, problems


def caption_cell(value: Any) -> list[object]:
    """The captions in one cell: a string, a list of strings (also a parquet array), or
    Karpathy-style ``[{"raw": ...}]``. Values are passed on as they are: ``make_record``
    reports the ones that are not text."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, str) or not isinstance(value, list | tuple):
        return [value]
    return [v.get("raw") if isinstance(v, Mapping) else v for v in value]


def _log_found(found: Mapping[str, Columns], requested: Mapping[str, str | None]) -> None:
    """One info line per distinct choice of columns that were found by name, not set."""
    lines = {
        ", ".join(f"{k}={v!r}" for k, v in columns.items() if requested.get(k) is None and v)
        for columns in found.values()
    }
    for line in sorted(lines - {""}):
        log.info("using columns %s (set dataset.columns.<key> to choose others)", line)
