"""The W&B logger passes wandb only the settings a run asked for."""

from __future__ import annotations

from pathlib import Path

from clip_lightning.loggers import WandbLogger


def test_wandb_logger_does_not_pass_an_unset_anonymous(tmp_path: Path) -> None:
    # wandb warns "The anonymous setting has no effect ..." whenever the key reaches wandb.init
    assert "anonymous" not in WandbLogger(offline=True, save_dir=str(tmp_path))._wandb_init
    explicit = WandbLogger(offline=True, save_dir=str(tmp_path), anonymous=True)
    assert explicit._wandb_init["anonymous"] == "allow"
