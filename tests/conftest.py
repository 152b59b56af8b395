"""Session setup (offline hubs and W&B) and shared fixtures; helpers live in tests/helpers/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from tests.helpers import (
    TINY_TRAIN_OVERRIDES,
    compose_train,
    save_tiny_checkpoint,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One compute thread per process (the subprocess runs inherit it): `make test` runs two xdist
# workers on two cores, and a second thread per worker only makes the workers' threads wait on
# each other (a tiny run took twice the CPU time with two threads).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def tiny_cfg(tmp_path) -> DictConfig:
    """The tiny quickstart config with outputs under ``tmp_path``."""
    return compose_train(TINY_TRAIN_OVERRIDES, output_dir=tmp_path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the tiny quickstart model after one step, shared by the whole session."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with a ``slow`` test first, each module kept in one piece: ``make test`` hands
    whole modules to the xdist workers in this order (``--dist loadscope``, so a module's
    fixtures are built once), and a long module that starts last would leave the other worker
    idle until it ends."""
    slow_modules = {item.module for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module not in slow_modules)
