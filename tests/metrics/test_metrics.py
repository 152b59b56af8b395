"""RetrievalRecall against an independent brute-force reference on small random data."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
import torch
from torch import Tensor
from torch.nn.functional import normalize

from clip_lightning.errors import NonFiniteEmbeddingError
from clip_lightning.metrics import RetrievalRecall, recall_at_k, retrieval_ranks

Data = dict[str, Tensor]


def make_data(num_images: int = 50, dim: int = 16, seed: int = 0) -> Data:
    """Random unit embeddings, 5-7 captions per image, sparse ids and shuffled caption order."""
    gen = torch.Generator().manual_seed(seed)
    image_embeddings = normalize(torch.randn(num_images, dim, generator=gen), dim=1)
    image_ids = torch.randperm(10 * num_images, generator=gen)[:num_images] + 1000
    counts = torch.randint(5, 8, (num_images,), generator=gen)
    owner = torch.repeat_interleave(torch.arange(num_images), counts)
    owner = owner[torch.randperm(owner.numel(), generator=gen)]
    noise = torch.randn(owner.numel(), dim, generator=gen)
    text_embeddings = normalize(image_embeddings[owner] + 1.5 * noise, dim=1)
    text_ids = torch.randperm(10 * owner.numel(), generator=gen)[: owner.numel()] + 7
    return {
        "image_embeddings": image_embeddings,
        "image_ids": image_ids,
        "text_embeddings": text_embeddings,
        "text_ids": text_ids,
        "text_image_ids": image_ids[owner],
    }


def brute_force(data: Data, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Full similarity matrix, argsort, and Python loops: deliberately nothing like the metric."""
    images, texts = data["image_embeddings"].double(), data["text_embeddings"].double()
    image_ids = data["image_ids"].tolist()
    text_owner = data["text_image_ids"].tolist()
    sims = images @ texts.T
    i2t = []
    for i, image_id in enumerate(image_ids):
        order = torch.argsort(sims[i], descending=True).tolist()
        i2t.append(next(pos for pos, t in enumerate(order) if text_owner[t] == image_id) + 1)
    t2i = []
    for t, owner_id in enumerate(text_owner):
        order = torch.argsort(sims[:, t], descending=True).tolist()
        t2i.append(next(pos for pos, i in enumerate(order) if image_ids[i] == owner_id) + 1)
    out: dict[str, float] = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_r{k}"] = 100.0 * sum(r <= k for r in ranks) / len(ranks)
    out["rsum"] = sum(out.values())
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        out[f"{name}_mean_rank"] = statistics.mean(ranks)
        out[f"{name}_median_rank"] = statistics.median(ranks)
    return out


def run_metric(batches: list[Data], **kwargs: object) -> dict[str, Tensor]:
    metric = RetrievalRecall(**kwargs)
    for batch in batches:
        metric.update(**batch)
    return metric.compute()


