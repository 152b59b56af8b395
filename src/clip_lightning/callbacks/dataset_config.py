"""The training run's dataset settings in every checkpoint, as plain data.

``eval ckpt_path=...`` rebuilds the run's data from them -- folder, format, columns, split sizes
and seed -- instead of asking for the training options again. They are stored as JSON-like
values only (no OmegaConf objects, no interpolations) and read back under the same rule, so a
checkpoint's dataset settings are data, never something to resolve or call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L

from clip_lightning.errors import CheckpointError

KEY = "clip_lightning_dataset"
# the datamodules a saved dataset config may name
TARGETS = (
    "clip_lightning.data.datamodule.CaptionDataModule",
    "clip_lightning.data.streaming.WebDataModule",
)


class DatasetConfigCheckpoint(L.Callback):
    """Writes ``config`` (the run's resolved ``dataset`` settings) into every checkpoint."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = plain_dataset_config(config)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[KEY] = self.config


def saved_dataset_config(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The dataset settings stored in a loaded ``checkpoint``; None when it has none."""
    config = checkpoint.get(KEY)
    return None if config is None else plain_dataset_config(config)


def plain_dataset_config(config: Any) -> dict[str, Any]:
    """``config`` checked to be plain data naming one of this package's datamodules, with no
    other Hydra key (``_target_``, ``_partial_``, ... below the top would be instantiated)."""
    if not isinstance(config, Mapping):
        raise CheckpointError(f"the checkpoint's dataset settings are a {type(config).__name__}")
    plain = {key: _plain(value, f"dataset.{key}") for key, value in config.items()}
    if plain.get("_target_") not in TARGETS:
        raise CheckpointError(
            "the checkpoint's dataset settings name a class that is not one of "
            f"{', '.join(TARGETS)}; pass dataset=GROUP to choose the data yourself"
        )
    return plain


def _plain(value: Any, where: str) -> Any:
    """``value`` if it is plain data; never echoes a string of it (only where it sits)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        if "${" in value:
            raise CheckpointError(
                f"the checkpoint's {where} is an interpolation, which is never resolved from a "
                "file; pass dataset=GROUP to choose the data yourself"
            )
        return value
    if isinstance(value, list | tuple):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        hydra_keys = [key for key in value if key.startswith("_") and key.endswith("_")]
        if hydra_keys:
            raise CheckpointError(
                f"the checkpoint's {where} holds a Hydra key ({hydra_keys[0]}), which would "
                "be called; pass dataset=GROUP to choose the data yourself"
            )
        return {key: _plain(item, f"{where}.{key}") for key, item in value.items()}
    raise CheckpointError(
        f"the checkpoint's {where} is a {type(value).__name__}, not plain data; pass "
        "dataset=GROUP to choose the data yourself"
    )
