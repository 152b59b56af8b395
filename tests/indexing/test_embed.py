"""``embed`` in one process: a folder and a CSV table come out in clip-retrieval's layout with
their names and captions, a rerun after a lost part rewrites only that part, another model or
source is refused in the same ``out=``, and bad images follow ``on_bad_image``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from PIL import Image

from clip_lightning.cli.embed import embed
from clip_lightning.data.records import FileImage, load_rgb
from clip_lightning.errors import DataError
from clip_lightning.indexing import layout
from clip_lightning.module import CLIPModule
from clip_lightning.utils.config import register_resolvers
from tests.helpers import CONFIG_DIR
from tests.helpers.data import write_image


def compose_embed(tmp_path: Path, *overrides: str):
    register_resolvers()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(
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