def assert_same(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


def take(data: Data, images: Tensor, texts: Tensor) -> Data:
    """A batch with the given image rows and caption rows of ``data``."""
    out = {k: v[images] for k, v in data.items() if k.startswith("image")}
    out.update({k: v[texts] for k, v in data.items() if k.startswith("text")})
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force(seed: int) -> None:
    data = make_data(seed=seed)
    expected = brute_force(data)
    # Exact comparisons rank like an argsort; the default tolerance only merges scores closer
    # than 1e-6 (seed 0 has one such pair, deep down a caption's ranking), so R@K agree too.
    result = run_metric([data], tie_tolerance=0.0)
    default = run_metric([data])
    assert list(result) == [
        "i2t_r1",
        "i2t_r5",
        "i2t_r10",
        "t2i_r1",
        "t2i_r5",
        "t2i_r10",
        "rsum",
        "i2t_mean_rank",
        "i2t_median_rank",
        "t2i_mean_rank",
        "t2i_median_rank",
        "images",
        "captions",
    ]
    assert (result["images"], result["captions"]) == (50, data["text_ids"].numel())
    for key, value in expected.items():
        assert result[key].item() == pytest.approx(value, rel=1e-5), key
        if "rank" not in key:
            assert default[key].item() == pytest.approx(value, rel=1e-5), key
    # Not a degenerate fixture: recalls are neither all 0 nor all 100.
    assert 0 < result["t2i_r1"] < result["t2i_r10"] < 100


def test_folds_are_consecutive_images_scored_alone_and_averaged() -> None:
    # COCO 1K arithmetic on a small scale: 23 images in folds of 5 (the last one holds 3)
    data = make_data(num_images=23, seed=3)
    result = run_metric([data], fold_size=5, tie_tolerance=0.0)
    order = torch.argsort(data["image_ids"])  # folds follow image id order
    folds = []
    for start in range(0, 23, 5):
        fold_ids = data["image_ids"][order[start : start + 5]]
        images = torch.isin(data["image_ids"], fold_ids)
        texts = torch.isin(data["text_image_ids"], fold_ids)
        folds.append(brute_force(take(data, images, texts)))
    assert len(folds) == 5 and "fold6/rsum" not in result
    for key in folds[0]:
        for number, fold in enumerate(folds, start=1):
            assert result[f"fold{number}/{key}"].item() == pytest.approx(fold[key], rel=1e-5)
        mean = statistics.mean(fold[key] for fold in folds)
        assert result[key].item() == pytest.approx(mean, rel=1e-5), key
    assert (result["images"], result["captions"]) == (23, data["text_ids"].numel())
    # one fold as large as the set is the plain figure
    plain = run_metric([data], tie_tolerance=0.0)
    whole = run_metric([data], fold_size=23, tie_tolerance=0.0)
    assert whole["rsum"].item() == pytest.approx(plain["rsum"].item())


def test_custom_ks() -> None:
    data = make_data()
    result = run_metric([data], ks=(2, 3), tie_tolerance=0.0)
    expected = brute_force(data, ks=(2, 3))
    assert {k for k in result if "_r" in k and "rank" not in k} == {
        "i2t_r2",
        "i2t_r3",
        "t2i_r2",
        "t2i_r3",
    }
    for key, value in expected.items():
        assert result[key].item() == pytest.approx(value, rel=1e-5), key


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_chunk_size_does_not_change_results(chunk_size: int) -> None:
    data = make_data()
    assert_same(run_metric([data], chunk_size=chunk_size), run_metric([data], chunk_size=64))


def test_several_updates_equal_one() -> None:
    data = make_data()
    num_images, num_texts = data["image_ids"].numel(), data["text_ids"].numel()
    image_splits = torch.arange(num_images).tensor_split(3)
    text_splits = torch.arange(num_texts).tensor_split([10, num_texts])
    batches = [take(data, i, t) for i, t in zip(image_splits, text_splits, strict=True)]
    assert batches[-1]["text_ids"].numel() == 0  # an update with no captions is allowed
    assert_same(run_metric(batches), run_metric([data]))


def test_duplicates_are_ignored() -> None:
    data = make_data()
    # Repeat samples as DistributedSampler padding does, within and across updates.
    repeated_images, repeated_texts = torch.tensor([0, 3, 3, 49]), torch.tensor([5, 0, 17])
    padding = take(data, repeated_images, repeated_texts)
    doubled = take(data, torch.cat([repeated_images, torch.arange(50)]), repeated_texts)
    assert_same(run_metric([data, padding, doubled]), run_metric([data]))


def test_perfect_embeddings_give_100() -> None:
    data = make_data(dim=64)
    gen = torch.Generator().manual_seed(3)
    owner = torch.searchsorted(data["image_ids"].sort().values, data["text_image_ids"])
    images = data["image_embeddings"][data["image_ids"].argsort()]
    noise = 1e-3 * torch.randn(owner.numel(), 64, generator=gen)
    data["text_embeddings"] = normalize(images[owner] + noise, dim=1)
    result = run_metric([data])
    for key, value in result.items():
        if "rank" in key:
            assert value.item() == 1.0, key
        elif key not in ("rsum", "images", "captions"):
            assert value.item() == 100.0, key
    assert result["rsum"].item() == 600.0


def test_half_precision_inputs_are_stored_as_float32() -> None:
    data = make_data()
    metric = RetrievalRecall()
    metric.update(**{k: v.half() if "embeddings" in k else v for k, v in data.items()})
    assert metric.image_embeddings[0].dtype == metric.text_embeddings[0].dtype == torch.float32
    assert set(metric.compute()) == set(run_metric([data]))


def test_reset_clears_data() -> None:
    data = make_data()
    metric = RetrievalRecall()
    metric.update(**make_data(seed=5))
    metric.compute()
    metric.reset()
    metric.update(**data)
    assert_same(metric.compute(), run_metric([data]))


def test_retrieval_ranks_and_recall_at_k() -> None:
    images = torch.eye(3)
    # Row t holds caption t's scores against the three images.
    texts = torch.tensor(
        [[0.1, 0.9, 0.0], [0.0, 1.0, 0.0], [0.6, 0.0, 0.5], [0.9, 0.0, 0.7], [0.5, 0.3, 0.2]]
    )
    owner = torch.tensor([0, 1, 2, 0, 0])
    i2t, t2i = retrieval_ranks(images, texts, owner, chunk_size=2)
    # Image 0: own caption 3 (0.9) is first. Image 1: own caption 1 (1.0) is first.
    # Image 2: its only caption scores 0.5, beaten by caption 3 of image 0 (0.7).
    assert i2t.expected_rank().tolist() == [1, 1, 2]
    assert t2i.expected_rank().tolist() == [2, 1, 2, 1, 1]
    assert recall_at_k(t2i, 1).item() == pytest.approx(60.0)
    assert recall_at_k(t2i, 2).item() == 100.0


def expected_by_enumeration(
    scores: list[list[float]], correct: list[set[int]], k: int
) -> tuple[float, float]:
    """Hit rate at ``k`` and mean rank, averaged over every order of the candidates that ties
    can produce: a stable sort by score after each permutation. Exhaustive, so tiny inputs."""
    num_candidates = len(scores[0])
    hits, ranks, orders = 0.0, 0.0, list(itertools.permutations(range(num_candidates)))
    for row, positives in zip(scores, correct, strict=True):
        for order in orders:
            ranked = sorted(order, key=lambda c: -row[c])  # stable: ties keep the permutation
            rank = next(pos for pos, c in enumerate(ranked, 1) if c in positives)
            hits += rank <= k
            ranks += rank
    count = len(scores) * len(orders)
    return 100.0 * hits / count, ranks / count


@pytest.mark.parametrize("k", [1, 2, 3])
def test_ties_give_the_expected_figures_under_random_tie_breaking(k: int) -> None:
    # Integer embeddings make exact ties: caption 1 duplicates caption 0, caption 3 ties with
    # image 0's captions for image 1, and image 2 is a copy of image 1.
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
    owner = torch.tensor([0, 0, 1, 2, 1])
    i2t, t2i = retrieval_ranks(images, texts, owner, chunk_size=2)
    sims = (images.double() @ texts.double().T).tolist()
    image_correct = [{t for t in range(5) if owner[t] == i} for i in range(3)]
    text_correct = [{int(owner[t])} for t in range(5)]
    for ranks, scores, correct in (
        (i2t, sims, image_correct),
        (t2i, [list(col) for col in zip(*sims, strict=True)], text_correct),
    ):
        recall, mean_rank = expected_by_enumeration(scores, correct, k)
        assert recall_at_k(ranks, k).item() == pytest.approx(recall, abs=1e-4)
        assert ranks.expected_rank().mean().item() == pytest.approx(mean_rank, abs=1e-9)


def test_collapsed_embeddings_score_chance_not_100() -> None:
    data = make_data()
    collapsed = {
        **data,
        "image_embeddings": torch.ones_like(data["image_embeddings"]),
        "text_embeddings": torch.ones_like(data["text_embeddings"]),
    }
    result = run_metric([collapsed])
    num_images, num_texts = 50, data["text_ids"].numel()
    for k in (1, 5, 10):
        assert result[f"t2i_r{k}"].item() == pytest.approx(100.0 * k / num_images, rel=1e-5)
        # An image with c captions among N: 1 - C(N - c, k) / C(N, k) of a random order.
        counts = torch.bincount(torch.unique(data["text_image_ids"], return_inverse=True)[1])
        chance = [1 - math.comb(num_texts - c, k) / math.comb(num_texts, k) for c in counts]
        assert result[f"i2t_r{k}"].item() == pytest.approx(100.0 * statistics.mean(chance))
    assert result["rsum"].item() < 100.0
    assert result["t2i_mean_rank"].item() == pytest.approx((num_images + 1) / 2)


def test_zero_dimensional_embeddings_score_chance() -> None:
    data = make_data()
    empty = {
        **data,
        "image_embeddings": torch.empty(50, 0),
        "text_embeddings": torch.empty(data["text_ids"].numel(), 0),
    }
    assert run_metric([empty])["t2i_r1"].item() == pytest.approx(100.0 / 50)


@pytest.mark.parametrize("side", ["image_embeddings", "text_embeddings"])
def test_non_finite_embeddings_raise_a_clear_error(side: str) -> None:
    data = make_data()
    data[side][3, 0] = float("nan")
    data[side][7] = float("inf")
    metric = RetrievalRecall()
    metric.update(**data)
    with pytest.raises(NonFiniteEmbeddingError, match=r"^2 of \d+ \w+ embeddings are NaN") as err:
        metric.compute()
    assert "\n" not in str(err.value)


def duplicated_captions(seed: int = 0) -> Data:
    """Each image's captions drawn from a few distinct texts shared across images (as in the
    synthetic dataset), with 1e-8 noise standing in for re-padding the same caption."""
    gen = torch.Generator().manual_seed(seed)
    data = make_data(num_images=40, seed=seed)
    distinct = normalize(torch.randn(12, 16, generator=gen), dim=1)
    pick = torch.randint(0, 12, (data["text_ids"].numel(),), generator=gen)
    jitter = 1e-8 * torch.randn(pick.numel(), 16, generator=gen)
    data["text_embeddings"] = distinct[pick] + jitter
    return data


@pytest.mark.parametrize("chunk_size", [1, 5, 1000])
def test_duplicate_caption_ties_do_not_depend_on_chunks_or_order(chunk_size: int) -> None:
    data = duplicated_captions()
    reference = run_metric([data], chunk_size=64)
    gen = torch.Generator().manual_seed(chunk_size)
    shuffled = take(
        data,
        torch.randperm(data["image_ids"].numel(), generator=gen),
        torch.randperm(data["text_ids"].numel(), generator=gen),
    )
    halves = [
        take(shuffled, i, t)
        for i, t in zip(
            torch.arange(40).tensor_split(2),
            torch.arange(data["text_ids"].numel()).tensor_split(2),
            strict=True,
        )
    ]
    result = run_metric(halves, chunk_size=chunk_size)
    for key in reference:
        assert result[key].item() == pytest.approx(reference[key].item(), abs=1e-4), key
    # Ties really happen here: the figures lie strictly between the optimistic and pessimistic
    # readings of the same ranks.
    i2t, _ = retrieval_ranks(
        data["image_embeddings"],
        data["text_embeddings"],
        torch.searchsorted(data["image_ids"].sort().values, data["text_image_ids"]),
    )
    optimistic = 100.0 * (i2t.better < 1).double().mean().item()
    pessimistic = 100.0 * (i2t.better + i2t.tied < 1).double().mean().item()
    assert pessimistic < reference["i2t_r1"].item() < optimistic


def test_without_ties_recall_equals_clip_benchmark_top_k() -> None:
    from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k as cb_recall_at_k

    data = make_data()
    result = run_metric([data])
    order = data["image_ids"].argsort()
    images = data["image_embeddings"][order]
    owner = torch.searchsorted(data["image_ids"][order], data["text_image_ids"])
    scores = data["text_embeddings"] @ images.T  # CLIP_benchmark's [texts, images] layout
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(owner.numel()), owner] = True
    for k in (1, 5, 10):
        t2i = (cb_recall_at_k(scores, positive, k) > 0).float().mean().item()
        i2t = (cb_recall_at_k(scores.T, positive.T, k) > 0).float().mean().item()
        assert result[f"t2i_r{k}"].item() == pytest.approx(100.0 * t2i, rel=1e-6)
        assert result[f"i2t_r{k}"].item() == pytest.approx(100.0 * i2t, rel=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_ids": torch.arange(3)}, r"image_ids must have shape \(50,\)"),
        ({"text_image_ids": torch.arange(3)}, "text_ids and text_image_ids must have shape"),
        ({"text_ids": torch.arange(3)}, "text_ids and text_image_ids must have shape"),
        ({"image_embeddings": torch.randn(50)}, "Embeddings must be 2-D"),
    ],
)
def test_update_rejects_mismatched_sizes(change: Data, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetrievalRecall().update(**{**make_data(), **change})


def test_compute_rejects_unknown_image_ids() -> None:
    data = make_data()
    data["text_image_ids"][[4, 9]] = torch.tensor([1, 99999])
    metric = RetrievalRecall()
    metric.update(**data)
    with pytest.raises(ValueError, match=r"2 caption\(s\) refer to image ids never passed"):
        metric.compute()


def test_compute_rejects_images_without_captions() -> None:
    data = make_data()
    keep = data["text_image_ids"] != data["image_ids"][7]
    metric = RetrievalRecall()
    metric.update(**take(data, torch.arange(50), keep.nonzero().squeeze(1)))
    with pytest.raises(ValueError, match=r"1 image\(s\) have no caption"):
        metric.compute()


def test_compute_rejects_mismatched_dims() -> None:
    data = make_data()
    data["text_embeddings"] = data["text_embeddings"][:, :8]
    metric = RetrievalRecall()
    metric.update(**data)
    with pytest.raises(ValueError, match="Embedding dims differ"):
        metric.compute()


@pytest.mark.filterwarnings("ignore:.*was called before the ``update``")
def test_compute_without_data() -> None:
    with pytest.raises(ValueError, match=r"got 0 image\(s\) and 0 caption\(s\)"):
        RetrievalRecall().compute()
    metric = RetrievalRecall()
    metric.update(**take(make_data(), torch.arange(0), torch.arange(5)))
    with pytest.raises(ValueError, match=r"needs at least one image and one caption, got 0 image"):
        metric.compute()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ks": ()}, "ks must be a non-empty sequence"),
        ({"ks": (0, 5)}, "ks must be a non-empty sequence"),
        ({"ks": (5, 5)}, "ks must be a non-empty sequence of distinct"),
        ({"chunk_size": 0}, "chunk_size must be positive"),
        ({"tie_tolerance": -1.0}, "tie_tolerance must be >= 0"),
    ],
)
def test_constructor_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetrievalRecall(**kwargs)


def test_peak_memory_is_bounded_by_the_block_not_the_similarity_matrix() -> None:
    """The module's promise, measured like ``bench only=[retrieval]`` (VmHWM growth in a fresh
    process after a warm-up): 2,000 images x 10,000 captions in blocks of 1,024 captions stay
    within a few blocks (a block is 1,024 x 2,000 floats, 7.8 MiB), far below the 76 MiB
    similarity matrix (a fresh block-sized tensor per block fragments the heap to ~220 MiB)."""
    from clip_lightning.benchmarks.retrieval import run

    figures = run(num_images=2000, captions_per_image=5, dim=32, chunk_size=1024, repeats=1)
    block_mib = 1024 * 2000 * 4 / 2**20
    matrix_mib = 2000 * 10_000 * 4 / 2**20
    assert figures["peak_extra_mib"] <= 4 * block_mib < matrix_mib / 2, figures
