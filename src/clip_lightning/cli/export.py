"""Export a trained checkpoint: ``python -m clip_lightning.export ckpt_path=PATH format=open_clip
out=DIR`` (or ``format=hf``), optionally ``push_to_hub=user/repo``.

The folder is loaded back by open_clip / transformers and must give the checkpoint's
embeddings before the export counts (:mod:`clip_lightning.export`); its ``README.md`` model
card carries the run's config and recall table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from clip_lightning.cli.loading import load_model
from clip_lightning.cli.task import hydra_task
from clip_lightning.export import ExportError, export_model
from clip_lightning.utils.resume import checkpoint_run_dir


def export(cfg: DictConfig) -> dict[str, Any]:
    """Write ``cfg.ckpt_path`` in ``cfg.format`` into ``cfg.out`` (and push it, if asked)."""
    if not cfg.get("out"):
        raise ExportError("no output folder given; pass out=DIR (a new folder)")
    model = load_model(cfg.ckpt_path)
    out = Path(cfg.out).expanduser()
    run_dir = checkpoint_run_dir(Path(cfg.ckpt_path).expanduser())
    error = export_model(
        model, out, cfg.format, run_dir=run_dir, ignore_crop_pct=cfg.get("ignore_crop_pct", False)
    )
    print(f"Exported {cfg.format} model to {out} (max embedding difference {error:.1e})")
    result = {"format": cfg.format, "out": str(out), "max_embedding_difference": error}
    if cfg.get("push_to_hub"):
        result["url"] = push_to_hub(out, cfg.push_to_hub)
        print(f"Pushed to {result['url']}")
    return result


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Upload ``folder`` to the Hugging Face hub repository ``repo_id`` (created if needed)."""
    from huggingface_hub import create_repo, upload_folder

    create_repo(repo_id, exist_ok=True)
    commit = upload_folder(
        repo_id=repo_id, folder_path=folder, commit_message="clip-lightning export"
    )
    return str(commit.repo_url)


@hydra_task("export")
def main(cfg: DictConfig) -> None:
    export(cfg)
