"""Lightning plugins: checkpoint writing that never leaves a half-written ``last.ckpt`` behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


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
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
