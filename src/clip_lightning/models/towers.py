"""The tower interface :class:`~clip_lightning.module.CLIPModule` uses, and building both towers.

A tower is an ``nn.Module`` with the members of :class:`ImageTower` or :class:`TextTower`; the
package's six (timm / HF, open_clip, transformers CLIP) implement them, and so must a user's
own tower class (registered with :func:`~clip_lightning.models.allow_target`). Towers cut from
one pretrained model share it: :func:`build_towers` builds that model once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import torch
from PIL import Image
from torch import nn

from clip_lightning.errors import ConfigError
from clip_lightning.models.pretrained_pair import shared_pair
from clip_lightning.models.targets import build, check_part, plain, with_new_names
from clip_lightning.models.text_cache import TextFeatureCache


class ImageTower(Protocol):
    """Images -> features: uint8 ``[B, 3, H, W]`` batches (normalised by the tower) or already
    normalised float ones."""

    #: the width of the features ``forward`` returns
    num_features: int
    #: timm's preprocessing terms (``input_size``, ``mean``, ``std``, ``crop_pct``, ...): the
    #: data pipeline builds its transforms from them
    data_config: dict[str, Any]
    #: the pretrained temperature (log space) and SigLIP bias the loss starts from, or None
    init_logit_scale: float | None
    init_logit_bias: float | None

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The evaluation transform: PIL image -> uint8 ``[3, H, W]``."""
        ...

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> a uint8 batch (each converted to 8-bit RGB first)."""
        ...

    def checkpoint_config(self) -> dict[str, Any]:
        """Config keys a checkpoint overrides so the tower rebuilds from it alone."""
        ...

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass instead of storing them."""
        ...


class TextTower(Protocol):
    """Tokenized captions -> features (``forward(input_ids, attention_mask)``), served from
    the feature cache of a frozen tower when it has one."""

    num_features: int
    #: an HF-style tokenizer: ``tokenizer(texts, max_length=..., ...)`` -> ids and mask
    tokenizer: Any
    #: tokens per caption
    max_length: int
    feature_cache: TextFeatureCache | None
    init_logit_scale: float | None
    init_logit_bias: float | None

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The features of a tokenized batch, never cached."""
        ...

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Captions -> ``input_ids`` and ``attention_mask`` with the tower's own tokenizer."""
        ...

    def save_feature_cache(self) -> bool:
        """Persist the feature cache if it has a folder and new entries; True if written."""
        ...

    def checkpoint_config(self) -> dict[str, Any]:
        """Config keys a checkpoint overrides so the tower rebuilds from it alone."""
        ...

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass instead of storing them."""
        ...


class ImageTowerModule(nn.Module, ImageTower):
    """The static type of a built image tower: an ``nn.Module`` that is an :class:`ImageTower`
    (Python has no intersection type; nothing is built from this class)."""


class TextTowerModule(nn.Module, TextTower):
    """The static type of a built text tower: an ``nn.Module`` that is a :class:`TextTower`."""


def build_towers(
    image: Mapping[str, Any], text: Mapping[str, Any]
) -> tuple[ImageTowerModule, TextTowerModule]:
    """The image and text towers of two tower configs (``model.image_encoder`` and
    ``model.text_encoder``), each checked before anything is built and after, against its
    interface.

    Two :class:`~clip_lightning.models.pretrained_pair.PairTower` s cut from the same
    pretrained model (open_clip, transformers) get that model built once and handed to both
    as ``pair=``; any other towers are built on their own.
    """
    image = with_new_names(plain(image), "model.image_encoder")
    text = with_new_names(plain(text), "model.text_encoder")
    check_part(image, "model.image_encoder")
    check_part(text, "model.text_encoder")
    pair = shared_pair(image, text)
    shared: dict[str, Any] = {} if pair is None else {"pair": pair}
    image_tower = build(image, "model.image_encoder", **shared)
    text_tower = build(text, "model.text_encoder", **shared)
    _check_interface(image_tower, ImageTower, "model.image_encoder")
    _check_interface(text_tower, TextTower, "model.text_encoder")
    return cast(ImageTowerModule, image_tower), cast(TextTowerModule, text_tower)


def _check_interface(tower: Any, interface: type, key: str) -> None:
    """A one-line :class:`ConfigError` naming what ``tower`` lacks of ``interface``."""
    members = [
        *interface.__annotations__,
        *(n for n in vars(interface) if _is_method(interface, n)),
    ]
    if not isinstance(tower, nn.Module):
        raise ConfigError(
            f"{key}: {type(tower).__name__} is not a torch.nn.Module; a tower must be one"
        )
    missing = [name for name in members if not hasattr(tower, name)]
    if missing:
        raise ConfigError(
            f"{key}: {type(tower).__name__} lacks {', '.join(missing)} of the tower interface "
            f"clip_lightning.models.towers.{interface.__name__}; add them to the class"
        )


def _is_method(interface: type, name: str) -> bool:
    return not name.startswith("_") and callable(vars(interface)[name])
