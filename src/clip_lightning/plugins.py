"""Lightning plugins: checkpoint writing that never leaves a half-written ``last.ckpt`` behind,
the hard link that lets ``last.ckpt`` and the best checkpoint share one file, and reading through
the project's one checkpoint reader."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from clip_lightning.checkpoints import read_checkpoint
from clip_lightning.errors import find_cause

# the temporary file of a save: .<name>.tmp-<host>-<pid>, next to the checkpoint
TMP_MARKER = ".tmp-"
_TMP_NAME = re.compile(rf"^\..+{re.escape(TMP_MARKER)}(?P<host>.+)-(?P<pid>\d+)$")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write local checkpoints to a temporary file in the same folder, then ``os.replace`` it.

    Lightning's own writer goes through an fsspec transaction whose temporary file lives in the
    system temp dir; when that is another filesystem than the checkpoint folder (local /tmp vs.
    a shared cluster disk) the final move is a copy, and a kill during it leaves a truncated
    file under the real name. A same-folder temporary plus ``os.replace`` is atomic on POSIX.
    Remote URLs (``s3://``, ...) keep Lightning's behaviour.

    Local checkpoints are read (resuming, ``trainer.test(ckpt_path=...)``) by
    :func:`~clip_lightning.checkpoints.read_checkpoint`: as data, onto the CPU (Lightning moves
    the restored states to the device).
    """

    def load_checkpoint(
        self, path: str | Path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return read_checkpoint(path)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options for local paths")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(target)
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except (OSError, RuntimeError) as exc:
            # a failed write() names no file (and torch re-raises it as a RuntimeError); named,
            # the task wrapper reports "no space left on <dir>"
            os_error = find_cause(exc, OSError)
            if os_error is not None:
                os_error.filename = os_error.filename or str(target)
            raise
        finally:
            tmp.unlink(missing_ok=True)


def temporary_path(target: Path) -> Path:
    """Where a write to ``target`` goes before its rename: ``.<name>.tmp-<host>-<pid>`` next to it
    (same filesystem, so the rename is atomic; host and pid tell a dead writer's leftover)."""
    return target.with_name(f".{target.name}{TMP_MARKER}{socket.gethostname()}-{os.getpid()}")


def link_checkpoint(source: Path, target: Path) -> bool:
    """Make ``target`` a second name of the checkpoint file ``source`` (a hard link), atomically.

    The link is made under a temporary name and renamed over ``target``, so ``target`` is always
    either its old file or ``source``. Returns False, leaving ``target`` untouched, where the
    filesystem has no hard links (or ``source`` is a folder, as sharded checkpoints are).
    """
    tmp = temporary_path(target)
    try:
        os.link(source, tmp)
        os.replace(tmp, target)
    except OSError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temporaries(folders: Iterable[Path]) -> list[Path]:
    """Delete the temporary files of :class:`AtomicCheckpointIO` writers that died mid-write.

    A ``kill -9`` during a save leaves ``.<name>.tmp-<host>-<pid>`` behind (as large as a
    checkpoint). One is stale when it was written on this host by a process that no longer
    exists; files of other hosts are left alone, since their processes cannot be checked from
    here. Returns the removed files.
    """
    host = socket.gethostname()
    removed = []
    for folder in folders:
        for path in sorted(folder.glob(f".*{TMP_MARKER}*")) if folder.is_dir() else ():
            match = _TMP_NAME.match(path.name)
            if match and match["host"] == host and not _is_alive(int(match["pid"])):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
