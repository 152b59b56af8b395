"""Text-to-image search: the cached index is reused while the folder is unchanged, results are
the brute-force cosine ranking, and the export has one row per image."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from PIL import Image

from clip_lightning.cli.search import build_index, search
from clip_lightning.errors import DataError
from clip_lightning.module import CLIPModule
from clip_lightning.utils.config import register_resolvers
from tests.helpers import CONFIG_DIR
from tests.test_zeroshot import save_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def make_images(folder: Path, count: int = 7) -> Path:
    (folder / "sub").mkdir(parents=True)
    for i in range(count):
        target = folder / ("sub" if i % 3 == 0 else ".") / f"img_{i}.png"
        Image.new("RGB", (36, 36), (30 * i, 255 - 30 * i, (70 * i) % 256)).save(target)
    (folder / "readme.txt").write_text("not an image")
    return folder


class CountingModel:
    """Wraps a model's ``embed_images`` to count how many images it embeds."""

    def __init__(self, model: CLIPModule):
        self.calls = 0
        self.original = model.embed_images
        model.embed_images = self  # type: ignore[method-assign]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += images.shape[0]
        return self.original(images)


def test_index_is_cached_and_rebuilt_when_the_folder_changes(checkpoint, tmp_path):
    model = CLIPModule.load_from_checkpoint(checkpoint).eval()
    counter = CountingModel(model)
    folder = make_images(tmp_path / "images")
    first = build_index(model, folder, "fp", batch_size=3)
    assert not first.reused and counter.calls == 7
    assert first.files[0] == "img_1.png" and "sub/img_0.png" in first.files
    assert (folder / ".clip_lightning_index" / "fp" / "embeddings.npy").is_file()

    second = build_index(model, folder, "fp", batch_size=3)
    assert second.reused and counter.calls == 7
    np.testing.assert_array_equal(second.embeddings, first.embeddings)

    Image.new("RGB", (36, 36), "red").save(folder / "new.png")
    third = build_index(model, folder, "fp", batch_size=3)
    assert not third.reused and counter.calls == 15 and len(third.files) == 8
    other_model = build_index(model, folder, "other-ckpt", index_dir=tmp_path / "idx")
    assert not other_model.reused and (tmp_path / "idx" / "other-ckpt" / "files.json").is_file()


def test_search_ranks_by_cosine_and_exports_embeddings(checkpoint, tmp_path):
    folder = make_images(tmp_path / "images")
    register_resolvers()
    query = "two small red circles in the top left corner"
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "search",
            [
                f"ckpt_path={checkpoint}",
                f"images={folder}",
                f"query={query}",
                "k=4",
                f"export={tmp_path / 'out' / 'embeddings.npy'}",
                "accelerator=cpu",
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    hits = search(cfg)

    model = CLIPModule.load_from_checkpoint(checkpoint).eval()
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))
    images = model.encode_image([Image.open(folder / f) for f in files])
    scores = torch.nn.functional.cosine_similarity(images, model.encode_text([query]))
    order = torch.argsort(scores, descending=True)[:4]
    assert [name for name, _ in hits] == [files[i] for i in order]
    np.testing.assert_allclose([s for _, s in hits], scores[order].numpy(), atol=1e-5)

    exported = np.load(tmp_path / "out" / "embeddings.npy")
    assert exported.shape == (7, model.hparams.embed_dim)
    listing = json.loads((tmp_path / "out" / "embeddings.files.json").read_text())
    assert listing["files"] == files
    with Image.open(tmp_path / "run" / "search_results.png") as grid:
        assert grid.format == "PNG" and grid.width > grid.height


def test_empty_or_missing_folders_raise_data_errors(checkpoint, tmp_path):
    model = CLIPModule.load_from_checkpoint(checkpoint).eval()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("text only")
    with pytest.raises(DataError, match="no images in"):
        build_index(model, tmp_path / "empty", "fp")
    with pytest.raises(DataError, match="does not exist"):
        build_index(model, tmp_path / "missing", "fp")
    assert not os.path.exists(tmp_path / "empty" / ".clip_lightning_index")


def test_an_unreadable_image_is_skipped_and_listed_or_stops_the_build(checkpoint, tmp_path):
    model = CLIPModule.load_from_checkpoint(checkpoint).eval()
    folder = make_images(tmp_path / "images")
    (folder / "broken.jpg").write_text("not a JPEG")
    index = build_index(model, folder, "fp")
    assert index.skipped == [("broken.jpg", index.skipped[0][1])]
    assert "broken.jpg" not in index.files and len(index.files) == len(index.embeddings) == 7
    assert build_index(model, folder, "fp").skipped == index.skipped  # also when reused

    with pytest.raises(DataError) as error:
        build_index(model, folder, "fp", on_bad_image="error")
    message = str(error.value)
    assert "1 of 8 image files are unreadable (broken.jpg: " in message
    assert "on_bad_image=skip" in message and "\n" not in message
