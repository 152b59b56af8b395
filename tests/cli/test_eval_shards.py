"""``eval dataset=webdataset`` scores eval shards without training shards: the figures equal
those of the same images and captions read from a Karpathy folder."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from omegaconf import open_dict

from clip_lightning.cli.eval import evaluate
from clip_lightning.data.datamodule import CaptionDataModule
from clip_lightning.data.shards import write_split
from clip_lightning.errors import ClipLightningError, DataError
from tests.helpers.data import build_karpathy
from tests.helpers.tasks import compose_config


def run_eval(tmp_path: Path, checkpoint: Path, *dataset: str) -> dict:
    cfg = compose_config(
        "eval",
        [
            *dataset,
            f"ckpt_path={checkpoint}",
            "dataset.num_workers=0",
            "dataset.eval_batch_size=4",
            "trainer.accelerator=cpu",
        ],
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
    return evaluate(cfg)


def test_eval_shards_score_like_the_same_images_in_a_folder(tiny_checkpoint, tmp_path):
    root = build_karpathy(tmp_path / "flickr30k", total=16, n_val=2, n_test=7)
    test = CaptionDataModule(root=str(root)).load_splits()["test"]
    write_split(test, tmp_path / "shards", samples_per_shard=3)
    # the folder then holds the very JPEG bytes the shards do (write_split re-encodes)
    for shard in sorted((tmp_path / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                image_id = json.loads(data)["image_id"]
                (record,) = [r for r in test if r.image_id == image_id]
                Path(record.image.key).write_bytes(members[name.replace(".json", ".jpg")])

    folder = run_eval(tmp_path, tiny_checkpoint, "dataset=flickr30k", f"dataset.root={root}")
    urls = str(tmp_path / "shards" / "{00000..00002}.tar")
    shards = run_eval(
        tmp_path,
        tiny_checkpoint,
        "dataset=webdataset",
        f'dataset.test_urls="{urls}"',
        "dataset.caption_field=captions",  # every caption, as the folder has
    )
    assert shards["images"] == folder["images"] == 7
    assert shards["captions"] == folder["captions"] == 35
    assert shards["metrics"] == pytest.approx(folder["metrics"], abs=1e-6)

    with pytest.raises(ClipLightningError, match=r"no val data; set dataset.eval_root=DIR"):
        run_eval(
            tmp_path,
            tiny_checkpoint,
            "dataset=webdataset",
            f'dataset.test_urls="{urls}"',
            "split=val",
        )
    with pytest.raises(DataError, match=r"needs Karpathy's split file"):
        run_eval(
            tmp_path,
            tiny_checkpoint,
            "dataset=webdataset",
            f'dataset.test_urls="{urls}"',
            "protocol=flickr30k_1k",
        )
