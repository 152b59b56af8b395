"""The files ``embed`` writes, in clip-retrieval's layout, and how they are read back.

::

    OUT/img_emb/img_emb_{part}.npy        [rows, D] float16 or float32, L2-normalised
    OUT/text_emb/text_emb_{part}.npy      the captions' embeddings, row for row
    OUT/metadata/metadata_{part}.parquet  image_path (file path or shard key), caption, shard
    OUT/parts/{part}.json                 written last: the part is complete (rows, bad samples)
    OUT/embed.json                        what produced the parts: model, source, settings

``{part}`` is zero-padded to one width for the whole output, so the order of file names is the
order of parts: clip-retrieval's metadata reader and autofaiss concatenate the files in sorted
name order, and row ``i`` of the embeddings must stay row ``i`` of the metadata.

A part's files are written under temporary names (which neither reader lists), renamed, and then
its ``parts/{part}.json`` is written. A part without that file is unfinished -- a killed run left
it -- and the next run writes it again from scratch, so nothing is ever written twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clip_lightning.errors import DataError

MANIFEST = "embed.json"
SUMMARY = "summary.json"
FIELDS = ("image", "text")
# folder and file-name prefix of each field's embeddings, as clip-retrieval names them
FOLDERS = {"image": "img_emb", "text": "text_emb"}
METADATA = "metadata"
MARKERS = "parts"
# bad samples listed by name in a part's record (all are counted)
LISTED_BAD = 5


def part_name(part: int, num_parts: int) -> str:
    """``part`` zero-padded to the width of the largest part number."""
    return str(part).zfill(len(str(max(num_parts - 1, 0))))


def embedding_file(out: Path, field_name: str, name: str) -> Path:
    folder = FOLDERS[field_name]
    return out / folder / f"{folder}_{name}.npy"


def metadata_file(out: Path, name: str) -> Path:
    return out / METADATA / f"{METADATA}_{name}.parquet"


@dataclass
class PartRecord:
    """What a finished part holds: its rows, and the samples skipped under
    ``on_bad_image=skip`` (counted; the first few named)."""

    rows: int
    bad: int = 0
    first_bad: list[str] = field(default_factory=list)


def write_part(
    out: Path,
    name: str,
    embeddings: Mapping[str, np.ndarray],
    metadata: Mapping[str, Sequence[str | None]],
    record: PartRecord,
) -> None:
    """Write one part's embeddings (``image``/``text``) and metadata columns, then its record."""
    targets = []
    for field_name, array in embeddings.items():
        target = embedding_file(out, field_name, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        with partial.open("wb") as handle:
            np.save(handle, array)
        targets.append((partial, target))
    target = metadata_file(out, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    pq.write_table(pa.table({key: list(values) for key, values in metadata.items()}), partial)
    targets.append((partial, target))
    for partial, target in targets:
        os.replace(partial, target)
    marker = out / MARKERS / f"{name}.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    partial = marker.with_name(f".{marker.name}.partial")
    partial.write_text(json.dumps(asdict(record)))
    os.replace(partial, marker)


def read_part_record(out: Path, name: str) -> PartRecord | None:
    """The record of a finished part, None for an unfinished one (or a damaged record)."""
    try:
        data = json.loads((out / MARKERS / f"{name}.json").read_text())
        record = PartRecord(
            rows=int(data["rows"]), bad=int(data["bad"]), first_bad=list(data["first_bad"])
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if record.rows < 0 or not all(isinstance(item, str) for item in record.first_bad):
        return None
    return record


def finished_parts(out: Path, names: Iterable[str], fields: Sequence[str]) -> dict[str, PartRecord]:
    """The parts of ``names`` whose record and files are all on disk."""
    done = {}
    for name in names:
        record = read_part_record(out, name)
        files = [embedding_file(out, f, name) for f in fields] + [metadata_file(out, name)]
        if record is not None and all(path.is_file() for path in files):
            done[name] = record
    return done


# manifest keys that say where things were, not what was computed: they may change on resume
INFORMATIONAL = ("checkpoint",)


def check_manifest(out: Path, manifest: Mapping[str, Any]) -> None:
    """Start or continue the output ``out``: write ``manifest`` there, or check that the one
    already there (an earlier, perhaps killed, run) describes the same embedding job.

    Every rank calls this with the same manifest; the writes are atomic and identical.
    """
    path = out / MANIFEST
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except ValueError as exc:
            raise DataError(
                f"{path} is not valid JSON ({exc}); pass a new out= folder, or remove {out}"
            ) from exc
        differing = [
            key
            for key in manifest
            if key not in INFORMATIONAL
            and (not isinstance(existing, dict) or existing.get(key) != manifest[key])
        ]
        if differing:
            key = differing[0]
            found = existing.get(key) if isinstance(existing, dict) else existing
            raise DataError(
                f"out={out} holds embeddings of another job ({key}: {found!r} there, "
                f"{manifest[key]!r} now); pass a new out= folder, or remove {out} to start over"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(dict(manifest), indent=2) + "\n")
    os.replace(partial, path)


def read_manifest(out: Path) -> dict[str, Any]:
    """The manifest of a finished ``embed`` output, or one line saying what is wrong with it."""
    path = out / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except OSError as exc:
        raise DataError(
            f"{out} has no {MANIFEST} ({exc.strerror}); pass embeddings= the out= folder of "
            "`python -m clip_lightning.embed`"
        ) from exc
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); run embed again") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("parts"), int):
        raise DataError(f"{path} is not an embed manifest; run embed again")
    return manifest


def part_names(manifest: Mapping[str, Any]) -> list[str]:
    return [part_name(p, manifest["parts"]) for p in range(manifest["parts"])]


def check_complete(out: Path, manifest: Mapping[str, Any]) -> list[str]:
    """The part names of a complete output, or one line naming the unfinished parts."""
    names = part_names(manifest)
    done = finished_parts(out, names, manifest["fields"])
    missing = [name for name in names if name not in done]
    if missing:
        raise DataError(
            f"{out}: {len(missing)} of {len(names)} parts are unfinished (first: {missing[0]}); "
            "run the same embed command again to finish them"
        )
    return names


def load_embeddings(out: Path, field_name: str, names: Sequence[str]) -> np.ndarray:
    """One field's embeddings of all parts, concatenated in part order, as float32."""
    arrays = [np.load(embedding_file(out, field_name, n), allow_pickle=False) for n in names]
    return np.concatenate(arrays).astype(np.float32, copy=False)


def load_metadata(out: Path, names: Sequence[str]) -> pa.Table:
    """The metadata rows of all parts, in part order (row ``i`` belongs to embedding ``i``)."""
    return concat_parquet([metadata_file(out, name) for name in names])


def concat_parquet(paths: Sequence[Path]) -> pa.Table:
    """The rows of parquet files, in the given order (an empty part adds none)."""
    tables = [pq.read_table(path) for path in paths]
    return pa.concat_tables(tables, promote_options="permissive")


def read_summary(out: Path) -> dict[str, Any]:
    """The ``summary.json`` the last ``embed`` run wrote (rows, parts, bad samples)."""
    summary: dict[str, Any] = json.loads((out / SUMMARY).read_text())
    return summary
