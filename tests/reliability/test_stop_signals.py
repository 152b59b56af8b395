"""Stopping a run: Ctrl-C and SIGTERM save ``last.ckpt`` and exit with 128 + the signal, also
while the data loop is stuck; shards that can never yield a sample are one line, not a hang."""

from __future__ import annotations

import logging
import signal
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from clip_lightning.cli.task import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE, run_task
from clip_lightning.cli.train import train
from clip_lightning.data.formats import load_records
from clip_lightning.data.shards import write_shards
from clip_lightning.data.streaming import WebDataModule
from clip_lightning.errors import DataError
from tests.helpers import (
    TINY_RUN_OVERRIDES,
    compose_train,
    run_dirs,
    start_and_signal,
)
from tests.helpers.data import IMAGE_CONFIG, build_karpathy

# the tiny model of TINY_RUN_OVERRIDES on shards: one loader worker, no pinned memory
STREAM_RUN = [o for o in TINY_RUN_OVERRIDES if not o.startswith("dataset")] + [
    "dataset=webdataset",
    "dataset.batch_size=8",
    "dataset.eval_batch_size=8",
    "dataset.num_workers=1",
    "dataset.persistent_workers=false",
    "dataset.pin_memory=false",
    "test=false",
]


def empty_tar(path: Path) -> str:
    with tarfile.open(path, "w"):
        pass  # a valid tar (end-of-archive blocks) with no member
    return str(path)


@pytest.mark.slow
def test_ctrl_c_mid_epoch_saves_last_ckpt_in_one_line_and_exits_130(tmp_path):
    # 160 images / 8 per step: 20 steps an epoch, Ctrl-C after step 2
    overrides = [*TINY_RUN_OVERRIDES, "dataset.adapter_options.train=160", "dataset.batch_size=8"]
    code, output = start_and_signal(tmp_path, overrides, signal.SIGINT, at_step=2)

    assert code == INTERRUPTED_EXIT_CODE, output[-3000:]
    (line,) = [line for line in output.splitlines() if "Ctrl-C" in line]
    (run,) = run_dirs(tmp_path)
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert f"Ctrl-C (SIGINT) at step {state['global_step']}: saved {run}" in line
    assert line.endswith("resume with ckpt_path=last")
    assert 2 <= state["global_step"] < 20 and "optimizer_states" in state
    assert "Traceback" not in output and "KeyboardInterrupt" not in output


@pytest.mark.slow
def test_sigterm_while_the_loader_waits_forever_saves_and_exits_143(tmp_path):
    # a remote shard that is an empty tar: drawn again and again, it never yields a sample
    evaluation = build_karpathy(tmp_path / "flickr", total=12, n_val=2, n_test=2)
    overrides = [
        *STREAM_RUN,
        f"dataset.urls='pipe:cat {empty_tar(tmp_path / 'empty.tar')}'",
        "dataset.train_num_samples=64",
        f"dataset.eval_root={evaluation}",
    ]
    code, output = start_and_signal(tmp_path, overrides, signal.SIGTERM, at_step=0)

    assert code == PREEMPTED_EXIT_CODE, output[-3000:]
    (run,) = run_dirs(tmp_path)
    assert f"SIGTERM at step 0: saved {run / 'checkpoints' / 'last.ckpt'}" in output
    assert "Traceback" not in output
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 0


@pytest.fixture(scope="module")
def good_shards(tmp_path_factory) -> list[str]:
    records = load_records("synthetic", train=16, val=4, test=4, image_size=32, seed=0)
    folder = tmp_path_factory.mktemp("shards")
    write_shards(records, folder, samples_per_shard=8)
    return sorted(str(p) for p in (folder / "train").glob("*.tar"))


def test_an_empty_shard_among_good_ones_is_named_before_training(tmp_path, good_shards):
    empty = empty_tar(tmp_path / "00002.tar")
    module = WebDataModule(
        image_config=IMAGE_CONFIG, urls=[*good_shards, empty], train_num_samples=16
    )
    with pytest.raises(DataError) as info:
        module.load_splits()
    assert str(info.value) == (
        f"shard {empty} holds no samples (an empty tar); remove it from dataset.urls or write "
        "it again"
    )


def test_a_run_on_one_empty_shard_stops_in_one_line(tmp_path, caplog):
    empty = empty_tar(tmp_path / "only.tar")
    overrides = [*STREAM_RUN, f"dataset.urls={empty}", "dataset.train_num_samples=8"]
    cfg = compose_train(overrides, output_dir=tmp_path / "run")
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        run_task(train, cfg, "train")
    assert exit_info.value.code == 1
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert message.startswith(f"shard {empty} holds no samples (an empty tar)")


def test_remote_shards_without_samples_stop_the_stream_instead_of_spinning(tmp_path, good_shards):
    # remote and piped shards are not checked at start-up; exact epochs read them in passes
    empty = empty_tar(tmp_path / "empty.tar")
    module = WebDataModule(
        image_config=IMAGE_CONFIG,
        urls=f"pipe:cat {empty}",
        train_num_samples=8,
        resampled=False,
        batch_size=4,
    )
    with pytest.raises(DataError, match="the shards of worker 0 of rank 0 hold no samples"):
        next(iter(module.train_dataset()))


def ctrl_c_outside_fit(cfg):
    raise KeyboardInterrupt  # e.g. while the model is built


def ctrl_c_in_a_lightning_loop(cfg):
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        sys.exit(1)  # what Lightning does after its own "graceful shutdown"


@pytest.mark.parametrize("task", [ctrl_c_outside_fit, ctrl_c_in_a_lightning_loop])
def test_ctrl_c_outside_the_training_loop_is_one_line_and_exit_130(tiny_cfg, caplog, task):
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        run_task(task, tiny_cfg, "train")
    assert exit_info.value.code == INTERRUPTED_EXIT_CODE
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert message == "stopped by Ctrl-C (SIGINT); no checkpoint was saved yet"
