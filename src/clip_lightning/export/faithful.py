"""The check every export ends with: the folder, loaded back by its own library, must give this
model's embeddings. A format that silently changed the model would be worse than none."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from clip_lightning.errors import ClipLightningError
from clip_lightning.module import CLIPModule

# a few captions of different lengths, one with punctuation and digits
PROBE_CAPTIONS = ["a photo of a dog.", "two red squares left of 3 blue circles!", "sunset"]
TOLERANCE = 1e-4


class ExportError(ClipLightningError):
    """The model cannot be written faithfully in the requested format."""


@dataclass
class Encoders:
    """An exported model loaded back: images (preprocessed batch) and captions -> features."""

    image: Callable[[torch.Tensor], torch.Tensor]
    text: Callable[[list[str]], torch.Tensor]
    preprocess: Any = None


@torch.no_grad()
def check_faithful(model: CLIPModule, loaded: Encoders, format: str) -> float:
    """Largest embedding difference on a probe batch; raises :class:`ExportError` above
    :data:`TOLERANCE`."""
    model.eval()
    generator = torch.Generator().manual_seed(0)
    input_size = model.image_encoder.data_config["input_size"]
    pixels = torch.randn(2, *input_size, generator=generator).to(model.device)
    ours = (model.embed_images(pixels), model.encode_text(PROBE_CAPTIONS))
    theirs = (loaded.image(pixels), loaded.text(PROBE_CAPTIONS))
    error = max(
        (mine.cpu() - F.normalize(other, dim=-1).cpu()).abs().max().item()
        for mine, other in zip(ours, theirs, strict=True)
    )
    if error > TOLERANCE:
        raise ExportError(
            f"the exported {format} model's embeddings differ from this model's by {error:.2g}; "
            "the format cannot represent it faithfully, so nothing was exported"
        )
    return error
