"""Encoders and projection heads: small modules with one job each."""

from clip_lightning.models.heads import IdentityHead, LinearHead, MLPHead
from clip_lightning.models.image_encoder import ImageEncoder
from clip_lightning.models.targets import allow_target
from clip_lightning.models.text_encoder import TextEncoder

__all__ = [
    "IdentityHead",
    "ImageEncoder",
    "LinearHead",
    "MLPHead",
    "TextEncoder",
    "allow_target",
]
