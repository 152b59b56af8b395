"""What the pretrained CLIP pairs (open_clip, transformers) share: one model split into two
towers, a config that names the model once, and on-device normalisation of uint8 batches."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, overload

import torch
from torch import nn

from clip_lightning.models.freezing import set_frozen_eval
from clip_lightning.models.targets import ArgumentsOf, plain
from clip_lightning.models.text_cache import TextFeatureCache, hash_module_weights, hash_tokenizer
from clip_lightning.module import CLIPModule

#: A pair factory's ``**module``: the :class:`CLIPModule` arguments it forwards.
ModuleArguments = Annotated[Any, ArgumentsOf(CLIPModule)]


def pretrained_pair_module(shared: dict[str, Any], embed_dim: int, **module: Any) -> CLIPModule:
    """A :class:`CLIPModule` whose two towers get the same ``shared`` arguments.

    Lets a model config say ``model.arch=ViT-B-16`` once instead of once per tower; the
    towers' configs (hence checkpoints) still carry everything needed to rebuild them.
    ``embed_dim`` is the pretrained model's joint width (the heads are identities).
    """
    for tower in ("image_encoder", "text_encoder"):
        module[tower] = {**plain(module[tower]), **shared}
    return CLIPModule(embed_dim=embed_dim, **module)


@dataclass
class PretrainedParts:
    """One built dual encoder, split into the towers no ``CLIPModule`` has taken yet."""

    towers: dict[str, Any]
    embed_dim: int
    logit_scale: float
    logit_bias: float | None
    # the whole model's config, where the library has one (transformers)
    config: Any = None


# Keyed by what built the model. An entry is dropped once both towers are taken, so a second
# model built in the same process (a sweep, a test) starts from fresh weights.
_UNCLAIMED: dict[str, PretrainedParts] = {}


def take_tower(
    key: Sequence[Any], part: str, build: Callable[[], PretrainedParts]
) -> tuple[Any, PretrainedParts]:
    """Tower ``part`` of the model identified by ``key``: built once for both towers."""
    cache_key = json.dumps(list(key), sort_keys=True, default=str)
    entry = _UNCLAIMED.get(cache_key)
    if entry is None or part not in entry.towers:
        entry = _UNCLAIMED[cache_key] = build()
    tower = entry.towers.pop(part)
    if not entry.towers:
        del _UNCLAIMED[cache_key]
    return tower, entry


@overload
def scalar(parameter: torch.Tensor) -> float: ...
@overload
def scalar(parameter: None) -> None: ...
def scalar(parameter: torch.Tensor | None) -> float | None:
    """A logit scale/bias parameter (shape ``[]`` or ``[1]``) as a float."""
    return None if parameter is None else float(parameter.detach().reshape(-1)[0])


Tower = TypeVar("Tower", bound="PairTower")


class PairTower(nn.Module):
    """Base of the towers cut from a pretrained pair: the parts frozen in ``self.model`` stay in
    eval mode (no dropout, fixed BatchNorm statistics) whatever mode the tower is put in.
    Subclasses set ``self.model`` to their half of the pair (typed there)."""

    model: Any
    num_features: int
    init_logit_scale: float | None
    init_logit_bias: float | None

    def adopt(self, parts: PretrainedParts, pretrained: bool) -> None:
        """Report the pair's joint width and, for pretrained weights only, the temperature (and
        SigLIP bias) the loss starts from; a rebuilt checkpoint restores its own."""
        self.num_features = parts.embed_dim
        self.init_logit_scale = parts.logit_scale if pretrained else None
        self.init_logit_bias = parts.logit_bias if pretrained else None

    def train(self: Tower, mode: bool = True) -> Tower:
        super().train(mode)
        set_frozen_eval(self.model)
        return self


class PixelNormalizer(nn.Module):
    """Normalises uint8 batches (what the data pipeline yields) on the device; floats pass."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            return images
        return (images.float() - self.mean) / self.std


def text_feature_cache(
    cache: str | None, tower: nn.Module, tokenizer: Any, identity: Mapping[str, Any]
) -> TextFeatureCache | None:
    """The ``cache`` option (``null``, ``memory`` or a folder) of a frozen text tower.

    The fingerprint holds ``identity`` (what built the tower), its weights and tokenizer, so
    a changed tower never reads stale features from disk.
    """
    if cache is None:
        return None
    fingerprint = {
        **identity,
        "weights": hash_module_weights(tower),
        "tokenizer": hash_tokenizer(tokenizer),
    }
    return TextFeatureCache.from_option(cache, fingerprint)
