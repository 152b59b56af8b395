"""Pictures of what a CLIP model has learned: similarity heatmaps, retrieval grids, curves.

Figures are drawn on ``matplotlib.figure.Figure`` objects directly (the Agg canvas, no pyplot),
so plotting never touches global backend state and works on headless training nodes. Each
function saves one PNG of a predictable size (``figsize`` x ``dpi``; no tight bounding box)
and returns the numbers it drew, so tests and callers can check them.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from clip_lightning.data.records import to_rgb

DPI = 100
_HIT = "#1a9641"  # a correct match
_THUMB_PX = 96


def _thumb(image: Image.Image) -> np.ndarray:
    """A small RGB copy for drawing: full-size images make large, slow PNGs."""
    copy = to_rgb(image).copy()
    copy.thumbnail((_THUMB_PX, _THUMB_PX))
    return np.asarray(copy)


def _wrap(text: str, width: int, max_chars: int = 90) -> str:
    return textwrap.fill(textwrap.shorten(text, max_chars, placeholder=" …"), width)


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


def _numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


def similarity_heatmap(
    image_embeddings: torch.Tensor | np.ndarray,
    text_embeddings: torch.Tensor | np.ndarray,
    images: Sequence[Image.Image],
    captions: Sequence[str],
    path: str | Path,
    title: str = "Cosine similarity of images and captions",
    figsize: tuple[float, float] | None = None,
    dpi: int = DPI,
) -> np.ndarray:
    """Heatmap of caption-image similarities with each image drawn above its column.

    For matching pairs (caption ``i`` describes image ``i``) a well-aligned model shows a bright
    diagonal. Returns the drawn matrix, ``[num_captions, num_images]``: row ``t``, column ``i``
    is ``text_embeddings[t] · image_embeddings[i]`` (the cosine if both are L2-normalised).
    """
    image_emb, text_emb = _numpy(image_embeddings), _numpy(text_embeddings)
    if len(images) != len(image_emb) or len(captions) != len(text_emb):
        raise ValueError(
            f"got {len(images)} images for {len(image_emb)} image embeddings and "
            f"{len(captions)} captions for {len(text_emb)} text embeddings"
        )
    matrix = text_emb @ image_emb.T
    num_texts, num_images = matrix.shape
    if figsize is None:
        figsize = (4.5 + 0.9 * num_images, 1.6 + 0.75 * num_texts)
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    heat = ax.imshow(matrix, cmap="viridis", vmin=min(0.0, matrix.min()), vmax=matrix.max())
    for column, image in enumerate(images):
        ax.imshow(_thumb(image), extent=(column - 0.45, column + 0.45, -0.6, -1.45))
    if num_texts * num_images <= 400:
        middle = (matrix.max() + matrix.min()) / 2
        for row in range(num_texts):
            for column in range(num_images):
                value = matrix[row, column]
                colour = "black" if value > middle else "white"
                ax.text(
                    column, row, f"{value:.2f}", ha="center", va="center", fontsize=8, color=colour
                )
    ax.set_xlim(-0.5, num_images - 0.5)
    ax.set_ylim(num_texts - 0.5, -1.5)
    ax.set_xticks([])
    ax.set_yticks(range(num_texts), [_wrap(c, 40) for c in captions], fontsize=8)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(title)
    fig.colorbar(heat, ax=ax, shrink=0.7, label="similarity")
    _save(fig, path, dpi)
    return matrix


def _top_k(similarity: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``k`` best columns per row, best first (stable on ties)."""
    k = min(k, similarity.shape[1])
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(similarity, order, axis=1)


def text_to_image_grid(
    queries: Sequence[str],
    similarity: torch.Tensor | np.ndarray,
    images: Sequence[Image.Image],
    path: str | Path,
    k: int = 5,
    targets: Sequence[int | None] | None = None,
    labels: Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int = DPI,
) -> np.ndarray:
    """One row per text query: its ``k`` best images, scores above them.

    ``similarity`` is ``[num_queries, num_images]``; an image equal to the query's ``targets``
    entry is framed in green. ``labels`` (e.g. file names) are printed under the images.
    Returns the ``[num_queries, k]`` indices drawn, best first.
    """
    scores_all = _numpy(similarity)
    order, scores = _top_k(scores_all, k)
    rows, k = order.shape
    if figsize is None:
        figsize = (3.2 + 1.7 * k, 0.4 + 1.9 * rows)
    fig = Figure(figsize=figsize, layout="constrained")
    grid = fig.add_gridspec(rows, k + 1, width_ratios=[1.8] + [1.0] * k)
    for row, query in enumerate(queries):
        text_ax = fig.add_subplot(grid[row, 0])
        text_ax.axis("off")
        text_ax.text(
            0.0,
            0.5,
            _wrap(query, 26),
            va="center",
            ha="left",
            fontsize=9,
            transform=text_ax.transAxes,
        )
        for rank in range(k):
            index = int(order[row, rank])
            ax = fig.add_subplot(grid[row, rank + 1])
            ax.imshow(_thumb(images[index]))
            ax.set_xticks([])
            ax.set_yticks([])
            hit = targets is not None and targets[row] == index
            ax.set_title(
                f"#{rank + 1}  {scores[row, rank]:.3f}", fontsize=8, color=_HIT if hit else "black"
            )
            if hit:
                for spine in ax.spines.values():
                    spine.set_edgecolor(_HIT)
                    spine.set_linewidth(3)
            if labels is not None:
                ax.set_xlabel(textwrap.shorten(labels[index], 24, placeholder="…"), fontsize=7)
    _save(fig, path, dpi)
    return order


