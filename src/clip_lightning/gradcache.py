"""Contrastive-correct gradient accumulation (GradCache, Gao et al. 2021).

A contrastive loss couples every sample of the batch to every other one, so it cannot be split
into independent per-micro-batch losses. Plain ``accumulate_grad_batches`` therefore optimises a
different objective: each micro-batch only sees its own samples as negatives, i.e. fewer and
easier negatives. GradCache keeps the full-batch loss with the memory of one chunk:

1. embed every chunk without autograd graphs and cache the features;
2. compute the loss on the full cached batch, take its gradient with respect to the cached
   features, and back-propagate it into the loss's own parameters (such as ``logit_scale``);
3. re-embed each chunk with autograd and back-propagate the cached feature gradients through it
   (the chain rule: ``dL/dθ = Σ_chunks (dL/df) · (df/dθ)``).

The random state is replayed in step 3 so that dropout (or any random augmentation inside the
towers) draws the same masks as in step 1; otherwise the cached gradients would belong to
different features. Caveats: the towers run twice (about 1/3 more compute), and BatchNorm sees
per-chunk statistics and updates its running statistics twice.

Under DDP the loss gathers the cached features of every rank itself (:mod:`clip_lightning.losses`),
so step 2 is the loss on the *global* batch, and the feature gradients it returns are those of
the global loss, exactly as in a plain DDP step on the same batch; the chunked backward then runs
over this rank's share. DDP must all-reduce the parameter gradients once, after every chunk has
contributed, and its reducer expects that one backward to reach every trainable parameter: all
chunk backward passes but the last run under ``no_sync``, and the last one back-propagates the
loss together with the last image and text chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

__all__ = ["grad_cache_backward"]

Chunk = TypeVar("Chunk", Tensor, dict[str, Tensor])  # an image chunk or a text-input chunk


class _RngSnapshot:
    """The CPU and (initialised) CUDA random states at construction, replayable later."""

    def __init__(self) -> None:
        self._cpu_state = torch.get_rng_state()
        self._cuda_devices = (
            list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        )
        self._cuda_states = [torch.cuda.get_rng_state(device) for device in self._cuda_devices]

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the body from the snapshot's state, leaving the global random state untouched."""
        with torch.random.fork_rng(devices=self._cuda_devices):
            torch.set_rng_state(self._cpu_state)
            for device, state in zip(self._cuda_devices, self._cuda_states, strict=True):
                torch.cuda.set_rng_state(state, device)
            yield


def _split_dict(inputs: dict[str, Tensor], chunk_size: int) -> list[dict[str, Tensor]]:
    """Split every tensor of ``inputs`` along the batch dimension into aligned chunks."""
    pieces = {key: value.split(chunk_size) for key, value in inputs.items()}
    num_chunks = len(next(iter(pieces.values())))
    return [{key: value[i] for key, value in pieces.items()} for i in range(num_chunks)]


def _embed_without_grad(
    embed: Callable[[Chunk], Tensor], chunks: Sequence[Chunk]
) -> tuple[Tensor, list[_RngSnapshot]]:
    """Concatenated features of all chunks, and the random state each chunk started from."""
    snapshots, features = [], []
    with torch.no_grad():
        for chunk in chunks:
            snapshots.append(_RngSnapshot())
            features.append(embed(chunk))
    return torch.cat(features), snapshots


def grad_cache_backward(
    embed_image: Callable[[Tensor], Tensor],
    embed_text: Callable[[dict[str, Tensor]], Tensor],
    loss_fn: nn.Module,
    images: Tensor,
    text_inputs: dict[str, Tensor],
    chunk_size: int,
    backward: Callable[[Tensor], None] = Tensor.backward,
    no_sync: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> Tensor:
    """Accumulate into ``.grad`` the gradient of ``loss_fn`` on the full batch, chunk by chunk.

    ``embed_image``/``embed_text`` map a chunk to its (normalised) features; ``text_inputs``
    holds tensors batched along their first dimension (e.g. ``input_ids`` and
    ``attention_mask``). ``backward`` is called once per chunk and tower but the last ones, and
    then once for the loss with the last image and text chunk; a LightningModule passes
    ``self.manual_backward`` so precision scaling and strategies apply, and under DDP its
    strategy's ``block_backward_sync`` as ``no_sync`` (see the module docstring).
    Returns the detached full-batch loss.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    image_chunks = list(images.split(chunk_size))
    text_chunks = _split_dict(text_inputs, chunk_size)

    image_cache, image_rng = _embed_without_grad(embed_image, image_chunks)
    text_cache, text_rng = _embed_without_grad(embed_text, text_chunks)

    image_cache.requires_grad_(True)
    text_cache.requires_grad_(True)
    loss = loss_fn(image_cache, text_cache)
    # Unscaled feature gradients: a loss-scaling ``backward`` then scales the tower gradients in
    # step 3 exactly once, like the loss parameters' gradients.
    image_grad, text_grad = torch.autograd.grad(loss, (image_cache, text_cache), retain_graph=True)

    # one (embed, chunks, snapshots, feature gradients) per tower; chunks are tensors or dicts
    towers: list[
        tuple[Callable[[Any], Tensor], Sequence[Any], list[_RngSnapshot], Sequence[Tensor]]
    ]
    towers = [
        (embed_image, image_chunks, image_rng, image_grad.split(chunk_size)),
        (embed_text, text_chunks, text_rng, text_grad.split(chunk_size)),
    ]
    with no_sync():
        for embed, chunks, snapshots, grads in towers:
            for chunk, snapshot, grad in list(zip(chunks, snapshots, grads, strict=True))[:-1]:
                with snapshot.replay():
                    features = embed(chunk)
                backward(torch.dot(features.flatten(), grad.flatten()))
    last = loss
    for embed, chunks, snapshots, grads in towers:
        with snapshots[-1].replay():
            features = embed(chunks[-1])
        last = last + torch.dot(features.flatten(), grads[-1].flatten())
    backward(last)
    return loss.detach()
