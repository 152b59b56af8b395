"""Resume: a SIGTERM mid-epoch saves last.ckpt; ckpt_path=last continues to the same result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clip_lightning.cli.task import PREEMPTED_EXIT_CODE
from tests.helpers import (
    PREEMPTED_RUN_OVERRIDES,
    TINY_RUN_OVERRIDES,
    PreemptedRun,
    preempt_and_resume,
    read_metrics,
    run_dirs,
)
from tests.helpers.tasks import train_in_process

# The reference trains what the preempted run does (20 steps per epoch, 2 epochs) without a stop.
RESUME = PREEMPTED_RUN_OVERRIDES
STEPS_PER_EPOCH = 20


@pytest.fixture(scope="module")
def preempted_run(tmp_path_factory: pytest.TempPathFactory) -> PreemptedRun:
    """One run stopped by SIGTERM mid-epoch and resumed, for the tests of its different facts."""
    return preempt_and_resume(tmp_path_factory.mktemp("preempted"))


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_matches_uninterrupted(
    tmp_path: Path, preempted_run: PreemptedRun
) -> None:
    reference = tmp_path / "reference"
    reference.mkdir()
    train_in_process(reference, *RESUME)
    expected = read_metrics(run_dirs(reference)[0])

    # stopped two steps into epoch 2, read from a step marker the run writes
    assert preempted_run.exit_code == PREEMPTED_EXIT_CODE  # a preempted job is not a success
    (first,) = preempted_run.runs_at_stop
    assert not (first / "metrics.json").exists()
    state = torch.load(preempted_run.stopped_checkpoint, map_location="cpu", weights_only=True)
    assert STEPS_PER_EPOCH < state["global_step"] < 2 * STEPS_PER_EPOCH, "not saved mid-epoch"
    assert "RNGStateCheckpoint" in state["callbacks"]

    resumed_dir = run_dirs(preempted_run.root)[-1]
    assert resumed_dir != first
    resumed = read_metrics(resumed_dir)
    final = torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == 2 * STEPS_PER_EPOCH
    # the rest of the interrupted epoch sees a fresh shuffle (the DataLoader is not resumable),
    # so the numbers are close, not bit-identical
    assert resumed["val/rsum"] == pytest.approx(expected["val/rsum"], abs=60.0)
    assert resumed["train/loss"] == pytest.approx(expected["train/loss"], rel=0.25)


@pytest.mark.slow
def test_sigterm_exits_143_keeps_last_ckpt_and_a_killed_save_is_cleaned_on_resume(
    preempted_run: PreemptedRun,
):
    output = preempted_run.output
    assert preempted_run.exit_code == PREEMPTED_EXIT_CODE
    assert "saved" in output and "resume with ckpt_path=last" in output
    assert "Traceback" not in output
    (run,) = preempted_run.runs_at_stop
    checkpoints = run / "checkpoints"
    assert not (run / "metrics.json").exists()
    state = torch.load(preempted_run.stopped_checkpoint, map_location="cpu", weights_only=True)
    assert state["global_step"] >= 20

    # a kill -9 in the middle of a later save left its temporary behind before the resume
    stale, resumed = preempted_run.stale, preempted_run.resumed
    assert not stale.exists()
    assert f"removed {stale}" in resumed.output
    assert (checkpoints / "last.ckpt").is_file()
    assert "val/rsum" in read_metrics(run_dirs(preempted_run.root)[-1])


def test_ckpt_path_last_without_earlier_run_is_one_clear_error(tmp_path: Path) -> None:
    run = train_in_process(tmp_path, *TINY_RUN_OVERRIDES, "ckpt_path=last", check=False)
    assert run.code == 1
    assert "ckpt_path=last found no earlier run" in run.output
    assert "Traceback" not in run.output


@pytest.mark.slow
def test_nan_loss_stops_with_one_line_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    # lr=1e30 blows the weights up at the first step; the second step's loss is NaN.
    run = train_in_process(
        tmp_path,
        *TINY_RUN_OVERRIDES,
        "optimizer.lr=1e30",
        "model.tower_lr.image_encoder=1e30",
        "callbacks.model_checkpoint.monitor=null",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        check=False,
    )
    assert run.code == 1
    assert "non-finite training loss" in run.output and "Traceback" not in run.output
    (run,) = run_dirs(tmp_path)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 1  # saved before the failing step, not after it
    assert all(
        torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point()
    )