def image_to_text_topk(
    images: Sequence[Image.Image],
    similarity: torch.Tensor | np.ndarray,
    captions: Sequence[str],
    path: str | Path,
    k: int = 5,
    correct: Sequence[set[int]] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int = DPI,
) -> np.ndarray:
    """One row per image: the image and its ``k`` best captions with scores.

    ``similarity`` is ``[num_images, num_captions]``; captions in the image's ``correct`` set
    are printed in green. Returns the ``[num_images, k]`` caption indices drawn, best first.
    """
    scores_all = _numpy(similarity)
    order, scores = _top_k(scores_all, k)
    rows, k = order.shape
    if figsize is None:
        figsize = (9.0, 0.4 + max(1.6, 0.3 * k + 0.3) * rows)
    fig = Figure(figsize=figsize, layout="constrained")
    grid = fig.add_gridspec(rows, 2, width_ratios=[1.0, 4.0])
    for row, image in enumerate(images):
        image_ax = fig.add_subplot(grid[row, 0])
        image_ax.imshow(_thumb(image))
        image_ax.set_xticks([])
        image_ax.set_yticks([])
        text_ax = fig.add_subplot(grid[row, 1])
        text_ax.axis("off")
        for rank in range(k):
            index = int(order[row, rank])
            hit = correct is not None and index in correct[row]
            line = f"{rank + 1}. {scores[row, rank]:.3f}  {textwrap.shorten(captions[index], 80)}"
            text_ax.text(
                0.0,
                1.0 - (rank + 0.5) / k,
                line,
                va="center",
                ha="left",
                fontsize=9,
                color=_HIT if hit else "black",
                transform=text_ax.transAxes,
            )
    _save(fig, path, dpi)
    return order


def curves_figure(
    losses: Sequence[tuple[int, float]],
    recalls: Mapping[str, Sequence[tuple[int, float]]],
    figsize: tuple[float, float] = (11.0, 4.0),
) -> Figure:
    """Training loss against step (left) and validation recall curves against epoch (right)."""
    fig = Figure(figsize=figsize, layout="constrained")
    loss_ax, recall_ax = fig.subplots(1, 2)
    if losses:
        steps, values = zip(*losses, strict=True)
        loss_ax.plot(steps, values, lw=1.2)
    loss_ax.set(title="training loss", xlabel="step", ylabel="loss")
    _count_axis(loss_ax, [step for step, _ in losses])
    loss_ax.grid(alpha=0.3)
    for name, points in recalls.items():
        if points:
            epochs, values = zip(*points, strict=True)
            recall_ax.plot(epochs, values, marker="o", label=name)
    recall_ax.set(title="validation recall", xlabel="epoch", ylabel="recall (%)")
    _count_axis(recall_ax, [epoch for points in recalls.values() for epoch, _ in points])
    recall_ax.grid(alpha=0.3)
    if any(recalls.values()):
        recall_ax.legend(fontsize=8)
    return fig


def _count_axis(ax: Axes, xs: Sequence[int]) -> None:
    """An x axis of steps or epochs: whole-number ticks, half a unit of room around the data
    (matplotlib would centre a single point on a -0.04..0.04 axis)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if xs:
        ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)


def training_curves(
    losses: Sequence[tuple[int, float]],
    recalls: Mapping[str, Sequence[tuple[int, float]]],
    path: str | Path,
    figsize: tuple[float, float] = (11.0, 4.0),
    dpi: int = DPI,
) -> Path:
    """:func:`curves_figure` saved as a PNG."""
    return _save(curves_figure(losses, recalls, figsize), path, dpi)


def wise_ft_curve(
    rows: Sequence[Mapping[str, float]],
    split: str,
    path: str | Path,
    figsize: tuple[float, float] = (6.0, 4.5),
    dpi: int = DPI,
) -> Path:
    """Target retrieval R@1 of each WiSE-FT α against its zero-shot top-1 (or against α when
    no zero-shot images were scored), each point labelled with its α."""
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    zeroshot = all("zeroshot/top1" in row for row in rows)
    xs = [row["zeroshot/top1"] if zeroshot else row["alpha"] for row in rows]
    for key, label in (("i2t_r1", "image → text R@1"), ("t2i_r1", "text → image R@1")):
        ys = [row[f"{split}/{key}"] for row in rows]
        ax.plot(xs, ys, marker="o", label=label)
        if zeroshot:
            for x, y, row in zip(xs, ys, rows, strict=True):
                ax.annotate(
                    f"α={row['alpha']:g}",
                    (x, y),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    ax.set(
        title="WiSE-FT: fine-tuned task vs zero-shot" if zeroshot else "WiSE-FT",
        xlabel="zero-shot top-1 (%)" if zeroshot else "α (0 = pretrained, 1 = fine-tuned)",
        ylabel=f"{split} retrieval R@1 (%)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, dpi)
