"""Evaluation results in CLIP_benchmark's layout, so they sit beside published model figures.

CLIP_benchmark (``clip_benchmark.cli``) dumps ``{dataset, model, pretrained, task, metrics,
language}`` with fractions, not percent. Its retrieval names count the *retrieved* modality:
``image_retrieval_recall@K`` ranks images for each caption (our ``t2i``) and
``text_retrieval_recall@K`` ranks captions for each image (our ``i2t``). A retrieval dump also
states the protocol, split and numbers of images and captions it was scored on (a ``coco_1k``
mean over folds and a ``coco_5k`` figure are both ``mscoco_captions``); ``clip_benchmark build``
keeps extra keys as columns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MODEL_TYPE = "clip-lightning"
# our dataset names -> CLIP_benchmark's names of the same datasets
DATASET_NAMES = {"flickr30k": "flickr30k", "flickr8k": "flickr8k", "coco": "mscoco_captions"}
_RECALL = re.compile(r"(i2t|t2i)_r(\d+)")
# CLIP_benchmark's default output file name (its --output template)
FILE_NAME = "{dataset}_{pretrained}_{model}_{language}_{task}.json"


def retrieval_layout(results: Mapping[str, Any]) -> dict[str, Any]:
    """CLIP_benchmark's ``zeroshot_retrieval`` dump of ``clip_lightning.eval`` retrieval results."""
    metrics = {}
    for key, value in results["metrics"].items():
        match = _RECALL.fullmatch(key.split("/", 1)[-1])
        if match:
            direction, k = match.groups()
            retrieved = "image" if direction == "t2i" else "text"
            metrics[f"{retrieved}_retrieval_recall@{k}"] = value / 100.0
    name = str(results["dataset"])
    scored = {key: results[key] for key in ("protocol", "split", "images", "captions")}
    return {
        **_layout(DATASET_NAMES.get(name, name), results, "zeroshot_retrieval", metrics),
        **scored,
    }


def classification_layout(results: Mapping[str, Any]) -> dict[str, Any]:
    """CLIP_benchmark's ``zeroshot_classification`` dump of zero-shot results.

    ``mean_per_class_recall`` is the mean top-1 accuracy over the classes that have images
    (scikit-learn's balanced accuracy, which CLIP_benchmark reports).
    """
    per_class = [c["top1"] for c in results["per_class"].values() if c["count"] > 0]
    metrics = {
        "acc1": results["top1"] / 100.0,
        "acc5": results["top5"] / 100.0 if "top5" in results else math.nan,
        "mean_per_class_recall": sum(per_class) / len(per_class) / 100.0,
    }
    dataset = Path(str(results["images"])).name
    return _layout(dataset, results, "zeroshot_classification", metrics)


def file_name(layout: Mapping[str, Any]) -> str:
    """CLIP_benchmark's default file name for ``layout`` (path separators made safe)."""
    fields = {key: str(layout[key]).replace("/", "_") for key in ("dataset", "model", "language")}
    pretrained = Path(str(layout["pretrained"])).name
    return FILE_NAME.format(**fields, pretrained=pretrained, task=layout["task"])


def _layout(
    dataset: str, results: Mapping[str, Any], task: str, metrics: dict[str, float]
) -> dict[str, Any]:
    """A trained checkpoint is ``model=clip-lightning, pretrained=<checkpoint>``; a pretrained
    baseline keeps its own names (``model=ViT-B-32, pretrained=laion2b_s34b_b79k``)."""
    return {
        "dataset": dataset,
        "model": str(results.get("model") or MODEL_TYPE),
        "pretrained": str(results.get("pretrained") or results["checkpoint"]),
        "task": task,
        "metrics": metrics,
        "language": "en",
    }
