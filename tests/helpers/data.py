"""On-disk datasets in every supported format, with the awkward images real downloads contain.

Each builder writes a small dataset whose first images are a grayscale JPEG, a CMYK JPEG, a PNG
saved under a ``.jpg`` name and an RGBA PNG, and whose captions carry trailing whitespace and
newlines; COCO images get 5-7 captions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image

from clip_lightning.utils.config import register_resolvers
from tests.helpers import CONFIG_DIR, TINY_TRAIN_MODEL_OVERRIDES

LOADER = [
    "dataset.batch_size=4",
    "dataset.eval_batch_size=8",
    "dataset.num_workers=0",
    "dataset.pin_memory=false",
]
IMAGE_CONFIG = {
    "input_size": (3, 32, 32),
    "mean": (0.5, 0.5, 0.5),
    "std": (0.25, 0.25, 0.25),
    "interpolation": "bicubic",
    "crop_pct": 0.875,
}


def picture(seed: int, size: tuple[int, int] = (50, 38)) -> Image.Image:
    """Procedural RGB content: a colour gradient plus noise, different for every seed."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0 : size[1], 0 : size[0]]
    base = rng.integers(0, 255, 3)
    pixels = (base + xs[..., None] * 3 + ys[..., None] * 2) % 256
    pixels = pixels + rng.integers(0, 30, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def file_name(stem: str | int, index: int) -> str:
    """Image 3 is an RGBA PNG and is named like one; all others end in .jpg."""
    return f"{stem}.png" if index == 3 else f"{stem}.jpg"


def write_image(path: Path, index: int) -> None:
    """Images 0-3 are the awkward kinds (grayscale JPEG, CMYK JPEG, PNG named .jpg, RGBA PNG);
    the rest are plain RGB JPEGs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = picture(index)
    if index == 0:
        image.convert("L").save(path, "JPEG")
    elif index == 1:
        image.convert("CMYK").save(path, "JPEG")
    elif index == 2:
        image.save(path, "PNG")
    elif index == 3:
        rgba = image.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(path, "PNG")
    else:
        image.save(path, "JPEG")


def truncate(path) -> None:
    """Keep the JPEG header and a little scan data: passes the header check, fails the decode."""
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\xff\xda") + 40])


def captions_of(index: int, count: int = 5) -> list[str]:
    """Distinct captions with the whitespace mess of real annotation files."""
    return [
        f"image {index} caption {j} \n" if j % 2 else f"  image {index} caption {j}  "
        for j in range(count)
    ]


def split_of(index: int, n_val: int, n_test: int, total: int) -> str:
    if index >= total - n_test:
        return "test"
    return "val" if index >= total - n_test - n_val else "train"


def build_karpathy(
    root: Path, total: int = 14, n_val: int = 3, n_test: int = 3, coco: bool = False
) -> Path:
    """``dataset_flickr30k.json`` + ``images/`` (or ``dataset_coco.json`` + ``val2014/``)."""
    entries = []
    for i in range(total):
        split = split_of(i, n_val, n_test, total)
        split = "restval" if coco and split == "train" and i % 2 else split
        name = file_name(f"COCO_val2014_{i:012d}" if coco else 1000 + i, i)
        entry = {
            "filename": name,
            "imgid": i,
            "split": split,
            "sentences": [{"raw": c, "tokens": c.split()} for c in captions_of(i)],
        }
        if coco:
            entry |= {"filepath": "val2014", "cocoid": 500 + i}
            write_image(root / "val2014" / name, i)
        else:
            write_image(root / "images" / name, i)
        entries.append(entry)
    name = "dataset_coco.json" if coco else "dataset_flickr30k.json"
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(
        json.dumps({"images": entries, "dataset": "coco" if coco else "flickr30k"})
    )
    return root


def build_coco(root: Path, n_train: int = 10, n_val: int = 6) -> Path:
    """``annotations/captions_{train,val}2017.json`` + ``train2017/``, ``val2017/``.

    Images have 5-7 captions."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    index = 0
    for part, count in (("train2017", n_train), ("val2017", n_val)):
        images, annotations = [], []
        for _ in range(count):
            image_id = 9000 + index
            name = file_name(f"{image_id:012d}", index)
            write_image(root / part / name, index)
            images.append({"id": image_id, "file_name": name, "width": 50, "height": 38})
            for j, caption in enumerate(captions_of(index, 5 + index % 3)):
                annotations.append(
                    {"id": image_id * 10 + j, "image_id": image_id, "caption": caption}
                )
            index += 1
        data = {"images": images, "annotations": annotations}
        (root / "annotations" / f"captions_{part}.json").write_text(json.dumps(data))
    return root


MALFORMED_ROW = "1004.jpg| 4   A dog runs across the grass ."


def build_kaggle(root: Path, total: int = 16) -> Path:
    """``results.csv`` (with the malformed row of the public file) + ``flickr30k_images/``."""
    lines = ["image_name| comment_number| comment"]
    for i in range(total):
        name = file_name(1000 + i, i)
        write_image(root / "flickr30k_images" / name, i)
        for j, caption in enumerate(captions_of(i)):
            if name == "1004.jpg" and j == 4:
                lines.append(MALFORMED_ROW)
            else:
                lines.append(f"{name}| {j}| {caption.strip()}")
    (root / "results.csv").write_text("\n".join(lines) + "\n")
    return root


def hf_columns(total: int, n_val: int = 3, n_test: int = 3) -> dict[str, list]:
    return {
        "caption": [captions_of(i) for i in range(total)],
        "split": [split_of(i, n_val, n_test, total) for i in range(total)],
        "img_id": [str(i) for i in range(total)],
        "filename": [file_name(1000 + i, i) for i in range(total)],
    }


def build_hf_disk(root: Path, total: int = 14) -> Path:
    """A ``save_to_disk`` folder with a ``datasets.Image`` column (pixels inside), nlphuji-style."""
    staging = root.parent / f"{root.name}-files"
    columns = hf_columns(total)
    for i, name in enumerate(columns["filename"]):
        write_image(staging / name, i)
    columns["image"] = [str(staging / name) for name in columns["filename"]]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.List(datasets.Value("string")),
            "split": datasets.Value("string"),
            "img_id": datasets.Value("string"),
            "filename": datasets.Value("string"),
        }
    )
    dataset = datasets.Dataset.from_dict(columns, features=features)
    dataset = dataset.map(lambda row: row, features=features)  # embeds the image bytes
    datasets.DatasetDict({"test": dataset}).save_to_disk(str(root))
    shutil.rmtree(staging)  # the pixels must live inside the dataset
    return root


