"""The security corpus: one real tiny checkpoint, and every crafted variant of it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clip_lightning.cli.loading import build_datamodule
from clip_lightning.models.targets import build
from tests.helpers import compose_train, quiet_trainer
from tests.helpers.security import (
    CASES,
    SECURITY_OVERRIDES,
    Targets,
    write_case,
    write_targets,
)


@pytest.fixture(scope="session")
def good_checkpoint(tmp_path_factory) -> Path:
    """``<run>/checkpoints/last.ckpt`` of a one-step run (full training state)."""
    run = tmp_path_factory.mktemp("security-run")
    cfg = compose_train(SECURITY_OVERRIDES, output_dir=run)
    model = build(cfg.model, "model")
    trainer = quiet_trainer(run, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=build_datamodule(cfg.dataset, model))
    path = run / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def targets(tmp_path_factory) -> Targets:
    return write_targets(tmp_path_factory.mktemp("security-targets"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, good_checkpoint: Path, targets: Targets) -> dict[str, Path]:
    """Each crafted case as ``cases/<name>.ckpt`` and as the ``last.ckpt`` (a link to it) of
    the run directory ``runs/<name>``, for ``resume_dir=``."""
    root = tmp_path_factory.mktemp("security-corpus")
    good = torch.load(good_checkpoint, map_location="cpu", weights_only=True)
    paths = {}
    for name in CASES:
        path = write_case(name, good, targets, root / "cases" / f"{name}.ckpt")
        (root / "runs" / name / "checkpoints").mkdir(parents=True)
        (root / "runs" / name / "checkpoints" / "last.ckpt").symlink_to(path)
        paths[name] = path
    return paths
