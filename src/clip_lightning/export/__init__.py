"""Export a trained model to formats other libraries load: ``python -m clip_lightning.export
ckpt_path=PATH format=open_clip|hf out=DIR`` (see :mod:`clip_lightning.cli.export`).

Every export is loaded back by its own library and must reproduce this model's embeddings
(:func:`~clip_lightning.export.faithful.check_faithful`); the folder gets a model card.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from clip_lightning.export.faithful import ExportError, check_faithful
from clip_lightning.export.hf_format import load_hf, write_hf
from clip_lightning.export.model_card import model_card
from clip_lightning.export.open_clip_format import (
    load_open_clip,
    name_text_config_source,
    write_open_clip,
)
from clip_lightning.module import CLIPModule

FORMATS = ("open_clip", "hf")
__all__ = ["FORMATS", "ExportError", "check_out_folder", "export_model"]


def check_out_folder(out: str | Path) -> Path:
    """``out`` as a path, if it can become the export: a new or empty folder."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ExportError(f"out={str(out)!r} is a file; pass a new folder")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"out={str(out)!r} exists and is not empty; pass a new folder")
    return out


def export_model(
    model: CLIPModule,
    out: str | Path,
    format: str = "open_clip",
    run_dir: Path | None = None,
    ignore_crop_pct: bool = False,
    notes: Sequence[str] = (),
    hub_repo: str | None = None,
) -> float:
    """Write ``model`` into the new folder ``out``; returns the largest embedding difference
    of the folder loaded back. On any failure the folder is removed again. ``notes`` go into
    the model card; ``hub_repo`` is the hub repository the folder is going to be uploaded to,
    which the folder then names as its own source (open_clip's ``hf-hub:`` loading)."""
    if format not in FORMATS:
        raise ExportError(f"format={format!r} is unknown; use format=open_clip or format=hf")
    out = check_out_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    try:
        if format == "open_clip":
            written = write_open_clip(model, out, ignore_crop_pct)
            loaded = load_open_clip(out)
        else:
            written = write_hf(model, out)
            loaded = load_hf(out, model.text_encoder.max_length)
        error = check_faithful(model, loaded, format)
        if format == "open_clip":
            written += name_text_config_source(out, hub_repo)
        card = model_card(model, format, out, run_dir, [*notes, *written], hub_repo)
        (out / "README.md").write_text(card)
        make_readable(out)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return error


def make_readable(folder: Path) -> None:
    """Give every file the permissions of a new file (0644 under the usual umask 022): some
    writers (safetensors) create theirs readable by the owner only."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)