def build_parquet(root: Path, total: int = 14) -> Path:
    """Parquet files per split whose image column holds file paths relative to the folder."""
    columns = hf_columns(total)
    for i, name in enumerate(columns["filename"]):
        write_image(root / "images" / name, i)
    table = datasets.Dataset.from_dict(
        {
            "file": [f"images/{n}" for n in columns["filename"]],
            "captions": columns["caption"],
            "split": columns["split"],
        }
    )
    for split in ("train", "val", "test"):
        part = table.filter(lambda row, s=split: row["split"] == s).remove_columns("split")
        (root / "data").mkdir(parents=True, exist_ok=True)
        part.to_parquet(str(root / "data" / f"{split}-00000.parquet"))
    return root


def build_open_clip_csv(root: Path, total: int = 40) -> Path:
    """Your own data, open_clip's convention: ``data.csv`` with ``filepath,title`` rows (two
    captions per image, paths relative to the folder), no split and no id column."""
    lines = ["filepath,title"]
    for i in range(total):
        name = file_name(f"own_{i:03d}", i)
        write_image(root / "images" / name, i)
        lines += [f"images/{name},{caption.strip()}" for caption in captions_of(i, 2)]
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    return root


def build_hf_minimal(root: Path, total: int = 40) -> Path:
    """Your own data as ``save_to_disk`` of one train split with only ``image`` (pixels inside)
    and ``text`` columns: no split, no id."""
    images = [picture(i) for i in range(total)]
    texts = [captions_of(i, 1)[0].strip() for i in range(total)]
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    table = datasets.Dataset.from_dict({"image": images, "text": texts}, features=features)
    datasets.DatasetDict({"train": table}).save_to_disk(str(root))
    return root


PARQUET_COLUMNS = [
    "dataset.columns.image=file",
    "dataset.columns.caption=captions",
    "dataset.columns.split=null",
    "dataset.columns.image_id=null",
]

BUILDERS = {
    "karpathy": build_karpathy,
    "coco": build_coco,
    "kaggle_csv": build_kaggle,
    "hf_disk": build_hf_disk,
    "parquet": build_parquet,
}


def compose_data(dataset: str, root: Path | None, tmp_path: Path, *extra: str) -> DictConfig:
    """The tiny train config on ``dataset=<dataset> dataset.root=<root>``, composed as the CLI
    would (``HydraConfig`` set, outputs under ``tmp_path``)."""
    register_resolvers()
    overrides = [*TINY_TRAIN_MODEL_OVERRIDES, f"dataset={dataset}", *LOADER, *extra]
    if root is not None:
        overrides.append(f"dataset.root={root}")
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path)
        cfg.paths.data_dir = str(tmp_path / "data")
    return cfg


# Zero-shot image folders: one class per colour, squares of that colour on grey
COLOURS = {
    "dark_red": (150, 20, 20),
    "green": (30, 170, 60),
    "blue": (40, 60, 220),
    "yellow": (230, 220, 40),
    "white": (245, 245, 245),
    "purple": (140, 50, 180),
}


def make_folder(root: Path, colours: dict[str, tuple[int, int, int]], per_class: int = 3) -> Path:
    """An ImageFolder with one sub-folder per colour name, ``per_class`` squares each."""
    for c, (name, rgb) in enumerate(colours.items()):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = Image.new("RGB", (40, 40), (30, 30, 30))
            image.paste(Image.new("RGB", (20 + 4 * i, 20 + 4 * i), rgb), (2 * c, 3 * i))
            image.save(root / name / f"{i}.png")
    return root
