"""Tie-aware ranks of image→text and text→image retrieval, and Recall@K from them.

The similarity matrix of a full evaluation set (COCO-5k: 5,000 images × 25,000 captions) is
never materialised: each direction scores its queries against all candidates in chunks of rows,
so peak extra memory is ``O(chunk_size × num_candidates)``.

Ties are part of the definition, not an accident of float rounding. A query's correct scores
and its competitors' scores come from the same matrix product, scores within
``tie_tolerance`` of the best correct score count as tied, and a query's figures are the
*expected* ones when the tied candidates are put in a uniformly random order. So a collapsed
model (every embedding equal) scores chance level, never 100, and duplicate captions give the
same figures on every machine, chunk size and batch order. Without ties this is exactly the
usual top-k definition (a hit when a correct candidate is among the ``k`` best).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from clip_lightning.errors import NonFiniteEmbeddingError

# Scores (cosine similarities for unit embeddings) closer than this are ties: well above the
# float32 noise of one matrix product or of re-padding a caption, well below real differences.
TIE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class TiedRanks:
    """Where each query's first correct candidate lands, with ties kept as ties.

    Per query: ``better`` wrong candidates score above its best correct candidate, ``tied``
    wrong candidates tie with it, and ``correct`` correct candidates (at least 1) share that
    best score. Ranking the tied group in a uniformly random order gives the expectations below.
    """

    better: Tensor
    tied: Tensor
    correct: Tensor

    def hit_probability(self, k: int) -> Tensor:
        """P(rank <= k): 1 minus the chance that the ``k - better`` top slots left for the tied
        group are all taken by wrong candidates, ``C(tied, j) / C(tied + correct, j)``."""
        better, tied, correct = (x.double() for x in (self.better, self.tied, self.correct))
        slots = k - better
        j = slots.clamp(min=0.0).minimum(tied)
        all_wrong = torch.exp(
            torch.lgamma(tied + 1)
            - torch.lgamma(tied - j + 1)
            - torch.lgamma(tied + correct + 1)
            + torch.lgamma(tied + correct - j + 1)
        )
        hit = 1.0 - all_wrong
        return torch.where(slots <= 0, 0.0, torch.where(slots > tied, 1.0, hit))

    def expected_rank(self) -> Tensor:
        """1-based expected rank: ``better`` plus the expected position of the first of
        ``correct`` items among ``tied + correct`` shuffled ones."""
        return self.better.double() + (self.tied + self.correct + 1).double() / (
            self.correct.double() + 1
        )


def check_matrices(image_embeddings: Tensor, text_embeddings: Tensor) -> None:
    """Both sides are ``[N, D]`` matrices (either may have no rows)."""
    if image_embeddings.ndim != 2 or text_embeddings.ndim != 2:
        raise ValueError(
            "Embeddings must be 2-D [N, D], got image "
            f"{tuple(image_embeddings.shape)} and text {tuple(text_embeddings.shape)}"
        )


def _check_finite(embeddings: Tensor, name: str) -> None:
    bad = int((~torch.isfinite(embeddings)).any(dim=1).sum())
    if bad:
        raise NonFiniteEmbeddingError(
            f"{bad} of {embeddings.shape[0]} {name} embeddings are NaN or infinite, so Recall@K "
            "is undefined: the model is broken (diverged weights or a corrupt checkpoint); "
            "evaluate an earlier checkpoint or retrain with a lower optimizer.lr"
        )


def _rank_queries(
    queries: Tensor,
    candidates: Tensor,
    pair_query: Tensor,
    pair_candidate: Tensor,
    rows: int,
    tie_tolerance: float,
    buffers: tuple[Tensor, Tensor],
) -> TiedRanks:
    """Rank every query against all candidates, ``rows`` queries per block.

    The correct (query, candidate) pairs are given as index lists sorted by query. Their scores
    are read from the same block product as the competitors', so rounding cannot favour either.
    Each block is computed in ``buffers`` (flat scores and 0/1 flags, at least a block each).
    """
    num_candidates = candidates.shape[0]
    block_starts = torch.arange(0, queries.shape[0] + rows, rows, device=queries.device)
    pair_bounds = torch.searchsorted(pair_query, block_starts).tolist()
    better, tied, correct = [], [], []
    for block, start in enumerate(range(0, queries.shape[0], rows)):
        block_queries = queries[start : start + rows]
        size = block_queries.shape[0]
        sims = torch.mm(block_queries, candidates.T, out=_block(buffers[0], size, num_candidates))
        pairs = slice(pair_bounds[block], pair_bounds[block + 1])
        row, col = pair_query[pairs] - start, pair_candidate[pairs]
        pair_scores = sims[row, col]
        best = torch.full((size,), float("-inf"), device=sims.device)
        best.scatter_reduce_(0, row, pair_scores, reduce="amax")
        tolerance = (tie_tolerance * best.abs().clamp(min=1.0))[:, None]
        gap = sims.sub_(best[:, None])
        # No correct candidate lies above the best correct score, so every one counted above is
        # wrong; the correct ones near it are counted separately and taken out of the ties.
        flags = _block(buffers[1], size, num_candidates)
        above = torch.gt(gap, tolerance, out=flags).sum(dim=1).long()
        at_least = torch.ge(gap, -tolerance, out=flags).sum(dim=1).long()
        correct_near = torch.zeros_like(above).scatter_add_(
            0, row, ((pair_scores - best[row]).abs() <= tolerance[row, 0]).long()
        )
        better.append(above)
        tied.append(at_least - above - correct_near)
        correct.append(correct_near)
    return TiedRanks(torch.cat(better), torch.cat(tied), torch.cat(correct))


def _block(buffer: Tensor, rows: int, columns: int) -> Tensor:
    """The first ``rows × columns`` elements of a flat buffer as a matrix."""
    return buffer[: rows * columns].view(rows, columns)


def retrieval_ranks(
    image_embeddings: Tensor,
    text_embeddings: Tensor,
    text_to_image: Tensor,
    chunk_size: int = 256,
    tie_tolerance: float = TIE_TOLERANCE,
) -> tuple[TiedRanks, TiedRanks]:
    """Tie-aware ranks for both directions, computed in chunks of ``chunk_size`` queries.

    Args:
        image_embeddings: ``[Ni, D]`` image embeddings (scores are plain dot products, which
            equal cosine similarities only if the caller L2-normalised them).
        text_embeddings: ``[Nt, D]`` caption embeddings.
        text_to_image: ``[Nt]`` row index into ``image_embeddings`` of each caption's image.
        chunk_size: captions scored per step; bounds memory at two buffers of
            ``chunk_size × Ni`` (the image→text pass uses blocks of the same size). The default
            keeps a COCO-5k block (256 × 5,000 floats, 5 MB) cache-resident.
        tie_tolerance: scores closer than this (relative above 1) to a query's best correct
            score are ties.

    Returns:
        ``(i2t, t2i)``: for each image, where its best caption lands among all captions; for
        each caption, where its image lands among all images.

    Raises:
        NonFiniteEmbeddingError: some embedding is NaN or infinite.
    """
    check_matrices(image_embeddings, text_embeddings)
    if image_embeddings.shape[1] != text_embeddings.shape[1]:
        raise ValueError(
            f"Embedding dims differ: images have {image_embeddings.shape[1]}, "
            f"texts have {text_embeddings.shape[1]}"
        )
    num_images, num_texts = image_embeddings.shape[0], text_embeddings.shape[0]
    if text_to_image.shape != (num_texts,):
        raise ValueError(
            f"text_to_image must have shape ({num_texts},), got {tuple(text_to_image.shape)}"
        )
    if num_images == 0 or num_texts == 0:
        raise ValueError(
            f"Need at least one image and one caption, got {num_images} and {num_texts}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if text_to_image.min() < 0 or text_to_image.max() >= num_images:
        raise ValueError(f"text_to_image must index the {num_images} images")
    captions_per_image = torch.bincount(text_to_image, minlength=num_images)
    if (captions_per_image == 0).any():
        raise ValueError(
            f"{int((captions_per_image == 0).sum())} image(s) have no caption, so their "
            "image→text rank is undefined"
        )
    _check_finite(image_embeddings, "image")
    _check_finite(text_embeddings, "caption")

    image = image_embeddings.float()
    text = text_embeddings.float()
    text_to_image = text_to_image.long()
    text_index = torch.arange(num_texts, device=image.device)
    by_image = torch.argsort(text_to_image, stable=True)
    image_rows = max(1, chunk_size * num_images // num_texts)  # blocks of the same size
    # Both directions compute every block in the same two buffers, allocated once: a fresh
    # block-sized tensor per block (and the int64 copy that summing a boolean mask makes)
    # fragments the C allocator's heap, which then held more than the whole similarity matrix.
    block = max(min(image_rows, num_images) * num_texts, min(chunk_size, num_texts) * num_images)
    # 0/1 flags summed in floating point count exactly while a count stays below 2**24
    flag_dtype = torch.float32 if max(num_images, num_texts) < 2**24 else torch.float64
    buffers = (image.new_empty(block), image.new_empty(block, dtype=flag_dtype))
    i2t = _rank_queries(
        image, text, text_to_image[by_image], by_image, image_rows, tie_tolerance, buffers
    )
    t2i = _rank_queries(text, image, text_index, text_to_image, chunk_size, tie_tolerance, buffers)
    return i2t, t2i


def recall_at_k(ranks: TiedRanks, k: int) -> Tensor:
    """Expected percentage (0-100) of queries with a correct candidate among the top ``k``."""
    return ranks.hit_probability(k).mean().float() * 100.0
