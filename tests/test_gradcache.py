"""GradCache reproduces the full-batch gradient of a contrastive loss from chunks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clip_lightning.gradcache import grad_cache_backward
from clip_lightning.losses import InfoNCELoss, SigLIPLoss

BATCH, IMAGE_DIM, TEXT_DIM, EMBED_DIM = 16, 8, 6, 5
ATOL = 1e-5


class DualEncoder(nn.Module):
    """Tiny towers; the text tower takes a dict of batched tensors like a tokenizer's output."""

    def __init__(self, loss: nn.Module, dropout: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image_tower = nn.Sequential(
            nn.Linear(IMAGE_DIM, 16), nn.Dropout(dropout), nn.Linear(16, EMBED_DIM)
        )
        self.text_tower = nn.Sequential(
            nn.Linear(TEXT_DIM, 16), nn.Dropout(dropout), nn.Linear(16, EMBED_DIM)
        )
        self.loss = loss

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_tower(images), dim=-1)

    def embed_text(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        masked = inputs["embeddings"] * inputs["attention_mask"].unsqueeze(-1)
        return F.normalize(self.text_tower(masked.sum(dim=1)), dim=-1)


def _batch() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    images = torch.randn(BATCH, IMAGE_DIM, generator=generator)
    text_inputs = {
        "embeddings": torch.randn(BATCH, 3, TEXT_DIM, generator=generator),
        "attention_mask": (torch.rand(BATCH, 3, generator=generator) > 0.3).float(),
    }
    return images, text_inputs


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _reference(
    loss_cls: type[nn.Module], dropout: float, chunk_size: int, seed: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Loss, gradients and final RNG state of one ordinary backward on the whole batch.

    With dropout, the towers run chunk by chunk (images first, then texts, with grad) so that
    they draw the same masks as GradCache's first pass; the loss still sees the whole batch.
    """
    model = DualEncoder(loss_cls(), dropout)
    images, text_inputs = _batch()
    torch.manual_seed(seed)
    if dropout:
        image_features = torch.cat([model.embed_image(c) for c in images.split(chunk_size)])
        text_chunks = zip(*(v.split(chunk_size) for v in text_inputs.values()), strict=True)
        text_features = torch.cat(
            [model.embed_text(dict(zip(text_inputs, c, strict=True))) for c in text_chunks]
        )
    else:
        image_features, text_features = model.embed_image(images), model.embed_text(text_inputs)
    loss = model.loss(image_features, text_features)
    loss.backward()
    return loss.detach(), _grads(model), torch.get_rng_state()


def _grad_cache(
    loss_cls: type[nn.Module],
    dropout: float,
    chunk_size: int,
    seed: int,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    model = DualEncoder(loss_cls(), dropout)
    images, text_inputs = _batch()
    torch.manual_seed(seed)
    loss = grad_cache_backward(
        model.embed_image, model.embed_text, model.loss, images, text_inputs, chunk_size, backward
    )
    return loss, _grads(model), torch.get_rng_state()


@pytest.mark.parametrize("loss_cls", [InfoNCELoss, SigLIPLoss])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("chunk_size", [4, 5])
def test_grad_cache_matches_full_batch(
    loss_cls: type[nn.Module], dropout: float, chunk_size: int
) -> None:
    expected_loss, expected_grads, expected_rng = _reference(loss_cls, dropout, chunk_size, 3)
    loss, grads, rng = _grad_cache(loss_cls, dropout, chunk_size, 3)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, expected_loss, atol=ATOL, rtol=0)
    torch.testing.assert_close(grads, expected_grads, atol=ATOL, rtol=0)
    # The replayed second pass leaves the global random state as after one forward.
    assert torch.equal(rng, expected_rng)


def test_dropout_changes_gradients() -> None:
    """The dropout case is meaningful: other masks would give other gradients."""
    _, grads, _ = _grad_cache(InfoNCELoss, 0.3, 4, seed=3)
    _, other, _ = _grad_cache(InfoNCELoss, 0.3, 4, seed=4)
    assert max((grads[n] - other[n]).abs().max().item() for n in grads) > 100 * ATOL


def test_loss_scaling_backward_scales_every_gradient_once() -> None:
    """A backward that scales the loss (like fp16 GradScaler) scales all gradients equally."""
    _, expected, _ = _reference(InfoNCELoss, 0.0, 4, seed=3)
    calls = []

    def scaled_backward(tensor: torch.Tensor) -> None:
        calls.append(tensor)
        (tensor * 1024.0).backward()

    _, grads, _ = _grad_cache(InfoNCELoss, 0.0, 4, seed=3, backward=scaled_backward)
    # every image and text chunk but the last, then the loss with the last of each
    assert len(calls) == 2 * (BATCH // 4 - 1) + 1
    scaled = {name: 1024.0 * grad for name, grad in expected.items()}
    torch.testing.assert_close(grads, scaled, atol=1024 * ATOL, rtol=0)


def test_rejects_non_positive_chunk_size() -> None:
    model = DualEncoder(InfoNCELoss(), 0.0)
    images, text_inputs = _batch()
    with pytest.raises(ValueError, match="chunk_size"):
        grad_cache_backward(model.embed_image, model.embed_text, model.loss, images, text_inputs, 0)
