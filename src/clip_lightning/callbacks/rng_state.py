"""Store the random number generators in checkpoints, so a resumed run draws what it would have."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RNGStateCheckpoint(L.Callback):
    """Saves and restores the Python, NumPy, torch CPU and CUDA generator states.

    Lightning restores the model, optimizer, schedulers, loop progress and callback states,
    but not the global RNGs (it re-seeds from ``seed`` instead): without this, dropout masks,
    augmentations and the next epoch's shuffle differ after a resume. Under DDP the checkpoint
    holds rank 0's states. Everything is stored as tensors and plain Python values so the
    checkpoint still loads with ``torch.load(weights_only=True)``.
    """

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state(legacy=True)
        assert isinstance(numpy_state, tuple)  # the global RandomState is always an MT19937
        kind, keys, pos, has_gauss, cached_gaussian = numpy_state
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": [
                kind,
                torch.from_numpy(keys.astype(np.int64)),
                pos,
                has_gauss,
                cached_gaussian,
            ],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        kind, keys, pos, has_gauss, cached_gaussian = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
