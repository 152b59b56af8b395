"""Cross-modal retrieval metrics (image→text and text→image Recall@K) for CLIP-style models:
:mod:`.ranking` ranks embeddings with ties kept as ties, :mod:`.retrieval_recall` is the
torchmetrics metric that accumulates and de-duplicates them across batches and ranks."""

from clip_lightning.metrics.ranking import TIE_TOLERANCE, TiedRanks, recall_at_k, retrieval_ranks
from clip_lightning.metrics.retrieval_recall import RetrievalRecall

__all__ = ["TIE_TOLERANCE", "RetrievalRecall", "TiedRanks", "recall_at_k", "retrieval_ranks"]
