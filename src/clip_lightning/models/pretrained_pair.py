"""What the pretrained CLIP pairs (open_clip, transformers) share: one model split into two
towers, built once and handed to both, and on-device normalisation of uint8 batches.

Whoever builds both towers (:func:`~clip_lightning.models.towers.build_towers`) asks the two
tower classes which pretrained model they are cut from (:meth:`PairTower.pair_identity`); when
it is the same one, it builds that model once (:func:`shared_pair`) and passes it to each tower
as ``pair=``. A tower built on its own builds the model itself and keeps its half.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeGuard, TypeVar, overload

import torch
from torch import nn

from clip_lightning.errors import ConfigError
from clip_lightning.models.freezing import set_frozen_eval
from clip_lightning.models.targets import IGNORED_KEYS, lookup
from clip_lightning.models.text_cache import TextFeatureCache, hash_module_weights, hash_tokenizer
from clip_lightning.utils.typecheck import Doc


@dataclass
class PretrainedParts:
    """One built dual encoder: its two halves by name, and what the heads and loss start from."""

    towers: dict[str, Any]
    embed_dim: int
    logit_scale: float
    logit_bias: float | None
    # the whole model's config, where the library has one (transformers)
    config: Any = None


#: A tower's ``pair`` argument: the built model, handed in by code, never named in a config.
Pair = Annotated[
    PretrainedParts | None, Doc("null (the model that builds both towers hands the pair in)")
]


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

    Subclasses name their part of :attr:`PretrainedParts.towers`, say which model their
    arguments name (:meth:`pair_identity`) and how it is built (:meth:`build_pair`).
    """

    #: this tower's key in :attr:`PretrainedParts.towers`
    pair_part: ClassVar[str]
    model: Any
    num_features: int
    init_logit_scale: float | None
    init_logit_bias: float | None

    @classmethod
    def pair_identity(cls, arguments: Mapping[str, Any]) -> tuple[Any, ...]:
        """What identifies the pretrained model a tower with these constructor ``arguments``
        (defaults filled in) is cut from: two towers of equal identity share one model."""
        raise NotImplementedError(f"{cls.__name__} must define pair_identity()")

    @classmethod
    def build_pair(cls, arguments: Mapping[str, Any], key: str) -> PretrainedParts:
        """The pretrained model named by a tower's constructor ``arguments`` (config ``key``)."""
        raise NotImplementedError(f"{cls.__name__} must define build_pair()")

    def adopt(self, parts: PretrainedParts, pretrained: bool) -> None:
        """Take this tower's half of ``parts`` as ``self.model``, the pair's joint width and,
        for pretrained weights only, the temperature (and SigLIP bias) the loss starts from; a
        rebuilt checkpoint restores its own."""
        if self.pair_part not in parts.towers:
            raise ConfigError(
                f"{type(self).__name__} takes the {self.pair_part!r} half of a pair, but the pair "
                f"it was given has {', '.join(sorted(parts.towers))}"
            )
        self.model = parts.towers[self.pair_part]
        self.num_features = parts.embed_dim
        self.init_logit_scale = parts.logit_scale if pretrained else None
        self.init_logit_bias = parts.logit_bias if pretrained else None

    def train(self: Tower, mode: bool = True) -> Tower:
        super().train(mode)
        set_frozen_eval(self.model)
        return self


def shared_pair(image: Mapping[str, Any], text: Mapping[str, Any]) -> PretrainedParts | None:
    """The pretrained model both (checked) tower configs are cut from, built once; ``None``
    unless both are :class:`PairTower` s naming the same model."""
    image_class = lookup(image["_target_"], "model.image_encoder")
    text_class = lookup(text["_target_"], "model.text_encoder")
    if not (_is_pair_tower(image_class) and _is_pair_tower(text_class)):
        return None
    try:
        image_arguments = _with_defaults(image_class, image)
        text_arguments = _with_defaults(text_class, text)
    except TypeError:  # a required argument missing: building the tower names it
        return None
    if image_class.pair_identity(image_arguments) != text_class.pair_identity(text_arguments):
        return None
    return image_class.build_pair(image_arguments, "model.image_encoder")


def _is_pair_tower(target: Callable[..., Any]) -> TypeGuard[type[PairTower]]:
    return isinstance(target, type) and issubclass(target, PairTower)


def _with_defaults(tower: type[PairTower], config: Mapping[str, Any]) -> dict[str, Any]:
    bound = inspect.signature(tower).bind(
        **{k: v for k, v in config.items() if k not in IGNORED_KEYS}
    )
    bound.apply_defaults()
    return dict(bound.arguments)


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
