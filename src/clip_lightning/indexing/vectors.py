"""faiss indexes over L2-normalised embeddings (inner product = cosine), and their recall.

``kind=auto`` keeps every vector (``IndexFlatIP``, exact) below ``flat_below`` vectors, where an
exact scan is still fast, and above it builds an ``IVF{nlist},PQ{m}`` index sized to fit
``max_memory``: ``nlist`` inverted lists (about ``2·sqrt(N)``, a power of two) and ``m`` bytes
per vector, the most the budget allows (at most one per 4 dimensions). What the budget leaves
holds a copy of the vectors in float16 (else 8 bits per dimension) to re-rank the codes' best
``REFINE_K_FACTOR·k`` candidates: PQ codes alone order near neighbours coarsely (on 1M
embedding-like vectors in 512 dimensions their top 10 holds about 3/4 of the exact top 10),
the re-ranked list nearly all of it. A query scans ``nprobe`` of the lists; ``nprobe`` is
chosen on held-out queries as the smallest that reaches ``target_recall``, where recall@k is the
share of the exact top-k (a brute-force scan) that the index returns in its top-k.

The index is built and searched on the CPU; with faiss-gpu installed and a GPU present, the
k-means of its training (most of the build) runs on the GPUs.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

import faiss
import numpy as np

from clip_lightning.errors import DataError

KINDS = ("auto", "flat", "ivfpq")
# bytes an IVF list entry stores besides its code: the vector's 64-bit id
ID_BYTES = 8
# k-means training points per inverted list (faiss warns below 39)
TRAIN_PER_LIST = 64
MAX_NPROBE = 1024
# PQ sub-vectors of fewer dimensions cost training and search time for little recall
MIN_SUBVECTOR_DIMS = 4
# the re-ranking copies of the vectors, in order of preference, and their bytes per dimension
REFINE_BYTES = {"SQfp16": 2, "SQ8": 1}
# candidates the codes propose per neighbour asked for, re-ranked on the copies
REFINE_K_FACTOR = 4
# PQ learns 256 centroids per sub-vector; faiss wants ~39 training points per centroid
MIN_IVFPQ_VECTORS = 39 * 256
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_memory(text: str | int) -> int:
    """``"4G"``, ``"512M"``, ``"1.5G"`` or a byte count, in bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(text).upper())
    if not match:
        raise DataError(f"index.max_memory={text!r} is not a size; write e.g. 4G or 512M")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


@dataclass(frozen=True)
class IndexShape:
    """What was built: ``kind`` (flat or ivfpq), the vectors, and the IVF-PQ sizes (``refine``:
    the re-ranking copy, a key of :data:`REFINE_BYTES`, or empty)."""

    kind: str
    ntotal: int
    dim: int
    nlist: int = 0
    m: int = 0
    nprobe: int = 0
    refine: str = ""

    def bytes(self) -> int:
        """The index's memory: its codes and ids, plus the coarse centroids and codebooks, plus
        the re-ranking copy."""
        if self.kind == "flat":
            return self.ntotal * self.dim * 4
        copy = self.ntotal * self.dim * REFINE_BYTES[self.refine] if self.refine else 0
        return self.ntotal * (self.m + ID_BYTES) + (self.nlist + 256) * self.dim * 4 + copy

    def _refine_suffix(self) -> str:
        return f",Refine({self.refine})" if self.refine else ""

    def factory(self) -> str:
        """The faiss ``index_factory`` string of an IVF-PQ shape ("np": no polysemous training,
        a Hamming pre-filter this search does not use, and most of the training time)."""
        return f"IVF{self.nlist},PQ{self.m}np{self._refine_suffix()}"

    def describe(self) -> str:
        """One line for tables and reports."""
        if self.kind == "flat":
            return "flat"
        return f"IVF{self.nlist},PQ{self.m}{self._refine_suffix()} nprobe={self.nprobe}"


