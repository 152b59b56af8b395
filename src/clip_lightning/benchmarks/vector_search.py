"""Search over synthetic unit vectors at collection scale (default 1M x 512): the index
``python -m clip_lightning.index`` builds for that size, against an exact scan.

The vectors mimic embeddings of a collection: they lie near a random ``intrinsic_dim``
-dimensional subspace (learned embeddings use far fewer directions than they have), grouped
around ``clusters`` centres there (topics) with a within-group ``spread``, plus a little
isotropic noise, normalised. Uniformly random directions would be a poor stand-in: in 512
dimensions they are all nearly orthogonal and no neighbour is much nearer than another.
The queries are held out: drawn from the same distribution, not indexed. One run measures the
build time, recall@k against exact search, the latency of one query alone through the index
and through an exact scan (medians, the two taking turns on each query), and their ratio.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clip_lightning.indexing.vectors import build_and_measure, choose_shape, parse_memory


def embedding_like(
    count: int,
    centres: np.ndarray,
    spread: float,
    basis: np.ndarray,
    noise: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """``count`` unit vectors ``normalise((c + spread * z) @ basis + noise * n)``: ``c`` one of
    ``centres``, ``z`` and ``n`` Gaussian; in float32 blocks (1M x 512 never in float64)."""
    intrinsic, dim = basis.shape
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 65536):
        stop = min(count, start + 65536)
        local = centres[rng.integers(0, len(centres), stop - start)]
        local = local + spread * rng.standard_normal((stop - start, intrinsic), dtype=np.float32)
        block = local @ basis
        block += noise * rng.standard_normal((stop - start, dim), dtype=np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def run(
    num_vectors: int = 1_000_000,
    dim: int = 512,
    num_queries: int = 1000,
    intrinsic_dim: int = 64,
    clusters: int = 1000,
    spread: float = 0.5,
    noise: float = 0.05,
    kind: str = "auto",
    max_memory: str = "4G",
    k: int = 10,
    target_recall: float = 0.9,
    latency_queries: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """Build and measure the index of ``num_vectors`` synthetic vectors (see the module)."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((intrinsic_dim, dim), dtype=np.float32) / np.sqrt(intrinsic_dim)
    centres = rng.standard_normal((clusters, intrinsic_dim), dtype=np.float32)
    vectors = embedding_like(num_vectors, centres, spread, basis, noise, rng)
    queries = embedding_like(num_queries, centres, spread, basis, noise, rng)
    shape = choose_shape(num_vectors, dim, kind, max_memory=parse_memory(max_memory))
    _, shape, measured = build_and_measure(
        vectors,
        queries,
        shape,
        k,
        target_recall,
        "held-out synthetic queries",
        latency_queries=latency_queries,
        seed=seed,
    )
    return {
        "vectors": num_vectors,
        "dim": dim,
        "index": shape.describe(),
        "index_mib": shape.bytes() / 2**20,
        "build_seconds": measured.build_seconds,
        f"recall_at_{measured.k}": measured.recall,
        "queries": measured.queries,
        "index_ms_per_query": measured.index_ms_per_query,
        "exact_ms_per_query": measured.exact_ms_per_query,
        "speedup": measured.exact_ms_per_query / measured.index_ms_per_query,
        "nprobe_recalls": {str(p): r for p, r in measured.nprobe_recalls.items()},
    }
