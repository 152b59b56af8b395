"""faiss indexes on synthetic unit vectors: ``auto`` picks exact search below its threshold and
an IVF-PQ that fits the memory budget above (with a re-ranking copy of the vectors where the
budget leaves room), recall@k is the overlap with a brute-force top-k, ``nprobe`` is the
smallest that reaches the target recall, and the re-ranking recovers what the codes miss."""

from __future__ import annotations

from dataclasses import replace

import faiss
import numpy as np
import pytest

from clip_lightning.errors import DataError
from clip_lightning.indexing.vectors import (
    MIN_IVFPQ_VECTORS,
    IndexShape,
    build,
    build_and_measure,
    choose_shape,
    parse_memory,
    recall_at_k,
)


def clustered_unit_vectors(count: int, dim: int, seed: int, centres: int = 64) -> np.ndarray:
    """Unit vectors around ``centres`` random directions, as embeddings of a real collection."""
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centres, dim))
    vectors = middle[rng.integers(0, centres, count)] + 0.6 * rng.standard_normal((count, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_parse_memory_and_recall_by_hand() -> None:
    assert parse_memory("4G") == 4 * 2**30 and parse_memory("512M") == 512 * 2**20
    assert parse_memory("1.5K") == 1536 and parse_memory(2048) == 2048
    with pytest.raises(DataError, match=r"index\.max_memory='lots' is not a size"):
        parse_memory("lots")
    found = np.array([[1, 2, 3], [7, 8, 9]])
    exact = np.array([[3, 2, 5], [1, 2, 3]])
    assert recall_at_k(found, exact) == pytest.approx((2 + 0) / 6)


def test_auto_is_flat_below_the_threshold_and_ivfpq_within_the_budget_above() -> None:
    assert choose_shape(999_999, 512).kind == "flat"
    shape = choose_shape(1_000_000, 512, max_memory=100 * 2**20)
    assert shape.kind == "ivfpq" and shape.nlist == 2048 and 512 % shape.m == 0
    assert shape.bytes() <= 100 * 2**20
    # the next larger code size would not fit
    assert shape.m == 64
    larger = next(m for m in range(shape.m + 1, 129) if 512 % m == 0)
    assert IndexShape("ivfpq", 1_000_000, 512, 2048, larger).bytes() > 100 * 2**20
    assert not shape.refine  # no room left for a copy of the vectors
    # room for the codes and a float16 copy (1 GiB), or only an 8-bit one
    assert choose_shape(1_000_000, 512).describe() == "IVF2048,PQ128,Refine(SQfp16) nprobe=0"
    assert choose_shape(1_000_000, 512, max_memory=700 * 2**20).refine == "SQ8"
    with pytest.raises(DataError, match=r"raise index\.max_memory"):
        choose_shape(1_000_000, 512, max_memory=8 * 2**20)
    with pytest.raises(DataError, match=r"use index\.kind=flat"):
        choose_shape(100, 512, kind="ivfpq")
    with pytest.raises(DataError, match="choose one of auto, flat, ivfpq"):
        choose_shape(100, 512, kind="hnsw")


def test_flat_is_exact_and_ivfpq_reaches_the_target_with_the_smallest_nprobe() -> None:
    vectors = clustered_unit_vectors(MIN_IVFPQ_VECTORS, 16, seed=0)
    queries = clustered_unit_vectors(200, 16, seed=1)
    _, flat, measured = build_and_measure(vectors, queries, choose_shape(len(vectors), 16))
    assert flat.kind == "flat" and measured.recall == 1.0 and measured.queries == 200

    # 150 kB: 4 code bytes + an 8-byte id per vector fit, no copy of the vectors beside them
    shape = choose_shape(len(vectors), 16, kind="ivfpq", nlist=64, max_memory=150_000)
    index, tuned, measured = build_and_measure(vectors, queries, shape, k=10, target_recall=0.48)
    assert index.ntotal == len(vectors) and (tuned.m, tuned.nlist, tuned.refine) == (4, 64, "")
    tried = measured.nprobe_recalls
    assert measured.recall == tried[tuned.nprobe] >= 0.48
    assert all(recall < 0.48 for nprobe, recall in tried.items() if nprobe < tuned.nprobe)
    assert tried[1] < tried[tuned.nprobe]  # scanning one list of 64 misses neighbours


def test_a_float16_copy_re_ranks_what_the_codes_order_coarsely(tmp_path) -> None:
    vectors = clustered_unit_vectors(MIN_IVFPQ_VECTORS, 16, seed=0)
    queries = clustered_unit_vectors(200, 16, seed=1)
    codes = choose_shape(len(vectors), 16, kind="ivfpq", nlist=64, max_memory=150_000)
    refined = choose_shape(len(vectors), 16, kind="ivfpq", nlist=64)
    assert refined == replace(codes, refine="SQfp16")
    _, _, coarse = build_and_measure(vectors, queries, codes, target_recall=1.0)
    index, tuned, measured = build_and_measure(vectors, queries, refined, target_recall=0.85)
    # every list scanned, the codes alone miss 2 in 5 neighbours; re-ranked, few are missed
    assert max(coarse.nprobe_recalls.values()) < 0.7 and measured.recall >= 0.85
    assert tuned.describe() == f"IVF64,PQ4,Refine(SQfp16) nprobe={tuned.nprobe}"
    # the file keeps the re-ranking and nprobe: a loaded index answers as the measured one
    faiss.write_index(index, str(tmp_path / "image.index"))
    loaded = faiss.read_index(str(tmp_path / "image.index"))
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])


def test_with_faiss_gpu_the_training_k_means_runs_on_the_gpus(monkeypatch) -> None:
    vectors = clustered_unit_vectors(MIN_IVFPQ_VECTORS, 16, seed=0)
    queries = clustered_unit_vectors(50, 16, seed=1)
    shape = choose_shape(len(vectors), 16, kind="ivfpq", nlist=64, max_memory=150_000)
    on_cpu = build(vectors, shape)
    moved: list[faiss.Index] = []

    def to_gpus(index: faiss.Index) -> faiss.Index:  # faiss-gpu's, on a machine without one
        moved.append(index)
        return index

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_gpus)
    on_gpus = build(vectors, shape)
    [assigner] = moved
    assert (assigner.d, assigner.metric_type) == (16, faiss.METRIC_INNER_PRODUCT)
    assert assigner.ntotal == shape.nlist  # the k-means assigned points to its centroids
    assert faiss.extract_index_ivf(on_gpus).clustering_index is None  # nothing left on the GPUs
    np.testing.assert_array_equal(on_gpus.search(queries, 10)[1], on_cpu.search(queries, 10)[1])
