"""Two gloo ranks on the CPU, forked from the test process.

A forked rank starts with the test process's imports (torch, Lightning, timm, transformers)
already loaded; a spawned one, or one Lightning launches by running the command again, pays them
again: about 10 s of CPU per rank on the 2-core machine, more than the tiny work the ranks do.
Ranks that train through Lightning join each other the way processes started by ``torchrun``
do (:func:`join_as_rank`), so the strategy skips its own launcher and runs the same code path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.multiprocessing as mp
from omegaconf import DictConfig

from clip_lightning.cli.train import train
from clip_lightning.models.text_cache import hash_module_weights
from tests.helpers.tasks import hydra_job, run_in_process

WORLD_SIZE = 2


class RankWeights(L.Callback):
    """Writes a hash of each rank's weights after training, to compare ranks."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = hash_module_weights(pl_module)
        (self.dirpath / f"rank{trainer.global_rank}.txt").write_text(digest)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ranks(
    fn: Callable[..., Any], *args: Any, world_size: int = WORLD_SIZE
) -> mp.ProcessContext:
    """Start ``fn(rank, *args)`` in ``world_size`` forked processes without waiting for them."""
    return mp.start_processes(fn, args=args, nprocs=world_size, start_method="fork", join=False)


def run_ranks(fn: Callable[..., Any], *args: Any, world_size: int = WORLD_SIZE) -> None:
    """Run ``fn(rank, *args)`` in ``world_size`` forked processes and wait for all of them; an
    exception in a rank is raised here with that rank's traceback."""
    context = start_ranks(fn, *args, world_size=world_size)
    while not context.join():
        pass


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


def task_on_ranks(task: Callable[[DictConfig], Any], name: str, root: Path, *overrides: str) -> str:
    """``python -m clip_lightning.<name> *overrides`` in ``root`` on two forked ranks that share
    one run directory, as the ranks Lightning launches share it; each rank runs ``task`` in
    process as :func:`~tests.helpers.tasks.run_in_process` does and must end well. Returns
    what rank 0 logged and printed."""
    with hydra_job(name, list(overrides), root) as cfg:
        run_ranks(_task_rank, task, name, cfg, free_port(), root, False)
    return (root / ".rank0.log").read_text()


def train_on_ranks(root: Path, *overrides: str) -> str:
    """:func:`task_on_ranks` for ``train``."""
    return task_on_ranks(train, "train", root, *overrides)


@contextlib.contextmanager
def ranks_running(
    task: Callable[[DictConfig], Any], name: str, root: Path, *overrides: str
) -> Iterator[list[BaseProcess]]:
    """:func:`task_on_ranks` started in the background: the ranks, each the leader of its own
    process group (with its loader workers) for the test to kill; any still alive when the
    block ends are killed."""
    with hydra_job(name, list(overrides), root) as cfg:
        context = start_ranks(_task_rank, task, name, cfg, free_port(), root, True)
        try:
            yield context.processes
        finally:
            for process in context.processes:
                if process.is_alive():
                    os.killpg(process.pid, signal.SIGKILL)
                process.join()


def _task_rank(
    rank: int,
    task: Callable[[DictConfig], Any],
    name: str,
    cfg: DictConfig,
    port: int,
    root: Path,
    own_group: bool,
) -> None:
    if own_group:
        os.setpgid(0, 0)
    join_as_rank(rank, port)
    run = run_in_process(task, cfg, name)
    (root / f".rank{rank}.log").write_text(run.output)
    assert run.code == 0, f"rank {rank}: {run.output[-3000:]}"
