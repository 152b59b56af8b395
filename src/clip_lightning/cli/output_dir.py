"""A run directory that cannot be written is one line, before Hydra tries to use it."""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from clip_lightning.cli.task import USER_ERROR_EXIT_CODE

log = logging.getLogger(__name__)


class WritableOutputDir(Callback):
    """Checks that ``hydra.run.dir`` (``hydra.sweep.dir`` for ``-m``) can be created and
    written, and exits with status 1 and one line if not.

    Hydra creates that folder and opens the run's log file in it before the task starts, so a
    read-only or unwritable place (the log dir, ``CLIP_LIGHTNING_LOG_DIR``, ``hydra.run.dir=``)
    ended in Hydra's traceback of ``mkdir`` or of its logging set-up. The folder's name holds
    ``${now:...}`` and ``${pid:}``, both cached, so this resolves the same folder Hydra uses.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _require_writable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _require_writable(Path(config.hydra.sweep.dir), "hydra.sweep.dir")


def _require_writable(folder: Path, key: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        log.error(
            "cannot write the run directory %s (%s); point %s (or CLIP_LIGHTNING_LOG_DIR, "
            "where run directories go by default) at a writable folder",
            folder,
            exc.strerror or type(exc).__name__,
            key,
        )
        sys.exit(USER_ERROR_EXIT_CODE)
