"""Command-line tasks run in the test process.

``python -m clip_lightning.<task>`` composes its config with Hydra and hands it to
:func:`clip_lightning.cli.task.run_task`, which checks it, runs the task and turns a user error
into one logged line and exit status 1. Calling ``run_task`` here runs the same code on the same
config without a new interpreter (whose imports cost more CPU than a tiny run); the tests in
``tests/e2e`` cover the process itself: exit statuses, console output, signals.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import io
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from clip_lightning.cli.task import CONFIG_DIR, USER_ERROR_EXIT_CODE, run_task
from clip_lightning.cli.train import train
from clip_lightning.utils.config import register_resolvers

# what Hydra's console handler shows of a record (without the time)
LINE_FORMAT = "[%(name)s][%(levelname)s] - %(message)s"


@dataclass(frozen=True)
class TaskRun:
    """How a task ended: the command's exit status, what it logged and printed."""

    code: int  # 0, or the status the task wrapper exits with
    output: str  # the log lines (tracebacks included) and the printed text
    errors: list[str]  # the messages logged at ERROR
    result: Any = None  # the task's return value (None when it exited)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter(LINE_FORMAT))
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run_in_process(task: Callable[[DictConfig], Any], cfg: DictConfig, name: str) -> TaskRun:
    """Run ``task`` on ``cfg`` through the task wrapper of the entry point ``name``, as
    ``python -m clip_lightning.<name>`` does after composing ``cfg``."""
    records = _Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(records)
    root.setLevel(logging.INFO)
    printed = io.StringIO()
    code, result = 0, None
    try:
        with contextlib.redirect_stdout(printed):
            result = run_task(task, cfg, name)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        root.removeHandler(records)
        root.setLevel(level)
    lines = [records.format(record) for record in records.records]
    return TaskRun(
        code=code,
        output="\n".join([*lines, printed.getvalue()]),
        errors=[r.getMessage() for r in records.records if r.levelno >= logging.ERROR],
        result=result,
    )


def one_error_line(task: Callable[[DictConfig], Any], cfg: DictConfig, name: str) -> str:
    """Run ``task`` through the task wrapper; the one error line it logged (exit 1)."""
    run = run_in_process(task, cfg, name)
    assert run.code == USER_ERROR_EXIT_CODE, run.output[-3000:]
    (message,) = run.errors
    assert "\n" not in message
    return message


@functools.lru_cache(maxsize=32)
def _composed(config_name: str, overrides: tuple[str, ...], hydra: bool) -> DictConfig:
    register_resolvers()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=hydra)


def compose_config(
    config_name: str, overrides: Sequence[str] = (), hydra: bool = False
) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides`` as Hydra composes it (with its ``hydra``
    node when ``hydra``), a fresh copy each call: composing takes about half a second, so each
    set of overrides is composed once per process. The copy's interpolations resolve when read,
    as the command's do (the run directory's time and process id included)."""
    return copy.deepcopy(_composed(config_name, tuple(overrides), hydra))


@contextlib.contextmanager
def hydra_job(config_name: str, overrides: list[str], root: Path) -> Iterator[DictConfig]:
    """``conf/<config_name>.yaml`` with ``overrides``, composed as the command run in ``root``
    composes it, and Hydra's view of the job while it runs (what the task reads of Hydra: the
    run directory, the overrides, the chosen groups). Logs go under ``root/logs``, data and
    caches under ``root/data``; the run directory is created."""
    register_resolvers()
    where = {
        "CLIP_LIGHTNING_LOG_DIR": str(root / "logs"),
        "CLIP_LIGHTNING_DATA_DIR": str(root / "data"),
    }
    saved = {key: os.environ.get(key) for key in where}
    os.environ.update(where)
    try:
        cfg = compose_config(config_name, overrides, hydra=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(Path(cfg.hydra.run.dir).absolute())
        Path(cfg.hydra.runtime.output_dir).mkdir(parents=True)
        HydraConfig.instance().set_config(cfg)
        job = copy.deepcopy(cfg)
        with open_dict(job):
            del job.hydra
        # the command's Hydra stays initialized while the task runs: a task may compose again
        # (dataset.root alone picks its dataset group)
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            yield job
    finally:
        HydraConfig.instance().cfg = None
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def task_in_process(
    task: Callable[[DictConfig], Any], name: str, root: Path, *overrides: str, check: bool = True
) -> TaskRun:
    """``python -m clip_lightning.<name> *overrides`` run in ``root``, in this process; with
    ``check``, one that must end well."""
    with hydra_job(name, list(overrides), root) as cfg:
        run = run_in_process(task, cfg, name)
    assert not check or run.code == 0, run.output[-3000:]
    return run


def train_in_process(root: Path, *overrides: str, check: bool = True) -> TaskRun:
    """:func:`task_in_process` for ``train``."""
    return task_in_process(train, "train", root, *overrides, check=check)


@dataclass(frozen=True)
class CommandRun:
    """How a command ended: its exit status and what it wrote to stdout and stderr."""

    code: int
    stdout: str
    stderr: str


def command_in_process(name: str, *args: str, root: Path | None = None) -> CommandRun:
    """``python -m clip_lightning.<name> *args`` in this process: Hydra parses ``args`` (so
    ``--help``, ``--cfg job`` and ``-m`` sweeps work as typed) and configures its logging for
    the jobs, which is undone afterwards. With ``root``, it runs there as :func:`hydra_job`
    says (logs under ``root/logs``, data under ``root/data``)."""
    main = importlib.import_module(f"clip_lightning.cli.{name}").main
    stdout, stderr = io.StringIO(), io.StringIO()
    where = {}
    if root is not None:
        where = {
            "CLIP_LIGHTNING_LOG_DIR": str(root / "logs"),
            "CLIP_LIGHTNING_DATA_DIR": str(root / "data"),
        }
    saved_env = {key: os.environ.get(key) for key in where}
    os.environ.update(where)
    logger = logging.getLogger()
    handlers, level = list(logger.handlers), logger.level
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = [f"clip_lightning.{name}", *args]
    code = 0
    try:
        if root is not None:
            os.chdir(root)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
        os.chdir(cwd)
        HydraConfig.instance().cfg = None
        for handler in set(logger.handlers) - set(handlers):
            handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return CommandRun(code, stdout.getvalue(), stderr.getvalue())
