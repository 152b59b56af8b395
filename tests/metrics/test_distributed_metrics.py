"""RetrievalRecall synced over two gloo processes equals the single-process result.

The shards come from a real ``DistributedSampler`` over an odd number of caption samples, so
one rank receives a repeated sample as padding and the metric has to de-duplicate it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.functional import normalize
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from clip_lightning.metrics import RetrievalRecall
from tests.helpers.distributed import WORLD_SIZE, free_port, run_ranks

NUM_IMAGES = 13
CAPTIONS_PER_IMAGE = 5  # 65 caption samples: odd, so the sampler pads.


def make_dataset() -> TensorDataset:
    """One sample per caption, carrying its image too, as a paired evaluation loader would."""
    gen = torch.Generator().manual_seed(0)
    images = normalize(torch.randn(NUM_IMAGES, 8, generator=gen), dim=1)
    owner = torch.arange(NUM_IMAGES).repeat_interleave(CAPTIONS_PER_IMAGE)
    texts = normalize(images[owner] + torch.randn(owner.numel(), 8, generator=gen), dim=1)
    image_ids = owner * 10 + 3
    text_ids = torch.arange(owner.numel()) + 500
    return TensorDataset(images[owner], image_ids, texts, text_ids, image_ids)


def evaluate(loader: DataLoader) -> dict[str, Tensor]:
    metric = RetrievalRecall(chunk_size=4)
    for image_embeddings, image_ids, text_embeddings, text_ids, text_image_ids in loader:
        metric.update(image_embeddings, image_ids, text_embeddings, text_ids, text_image_ids)
    return metric.compute()


def worker(rank: int, port: int, out_file: str, idle_rank: int | None = None) -> None:
    """Evaluate this rank's shard; ``idle_rank`` gets no batch and rank 0 gets everything."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        dataset = make_dataset()
        if idle_rank is None:
            sampler: DistributedSampler | list[int] = DistributedSampler(
                dataset, WORLD_SIZE, rank, shuffle=True, seed=1
            )
        else:
            sampler = [] if rank == idle_rank else list(range(len(dataset)))
        result = evaluate(DataLoader(dataset, batch_size=6, sampler=sampler))
        if rank == 0:
            torch.save(result, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_process_result_equals_single_process(tmp_path: Path) -> None:
    dataset = make_dataset()
    sampler = DistributedSampler(dataset, WORLD_SIZE, 0, shuffle=True, seed=1)
    assert sampler.total_size > len(dataset)  # the fixture really exercises padding

    out_file = tmp_path / "rank0.pt"
    run_ranks(worker, free_port(), str(out_file))

    distributed = torch.load(out_file)
    single = evaluate(DataLoader(dataset, batch_size=6))
    assert distributed.keys() == single.keys()
    for key in single:
        assert torch.equal(distributed[key], single[key]), key


@pytest.mark.distributed
def test_a_rank_without_batches_neither_hangs_nor_changes_the_result(tmp_path: Path) -> None:
    # An iterable eval stream can leave a rank with nothing; its empty states must sync.
    out_file = tmp_path / "rank0.pt"
    run_ranks(worker, free_port(), str(out_file), 1)
    distributed = torch.load(out_file)
    single = evaluate(DataLoader(make_dataset(), batch_size=6))
    for key in single:
        assert torch.equal(distributed[key], single[key]), key
