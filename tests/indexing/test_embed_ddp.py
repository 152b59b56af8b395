"""``embed`` over WebDataset shards with 2 gloo ranks x 2 loader workers, killed once and run
again: every sample is written exactly once although 15 samples do not divide over 4 streams,
the parts finished before the kill are kept as they were, the vectors are the model's own, and
clip-retrieval's metadata reader and autofaiss read the output unchanged."""

from __future__ import annotations

import io
import os
import signal
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_lightning.cli.embed import embed
from clip_lightning.indexing import layout
from clip_lightning.module import CLIPModule
from tests.helpers.distributed import ranks_running, task_on_ranks
from tests.helpers.embedding import SHARD_SIZES, caption

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def embed_overrides(checkpoint: Path, urls: str, out: Path, *extra: str) -> list[str]:
    return [
        f"ckpt_path={checkpoint}",
        "dataset=webdataset",
        f'dataset.urls="{urls}"',  # quoted: a brace range is not a Hydra dict
        f"out={out}",
        "trainer=ddp_sim",
        "num_workers=2",
        "batch_size=2",
        "dtype=float32",
        *extra,
    ]


@pytest.fixture(scope="module")
def killed_and_resumed(tiny_checkpoint, shards, tmp_path_factory) -> dict:
    """Run 1 is killed (SIGKILL to both ranks and their loader workers) once rank 0 has
    finished a part; run 2 is the same command. Returns the output folder and the parts on disk
    after the kill."""
    tmp = tmp_path_factory.mktemp("embed_ddp")
    urls, _ = shards
    out, flag = tmp / "out", tmp / "paused"
    pause = [
        "+callbacks.pause._target_=tests.helpers.embedding.PauseAfterParts",
        f"+callbacks.pause.out={out}",
        f"+callbacks.pause.flag={flag}",
    ]
    first = tmp / "first"
    first.mkdir()
    with ranks_running(
        embed, "embed", first, *embed_overrides(tiny_checkpoint, urls, out, *pause)
    ) as ranks:
        deadline = time.monotonic() + 300
        while (
            not flag.exists() and all(r.is_alive() for r in ranks) and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        for rank in ranks:
            if rank.is_alive():
                os.killpg(rank.pid, signal.SIGKILL)
    assert flag.exists(), "the first run ended before rank 0 finished a part"
    before = {p.name: p.stat().st_mtime_ns for p in (out / "img_emb").glob("*.npy")}
    finished = sorted(p.stem for p in (out / "parts").glob("*.json"))

    stdout = task_on_ranks(embed, "embed", tmp, *embed_overrides(tiny_checkpoint, urls, out))
    return {"out": out, "finished": finished, "mtimes": before, "stdout": stdout}


def test_every_sample_is_written_once_with_uneven_counts(killed_and_resumed, shards):
    out = killed_and_resumed["out"]
    _, keys = shards
    names = layout.check_complete(out, layout.read_manifest(out))
    metadata = layout.load_metadata(out, names).to_pydict()
    assert sorted(metadata["image_path"]) == sorted(keys)  # each good sample exactly once
    assert metadata["caption"] == [caption(keys[k]) for k in metadata["image_path"]]
    rows = [len(np.load(layout.embedding_file(out, "image", n))) for n in names]
    assert rows == list(SHARD_SIZES)  # one part per shard, the bad sample left out
    summary = layout.read_summary(out)
    assert summary["rows"] == sum(SHARD_SIZES) and summary["bad_samples_skipped"] == 1
    assert "broken" in summary["first_bad_samples"][0]


def test_a_killed_run_resumes_without_rewriting_finished_parts(killed_and_resumed):
    out, finished = killed_and_resumed["out"], killed_and_resumed["finished"]
    assert 1 <= len(finished) < len(SHARD_SIZES)
    for name in finished:
        path = layout.embedding_file(out, "image", name)
        assert path.stat().st_mtime_ns == killed_and_resumed["mtimes"][path.name]
    assert f"{len(finished)} from an earlier run" in killed_and_resumed["stdout"]
    assert not list(out.rglob("*.partial"))


def test_vectors_equal_encode_image_and_encode_text(killed_and_resumed, tiny_checkpoint, shards):
    out = killed_and_resumed["out"]
    urls, keys = shards
    names = layout.check_complete(out, layout.read_manifest(out))
    paths = layout.load_metadata(out, names).column("image_path").to_pylist()
    images = {}
    for shard in sorted(Path(urls.split("{")[0]).glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".jpg") and member.name != "broken.jpg":
                    data = tar.extractfile(member).read()
                    images[member.name.removesuffix(".jpg")] = Image.open(io.BytesIO(data))
    model = CLIPModule.load_from_checkpoint(tiny_checkpoint).eval()
    expected_images = model.encode_image([images[p] for p in paths]).numpy()
    expected_texts = model.encode_text([caption(keys[p]) for p in paths]).numpy()
    np.testing.assert_allclose(
        layout.load_embeddings(out, "image", names), expected_images, atol=1e-5
    )
    np.testing.assert_allclose(
        layout.load_embeddings(out, "text", names), expected_texts, atol=1e-5
    )


def test_clip_retrievals_reader_and_autofaiss_read_the_output(killed_and_resumed, tmp_path):
    import faiss
    from autofaiss.external.quantize import Quantizer
    from clip_retrieval.clip_back import ParquetMetadataProvider

    out = killed_and_resumed["out"]
    names = layout.check_complete(out, layout.read_manifest(out))
    vectors = layout.load_embeddings(out, "image", names)
    index_path = Quantizer().quantize(
        str(out / "img_emb"),
        str(tmp_path / "autofaiss"),
        max_index_memory_usage="10M",
        current_memory_available="500M",
        nb_cores=1,
    )
    index = faiss.read_index(index_path)
    assert index.ntotal == len(vectors)
    _, found = index.search(vectors, 1)
    assert found[:, 0].tolist() == list(range(len(vectors)))  # row i is vector i
    provider = ParquetMetadataProvider(str(out / "metadata"))
    expected = layout.load_metadata(out, names).to_pylist()
    rows = provider.get(list(range(len(vectors))), ["image_path", "caption"])
    assert rows == [{"image_path": r["image_path"], "caption": r["caption"]} for r in expected]
