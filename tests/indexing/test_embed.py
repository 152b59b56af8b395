"""``embed`` in one process: a folder and a CSV table come out in clip-retrieval's layout with
their names and captions, a rerun after a lost part rewrites only that part, another model or
source is refused in the same ``out=``, bad images follow ``on_bad_image``, and the parts are
dealt over ``num_workers`` streams per rank whatever number of loader workers a rank starts."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from PIL import Image

from clip_lightning.cli.embed import embed
from clip_lightning.data.loader_settings import available_cores
from clip_lightning.data.records import FileImage, load_rgb
from clip_lightning.errors import DataError
from clip_lightning.indexing import layout
from clip_lightning.indexing.sources import EmbedDataModule, ItemSource, PartStream
from clip_lightning.module import CLIPModule
from tests.helpers.data import write_image
from tests.helpers.tasks import compose_config


def compose_embed(tmp_path: Path, *overrides: str):
    cfg = compose_config(
        "embed",
        [
            "trainer.accelerator=cpu",
            "num_workers=0",
            "batch_size=3",
            "dtype=float32",
            *overrides,
        ],
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


@pytest.fixture
def folder(tmp_path) -> Path:
    for i in range(7):
        write_image(tmp_path / "images" / ("sub" if i % 2 else ".") / f"{i}.jpg", i)
    return tmp_path / "images"


def test_a_folder_is_embedded_in_parts_with_its_file_names(tiny_checkpoint, folder, tmp_path):
    out = tmp_path / "out"
    (folder / "broken.jpg").write_text("not a JPEG")
    cfg = compose_embed(
        tmp_path, f"ckpt_path={tiny_checkpoint}", f"images={folder}", f"out={out}", "part_size=3"
    )
    summary = embed(cfg)
    assert summary["parts"] == 3 and summary["rows"] == 7 and summary["bad_samples_skipped"] == 1
    assert "broken.jpg" in summary["first_bad_samples"][0]
    names = layout.check_complete(out, layout.read_manifest(out))
    assert names == ["0", "1", "2"] and not (out / "text_emb").exists()
    paths = layout.load_metadata(out, names).column("image_path").to_pylist()
    assert sorted(paths) == sorted(str(p) for p in folder.rglob("*.jpg") if p.name != "broken.jpg")
    model = CLIPModule.load_from_checkpoint(tiny_checkpoint).eval()
    # load_rgb: what training and embed do to RGBA and CMYK files
    expected = model.encode_image([load_rgb(FileImage(Path(p))) for p in paths]).numpy()
    np.testing.assert_allclose(layout.load_embeddings(out, "image", names), expected, atol=1e-5)

    # a part whose record is lost (a kill before it was written) is embedded again, alone
    (out / "parts" / "1.json").unlink()
    before = {n: layout.embedding_file(out, "image", n).stat().st_mtime_ns for n in names}
    again = embed(cfg)
    after = {n: layout.embedding_file(out, "image", n).stat().st_mtime_ns for n in names}
    assert again["parts_from_earlier_runs"] == 2 and again["rows"] == 7
    assert [n for n in names if before[n] != after[n]] == ["1"]
    assert layout.load_metadata(out, names).column("image_path").to_pylist() == paths


def test_a_csv_table_keeps_its_captions(tiny_checkpoint, folder, tmp_path):
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
    rows = ["filepath,title", *(f"{name},photo {i} of the table" for i, name in enumerate(files))]
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    cfg = compose_embed(
        tmp_path,
        f"ckpt_path={tiny_checkpoint}",
        "dataset=csv",
        f"dataset.root={folder}",
        f"out={out}",
    )
    summary = embed(cfg)
    assert summary["rows"] == len(files) and summary["parts"] == 1
    metadata = layout.load_metadata(out, ["0"]).to_pydict()
    by_path = dict(zip(metadata["image_path"], metadata["caption"], strict=True))
    assert by_path == {
        str(folder / name): f"photo {i} of the table" for i, name in enumerate(files)
    }
    model = CLIPModule.load_from_checkpoint(tiny_checkpoint).eval()
    expected = model.encode_text(metadata["caption"]).numpy()
    np.testing.assert_allclose(layout.load_embeddings(out, "text", ["0"]), expected, atol=1e-5)


def test_another_source_in_the_same_out_is_refused_and_bad_images_can_stop(
    tiny_checkpoint, folder, tmp_path
):
    out = tmp_path / "out"
    embed(compose_embed(tmp_path, f"ckpt_path={tiny_checkpoint}", f"images={folder}", f"out={out}"))
    Image.new("RGB", (20, 20)).save(folder / "new.jpg")
    cfg = compose_embed(tmp_path, f"ckpt_path={tiny_checkpoint}", f"images={folder}", f"out={out}")
    with pytest.raises(DataError, match=r"holds embeddings of another job \(source: ") as error:
        embed(cfg)
    assert "pass a new out= folder" in str(error.value)
    assert json.loads((out / "embed.json").read_text())["parts"] == 1

    (folder / "broken.jpg").write_text("not a JPEG")
    cfg = compose_embed(
        tmp_path,
        f"ckpt_path={tiny_checkpoint}",
        f"images={folder}",
        f"out={tmp_path / 'other'}",
        "on_bad_image=error",
    )
    with pytest.raises(DataError, match=r"broken\.jpg") as error:
        embed(cfg)
    assert "on_bad_image=skip" in str(error.value)


def streams_of(parts: list[int], streams_per_rank: int, workers_of_rank: list[int], monkeypatch):
    """The parts each (rank, loader worker) reads, ``workers_of_rank[r]`` workers on rank r."""
    read = []
    for rank, workers in enumerate(workers_of_rank):
        stream = PartStream(
            None, parts, ["image"], None, None, 0, 1, "skip", rank, len(workers_of_rank),
            streams_per_rank,
        )  # fmt: skip
        for worker in range(max(1, workers)):
            info = SimpleNamespace(id=worker, num_workers=workers) if workers else None
            monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda info=info: info)
            read.append(stream.my_parts())
    return read


def test_parts_are_dealt_once_whatever_workers_each_rank_could_start(monkeypatch, caplog):
    parts = list(range(11))  # 2 ranks x 3 streams do not divide 11
    full = streams_of(parts, 3, [3, 3], monkeypatch)
    assert full == [[0, 6], [1, 7], [2, 8], [3, 9], [4, 10], [5]]
    # fewer cores on rank 0 (2 workers), none to spare on rank 1: the same parts per rank
    for workers in ([2, 0], [1, 2], [3, 1]):
        read = streams_of(parts, 3, workers, monkeypatch)
        assert sorted(p for stream in read for p in stream) == parts, workers
        rank0 = sorted(p for stream in read[: max(1, workers[0])] for p in stream)
        assert rank0 == [0, 1, 2, 6, 7, 8], workers

    data = EmbedDataModule(
        ItemSource([], 1, "none"), Path("out"), ["image"], None, None, 0, num_workers=99
    )
    with caplog.at_level(logging.WARNING):
        loader = data.predict_dataloader()
    assert loader.num_workers == available_cores() and loader.dataset.streams_per_rank == 99
    assert f"num_workers=99 is more than the {available_cores()} CPU cores" in caplog.text
    assert "dataset.num_workers" not in caplog.text
