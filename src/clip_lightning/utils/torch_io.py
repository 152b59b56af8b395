"""The one ``torch.load`` of the project: files written with ``torch.save`` read as data."""

from __future__ import annotations

import os
from typing import Any

import torch


def read_torch_file(path: str | os.PathLike[str]) -> Any:
    """A ``torch.save`` file's contents: tensors (memory-mapped, on the CPU) and plain data.

    ``weights_only=True``: no class is imported or called, so a file holding any other Python
    object raises :class:`pickle.UnpicklingError` instead of running code; a missing,
    truncated or foreign file raises the usual errors.
    """
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
