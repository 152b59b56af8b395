"""Two gloo ranks on the CPU, forked from the test process.

A forked rank starts with the test process's imports (torch, Lightning, timm, transformers)
already loaded; a spawned one, or one Lightning launches by running the command again, pays them
again: about 10 s of CPU per rank on the 2-core machine, more than the tiny work the ranks do.
Ranks that train through Lightning join each other the way processes started by ``torchrun``
do (:func:`join_as_rank`), so the strategy skips its own launcher and runs the same code path.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from omegaconf import DictConfig

from clip_lightning.cli.train import train
from tests.helpers.tasks import hydra_job, run_in_process

WORLD_SIZE = 2


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(fn: Callable[..., Any], *args: Any, world_size: int = WORLD_SIZE) -> None:
    """Run ``fn(rank, *args)`` in ``world_size`` forked processes and wait for all of them; an
    exception in a rank is raised here with that rank's traceback."""
    mp.start_processes(fn, args=args, nprocs=world_size, start_method="fork")


def join_as_rank(rank: int, port: int, world_size: int = WORLD_SIZE) -> None:
    """Set the environment ``torchrun`` gives rank ``rank`` of a run on this machine: Lightning
    then joins the other ranks instead of launching its own, and one compute thread each."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world_size),
        NODE_RANK="0",
        LOCAL_RANK=str(rank),
        RANK=str(rank),
    )
    torch.set_num_threads(1)


def train_on_ranks(root: Path, *overrides: str) -> None:
    """``python -m clip_lightning.train *overrides`` in ``root``, run in-process as
    :func:`~tests.helpers.tasks.train_in_process` runs it, on two forked ranks that share one
    run directory, as the ranks Lightning launches share it."""
    with hydra_job("train", list(overrides), root) as cfg:
        run_ranks(_train_rank, cfg, free_port())


def _train_rank(rank: int, cfg: DictConfig, port: int) -> None:
    join_as_rank(rank, port)
    run = run_in_process(train, cfg, "train")
    assert run.code == 0, f"rank {rank}: {run.output[-3000:]}"
