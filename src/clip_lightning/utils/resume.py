"""Resuming: find the checkpoint behind ``ckpt_path=last`` and the W&B run to continue.

Every run gets a fresh Hydra run directory; a resumed run reads its checkpoint from an earlier
one. ``ckpt_path=last`` picks ``checkpoints/last.ckpt`` of the most recent run of the same
``task_name`` (newest ``last.ckpt`` under ``<log_dir>/<task_name>/runs/``), or of ``resume_dir``
when given. Any other value is used as a checkpoint path.
"""

from __future__ import annotations

from pathlib import Path

from clip_lightning.errors import CheckpointError

LAST = "last.ckpt"
WANDB_ID_FILE = "wandb_run_id"


def find_last_checkpoint(runs_dir: Path, exclude: Path | None = None) -> Path | None:
    """The most recently written ``*/checkpoints/last.ckpt`` under ``runs_dir``."""
    candidates = [
        ckpt
        for ckpt in runs_dir.glob(f"*/checkpoints/{LAST}")
        if exclude is None or ckpt.parents[1].resolve() != exclude.resolve()
    ]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def resolve_ckpt_path(
    ckpt_path: str | None, resume_dir: str | None, runs_dir: Path, run_dir: Path
) -> Path | None:
    """Turn the ``ckpt_path`` / ``resume_dir`` settings into an existing checkpoint file.

    ``resume_dir`` alone means ``ckpt_path=last`` inside that run directory.
    """
    if ckpt_path is None and resume_dir is None:
        return None
    if ckpt_path in (None, "last"):
        if resume_dir is not None:
            found = Path(resume_dir) / "checkpoints" / LAST
            if not found.is_file():
                raise CheckpointError(
                    f"no checkpoints/{LAST} in resume_dir={resume_dir}; point resume_dir at a run "
                    "directory (the one holding checkpoints/), or pass ckpt_path=<file>"
                )
            return found
        found = find_last_checkpoint(runs_dir, exclude=run_dir)
        if found is None:
            raise CheckpointError(
                f"ckpt_path=last found no earlier run with checkpoints/{LAST} under {runs_dir}; "
                "check task_name (resuming looks in that task's runs), or pass "
                "resume_dir=<run dir> or ckpt_path=<file>"
            )
        return found
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={ckpt_path} does not exist; pass an existing .ckpt file")
    return path


def checkpoint_run_dir(ckpt: Path) -> Path:
    """The run directory a checkpoint was written in (``<run>/checkpoints/x.ckpt``)."""
    return ckpt.resolve().parents[1]


def read_wandb_id(run_dir: Path) -> str | None:
    """The W&B run id an earlier run stored, so a resume continues the same W&B run."""
    path = run_dir / WANDB_ID_FILE
    return path.read_text().strip() if path.is_file() else None


def write_wandb_id(run_dir: Path, run_id: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / WANDB_ID_FILE).write_text(run_id + "\n")
