"""The recall table marks the figures a small split makes trivial and warns about a split too
small to compare."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from clip_lightning.metrics import RetrievalRecall
from clip_lightning.utils.results import print_recall_table, to_floats, trivial_recalls


def split_metrics(num_images: int, captions_per_image: int = 5) -> dict[str, float]:
    """``test/...`` figures of random embeddings on a split of ``num_images`` images."""
    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(num_images, 8, generator=generator), dim=-1)
    owners = torch.arange(num_images).repeat_interleave(captions_per_image)
    texts = F.normalize(torch.randn(owners.numel(), 8, generator=generator), dim=-1)
    metric = RetrievalRecall()
    metric.update(images, torch.arange(num_images), texts, torch.arange(owners.numel()), owners)
    return {f"test/{key}": value for key, value in to_floats(metric.compute()).items()}


def test_a_one_image_split_is_marked_trivial_and_warned_about(capsys, caplog) -> None:
    metrics = split_metrics(1)
    assert metrics["test/rsum"] == 600.0  # every figure is 100 on one image
    with caplog.at_level(logging.WARNING):
        print_recall_table(metrics, "test", "Retrieval recall (%)")
    out = capsys.readouterr().out
    # text → image ranks 1 image: R@1/5/10 trivial; image → text ranks 5 captions: R@5/10
    assert out.count("100.00*") == 5
    assert "* trivial: K ≥ the candidates ranked" in out
    (warning,) = caplog.records
    assert "the test split has only 1 image" in warning.getMessage()
    assert trivial_recalls(metrics, "test") == ["i2t_r10", "i2t_r5", "t2i_r1", "t2i_r10", "t2i_r5"]


@pytest.mark.parametrize(
    ("num_images", "trivial", "warned"), [(8, ["t2i_r10"], True), (100, [], False)]
)
def test_larger_splits(num_images: int, trivial: list[str], warned: bool, capsys, caplog) -> None:
    metrics = split_metrics(num_images)
    with caplog.at_level(logging.WARNING):
        print_recall_table(metrics, "test", "Retrieval recall (%)")
    assert ("100.00*" in capsys.readouterr().out) == bool(trivial)
    assert trivial_recalls(metrics, "test") == trivial
    assert bool(caplog.records) == warned
