"""Unit tests of the resume pieces: atomic writes, RNG state, ckpt_path resolution."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from clip_lightning.callbacks import RNGStateCheckpoint
from clip_lightning.checkpoints import resolve_ckpt_path
from clip_lightning.errors import CheckpointError
from clip_lightning.plugins import AtomicCheckpointIO


def test_atomic_write_keeps_old_file_when_saving_fails(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)
    with pytest.raises(Exception):  # noqa: B017 - pickling errors vary in type
        io.save_checkpoint({"step": 2, "bad": lambda: None}, target)
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


def test_rng_state_round_trip_through_weights_only_load(tmp_path: Path) -> None:
    callback = RNGStateCheckpoint()
    torch.save(callback.state_dict(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    callback.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def _fake_run(runs: Path, name: str) -> Path:
    ckpt = runs / name / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    return ckpt


def test_last_picks_newest_other_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    old = _fake_run(runs, "a")
    new = _fake_run(runs, "b")
    current = _fake_run(runs, "c")
    for age, ckpt in ((30, old), (20, new), (0, current)):
        stamp = ckpt.stat().st_mtime - age
        os.utime(ckpt, (stamp, stamp))
    assert resolve_ckpt_path("last", None, runs, runs / "c") == new
    assert resolve_ckpt_path(None, str(runs / "a"), runs, runs / "c") == old
    assert resolve_ckpt_path(None, None, runs, runs / "c") is None


def test_missing_resume_targets_raise_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="resume_dir"):
        resolve_ckpt_path("last", str(tmp_path / "nope"), tmp_path, tmp_path / "c")
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_ckpt_path(str(tmp_path / "x.ckpt"), None, tmp_path, tmp_path / "c")
