"""Zero-shot image classification with a trained CLIP model.

Each class becomes a text embedding: its name is put into every prompt template, the
normalised embeddings are averaged and renormalised (prompt ensembling, as in the CLIP paper),
and every image is assigned the class whose embedding is most similar. The images come from an
``ImageFolder`` layout (one sub-folder per class); no labels are used for anything but scoring.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torchmetrics.functional.classification import multiclass_accuracy
from torchvision.datasets import ImageFolder

from clip_lightning.data.records import FileImage, load_rgb
from clip_lightning.embedding import embed_images, embed_texts
from clip_lightning.errors import DataError
from clip_lightning.module import CLIPModule


def class_name(folder: str) -> str:
    """Folder name -> prompt text: ``golden_retriever`` -> ``golden retriever``."""
    return folder.replace("_", " ").strip()


def _load_image(path: str) -> Image.Image:
    # module-level (not a lambda) so DataLoader workers can pickle it
    return load_rgb(FileImage(Path(path)))


def image_folder(images: str | Path | None, transform: Callable | None = None) -> ImageFolder:
    """Open ``images`` as an ImageFolder of at least two classes, or raise :class:`DataError`."""
    if not images:
        raise DataError("no image folder given; pass images=DIR with one sub-folder per class")
    root = Path(images).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist; pass images=DIR")
    try:
        dataset = ImageFolder(str(root), transform=transform, loader=_load_image)
    except FileNotFoundError as exc:
        raise DataError(
            f"{str(root)!r} is not a usable image folder ({exc}); put the images of each class "
            "in their own sub-folder, e.g. DIR/cat/1.jpg and DIR/dog/2.jpg"
        ) from exc
    if len(dataset.classes) < 2:
        raise DataError(
            f"{str(root)!r} has only one class folder ({dataset.classes[0]!r}); zero-shot "
            "classification needs at least two: add one sub-folder per class"
        )
    return dataset


def class_embeddings(
    model: CLIPModule, classnames: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """``[num_classes, D]``: per class, the mean of its normalised prompt embeddings, renormalised.

    Templates mark the class name with ``{}``, e.g. ``"a photo of a {}."``.
    """
    if not templates or any("{}" not in t for t in templates):
        raise DataError(
            f"zeroshot.templates must be a non-empty list of prompts with a {{}} placeholder "
            f"for the class name, got {list(templates)}"
        )
    prompts = embed_texts(model, [t.format(name) for name in classnames for t in templates])
    per_class = prompts.view(len(classnames), len(templates), -1)
    return F.normalize(per_class.mean(dim=1), dim=-1)


def image_embeddings(
    model: CLIPModule, dataset: ImageFolder, batch_size: int = 64, num_workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings ``[N, D]`` and labels ``[N]`` of every image in ``dataset``, in order."""
    embeddings = embed_images(model, dataset, batch_size=batch_size, num_workers=num_workers)
    return embeddings, torch.tensor(dataset.targets)


def read_lines(path: str | Path, what: str) -> list[str]:
    """Non-empty lines of a text file, or the list in a YAML file (``.yaml``/``.yml``)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{what} file {str(file)!r} does not exist; fix the path")
    if file.suffix in (".yaml", ".yml"):
        loaded = OmegaConf.to_container(OmegaConf.load(file))
        if not isinstance(loaded, list):
            raise DataError(f"{what} file {str(file)!r} must hold a YAML list, one entry each")
        return [str(line) for line in loaded]
    return [line.strip() for line in file.read_text().splitlines() if line.strip()]


def folder_classnames(dataset: ImageFolder, classnames_file: str | Path | None = None) -> list[str]:
    """Prompt names of ``dataset``'s classes: from its folders, or one line each of
    ``classnames_file`` in the sorted order of the folders."""
    if classnames_file is None:
        return [class_name(c) for c in dataset.classes]
    names = read_lines(classnames_file, "class names")
    if len(names) != len(dataset.classes):
        raise DataError(
            f"{str(classnames_file)!r} names {len(names)} classes but the image folder has "
            f"{len(dataset.classes)}; give one name per class folder, in sorted folder order"
        )
    return names


@dataclass
class ZeroShotResult:
    """Accuracies in percent; ``per_class`` maps class name -> (top-1 accuracy, image count)."""

    top_k: dict[int, float]
    per_class: dict[str, tuple[float, int]]
    num_images: int

    def to_dict(self) -> dict[str, object]:
        return {
            **{f"top{k}": v for k, v in self.top_k.items()},
            "num_images": self.num_images,
            "num_classes": len(self.per_class),
            "per_class": {
                name: {"top1": acc, "count": count} for name, (acc, count) in self.per_class.items()
            },
        }


def score(
    logits: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str], ks: Sequence[int]
) -> ZeroShotResult:
    """Top-k accuracies and per-class top-1 accuracy of ``logits`` ``[N, C]``.

    With fewer than ``k`` classes every image is trivially right in its top ``k``, so ``k`` is
    capped at the number of classes (torchmetrics rejects larger values).
    """
    num_classes = len(classnames)
    top_k = {
        k: 100.0
        * float(
            multiclass_accuracy(
                logits, labels, num_classes, top_k=min(k, num_classes), average="micro"
            )
        )
        for k in ks
    }
    per_class_acc = multiclass_accuracy(logits, labels, num_classes, top_k=1, average="none")
    counts = torch.bincount(labels, minlength=num_classes)
    per_class = {
        name: (100.0 * float(per_class_acc[c]), int(counts[c])) for c, name in enumerate(classnames)
    }
    return ZeroShotResult(top_k=top_k, per_class=per_class, num_images=len(labels))


def classify(
    model: CLIPModule,
    dataset: ImageFolder,
    classnames: Sequence[str],
    templates: Sequence[str],
    ks: Sequence[int] = (1, 5),
    batch_size: int = 64,
    num_workers: int = 0,
) -> ZeroShotResult:
    """Score every image of ``dataset`` against the prompt embeddings of ``classnames``."""
    classes = class_embeddings(model, classnames, templates)
    images, labels = image_embeddings(model, dataset, batch_size, num_workers)
    return score(images @ classes.T, labels, classnames, ks)


def zeroshot_classify(
    model: CLIPModule,
    images: str | Path,
    templates: Sequence[str],
    ks: Sequence[int] = (1, 5),
    batch_size: int = 64,
    num_workers: int = 0,
    classnames_file: str | Path | None = None,
) -> ZeroShotResult:
    """Classify every image under ``images`` against its class folders' names."""
    dataset = image_folder(images, transform=model.image_encoder.transform())
    classnames = folder_classnames(dataset, classnames_file)
    return classify(model, dataset, classnames, templates, ks, batch_size, num_workers)
