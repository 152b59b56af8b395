"""Cross-modal retrieval metrics (image→text and text→image Recall@K) for CLIP-style models.

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from clip_lightning.errors import NonFiniteEmbeddingError

__all__ = ["RetrievalRecall", "TiedRanks", "recall_at_k", "retrieval_ranks"]

_EMBEDDING_STATES = ("image_embeddings", "text_embeddings")
_ID_STATES = ("image_ids", "text_ids", "text_image_ids")
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
    if image_embeddings.ndim != 2 or text_embeddings.ndim != 2:
        raise ValueError(
            "Embeddings must be 2-D [N, D], got image "
            f"{tuple(image_embeddings.shape)} and text {tuple(text_embeddings.shape)}"
        )
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


def _concat(state: list[Tensor] | Tensor) -> Tensor:
    """A list state as one tensor (a single batch is not copied); a distributed sync has
    already concatenated it."""
    if isinstance(state, list) and len(state) == 1:
        return state[0]
    return dim_zero_cat(state) if len(state) else torch.empty(0)


def _unflatten(flat: Tensor, rows: int) -> Tensor:
    """The ``[rows, D]`` matrix of embeddings stored flat."""
    return flat.view(rows, flat.numel() // rows if rows else 0)


def _first_occurrence(ids: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted unique ids and the index of each one's first occurrence in ``ids``."""
    unique_ids, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    first = torch.full_like(unique_ids, ids.numel())
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return unique_ids, first


def _take_rows(matrix: Tensor, rows: Tensor) -> Tensor:
    """``matrix[rows]``, without a copy when ``rows`` is every row in order (ids seen once, in
    ascending order: the usual evaluation set)."""
    every_row = torch.arange(matrix.shape[0], device=rows.device)
    if rows.shape == every_row.shape and bool((rows == every_row).all()):
        return matrix
    return matrix[rows]


