"""Text-to-image search over a folder: the cached embeddings are reused while the folder is
unchanged and never written inside it, several queries are answered in one call with the
brute-force cosine ranking, and the export has one row per image."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from PIL import Image

from clip_lightning.cli.search import search
from clip_lightning.cli.task import run_task
from clip_lightning.errors import DataError
from clip_lightning.indexing.folder import build_folder_index
from clip_lightning.module import CLIPModule
from tests.helpers.tasks import compose_config


@pytest.fixture
def checkpoint(tiny_checkpoint: Path) -> Path:
    """The session's tiny checkpoint."""
    return tiny_checkpoint


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


def listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_index_is_cached_outside_the_folder_and_rebuilt_when_it_changes(checkpoint, tmp_path):
    model = CLIPModule.load_from_checkpoint(checkpoint).eval()
    counter = CountingModel(model)
    folder = make_images(tmp_path / "images")
    before = listing(folder)
    cache = tmp_path / "cache"
    first = build_folder_index(model, folder, "fp", cache, batch_size=3)
    assert not first.reused and counter.calls == 7
    assert first.files[0] == "img_1.png" and "sub/img_0.png" in first.files
    assert listing(folder) == before  # nothing written inside the user's folder
    (entry,) = cache.iterdir()
    assert {p.name for p in entry.iterdir()} == {"embeddings.npy", "manifest.json"}

    second = build_folder_index(model, folder, "fp", cache, batch_size=3)
    assert second.reused and counter.calls == 7
    np.testing.assert_array_equal(second.embeddings, first.embeddings)

    Image.new("RGB", (36, 36), "red").save(folder / "new.png")
    third = build_folder_index(model, folder, "fp", cache, batch_size=3)
    assert not third.reused and counter.calls == 15 and len(third.files) == 8
    assert not build_folder_index(model, folder, "other-ckpt", cache).reused
    assert len(list(cache.iterdir())) == 2  # one entry per model and folder

    # a damaged or edited manifest is data that does not fit: the folder is embedded again
    (entry / "manifest.json").write_text('{"fingerprint": 3, "files": "x"}')
    assert not build_folder_index(model, folder, "fp", cache).reused


def test_search_ranks_by_cosine_and_exports_embeddings(checkpoint, tmp_path):
    folder = make_images(tmp_path / "images")
    queries = ["two small red circles in the top left corner", "a green square", "blue sky"]
    (tmp_path / "queries.txt").write_text(f"{queries[2]}\n\n")
    cfg = compose_config(
        "search",
        [
            f"ckpt_path={checkpoint}",
            f"images={folder}",
            f"query=[{queries[0]},{queries[1]}]",
            f"queries_file={tmp_path / 'queries.txt'}",
            "k=4",
            f"export={tmp_path / 'out' / 'embeddings.npy'}",
            f"cache_dir={tmp_path / 'cache'}",
            "accelerator=cpu",
        ],
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    results = search(cfg)

    model = CLIPModule.load_from_checkpoint(checkpoint).eval()
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))
    images = model.encode_image([Image.open(folder / f) for f in files])
    assert [query for query, _ in results] == queries
    for query, hits in results:
        scores = torch.nn.functional.cosine_similarity(images, model.encode_text([query]))
        order = torch.argsort(scores, descending=True)[:4]
        assert [hit.image for hit in hits] == [files[i] for i in order]
        assert [hit.rank for hit in hits] == [1, 2, 3, 4]
        np.testing.assert_allclose([h.score for h in hits], scores[order].numpy(), atol=1e-5)
    written = json.loads((tmp_path / "run" / "search_results.json").read_text())
    assert [r["query"] for r in written["results"]] == queries
    assert written["results"][2]["hits"][0]["image"] == results[2][1][0].image

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
        build_folder_index(model, tmp_path / "empty", "fp", tmp_path / "cache")
    with pytest.raises(DataError, match="does not exist"):
        build_folder_index(model, tmp_path / "missing", "fp", tmp_path / "cache")
    assert not os.path.exists(tmp_path / "cache")


def test_an_unreadable_image_is_skipped_and_listed_or_stops_the_build(checkpoint, tmp_path):
    model = CLIPModule.load_from_checkpoint(checkpoint).eval()
    folder = make_images(tmp_path / "images")
    (folder / "broken.jpg").write_text("not a JPEG")
    cache = tmp_path / "cache"
    index = build_folder_index(model, folder, "fp", cache)
    assert index.skipped == [("broken.jpg", index.skipped[0][1])]
    assert "broken.jpg" not in index.files and len(index.files) == len(index.embeddings) == 7
    assert (
        build_folder_index(model, folder, "fp", cache).skipped == index.skipped
    )  # also when reused

    with pytest.raises(DataError) as error:
        build_folder_index(model, folder, "fp", cache, on_bad_image="error")
    message = str(error.value)
    assert "1 of 8 image files are unreadable (broken.jpg: " in message
    assert "on_bad_image=skip" in message and "\n" not in message


def compose_search(tmp_path: Path, *overrides: str):
    cfg = compose_config("search", [*overrides, "accelerator=cpu"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.data_dir = str(tmp_path / "data")
    return cfg


def test_a_read_only_folder_is_cached_under_the_data_dir_or_answered_with_one_warning(
    checkpoint, tmp_path, caplog, capsys
):
    folder = make_images(tmp_path / "images")
    before = listing(folder)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    searched = [f"ckpt_path={checkpoint}", f"images={folder}", "query=a red square"]
    # the default cache_dir: under the data directory, reused by the next call
    for built in ("Built", "Reused"):
        ((_, hits),) = run_task(search, compose_search(tmp_path, *searched), "search")
        assert f"{built} the index of 7 images in {folder}" in capsys.readouterr().out
    (entry,) = (tmp_path / "data" / "cache" / "search").iterdir()
    assert {p.name for p in entry.iterdir()} == {"embeddings.npy", "manifest.json"}

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    cfg = compose_search(tmp_path, *searched, f"cache_dir={blocker / 'cache'}")
    with caplog.at_level(logging.WARNING):
        ((query, unwritten),) = run_task(search, cfg, "search")
    assert query == "a red square" and len(unwritten) == 5
    assert [h.image for h in unwritten] == [h.image for h in hits]
    assert listing(folder) == before
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert str(blocker / "cache") in warning and "pass cache_dir= a writable folder" in warning
    assert "\n" not in warning
