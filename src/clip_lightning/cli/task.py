"""The one wrapper every command-line task goes through.

``@hydra_task("train")`` turns ``fn(cfg) -> result`` into a Hydra entry point over the configs
shipped in the package (``clip_lightning/conf``, so an editable install and a built wheel find
the same files from any working directory). Around the task it sets up the environment and a
quiet console (:mod:`clip_lightning.cli.console`), registers the OmegaConf resolvers, checks the
composed config against the task's schema (:func:`~clip_lightning.cli.config_schema.check_config`),
reports a user error as one line with exit status 1, exits with :data:`PREEMPTED_EXIT_CODE` after
a SIGTERM and :data:`INTERRUPTED_EXIT_CODE` after Ctrl-C, closes the W&B run either way, and
prints the run directory last.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from clip_lightning.checkpoints import LAST
from clip_lightning.cli.config_schema import check_config
from clip_lightning.cli.console import quiet_console
from clip_lightning.cli.dataset_choice import choose_dataset
from clip_lightning.cli.sweep import FailedJob, register_job_name_resolver
from clip_lightning.cli.wandb_run import finish_wandb
from clip_lightning.errors import ClipLightningError, find_cause, find_user_error
from clip_lightning.utils.config import register_resolvers
from clip_lightning.utils.renamed_keys import upgrade_config

log = logging.getLogger(__name__)
Result = TypeVar("Result")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
USER_ERROR_EXIT_CODE = 1
# 128 + SIGTERM, what a shell reports for a process killed by SIGTERM: a preempted run that
# saved last.ckpt must not look successful to `train && next-step` or a requeue script.
PREEMPTED_EXIT_CODE = 143
# 128 + SIGINT: Ctrl-C, with or without a last.ckpt saved
INTERRUPTED_EXIT_CODE = 130


def hydra_task(config_name: str) -> Callable[[Callable[[DictConfig], Result]], Callable[[], None]]:
    """Decorate ``task(cfg)`` into the ``main()`` of ``python -m clip_lightning.<config_name>``.

    ``task`` receives the composed ``conf/<config_name>.yaml``; its return value goes back to
    Hydra (a sweeper optimises it).
    """
    register_resolvers()  # before Hydra composes: configs use ${package_path:...}
    register_job_name_resolver()

    def decorate(task: Callable[[DictConfig], Result]) -> Callable[[], None]:
        @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
        @functools.wraps(task)
        def main(cfg: DictConfig) -> Result:
            return run_task(task, cfg, config_name)

        return main

    return decorate


def run_task(task: Callable[[DictConfig], Result], cfg: DictConfig, name: str) -> Result:
    """Run one task (one job of a sweep) with the config check, error and exit-code policy.

    ``name`` is the entry point (``train``, ``eval``, ...), whose schema checks ``cfg``.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked loader workers
    quiet_console()  # after Hydra configured logging
    try:
        choose_dataset(cfg, name)
        check_config(cfg, name)
        upgrade_config(cfg)  # renamed keys given by their old names
        result = task(cfg)
    except SIGTERMException as exc:  # PreemptionCheckpoint saved last.ckpt and set the code
        code = exc.code if isinstance(exc.code, int) else PREEMPTED_EXIT_CODE
        finish_wandb(exit_code=code)
        sys.exit(code)
    except (KeyboardInterrupt, SystemExit) as exc:
        # Ctrl-C outside the training loop; Lightning turns one inside fit/test into exit(1)
        if not (
            isinstance(exc, KeyboardInterrupt) or isinstance(exc.__context__, KeyboardInterrupt)
        ):
            raise
        finish_wandb(exit_code=INTERRUPTED_EXIT_CODE)
        log.error("stopped by Ctrl-C (SIGINT)%s", what_was_kept(cfg))
        sys.exit(INTERRUPTED_EXIT_CODE)
    except Exception as exc:
        finish_wandb(exit_code=USER_ERROR_EXIT_CODE)  # a failed sweep job must not leave it open
        message = one_line_report(exc, cfg)
        if message is None:
            raise
        log.error("%s", message)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise FailedJob(message) from exc  # the sweeper records it and goes on
        sys.exit(USER_ERROR_EXIT_CODE)
    finish_wandb()
    rank_zero_only(print)(f"Run directory: {run_dir(cfg)}")
    return result


def one_line_report(exc: BaseException, cfg: DictConfig) -> str | None:
    """The one line a user sees for ``exc``, or None for a bug (which keeps its traceback).

    User errors (also wrapped by Hydra's ``instantiate``) give their message, a config value
    that cannot be resolved names its key, a full disk gives where it ran out and where the last
    good checkpoint is.
    """
    user_error = find_user_error(exc)
    if user_error is not None:
        return user_message(user_error)
    unresolved = find_cause(exc, InterpolationResolutionError)
    if unresolved is not None:
        return unresolved_message(unresolved)
    os_error = find_cause(exc, OSError)  # torch's writer raises a RuntimeError from it
    if os_error is None or os_error.errno != errno.ENOSPC:
        return None
    filename = os_error.filename  # set by our writers (checkpoints, results)
    where = f"{Path(filename).parent} (writing {Path(filename).name})" if filename else run_dir(cfg)
    message = f"no space left on {where}{what_was_kept(cfg)}"
    if "callbacks" in cfg:
        return message + "; free space there and resume with ckpt_path=last"
    return message + "; free space there and run again"


def unresolved_message(error: InterpolationResolutionError) -> str:
    """``${oc.env:NAME}`` of an unset variable, ``${a.key}`` that does not exist, ..."""
    detail = (str(error.msg).splitlines() or ["cannot be resolved"])[0]
    detail = detail.rpartition(" raised while resolving interpolation: ")[2].strip("'\"")
    return (
        f"cannot resolve {error.full_key}: {detail}; set what it refers to (the environment "
        f"variable, the key), or give {error.full_key} a plain value"
    )


def what_was_kept(cfg: DictConfig) -> str:
    """For a training run, ``"; last good checkpoint: <file>"`` (or that there is none yet)."""
    if "callbacks" not in cfg:
        return ""
    last = last_good_checkpoint(cfg)
    return f"; last good checkpoint: {last}" if last else "; no checkpoint was saved yet"


def last_good_checkpoint(cfg: DictConfig) -> Path | None:
    """The newest complete ``*.ckpt`` of the run (temporaries of a failed save are hidden);
    ``last.ckpt`` when the best is the same file (a hard link)."""
    folder = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
    folder = Path(folder) if folder else Path(cfg.paths.output_dir) / "checkpoints"
    return max(
        folder.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name == LAST), default=None
    )


def user_message(error: ClipLightningError) -> str:
    """The error's own message on one line.

    An error raised in a DataLoader worker is re-raised by torch with the worker's traceback
    in its message, ending in ``<module>.<ErrorType>: <message>``; only that message is kept.
    """
    text = str(error).strip()
    if "Original Traceback" in text:
        marker = f"{type(error).__name__}: "
        text = text.rpartition(marker)[2] if marker in text else text.splitlines()[-1]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def run_dir(cfg: DictConfig) -> Path:
    """The run directory (Hydra's output dir), created if a caller composed the config itself."""
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path
