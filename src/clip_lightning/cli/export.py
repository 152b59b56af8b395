"""Export a trained checkpoint: ``python -m clip_lightning.export ckpt_path=PATH format=open_clip
out=DIR`` (or ``format=hf``), optionally ``push_to_hub=user/repo``.

The folder is loaded back by open_clip / transformers and must give the checkpoint's
embeddings before the export counts (:mod:`clip_lightning.export`); its ``README.md`` model
card carries the run's config and recall table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from clip_lightning.checkpoints import checkpoint_run_dir
from clip_lightning.cli.loading import load_model
from clip_lightning.cli.task import hydra_task
from clip_lightning.export import ExportError, check_out_folder, export_model
from clip_lightning.models.lora import merged
from clip_lightning.wise_ft import WeightSpaceEnsemble


def export(cfg: DictConfig) -> dict[str, Any]:
    """Write ``cfg.ckpt_path`` (or its WiSE-FT interpolation at ``cfg.wise_ft.alpha``) in
    ``cfg.format`` into ``cfg.out`` (and push it, if asked)."""
    if not cfg.get("out"):
        raise ExportError("no output folder given; pass out=DIR (a new folder)")
    out = check_out_folder(cfg.out)  # before the checkpoint is loaded
    model = merged(load_model(cfg.ckpt_path))  # LoRA adapters folded into the weights
    run_dir: Path | None = checkpoint_run_dir(Path(cfg.ckpt_path).expanduser())
    notes = []
    alpha = OmegaConf.select(cfg, "wise_ft.alpha")
    if alpha is not None:  # WiSE-FT: the interpolated weights instead of the checkpoint's
        model = WeightSpaceEnsemble(model, cfg.wise_ft.get("base")).at(float(alpha))
        notes.append(
            f"WiSE-FT weights: (1 - {alpha:g}) x pretrained + {alpha:g} x {cfg.ckpt_path}; the "
            "training run's figures describe the fine-tuned checkpoint, not these weights"
        )
        run_dir = None
    error = export_model(
        model,
        out,
        cfg.format,
        run_dir=run_dir,
        ignore_crop_pct=cfg.get("ignore_crop_pct", False),
        notes=notes,
        hub_repo=cfg.get("push_to_hub"),
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
