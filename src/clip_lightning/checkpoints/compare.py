"""Comparing a checkpoint with a model: which settings shape the weights, and what does not fit.

One description serves every place that loads weights into a model it did not build from the
same checkpoint: ``load_from_checkpoint`` with overrides, resuming, ``init_from=`` and WiSE-FT.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: Where a checkpoint keeps :func:`weight_shaping_settings` as saved (Lightning merges load-time
#: overrides into ``hyper_parameters``, so those cannot tell what the weights were trained as).
SETTINGS_KEY = "clip_lightning_settings"
#: Mismatching tensors named in one description; the rest are counted.
SHOWN = 3


def weight_shaping_settings(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that decide the state dict's keys and shapes, as short comparable values."""

    def tower(name: str, key: str) -> str:
        config = hparams.get(name) or {}
        return f"{config.get('_target_')}({config.get(key)})"

    return {
        "embed_dim": hparams.get("embed_dim"),
        "head": (hparams.get("head") or {}).get("_target_"),
        "image_encoder": tower("image_encoder", "name"),
        "text_encoder": tower("text_encoder", "name_or_path"),
        "lora": (hparams.get("lora") or {}).get("r"),
    }


def settings_saved_in(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The :func:`weight_shaping_settings` a checkpoint was saved with (derived from its
    ``hyper_parameters`` when it predates :data:`SETTINGS_KEY`)."""
    saved = checkpoint.get(SETTINGS_KEY)
    if isinstance(saved, dict) and saved:
        return saved
    return weight_shaping_settings(checkpoint.get("hyper_parameters") or {})


def tensor_mismatches(saved: Mapping[str, Any], expected: Mapping[str, torch.Tensor]) -> list[str]:
    """Tensors whose shape differs, then tensors only one side has, as short descriptions."""
    shapes = [
        f"{key}: checkpoint {list(saved[key].shape)}, model {list(tensor.shape)}"
        for key, tensor in expected.items()
        if key in saved and tuple(saved[key].shape) != tuple(tensor.shape)
    ]
    only_model = [f"{key} missing from the checkpoint" for key in expected if key not in saved]
    only_saved = [f"{key} not in the model" for key in saved if key not in expected]
    return shapes + only_model + only_saved


def describe_mismatch(
    saved_settings: Mapping[str, Any],
    settings: Mapping[str, Any],
    saved_state: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
) -> str | None:
    """What differs between a checkpoint and a model, or ``None`` when its state dict fits.

    Explained by the first :func:`weight_shaping_settings` value that differs (pass empty
    mappings to skip them), otherwise by the first :func:`tensor_mismatches`.
    """
    mismatches = tensor_mismatches(saved_state, state)
    if not mismatches:
        return None
    for name, value in settings.items():
        if saved_settings.get(name) != value:
            return f"checkpoint has {name} {saved_settings.get(name)}, the model {value}"
    more = "; ..." if len(mismatches) > SHOWN else ""
    return "; ".join(mismatches[:SHOWN]) + more