class RetrievalRecall(Metric):
    """Image↔text Recall@K, mean and median rank over everything seen since the last reset.

    States are lists concatenated across ranks, and ``compute`` de-duplicates images and
    captions by id first, so the samples a ``DistributedSampler`` repeats to pad its last batch
    are neither counted twice nor offered twice as retrieval candidates.

    ``compute`` returns recalls in percent (``i2t_r{k}``, ``t2i_r{k}``), their sum ``rsum``,
    the 1-based ``{i2t,t2i}_{mean,median}_rank`` (expected ranks; the median averages the two
    middle ones when the count is even) and the numbers of ``images`` and ``captions`` scored.
    The module docstring states the tie rule; a NaN or infinite embedding raises
    :class:`~clip_lightning.errors.NonFiniteEmbeddingError`.

    With ``fold_size`` the images, in id order, are cut into folds of that many consecutive
    images, each scored against its own captions only (COCO 1K: five folds of the 5K test
    split). The figures are then the means over folds, and ``fold{n}/<figure>`` gives each
    fold's own.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    image_embeddings: list[Tensor]
    image_ids: list[Tensor]
    text_embeddings: list[Tensor]
    text_ids: list[Tensor]
    text_image_ids: list[Tensor]

    def __init__(
        self,
        ks: Sequence[int] = (1, 5, 10),
        chunk_size: int = 256,
        tie_tolerance: float = TIE_TOLERANCE,
        fold_size: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if fold_size is not None and fold_size < 1:
            raise ValueError(f"fold_size must be positive or None, got {fold_size}")
        if not ks or len(set(ks)) != len(ks) or any(int(k) != k or k < 1 for k in ks):
            raise ValueError(f"ks must be a non-empty sequence of distinct positive ints, got {ks}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if not tie_tolerance >= 0:
            raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
        self.ks = tuple(int(k) for k in ks)
        self.chunk_size = chunk_size
        self.tie_tolerance = tie_tolerance
        self.fold_size = fold_size
        for name in (*_EMBEDDING_STATES, *_ID_STATES):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        image_embeddings: Tensor,
        image_ids: Tensor,
        text_embeddings: Tensor,
        text_ids: Tensor,
        text_image_ids: Tensor,
    ) -> None:
        """Store a batch of images and captions; either side may be empty in a given batch."""
        if image_embeddings.ndim != 2 or text_embeddings.ndim != 2:
            raise ValueError(
                "Embeddings must be 2-D [N, D], got image "
                f"{tuple(image_embeddings.shape)} and text {tuple(text_embeddings.shape)}"
            )
        if image_ids.shape != (image_embeddings.shape[0],):
            raise ValueError(
                f"image_ids must have shape ({image_embeddings.shape[0]},) to match "
                f"image_embeddings, got {tuple(image_ids.shape)}"
            )
        num_texts = text_embeddings.shape[0]
        if text_ids.shape != (num_texts,) or text_image_ids.shape != (num_texts,):
            raise ValueError(
                f"text_ids and text_image_ids must have shape ({num_texts},) to match "
                f"text_embeddings, got {tuple(text_ids.shape)} and {tuple(text_image_ids.shape)}"
            )
        # Float32, so half-precision runs do not accumulate and compare scores in half precision
        # (which would create spurious ties).
        # Stored flat: every state is then 1-D, so a rank without data can send an empty one.
        self.image_embeddings.append(image_embeddings.detach().float().reshape(-1))
        self.image_ids.append(image_ids.detach().long())
        self.text_embeddings.append(text_embeddings.detach().float().reshape(-1))
        self.text_ids.append(text_ids.detach().long())
        self.text_image_ids.append(text_image_ids.detach().long())

    def _sync_dist(
        self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any = None
    ) -> None:
        # A rank that saw no batch would send torchmetrics' default empty float tensor for every
        # state; the id states are int64 on the other ranks, and mismatched dtypes hang the
        # gather. Give such a rank empty states of the right dtypes first.
        for names, dtype in ((_EMBEDDING_STATES, torch.float32), (_ID_STATES, torch.long)):
            for name in names:
                if not getattr(self, name):
                    setattr(self, name, [torch.empty(0, dtype=dtype, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group)

    def compute(self) -> dict[str, Tensor]:
        """De-duplicate by id, rank both directions in chunks and summarise."""
        image_ids = _concat(self.image_ids)
        text_ids = _concat(self.text_ids)
        if image_ids.numel() == 0 or text_ids.numel() == 0:
            raise ValueError(
                "RetrievalRecall.compute() needs at least one image and one caption, got "
                f"{image_ids.numel()} image(s) and {text_ids.numel()} caption(s)"
            )

        unique_image_ids, image_rows = _first_occurrence(image_ids)
        _, text_rows = _first_occurrence(text_ids)
        images = _take_rows(
            _unflatten(_concat(self.image_embeddings), image_ids.numel()), image_rows
        )
        texts = _take_rows(_unflatten(_concat(self.text_embeddings), text_ids.numel()), text_rows)
        text_image_ids = _take_rows(_concat(self.text_image_ids), text_rows)

        text_to_image = torch.searchsorted(unique_image_ids, text_image_ids)
        found = unique_image_ids[text_to_image.clamp(max=unique_image_ids.numel() - 1)]
        missing = text_image_ids[found != text_image_ids]
        if missing.numel():
            raise ValueError(
                f"{missing.numel()} caption(s) refer to image ids never passed as images, "
                f"e.g. {missing[:5].tolist()}"
            )

        counts = {
            "images": torch.tensor(float(images.shape[0]), device=images.device),
            "captions": torch.tensor(float(texts.shape[0]), device=images.device),
        }
        if self.fold_size is None:
            return {**self._summarise(images, texts, text_to_image), **counts}
        folds = []
        for start in range(0, images.shape[0], self.fold_size):
            stop = start + self.fold_size
            in_fold = (text_to_image >= start) & (text_to_image < stop)
            folds.append(
                self._summarise(images[start:stop], texts[in_fold], text_to_image[in_fold] - start)
            )
        results = {key: torch.stack([fold[key] for fold in folds]).mean() for key in folds[0]}
        for number, fold in enumerate(folds, start=1):
            results.update({f"fold{number}/{key}": value for key, value in fold.items()})
        return {**results, **counts}

    def _summarise(self, images: Tensor, texts: Tensor, text_to_image: Tensor) -> dict[str, Tensor]:
        """Recall@K, RSUM and expected ranks of one set of images and their captions."""
        i2t, t2i = retrieval_ranks(
            images, texts, text_to_image, self.chunk_size, self.tie_tolerance
        )
        results: dict[str, Tensor] = {}
        for direction, ranks in (("i2t", i2t), ("t2i", t2i)):
            for k in self.ks:
                results[f"{direction}_r{k}"] = recall_at_k(ranks, k)
        results["rsum"] = torch.stack(list(results.values())).sum()
        for direction, ranks in (("i2t", i2t), ("t2i", t2i)):
            expected = ranks.expected_rank()
            results[f"{direction}_mean_rank"] = expected.mean().float()
            results[f"{direction}_median_rank"] = expected.quantile(0.5).float()
        return results
