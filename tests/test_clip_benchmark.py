"""CLIP_benchmark compatibility: ``eval`` writes CLIP_benchmark's result layout next to
``eval_results.json``, and CLIP_benchmark's own retrieval evaluation of the exported model
(loaded through open_clip local-dir) reproduces the project's figures on data without ties."""

from __future__ import annotations

import json
import math

import numpy as np
import open_clip
import pytest
from clip_benchmark.datasets.builder import image_captions_collate_fn
from clip_benchmark.metrics.zeroshot_retrieval import evaluate as clip_benchmark_retrieval
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict
from PIL import Image
from torch.utils.data import DataLoader

from clip_lightning.cli.eval import evaluate
from clip_lightning.cli.loading import build_datamodule
from clip_lightning.clip_benchmark_format import (
    classification_layout,
    file_name,
    retrieval_layout,
)
from clip_lightning.data.records import load_rgb
from clip_lightning.export import export_model
from clip_lightning.utils.config import register_resolvers
from tests.helpers import CONFIG_DIR, compose_train, quiet_trainer
from tests.helpers.pretrained import write_open_clip_weights

WORDS = ["red", "green", "blue", "bright", "dark", "small", "large", "striped", "round", "wavy"]


def build_karpathy(root, total: int = 16, n_test: int = 10) -> list[str]:
    """Noise images (lossless PNG, 32 px) with two distinct captions each: no score ties."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    entries = []
    for i in range(total):
        name = f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            root / "images" / name
        )
        captions = [
            f"a {WORDS[i % 10]} {WORDS[(i * 3 + j) % 10]} picture number {i} view {j}"
            for j in range(2)
        ]
        split = "test" if i >= total - n_test else ("val" if i >= total - n_test - 2 else "train")
        entries.append(
            {
                "filename": name,
                "imgid": i,
                "split": split,
                "sentences": [{"raw": c} for c in captions],
            }
        )
    (root / "dataset_flickr30k.json").write_text(
        json.dumps({"images": entries, "dataset": "flickr30k"})
    )
    return [
        f"dataset.root={root}",
        "dataset.format=karpathy",
        "dataset.num_workers=0",
        "dataset.pin_memory=false",
        "dataset.persistent_workers=false",
        "dataset.prefetch_factor=null",
        "dataset.batch_size=4",
        "dataset.eval_batch_size=8",
    ]


def test_layout_names_directions_as_clip_benchmark_does():
    results = {
        "dataset": "coco",
        "checkpoint": "runs/x/last.ckpt",
        "protocol": "coco_1k",
        "split": "test",
        "images": 5000,
        "captions": 25010,
        "metrics": {
            "test/i2t_r1": 40.0,
            "test/t2i_r1": 25.0,
            "test/i2t_r5": 80.0,
            "test/rsum": 145.0,
        },
    }
    layout = retrieval_layout(results)
    # image retrieval ranks images for each caption: our text -> image
    assert layout["metrics"] == {
        "text_retrieval_recall@1": 0.4,
        "image_retrieval_recall@1": 0.25,
        "text_retrieval_recall@5": 0.8,
    }
    assert (layout["dataset"], layout["task"], layout["model"]) == (
        "mscoco_captions",
        "zeroshot_retrieval",
        "clip-lightning",
    )
    assert (
        file_name(layout) == "mscoco_captions_last.ckpt_clip-lightning_en_zeroshot_retrieval.json"
    )
    # what it was scored on, which CLIP_benchmark's dataset name alone does not say
    assert [layout[k] for k in ("protocol", "split", "images", "captions")] == [
        "coco_1k",
        "test",
        5000,
        25010,
    ]
    zeroshot = classification_layout(
        {
            "checkpoint": "c.ckpt",
            "images": "/d/pets",
            "top1": 50.0,
            "top5": 100.0,
            "per_class": {
                "cat": {"top1": 100.0, "count": 2},
                "dog": {"top1": 0.0, "count": 2},
                "eel": {"top1": 0.0, "count": 0},
            },
        }
    )
    assert zeroshot["metrics"] == {"acc1": 0.5, "acc5": 1.0, "mean_per_class_recall": 0.5}
    assert zeroshot["dataset"] == "pets"


def test_clip_benchmark_scores_the_exported_model_like_eval(tmp_path):
    data = build_karpathy(tmp_path / "data")
    weights = write_open_clip_weights("tiny-clip-test", tmp_path / "weights.pt")
    cfg = compose_train(
        [
            "dataset=flickr30k",
            *data,
            "model=open_clip",
            "model.arch=tiny-clip-test",
            f"model.pretrained={weights}",
            "trainer.accelerator=cpu",
            "print_config=false",
        ],
        output_dir=tmp_path,
    )
    model = instantiate(cfg.model)
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    datamodule = build_datamodule(cfg.dataset, model)
    trainer.fit(model, datamodule=datamodule)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(checkpoint)
    export_model(model.eval(), tmp_path / "exported", "open_clip")

    register_resolvers()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        eval_cfg = compose(
            "eval",
            [
                "dataset=flickr30k",
                *data,
                f"ckpt_path={checkpoint}",
                "split=test",
                "trainer.accelerator=cpu",
            ],
        )
    with open_dict(eval_cfg):
        eval_cfg.paths.output_dir = str(tmp_path / "eval")
    ours = evaluate(eval_cfg)

    loaded, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{tmp_path / 'exported'}"
    )
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'exported'}")
    test = datamodule.load_splits()["test"]
    pairs = [(preprocess(load_rgb(r.image)), list(r.captions)) for r in test]
    loader = DataLoader(pairs, batch_size=4, collate_fn=image_captions_collate_fn)
    theirs = clip_benchmark_retrieval(
        loaded.eval(), loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10]
    )

    written = json.loads(
        (
            tmp_path / "eval" / "flickr30k_last.ckpt_clip-lightning_en_zeroshot_retrieval.json"
        ).read_text()
    )
    for k in (1, 5, 10):
        assert theirs[f"image_retrieval_recall@{k}"] == pytest.approx(
            ours["metrics"][f"test/t2i_r{k}"] / 100, abs=1e-6
        )
        assert theirs[f"text_retrieval_recall@{k}"] == pytest.approx(
            ours["metrics"][f"test/i2t_r{k}"] / 100, abs=1e-6
        )
        for key in (f"image_retrieval_recall@{k}", f"text_retrieval_recall@{k}"):
            assert written["metrics"][key] == pytest.approx(theirs[key], abs=1e-6)
    assert theirs["image_retrieval_recall@1"] < 1.0 and not math.isnan(
        theirs["image_retrieval_recall@1"]
    )
    assert written["task"] == "zeroshot_retrieval" and written["pretrained"] == str(checkpoint)
