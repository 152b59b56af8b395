"""Image transforms built from the image encoder's timm data config.

The encoder decides input size, interpolation and crop; the dataset config decides only the
augmentation strength. Horizontal flips are off by default because captions say "left" and
"right", and colour jitter is off because captions name colours.

The transforms stop at uint8 ``[3, H, W]`` tensors: the image encoder normalises a uint8 batch
on its own device (as timm's prefetch loader does), so workers do no per-image float work and
a batch moves to the GPU in a quarter of the bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from timm.data import create_transform


def _geometry(data_config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "input_size": tuple(data_config["input_size"]),
        "interpolation": data_config.get("interpolation", "bicubic"),
        "normalize": False,
    }


def build_eval_transform(data_config: Mapping[str, Any]) -> Callable:
    """Resize + centre crop to a uint8 tensor: the one evaluation transform of the project.

    Training-time evaluation, zero-shot, search and ``encode_image`` all use it (through
    :meth:`~clip_lightning.models.ImageEncoder.transform`), so an image embeds the same way
    everywhere. The crop comes from the encoder's data config (timm's ``crop_pct``); a config
    without one keeps the whole image (``crop_pct=1.0``, as CLIP preprocesses).
    """
    return create_transform(
        **_geometry(data_config),
        is_training=False,
        crop_pct=data_config.get("crop_pct", 1.0),
        crop_mode=data_config.get("crop_mode", "center"),
    )


def build_image_transforms(
    data_config: Mapping[str, Any],
    scale: Sequence[float] = (0.5, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.0,
) -> tuple[Callable, Callable]:
    """Return ``(train_transform, eval_transform)``: RandomResizedCrop vs
    :func:`build_eval_transform`, both producing uint8 tensors (see the module docstring)."""
    train = create_transform(
        **_geometry(data_config),
        is_training=True,
        scale=(scale[0], scale[1]),
        ratio=(ratio[0], ratio[1]),
        hflip=hflip,
        vflip=0.0,
        color_jitter=None,  # type: ignore[arg-type]  # None = no jitter; timm omits it from the hint
        auto_augment=None,
    )
    return train, build_eval_transform(data_config)
