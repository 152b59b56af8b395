"""Building the two towers of a model: towers cut from one pretrained model share it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clip_lightning.models.pretrained_pair import shared_pair
from clip_lightning.models.targets import build, check_part, plain


def build_towers(image: Mapping[str, Any], text: Mapping[str, Any]) -> tuple[Any, Any]:
    """The image and text towers of two tower configs (``model.image_encoder`` and
    ``model.text_encoder``), each checked before anything is built.

    Two :class:`~clip_lightning.models.pretrained_pair.PairTower` s cut from the same
    pretrained model (open_clip, transformers) get that model built once and handed to both
    as ``pair=``; any other towers are built on their own.
    """
    image, text = plain(image), plain(text)
    check_part(image, "model.image_encoder")
    check_part(text, "model.text_encoder")
    pair = shared_pair(image, text)
    shared: dict[str, Any] = {} if pair is None else {"pair": pair}
    return build(image, "model.image_encoder", **shared), build(
        text, "model.text_encoder", **shared
    )
