"""Evaluation protocols: the Karpathy protocols refuse data without the Karpathy split, and
coco_1k scores folds of consecutive images and reports their mean (fold arithmetic itself is
checked against a brute-force reference in test_metrics.py)."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace

import pytest

from clip_lightning.cli.eval import evaluate
from clip_lightning.data.datamodule import CaptionDataModule
from clip_lightning.errors import ConfigError, DataError
from clip_lightning.protocols import PROTOCOLS, check_protocol
from tests.helpers import compose_eval
from tests.helpers.data import build_coco, build_kaggle, build_karpathy
from tests.helpers.pretrained import register_tiny_open_clip, write_open_clip_weights

NO_WORKERS = ["dataset.num_workers=0", "dataset.eval_batch_size=4", "trainer.accelerator=cpu"]


def baseline_eval(tmp_path, root, *extra: str):
    """The eval config scoring the tiny open_clip pair's "pretrained" weights on ``root``."""
    register_tiny_open_clip()
    weights = write_open_clip_weights("tiny-clip-test", tmp_path / "tiny.pt")
    overrides = [
        "model=open_clip",
        "model.arch=tiny-clip-test",
        f"model.pretrained={weights}",
        "dataset=coco",
        f"dataset.root={root}",
        *NO_WORKERS,
        *extra,
    ]
    return compose_eval(overrides, tmp_path / "eval")


def test_coco_1k_reports_the_mean_over_folds_of_the_karpathy_test_split(
    tmp_path, monkeypatch, capsys
):
    # 6 test images in folds of 2 stand in for 5,000 in folds of 1,000
    monkeypatch.setitem(
        PROTOCOLS, "coco_1k", replace(PROTOCOLS["coco_1k"], test_images=6, fold_size=2)
    )
    root = build_karpathy(tmp_path / "coco", total=12, n_val=2, n_test=6, coco=True)
    results = evaluate(baseline_eval(tmp_path, root, "protocol=coco_1k"))
    console = " ".join(capsys.readouterr().out.split())  # the table's title, however wrapped
    assert "protocol coco_1k, test split: 6 images, 30 captions" in console
    assert (results["protocol"], results["split"]) == ("coco_1k", "test")
    assert (results["images"], results["captions"]) == (6, 30)
    assert results["checkpoint"] is None and results["model"] == "tiny-clip-test"
    metrics = results["metrics"]
    for key in ("i2t_r1", "t2i_r1", "rsum", "t2i_mean_rank"):
        folds = [metrics[f"test/fold{n}/{key}"] for n in (1, 2, 3)]
        assert metrics[f"test/{key}"] == pytest.approx(statistics.mean(folds), rel=1e-6), key
    assert "test/fold4/rsum" not in metrics
    written = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert written == results
    # CLIP_benchmark's naming, with the baseline's own model and pretrained names; the file
    # states what it scored, and its recalls are the means over folds
    benchmark = (
        tmp_path / "eval" / "mscoco_captions_tiny.pt_tiny-clip-test_en_zeroshot_retrieval.json"
    )
    assert benchmark.is_file()
    layout = json.loads(benchmark.read_text())
    assert [layout[k] for k in ("protocol", "split", "images", "captions")] == [
        "coco_1k",
        "test",
        6,
        30,
    ]
    assert layout["metrics"]["text_retrieval_recall@1"] == pytest.approx(
        metrics["test/i2t_r1"] / 100
    )


@pytest.mark.parametrize(
    ("protocol", "build", "needed"),
    [
        ("coco_5k", build_coco, "dataset_coco.json"),
        ("coco_1k", build_coco, "dataset_coco.json"),
        ("flickr30k_1k", build_kaggle, "dataset_flickr30k.json"),
        ("coco_5k", lambda root: build_karpathy(root), "dataset_coco.json"),
    ],
)
def test_karpathy_protocols_refuse_data_without_the_split(tmp_path, protocol, build, needed):
    datamodule = CaptionDataModule(
        root=str(build(tmp_path / "data")), split_sizes={"val": 0.25, "test": 0.25}
    )
    with pytest.raises(DataError) as error:
        check_protocol(PROTOCOLS[protocol], datamodule, "test")
    message = str(error.value)
    assert needed in message and "dataset.root" in message and "\n" not in message
    check_protocol(PROTOCOLS["split"], datamodule, "test")  # the dataset's own split is fine


def test_a_karpathy_test_split_of_the_wrong_size_is_refused(tmp_path):
    datamodule = CaptionDataModule(root=str(build_karpathy(tmp_path / "data")))
    check_protocol(PROTOCOLS["flickr30k_1k"], datamodule, "val")  # val: any size
    with pytest.raises(DataError, match=r"scores the 1000 images .* has 3"):
        check_protocol(PROTOCOLS["flickr30k_1k"], datamodule, "test")


def test_a_karpathy_protocol_scores_the_test_split_only(tmp_path):
    cfg = baseline_eval(tmp_path, tmp_path / "unused", "protocol=coco_5k", "split=val")
    with pytest.raises(ConfigError, match="drop split=val"):
        evaluate(cfg)
