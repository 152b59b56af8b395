"""Lightning plugins: checkpoint writing that never leaves a half-written ``last.ckpt`` behind."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

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
    """

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
        tmp = target.with_name(f".{target.name}{TMP_MARKER}{socket.gethostname()}-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            # a failed write() names no file; the task wrapper reports "no space left on <dir>"
            exc.filename = exc.filename or str(target)
            raise
        finally:
            tmp.unlink(missing_ok=True)


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