def ivfpq_shape(ntotal: int, dim: int, max_memory: int, nlist: int | None = None) -> IndexShape:
    """The IVF-PQ sizes for ``ntotal`` vectors: ``nlist`` lists, the largest ``m`` (a divisor of
    ``dim``, at most ``dim / 4``) whose index fits ``max_memory``, and the first re-ranking copy
    that still fits beside it."""
    if ntotal < MIN_IVFPQ_VECTORS:
        raise DataError(
            f"IVF-PQ needs at least {MIN_IVFPQ_VECTORS} vectors to train on, these are {ntotal}; "
            "use index.kind=flat (exact, and fast at this size) or index.kind=auto"
        )
    if nlist is None:
        nlist = 2 ** round(math.log2(max(1.0, 2 * math.sqrt(ntotal))))
    nlist = max(1, min(nlist, ntotal // TRAIN_PER_LIST or 1))
    largest = max(1, dim // MIN_SUBVECTOR_DIMS)
    for m in sorted((m for m in range(1, largest + 1) if dim % m == 0), reverse=True):
        shape = IndexShape("ivfpq", ntotal, dim, nlist=nlist, m=m)
        if shape.bytes() <= max_memory:
            refined = (replace(shape, refine=refine) for refine in REFINE_BYTES)
            return next((r for r in refined if r.bytes() <= max_memory), shape)
    smallest = IndexShape("ivfpq", ntotal, dim, nlist=nlist, m=1).bytes()
    raise DataError(
        f"{ntotal} vectors of dimension {dim} need at least {smallest / 2**20:.0f} MiB as IVF-PQ; "
        f"raise index.max_memory (now {max_memory / 2**20:.0f} MiB)"
    )


def choose_shape(
    ntotal: int,
    dim: int,
    kind: str = "auto",
    flat_below: int = 1_000_000,
    max_memory: int = 4 * 2**30,
    nlist: int | None = None,
) -> IndexShape:
    """``kind`` resolved for ``ntotal`` vectors (see the module docstring)."""
    if kind not in KINDS:
        raise DataError(f"index.kind={kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "flat" or (kind == "auto" and ntotal < flat_below):
        return IndexShape("flat", ntotal, dim)
    return ivfpq_shape(ntotal, dim, max_memory, nlist)


def build(vectors: np.ndarray, shape: IndexShape, seed: int = 0) -> faiss.Index:
    """The index of ``shape`` over ``vectors`` (float32 ``[N, D]``), trained and filled."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index: faiss.Index
    if shape.kind == "flat":
        index = faiss.IndexFlatIP(shape.dim)
    else:
        index = faiss.index_factory(shape.dim, shape.factory(), faiss.METRIC_INNER_PRODUCT)
        if shape.refine:
            # a view: `index` keeps owning the C++ object
            cast(faiss.IndexRefine, faiss.downcast_index(index)).k_factor = REFINE_K_FACTOR
        count = min(len(vectors), max(TRAIN_PER_LIST * shape.nlist, MIN_IVFPQ_VECTORS))
        sample = np.random.default_rng(seed).choice(len(vectors), count, replace=False)
        # the stubs type clustering_index as an Index; it is a pointer that may be null
        ivf: Any = faiss.extract_index_ivf(index)
        # with faiss-gpu, the k-means of training (most of the build) assigns points on the GPUs
        assigner = gpu_flat(shape.dim, ivf.metric_type)
        ivf.clustering_index = assigner
        index.train(vectors[np.sort(sample)])
        ivf.clustering_index = None  # `assigner` (which owns the GPU index) is freed next
    index.add(vectors)
    return index


def gpu_flat(dim: int, metric: int) -> faiss.Index | None:
    """An exact index on every GPU faiss sees (faiss-gpu), or None (faiss-cpu, or no GPU)."""
    if not faiss.get_num_gpus():
        return None
    return faiss.index_cpu_to_all_gpus(faiss.IndexFlat(dim, metric))


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact top-k ids that ``found`` (its top-k) contains."""
    k = exact.shape[1]
    hits = [len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits) / k) if hits else 1.0


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    if nprobe:
        faiss.extract_index_ivf(index).nprobe = nprobe


def tune_nprobe(
    index: faiss.Index, queries: np.ndarray, exact: np.ndarray, target: float
) -> tuple[int, float, dict[int, float]]:
    """The smallest power-of-two ``nprobe`` whose recall reaches ``target`` -- or, when no
    ``nprobe`` does (the codes are too coarse), the smallest within 0.01 of the best recall --
    that recall, and the recall of every ``nprobe`` tried."""
    nlist = faiss.extract_index_ivf(index).nlist
    k = exact.shape[1]
    tried: dict[int, float] = {}
    nprobe = 1
    while nprobe <= min(nlist, MAX_NPROBE):
        set_nprobe(index, nprobe)
        tried[nprobe] = recall_at_k(index.search(queries, k)[1], exact)
        if tried[nprobe] >= target:
            break
        nprobe *= 2
    enough = min(target, max(tried.values()) - 0.01)
    best = next(p for p, r in tried.items() if r >= enough)
    set_nprobe(index, best)
    return best, tried[best], tried


@dataclass(frozen=True)
class Measurement:
    """Recall@``k`` of an index against exact search on ``queries`` held-out queries, its build
    time, and the median query latency (one query at a time) of the index and of an exact scan."""

    build_seconds: float
    k: int
    queries: int
    recall: float
    query_source: str
    index_ms_per_query: float
    exact_ms_per_query: float
    nprobe_recalls: dict[int, float]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["nprobe_recalls"] = {str(p): r for p, r in self.nprobe_recalls.items()}
        return data


def per_query_ms(indexes: Sequence[faiss.Index], queries: np.ndarray, k: int) -> list[float]:
    """Median milliseconds of one query searched alone (the latency a user sees) through each
    of ``indexes``, the indexes taking turns on every query so that load from other processes
    falls on all of them alike."""
    times: list[list[float]] = [[] for _ in indexes]
    for row in queries:
        for index, own in zip(indexes, times, strict=True):
            start = time.perf_counter()
            index.search(row[None], k)
            own.append(1000 * (time.perf_counter() - start))
    return [float(np.median(own)) if own else 0.0 for own in times]


def build_and_measure(
    vectors: np.ndarray,
    queries: np.ndarray,
    shape: IndexShape,
    k: int = 10,
    target_recall: float = 0.9,
    query_source: str = "held-out queries",
    latency_queries: int = 200,
    seed: int = 0,
) -> tuple[faiss.Index, IndexShape, Measurement]:
    """Build the index of ``shape``, tune ``nprobe`` (IVF-PQ), and measure recall@``k``
    against an exact scan on ``queries`` and the latency of both."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(vectors))
    start = time.perf_counter()
    index = build(vectors, shape, seed)
    build_seconds = time.perf_counter() - start
    exact_index = (
        index if shape.kind == "flat" else build(vectors, IndexShape("flat", *shape_of(vectors)))
    )
    exact = exact_index.search(queries, k)[1]
    if shape.kind == "ivfpq":
        nprobe, recall, tried = tune_nprobe(index, queries, exact, target_recall)
        shape = replace(shape, nprobe=nprobe)
    else:
        recall, tried = recall_at_k(index.search(queries, k)[1], exact), {}
    index_ms, exact_ms = per_query_ms([index, exact_index], queries[:latency_queries], k)
    measured = Measurement(
        build_seconds=build_seconds,
        k=k,
        queries=len(queries),
        recall=recall,
        query_source=query_source,
        index_ms_per_query=index_ms,
        exact_ms_per_query=exact_ms,
        nprobe_recalls=tried,
    )
    return index, shape, measured


def shape_of(vectors: np.ndarray) -> tuple[int, int]:
    return int(vectors.shape[0]), int(vectors.shape[1])
