"""``RetrievalRecall``: the torchmetrics metric that gathers image and caption embeddings
across batches and ranks, de-duplicates them by id and scores them with
:func:`~clip_lightning.metrics.ranking.retrieval_ranks` (whole sets or 1K-style folds)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from clip_lightning.metrics.ranking import (
    TIE_TOLERANCE,
    check_matrices,
    recall_at_k,
    retrieval_ranks,
)

_EMBEDDING_STATES = ("image_embeddings", "text_embeddings")
_ID_STATES = ("image_ids", "text_ids", "text_image_ids")


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
    :mod:`clip_lightning.metrics.ranking` states the tie rule; a NaN or infinite embedding raises
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
        check_matrices(image_embeddings, text_embeddings)
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
