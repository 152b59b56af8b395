"""Run faults as a user hits them: preemption, a killed save, a full disk, runs started together,
errors from loader workers. Each checks the exit code, the one line the user reads, and that no
checkpoint was lost."""

from __future__ import annotations

import errno
import io
import logging
import os
import socket
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from clip_lightning.cli.search import search
from clip_lightning.cli.task import run_task, user_message
from clip_lightning.cli.train import train
from clip_lightning.errors import DataError
from clip_lightning.plugins import remove_stale_temporaries
from tests.helpers import (
    TINY_RUN_OVERRIDES,
    TINY_TRAIN_OVERRIDES,
    compose_train,
    dead_pid,
    read_metrics,
    run_dirs,
)
from tests.helpers.distributed import start_ranks
from tests.helpers.tasks import compose_config, task_in_process, train_in_process


def test_only_temporaries_of_dead_processes_on_this_host_are_removed(tmp_path):
    host = socket.gethostname()
    dead = tmp_path / f".last.ckpt.tmp-{host}-{dead_pid()}"
    alive = tmp_path / f".epoch_001.ckpt.tmp-{host}-{os.getpid()}"
    elsewhere = tmp_path / f".last.ckpt.tmp-other-node-{dead_pid()}"
    checkpoint = tmp_path / "last.ckpt"
    for path in (dead, alive, elsewhere, checkpoint):
        path.write_bytes(b"x")
    assert remove_stale_temporaries([tmp_path, tmp_path / "missing"]) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (alive, elsewhere, checkpoint)
    )


@pytest.mark.parametrize("resume", ["ckpt_path=last", "resume_dir={killed}"])
def test_a_first_save_killed_outright_is_cleaned_by_the_next_resume(tmp_path, caplog, resume):
    # kill -9 during the run's first save: an empty temporary and no last.ckpt
    killed = tmp_path / "runs" / "killed"
    stale = killed / "checkpoints" / f".epoch_000.ckpt.tmp-{socket.gethostname()}-{dead_pid()}"
    stale.parent.mkdir(parents=True)
    stale.touch()
    # composed as the CLI does: resuming looks next to Hydra's run directory
    new = tmp_path / "runs" / "new"
    cfg = compose_train([*TINY_TRAIN_OVERRIDES, resume.format(killed=killed)], hydra=True)
    with open_dict(cfg):
        cfg.hydra.run.dir = str(new)
        HydraConfig.instance().set_config(cfg)
        del cfg.hydra
        cfg.paths.output_dir = cfg.paths.log_dir = str(new)
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as exit_info:
        run_task(train, cfg, "train")

    assert exit_info.value.code == 1  # nothing to resume from: one line says so
    assert not stale.exists()
    messages = [r.getMessage() for r in caplog.records]
    assert f"removed {stale}, left by a checkpoint save that was killed" in messages
    assert "last.ckpt" in messages[-1]


