"""embed -> index -> search on a captioned folder: the index folder is self-contained and
states its recall, ``search index=`` answers several queries (``query=[...]`` and
``queries_file=``) with the brute-force ranking and the captions, takes the model embed used
(a checkpoint, or a pretrained pair given again), and refuses another model or a damaged
manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import open_dict

from clip_lightning.cli.embed import embed
from clip_lightning.cli.eval_model import load_eval_model
from clip_lightning.cli.index import index
from clip_lightning.cli.search import search
from clip_lightning.data.records import FileImage, load_rgb
from clip_lightning.errors import ClipLightningError, DataError
from clip_lightning.indexing import layout
from clip_lightning.indexing.store import IndexFolder
from clip_lightning.module import CLIPModule
from tests.helpers.data import write_image
from tests.helpers.pretrained import write_open_clip_weights
from tests.helpers.tasks import compose_config


def compose_task(task: str, tmp_path: Path, *overrides: str):
    cfg = compose_config(task, list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / f"{task}-run")
    return cfg


@pytest.fixture(scope="module")
def built(tiny_checkpoint, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("index")
    rows = ["filepath,title"]
    for i in range(12):
        write_image(tmp / "photos" / f"{i}.jpg", i)
        rows.append(f"{i}.jpg,photo number {i}")
    (tmp / "photos" / "pairs.csv").write_text("\n".join(rows) + "\n")
    embed(
        compose_task(
            "embed",
            tmp,
            f"ckpt_path={tiny_checkpoint}",
            "dataset=csv",
            f"dataset.root={tmp / 'photos'}",
            f"out={tmp / 'embeddings'}",
            "part_size=5",
            "num_workers=0",
            "dtype=float32",
            "trainer.accelerator=cpu",
        )
    )
    report = index(
        compose_task("index", tmp, f"embeddings={tmp / 'embeddings'}", f"out={tmp / 'index'}")
    )
    return {"tmp": tmp, "report": report}


def test_the_index_folder_holds_its_metadata_and_recall(built):
    folder = built["tmp"] / "index"
    assert sorted(p.name for p in (folder / "metadata").iterdir()) == [
        "metadata_0.parquet",
        "metadata_1.parquet",
        "metadata_2.parquet",
    ]
    recall = json.loads((folder / "recall.json").read_text())["image"]
    assert recall == built["report"]["image"]
    # flat below the threshold: exact, on the 12 caption embeddings as queries
    assert recall["recall"] == 1.0 and recall["k"] == 10 and recall["queries"] == 12
    assert recall["query_source"] == "text embeddings"
    manifest = json.loads((folder / "index.json").read_text())
    assert manifest["indexes"]["image"]["kind"] == "flat" and manifest["rows"] == 12


def test_search_an_index_ranks_like_a_brute_force_scan(built, tiny_checkpoint):
    tmp = built["tmp"]
    queries = ["photo number 3", "a bright red square", "photo number 11"]
    (tmp / "queries.txt").write_text(f"\n{queries[2]}\n")
    cfg = compose_task(
        "search",
        tmp,
        f"index={tmp / 'index'}",
        f"query=[{queries[0]},{queries[1]}]",
        f"queries_file={tmp / 'queries.txt'}",
        "k=4",
        "accelerator=cpu",
    )
    results = search(cfg)  # no ckpt_path: the checkpoint embed used
    embeddings = tmp / "embeddings"
    names = layout.check_complete(embeddings, layout.read_manifest(embeddings))
    vectors = layout.load_embeddings(embeddings, "image", names)
    metadata = layout.load_metadata(embeddings, names).to_pydict()
    model = CLIPModule.load_from_checkpoint(tiny_checkpoint).eval()
    assert [query for query, _ in results] == queries
    for (query, hits), text in zip(results, model.encode_text(queries).numpy(), strict=True):
        scores = vectors @ text
        order = np.argsort(-scores, kind="stable")[:4]
        assert [h.image for h in hits] == [metadata["image_path"][i] for i in order], query
        assert [h.caption for h in hits] == [metadata["caption"][i] for i in order]
        np.testing.assert_allclose([h.score for h in hits], scores[order], atol=1e-5)
    written = json.loads((Path(cfg.paths.output_dir) / "search_results.json").read_text())
    assert written["index"] == str(tmp / "index") and len(written["results"]) == 3
    assert (Path(cfg.paths.output_dir) / "search_results.png").is_file()  # files on disk


def test_another_model_or_a_damaged_manifest_is_refused_in_one_line(built, tmp_path):
    folder = built["tmp"] / "index"
    damaged = tmp_path / "index"
    damaged.mkdir()
    for path in folder.iterdir():
        if path.is_file():
            (damaged / path.name).write_bytes(path.read_bytes())
    (damaged / "metadata").symlink_to(folder / "metadata")
    manifest = json.loads((folder / "index.json").read_text())
    (damaged / "index.json").write_text(json.dumps({**manifest, "model": "sha256:another"}))
    cfg = compose_task("search", tmp_path, f"index={damaged}", "query=a dog", "accelerator=cpu")
    with pytest.raises(ClipLightningError, match="holds embeddings of another model") as error:
        search(cfg)
    assert "\n" not in str(error.value)

    (damaged / "index.json").write_text(json.dumps({**manifest, "indexes": ["image"]}))
    with pytest.raises(DataError, match="is not an index manifest of this version"):
        IndexFolder.load(damaged)
    (damaged / "index.json").write_text("{not json")
    with pytest.raises(DataError, match="is not valid JSON"):
        IndexFolder.load(damaged)


def test_a_pretrained_pair_embeds_and_only_the_same_pair_searches_its_index(tmp_path):
    for i in range(6):
        write_image(tmp_path / "photos" / f"{i}.jpg", i)
    weights = write_open_clip_weights("tiny-clip-test", tmp_path / "pair.pt")
    pair = ["model=open_clip", "model.arch=tiny-clip-test", f"model.pretrained={weights}"]
    embed(
        compose_task(
            "embed",
            tmp_path,
            *pair,
            f"images={tmp_path / 'photos'}",
            f"out={tmp_path / 'embeddings'}",
            "num_workers=0",
            "dtype=float32",
            "trainer.accelerator=cpu",
        )
    )
    embeddings = tmp_path / "embeddings"
    names = layout.check_complete(embeddings, layout.read_manifest(embeddings))
    paths = layout.load_metadata(embeddings, names).column("image_path").to_pylist()
    cfg = compose_task("search", tmp_path, *pair)
    model = load_eval_model(cfg).model
    expected = model.encode_image([load_rgb(FileImage(Path(p))) for p in paths]).numpy()
    np.testing.assert_allclose(
        layout.load_embeddings(embeddings, "image", names), expected, atol=1e-5
    )

    index(compose_task("index", tmp_path, f"embeddings={embeddings}", f"out={tmp_path / 'index'}"))
    search_with = [f"index={tmp_path / 'index'}", "query=a red square", "k=3", "accelerator=cpu"]
    ((_, hits),) = search(compose_task("search", tmp_path, *pair, *search_with))
    scores = expected @ model.encode_text(["a red square"]).numpy()[0]
    assert [h.image for h in hits] == [paths[i] for i in np.argsort(-scores, kind="stable")[:3]]
    with pytest.raises(ClipLightningError, match="built with a pretrained pair; pass the same"):
        search(compose_task("search", tmp_path, *search_with))
