"""Resume: a SIGTERM mid-epoch saves last.ckpt; ckpt_path=last continues to the same result."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clip_lightning.cli.task import PREEMPTED_EXIT_CODE
from tests.helpers import (
    REPO_ROOT,
    TINY_RUN_OVERRIDES,
    read_metrics,
    run_dirs,
    run_train,
    step_marker_overrides,
    train_env,
)

# 160 train images / 8 per step = 20 steps per epoch, 2 epochs; no test pass, no early stop.
# The job is stopped two steps into epoch 2, read from a step marker the run writes.
RESUME = [
    *TINY_RUN_OVERRIDES,
    "dataset.adapter_options.train=160",
    "dataset.batch_size=8",
    "trainer.max_epochs=2",
    "test=false",
]
STEPS_PER_EPOCH = 20


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    reference.mkdir()
    run_train(reference, *RESUME)
    expected = read_metrics(run_dirs(reference)[0])

    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    marker = interrupted / "global_step"
    proc = subprocess.Popen(
        [sys.executable, "-m", "clip_lightning.train", *RESUME, *step_marker_overrides(marker)],
        cwd=interrupted,
        env=train_env(interrupted, PYTHONPATH=str(REPO_ROOT)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not marker.is_file() or int(marker.read_text() or 0) < STEPS_PER_EPOCH + 2:
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before epoch 2"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == PREEMPTED_EXIT_CODE  # a preempted job is not a success
    (first,) = run_dirs(interrupted)
    assert not (first / "metrics.json").exists()
    state = torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert STEPS_PER_EPOCH < state["global_step"] < 2 * STEPS_PER_EPOCH, "not saved mid-epoch"
    assert "RNGStateCheckpoint" in state["callbacks"]

    run_train(interrupted, *RESUME, "ckpt_path=last")
    resumed_dir = run_dirs(interrupted)[-1]
    assert resumed_dir != first
    resumed = read_metrics(resumed_dir)
    final = torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == 2 * STEPS_PER_EPOCH
    # the rest of the interrupted epoch sees a fresh shuffle (the DataLoader is not resumable),
    # so the numbers are close, not bit-identical
    assert resumed["val/rsum"] == pytest.approx(expected["val/rsum"], abs=60.0)
    assert resumed["train/loss"] == pytest.approx(expected["train/loss"], rel=0.25)


def test_ckpt_path_last_without_earlier_run_is_one_clear_error(tmp_path: Path) -> None:
    proc = run_train(tmp_path, *TINY_RUN_OVERRIDES, "ckpt_path=last", check=False)
    assert proc.returncode == 1
    assert "ckpt_path=last found no earlier run" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_nan_loss_stops_with_one_line_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    # lr=1e30 blows the weights up at the first step; the second step's loss is NaN.
    proc = run_train(
        tmp_path,
        *TINY_RUN_OVERRIDES,
        "optimizer.lr=1e30",
        "model.tower_lr.image_encoder=1e30",
        "callbacks.model_checkpoint.monitor=null",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "non-finite training loss" in output and "Traceback" not in output
    (run,) = run_dirs(tmp_path)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 1  # saved before the failing step, not after it
    assert all(
        torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point()
    )
