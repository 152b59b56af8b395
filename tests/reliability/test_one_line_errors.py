"""Faults that ended in a traceback or a misleading message: each is one accurate line and
exit 1, through the task wrapper every command goes through."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import open_dict

from clip_lightning.cli.export import export
from clip_lightning.cli.output_dir import WritableOutputDir
from clip_lightning.cli.task import USER_ERROR_EXIT_CODE, run_task
from clip_lightning.cli.train import train
from tests.helpers import (
    TINY_TRAIN_MODEL_OVERRIDES,
    TINY_TRAIN_OVERRIDES,
    compose_train,
)
from tests.helpers.tasks import compose_config


def one_error_line(caplog: pytest.LogCaptureFixture, task, cfg, name: str) -> str:
    """Run ``task`` through the task wrapper; the one error line it logged (exit 1)."""
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        run_task(task, cfg, name)
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "\n" not in message
    return message


def test_an_override_naming_an_unset_environment_variable(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    cfg = compose_train(
        [*TINY_TRAIN_OVERRIDES, "optimizer.lr=${oc.env:NOPE_NOT_SET}"], output_dir=tmp_path
    )
    assert one_error_line(caplog, train, cfg, "train") == (
        "cannot resolve optimizer.lr: Environment variable 'NOPE_NOT_SET' not found; set what "
        "it refers to (the environment variable, the key), or give optimizer.lr a plain value"
    )


def test_a_checkpoint_path_that_is_a_folder_says_so_and_names_a_file_in_it(tmp_path, caplog):
    run = tmp_path / "runs" / "earlier"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    cfg = compose_train([*TINY_TRAIN_OVERRIDES, f"ckpt_path={run}"], output_dir=tmp_path / "new")
    assert one_error_line(caplog, train, cfg, "train") == (
        f"ckpt_path={run} is a folder, not a checkpoint file; pass a .ckpt file "
        f"(e.g. ckpt_path={run / 'checkpoints' / 'last.ckpt'})"
    )


def test_a_dataset_root_that_is_a_symlink_loop_is_not_called_missing(tmp_path, caplog):
    root, other = tmp_path / "flickr", tmp_path / "flickr-link"
    os.symlink(other, root)
    os.symlink(root, other)
    overrides = [*TINY_TRAIN_MODEL_OVERRIDES, "dataset=flickr30k", f"dataset.root={root}"]
    message = one_error_line(caplog, train, compose_train(overrides, output_dir=tmp_path), "train")
    assert message.startswith(f"dataset.root={root} is a symbolic link loop")
    assert "does not exist" not in message


def test_export_to_an_existing_file_is_refused_before_loading(tmp_path, caplog):
    existing = tmp_path / "model.bin"
    existing.write_bytes(b"weights of something else")
    cfg = compose_config("export", [f"ckpt_path={tmp_path / 'not-read.ckpt'}", f"out={existing}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    message = one_error_line(caplog, export, cfg, "export")
    assert message == f"out='{existing}' is a file; pass a new folder"
    assert existing.read_bytes() == b"weights of something else"


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder no run can write to: read-only permissions, or (for root, who ignores them)
    a place under /sys, where nobody may create anything."""
    if os.geteuid() == 0:
        return Path("/sys/clip-lightning-test/runs")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "runs"


@pytest.mark.parametrize("mode", ["run", "sweep"])
def test_an_unwritable_run_directory_is_one_line_before_hydra_uses_it(tmp_path, caplog, mode):
    folder = unwritable_folder(tmp_path)
    cfg = compose_train(TINY_TRAIN_OVERRIDES, hydra=True)
    with open_dict(cfg):
        cfg.hydra[mode].dir = str(folder / "now")
    # the callback the shipped Hydra config runs before the run (or sweep) starts
    callbacks = [instantiate(c) for c in cfg.hydra.callbacks.values()]
    (callback,) = [c for c in callbacks if isinstance(c, WritableOutputDir)]
    start = callback.on_run_start if mode == "run" else callback.on_multirun_start
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        start(cfg)
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert message.startswith(f"cannot write the run directory {folder / 'now'} (")
    assert f"point hydra.{mode}.dir (or CLIP_LIGHTNING_LOG_DIR" in message
