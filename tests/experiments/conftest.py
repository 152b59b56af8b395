"""Helpers for the experiment-framework tests: the train app as a subprocess on tiny settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Small enough for a 2-core CPU: a random-init ResNet-18 at 32 px, a 1-layer random BERT built
# from the offline MiniLM folder, 64/32/32 synthetic images, 16 pairs per step (4 steps/epoch).
TINY = [
    "experiment=quickstart",
    "model.image_encoder.image_size=32",
    "model.text_encoder.pretrained=false",
    "+model.text_encoder.config_overrides={num_hidden_layers:1,hidden_size:32,"
    "num_attention_heads:2,intermediate_size:64}",
    "dataset=synthetic",
    "dataset.adapter_options.train=64",
    "dataset.adapter_options.val=32",
    "dataset.adapter_options.test=32",
    "dataset.adapter_options.image_size=32",
    "dataset.batch_size=16",
    "dataset.eval_batch_size=32",
    "trainer.max_epochs=1",
    "print_config=false",
    "~callbacks.alignment_plots",
]
# TINY minus the experiment, for composing other experiments on top
TINY_MODEL = [o for o in TINY if not o.startswith("experiment=")] + [
    "model/image_encoder=resnet18_small",
    "model/text_encoder=minilm",
]


def train_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        CLIP_LIGHTNING_LOG_DIR=str(tmp_path / "logs"),
        WANDB_MODE="offline",
        WANDB_DIR=str(tmp_path / "wandb"),
        WANDB_SILENT="true",
        **extra,
    )
    return env


def run_train(
    tmp_path: Path, *overrides: str, check: bool = True, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m clip_lightning.train`` with cwd and the log dir inside ``tmp_path``."""
    proc = subprocess.run(
        [sys.executable, "-m", "clip_lightning.train", *overrides],
        cwd=tmp_path,
        env=train_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def run_dirs(tmp_path: Path, task: str = "quickstart") -> list[Path]:
    return sorted(p for p in (tmp_path / "logs" / task / "runs").glob("*") if p.is_dir())


def read_metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())