def test_disk_full_during_a_save_names_the_folder_and_the_last_good_checkpoint(
    tiny_cfg, tmp_path, monkeypatch, caplog
):
    real_save = torch.save
    saves = []

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        saves.append(f.name)
        if len(saves) == 1:  # epoch 1: epoch_000.ckpt fits, last.ckpt is a link to it
            return real_save(obj, f, *args, **kwargs)
        # part of the file made it to disk; torch's writer turns the write error into
        # "RuntimeError: [enforce fail at inline_container.cc] unexpected pos"
        return real_save(obj, FullDisk(f, room=4096), *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    tiny_cfg.trainer.max_epochs = 2
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        run_task(train, tiny_cfg, "train")

    assert exit_info.value.code == 1
    checkpoints = tmp_path / "checkpoints"
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert message.startswith(f"no space left on {checkpoints} (writing ")
    assert f"last good checkpoint: {checkpoints / 'last.ckpt'}" in message
    assert "\n" not in message
    # the failed save left nothing behind, and the last good checkpoint is whole
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    state = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 0 and state["global_step"] > 0


class FullDisk(io.RawIOBase):
    """A file that takes ``room`` more bytes, then fails like a full disk."""

    def __init__(self, file: io.BufferedIOBase, room: int):
        self.file, self.room = file, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            self.file.write(bytes(data[: self.room]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)


def test_disk_full_writing_results_names_the_file_and_keeps_the_checkpoints(
    tiny_cfg, tmp_path, monkeypatch, caplog
):
    real_write_text = Path.write_text

    def full_for_metrics(path: Path, *args, **kwargs):
        if path.name == "metrics.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_for_metrics)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        run_task(train, tiny_cfg, "train")

    assert exit_info.value.code == 1
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    checkpoints = tmp_path / "checkpoints"
    assert message.startswith(f"no space left on {tmp_path} (writing metrics.json)")
    assert "last good checkpoint: " in message and str(checkpoints) in message
    state = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] > 0  # the trained weights are on disk, whole


def _fast_dev_run(index: int, root: Path) -> None:
    train_in_process(root, *TINY_RUN_OVERRIDES, "trainer.fast_dev_run=true")


@pytest.mark.slow
def test_runs_started_together_get_their_own_run_directories(tmp_path):
    # two processes forked at once, each composing its config and training as the command does
    runs = start_ranks(_fast_dev_run, tmp_path)
    pids = [process.pid for process in runs.processes]
    while not runs.join():  # raises if a run failed
        pass
    dirs = run_dirs(tmp_path)
    # one directory per process, named after it: unique by construction, not by timing
    assert sorted(d.name.rsplit("_", 1)[1] for d in dirs) == sorted(str(pid) for pid in pids)
    assert all("test/rsum" in read_metrics(d) for d in dirs)


def test_search_k_abc_is_one_line_and_exit_1(tmp_path):
    query = ["ckpt_path=model.ckpt", "images=photos", "query=a dog", "k=abc"]
    run = task_in_process(search, "search", tmp_path, "accelerator=cpu", *query, check=False)
    output = run.output
    assert run.code == 1
    (line,) = [line for line in output.splitlines() if "ERROR" in line]
    assert "k='abc' must be" in line
    assert "Traceback" not in output


@pytest.mark.parametrize("k", [0, -1])
def test_search_k_below_1_is_one_line_and_exit_1(tmp_path, caplog, k):
    cfg = compose_config("search", ["ckpt_path=model.ckpt", "images=photos", "query=q", f"k={k}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        run_task(search, cfg, "search")
    assert exit_info.value.code == 1
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert message.startswith(f"k={k} must be") and "\n" not in message


def test_search_skips_a_file_that_is_not_an_image_and_names_it(tiny_checkpoint, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, colour in enumerate(("red", "green", "blue")):
        Image.new("RGB", (40, 40), colour).save(photos / f"{i}.png")
    (photos / "notes.jpg").write_text("a text file with an image name")
    query = [f"ckpt_path={tiny_checkpoint}", f"images={photos}", "query=a red square", "k=2"]

    run = task_in_process(search, "search", tmp_path, "accelerator=cpu", *query)
    output = run.output
    assert "1 of 4 image files are unreadable (notes.jpg: " in output
    assert "Built the index of 3 images" in output and "1 unreadable skipped" in output
    assert "Top 2 images for" in output and "│    2 │" in output

    run = task_in_process(
        search, "search", tmp_path, "accelerator=cpu", *query, "on_bad_image=error", check=False
    )
    output = run.output
    assert run.code == 1
    assert "notes.jpg" in output and "on_bad_image=skip" in output
    assert "Traceback" not in output and "Top 2" not in output


class _BadImages(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        raise DataError("image 'a.jpg' is truncated; fix it or set dataset.on_bad_image=skip")


def test_an_error_from_a_loader_worker_is_reported_as_its_own_message():
    with pytest.raises(DataError) as error:
        next(iter(DataLoader(_BadImages(), num_workers=1)))
    assert "Traceback" in str(error.value)  # torch re-raises it with the worker's traceback
    assert user_message(error.value) == (
        "image 'a.jpg' is truncated; fix it or set dataset.on_bad_image=skip"
    )
