"""Plot functions write valid PNGs of the requested size and return exactly what they drew."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clip_lightning import plots


def colour_squares(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (48, 40), (40 * i % 256, 255 - 30 * i, 90)) for i in range(n)]


def embeddings(n: int, dim: int = 16, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def assert_png(path, size: tuple[int, int]) -> None:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
        assert np.asarray(image.convert("L")).std() > 0  # not a blank canvas


def test_similarity_heatmap_draws_the_similarity_matrix(tmp_path):
    images, texts = embeddings(5), embeddings(4, seed=1)
    captions = [f"caption number {i} with a rather long description of a scene" for i in range(4)]
    matrix = plots.similarity_heatmap(
        images, texts, colour_squares(5), captions, tmp_path / "heat.png", figsize=(8, 5), dpi=50
    )
    np.testing.assert_allclose(matrix, (texts @ images.T).numpy(), rtol=1e-6, atol=1e-6)
    assert matrix.shape == (4, 5)
    assert_png(tmp_path / "heat.png", (400, 250))


def test_retrieval_grids_show_the_top_k_in_order(tmp_path):
    similarity = torch.tensor([[0.1, 0.9, 0.3, 0.5], [0.8, 0.2, 0.7, 0.0]])
    order = plots.text_to_image_grid(
        ["query a", "query b"],
        similarity,
        colour_squares(4),
        tmp_path / "t2i.png",
        k=3,
        targets=[1, None],
        labels=["a.png", "b.png", "c.png", "d.png"],
        figsize=(6, 4),
        dpi=60,
    )
    np.testing.assert_array_equal(order, [[1, 3, 2], [0, 2, 1]])
    assert_png(tmp_path / "t2i.png", (360, 240))

    order = plots.image_to_text_topk(
        colour_squares(2),
        similarity,
        ["w", "x", "y", "z"],
        tmp_path / "i2t.png",
        k=10,
        correct=[{1}, {2}],
        figsize=(7, 3),
        dpi=40,
    )
    assert order.shape == (2, 4)  # k is capped at the number of captions
    np.testing.assert_array_equal(order[:, 0], [1, 0])
    assert_png(tmp_path / "i2t.png", (280, 120))


def test_training_curves(tmp_path):
    path = plots.training_curves(
        [(step, 5.0 / (step + 1)) for step in range(20)],
        {"i2t_r1": [(0, 10.0), (1, 25.0)], "t2i_r1": [(0, 8.0), (1, 20.0)], "rsum": []},
        tmp_path / "curves.png",
        figsize=(6, 3),
        dpi=50,
    )
    assert_png(path, (300, 150))


def test_one_epoch_curves_have_whole_number_axes() -> None:
    # a one-epoch run: one validation point, four steps
    fig = plots.curves_figure([(step, 3.0 - step) for step in range(4)], {"i2t_r1": [(0, 12.5)]})
    loss_ax, recall_ax = fig.axes
    assert recall_ax.get_xlim() == (-0.5, 0.5)
    assert [t for t in recall_ax.get_xticks() if -0.5 <= t <= 0.5] == [0.0]
    assert loss_ax.get_xlim() == (-0.5, 3.5)
    assert all(float(t).is_integer() for t in loss_ax.get_xticks())
