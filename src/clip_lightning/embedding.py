"""Batch embedding for inference: many images or captions -> one L2-normalised matrix.

Zero-shot classification, search, evaluation and the alignment plots all embed this way, so an
image or a caption gets the same vector whichever of them asks: images go through the image
encoder's own evaluation transform, captions through the text encoder's own tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from clip_lightning.data.records import FileImage, load_rgb, to_rgb

if TYPE_CHECKING:  # the module's inference API calls these helpers
    from clip_lightning.module import CLIPModule

ImageInput = Image.Image | str | Path
Transform = Callable[[Image.Image], torch.Tensor]


class _TransformedImages(Dataset):
    """PIL images, paths, or the items of another dataset, as transformed uint8 tensors.

    A dataset item may be an image, a path, a tensor (already transformed) or a tuple whose
    first element is one of those (``ImageFolder`` yields ``(image, label)``). The transform
    runs here, so in the DataLoader's workers.
    """

    def __init__(self, items: Sequence[Any] | Dataset | torch.Tensor, transform: Transform) -> None:
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)  # type: ignore[arg-type]  # map-style: sized, unlike torch's hint

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self.items[index]
        if isinstance(item, tuple | list):
            item = item[0]
        if isinstance(item, str | Path):
            item = load_rgb(FileImage(Path(item)))
        if isinstance(item, Image.Image):
            return self.transform(to_rgb(item))
        return item


@contextmanager
def _eval_mode(model: CLIPModule) -> Iterator[None]:
    """Eval mode and no grad for the duration, restoring the caller's mode (e.g. mid-training)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def embed_images(
    model: CLIPModule,
    images: Sequence[ImageInput] | Dataset | torch.Tensor,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
) -> torch.Tensor:
    """L2-normalised float32 embeddings ``[N, D]`` on the CPU, in the order of ``images``.

    Args:
        model: a :class:`CLIPModule` (on any device; batches are moved to it).
        images: PIL images, image file paths, an already transformed batch, or a ``Dataset``
            whose items are images, paths, tensors, or tuples starting with one
            (e.g. ``ImageFolder``).
        batch_size, num_workers: of the DataLoader that decodes and transforms the images.

    Raises:
        clip_lightning.data.records.BadImageError: a path that is not a readable image
            (a :class:`~clip_lightning.errors.DataError` naming the file).
    """
    dataset = _TransformedImages(images, model.image_encoder.transform())
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    chunks = []
    with _eval_mode(model):
        for batch in loader:
            chunks.append(model.embed_images(batch.to(model.device)).float().cpu())
    if not chunks:
        return torch.empty(0, model.hparams["embed_dim"])
    return torch.cat(chunks)


def embed_texts(model: CLIPModule, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised float32 embeddings ``[N, D]`` on the CPU of ``texts``, in order.

    Each batch is tokenized with the text encoder's own tokenizer and padded to its longest
    caption, so the result does not depend on ``batch_size``.
    """
    texts = list(texts)
    chunks = []
    with _eval_mode(model):
        for start in range(0, len(texts), batch_size):
            tokens = model.text_encoder.tokenize(texts[start : start + batch_size])
            tokens = {name: value.to(model.device) for name, value in tokens.items()}
            chunks.append(model.embed_texts(**tokens).float().cpu())
    if not chunks:
        return torch.empty(0, model.hparams["embed_dim"])
    return torch.cat(chunks)
