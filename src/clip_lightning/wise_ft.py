"""WiSE-FT: weight-space ensembles of a fine-tuned model and its pretrained start.

Fine-tuning CLIP on one task can cost much of what it knew (zero-shot accuracy elsewhere).
Wortsman et al. (2022, "Robust fine-tuning of zero-shot models") interpolate the weights,
``θ(α) = (1 − α)·θ_pretrained + α·θ_finetuned``: ``α = 1`` is the fine-tuned model, ``α = 0``
the pretrained one, and the values between usually keep most of both.

θ_pretrained is rebuilt from the tower configs the checkpoint records (the pretrained tag,
weights file or hub id it started from), or read from another checkpoint of the same model
(``wise_ft.base=PATH``). A LoRA model is interpolated through its merged weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clip_lightning.checkpoints import describe_mismatch
from clip_lightning.cli.loading import load_model
from clip_lightning.errors import CheckpointError, ConfigError
from clip_lightning.models.lora import merged
from clip_lightning.module import CLIPModule

TOWERS = {"image_encoder": "image", "text_encoder": "text"}


def pretrained_base(finetuned: CLIPModule, base: str | Path | None = None) -> CLIPModule:
    """θ_pretrained of ``finetuned``: the checkpoint at ``base``, or the pretrained towers the
    fine-tuning run started from, rebuilt from the configs its checkpoint records."""
    if base:
        return merged(load_model(base))
    start = finetuned.pretrained_start
    if start is None:
        raise CheckpointError(
            "the checkpoint does not record the pretrained weights it started from; pass "
            "wise_ft.base=PATH (a checkpoint of the same model to interpolate from)"
        )
    for name, config in start.items():
        if not config.get("pretrained"):
            raise ConfigError(
                f"WiSE-FT interpolates from pretrained weights, but the {TOWERS[name]} tower "
                f"({config.get('_target_')}) was trained from random init "
                f"(model.{name}.pretrained={config.get('pretrained')}); evaluate the "
                "checkpoint without wise_ft, or pass wise_ft.base=PATH"
            )
    heads = [
        n for n, p in finetuned.named_parameters() if n.startswith(("image_head.", "text_head."))
    ]
    if heads:
        raise ConfigError(
            f"WiSE-FT interpolates from pretrained weights, but the projection heads "
            f"({finetuned.hparams['head'].get('_target_')}) start from random init; use a "
            "pretrained pair (model=open_clip or model=hf_clip) or pass wise_ft.base=PATH"
        )
    towers = {
        name: {**config, "cache": None} if "cache" in config else config
        for name, config in start.items()
    }
    hparams: dict[str, Any] = {**finetuned.hparams, **towers, "lora": None, "compile": False}
    return CLIPModule(**hparams).eval()


def interpolate(
    base: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 − α)·base + α·finetuned`` for every floating-point tensor; integer buffers (step
    counters) are the fine-tuned ones. ``α = 0`` and ``α = 1`` give the endpoints bit for bit."""
    return {
        key: (1.0 - alpha) * base[key].to(value) + alpha * value
        if value.is_floating_point()
        else value
        for key, value in finetuned.items()
    }


class WeightSpaceEnsemble:
    """A fine-tuned model and its pretrained start, ready to give θ(α) for any α.

    The fine-tuned model (LoRA adapters merged) is the one module every ``at(α)`` loads its
    interpolated weights into, so scoring many α values costs one model's memory plus two
    state dicts.
    """

    def __init__(self, finetuned: CLIPModule, base: str | Path | None = None):
        self.model = merged(finetuned)
        self.finetuned = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        base_state = pretrained_base(finetuned, base).state_dict()
        problem = describe_mismatch({}, {}, base_state, self.finetuned)
        if problem is not None:
            raise CheckpointError(
                f"the WiSE-FT base does not match the fine-tuned model: {problem}; pass "
                "wise_ft.base= a checkpoint of the same architecture"
            )
        self.base = {k: v.detach() for k, v in base_state.items()}

    def at(self, alpha: float) -> CLIPModule:
        """The model with weights θ(α), in eval mode."""
        self.model.load_state_dict(interpolate(self.base, self.finetuned, alpha))
        return self.model.eval()
