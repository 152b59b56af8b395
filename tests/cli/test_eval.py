"""The eval entry point: a tiny real training run, then eval of its best checkpoint must give the
test figures the run logged; bad checkpoints fail with one clear line."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from omegaconf import DictConfig, open_dict
from PIL import Image

from clip_lightning import plots
from clip_lightning.callbacks import AlignmentPlots
from clip_lightning.callbacks.dataset_config import KEY, TARGETS, saved_dataset_config
from clip_lightning.cli.dataset_choice import choose_dataset
from clip_lightning.cli.eval import evaluate
from clip_lightning.cli.loading import build_datamodule, load_model
from clip_lightning.cli.train import train
from clip_lightning.errors import CheckpointError, ClipLightningError
from clip_lightning.utils.instantiate import instantiate_list
from tests.helpers import TINY_TRAIN_OVERRIDES, compose_eval, quiet_trainer
from tests.helpers.tasks import compose_config, task_in_process

DATA = [
    "dataset.adapter_options.train=64",
    "dataset.adapter_options.val=32",
    "dataset.adapter_options.test=32",
    "dataset.adapter_options.image_size=32",
    "dataset.eval_batch_size=16",
]
RECALL_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def compose_train_run(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``train`` like the CLI and set ``HydraConfig``, as ``@hydra.main`` would."""
    cfg = compose_config("train", overrides=overrides, hydra=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir.parent)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[DictConfig, dict[str, float]]:
    """One tiny training run (fit 1 epoch + test of the best checkpoint), shared by the module."""
    run = tmp_path_factory.mktemp("train") / "run"
    cfg = compose_train_run([*TINY_TRAIN_OVERRIDES, *DATA], output_dir=run)
    try:
        metrics = train(cfg)
    finally:
        HydraConfig.instance().cfg = None
    return cfg, metrics


def best_checkpoint(cfg: DictConfig) -> Path:
    (path,) = Path(cfg.paths.output_dir, "checkpoints").glob("epoch_*.ckpt")
    return path


@pytest.mark.slow
def test_training_logs_recall_every_epoch_and_checkpoints_on_rsum(trained):
    cfg, metrics = trained
    for prefix in ("val", "test"):
        for key in RECALL_KEYS:
            assert f"{prefix}/{key}" in metrics, f"{prefix}/{key}"
    assert 0.0 <= metrics["test/t2i_r1"] <= metrics["test/t2i_r10"] <= 100.0
    with Path(cfg.paths.output_dir, "csv", "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert any(row.get("val/rsum") for row in rows)
    (checkpoint,) = [c for c in instantiate_list(cfg.callbacks) if isinstance(c, ModelCheckpoint)]
    assert checkpoint.monitor == "val/rsum" and checkpoint.mode == "max"
    assert best_checkpoint(cfg).is_file()


@pytest.mark.slow
def test_eval_reproduces_the_training_runs_test_figures(trained, tmp_path):
    train_cfg, metrics = trained
    out = tmp_path / "eval"
    cfg = compose_config(
        "eval",
        [
            "dataset=synthetic",
            *DATA,
            f"ckpt_path={best_checkpoint(train_cfg)}",
            "split=test",
            "trainer.accelerator=cpu",
        ],
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    results = evaluate(cfg)
    written = json.loads((out / "eval_results.json").read_text())
    assert written == results
    assert written["split"] == "test" and written["dataset"] == "synthetic"
    assert written["trivial"] == []
    for key in RECALL_KEYS:
        assert written["metrics"][f"test/{key}"] == pytest.approx(metrics[f"test/{key}"], abs=1e-4)


@pytest.mark.slow
def test_alignment_plots_are_drawn_at_the_end_of_fit_and_test(trained):
    cfg, _ = trained
    plots = Path(cfg.paths.output_dir, "plots")
    names = ["similarity_heatmap.png", "text_to_image.png", "image_to_text.png"]
    for path in [plots / "fit" / n for n in [*names, "curves.png"]] + [
        plots / "test" / n for n in names
    ]:
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 100, path


def test_missing_and_foreign_checkpoints_raise_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match="no checkpoint given"):
        load_model(None)
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("just some text\n")
    with pytest.raises(CheckpointError, match="not a clip-lightning checkpoint") as err:
        load_model(not_a_checkpoint)
    assert "\n" not in str(err.value)

    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(BoringModel())
    foreign = tmp_path / "boring.ckpt"
    trainer.save_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not a clip-lightning checkpoint") as err:
        load_model(foreign)
    assert "\n" not in str(err.value)


def test_eval_entry_point_reports_a_bad_checkpoint_in_one_line_and_exits_1(tmp_path):
    result = task_in_process(
        evaluate,
        "eval",
        tmp_path,
        f"ckpt_path={tmp_path}/nope.ckpt",
        "dataset=synthetic",
        check=False,
    )
    assert result.code == 1
    output = result.output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "does not exist" in line]
    assert len(errors) == 1 and "[ERROR]" in errors[0], output


@pytest.mark.slow
def test_heatmap_title_names_validation_pairs_and_whose_weights(trained, tmp_path, monkeypatch):
    cfg, _ = trained
    model = load_model(best_checkpoint(cfg))
    trainer = SimpleNamespace(
        datamodule=build_datamodule(cfg.dataset, model), default_root_dir=str(tmp_path)
    )
    titles = []
    monkeypatch.setattr(
        plots, "similarity_heatmap", lambda *args, title, **kwargs: titles.append(title)
    )
    callback = AlignmentPlots(num_samples=4, heatmap_pairs=4, num_queries=2, k=2)
    callback.draw(trainer, model, "test")
    callback.draw(trainer, model, "fit")
    assert titles == [
        "Similarity of 4 validation pairs, tested weights",
        "Similarity of 4 validation pairs, weights at the end of fit",
    ]


@pytest.mark.slow
def test_eval_of_a_checkpoint_alone_scores_the_training_runs_data(trained, tmp_path):
    """``eval ckpt_path=X`` used to try the hub's Flickr30k: the dataset settings now come
    from the checkpoint (split sizes included), and overrides still apply on top."""
    train_cfg, metrics = trained
    overrides = [f"ckpt_path={best_checkpoint(train_cfg)}", "dataset.eval_batch_size=8"]
    cfg = compose_eval([*overrides, "trainer.accelerator=cpu"], tmp_path)
    choose_dataset(cfg, "eval", overrides)
    assert cfg.dataset.name == "synthetic" and cfg.dataset.adapter_options.test == 32
    assert cfg.dataset.eval_batch_size == 8
    assert cfg.dataset.cache_auto_dir == str(Path(cfg.paths.data_dir, "cache", "synthetic"))
    results = evaluate(cfg)
    for key in RECALL_KEYS:
        assert results["metrics"][f"test/{key}"] == pytest.approx(metrics[f"test/{key}"], abs=1e-4)


def test_eval_hints_name_only_keys_eval_takes(tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"checked after the data")
    cfg = compose_eval(
        [f"ckpt_path={checkpoint}", "dataset=flickr30k", "trainer.accelerator=cpu"], tmp_path
    )
    with pytest.raises(ClipLightningError) as info:
        evaluate(cfg)
    message = str(info.value)
    assert "the dataset nlphuji/flickr30k (dataset=flickr30k), not on this machine" in message
    assert "set dataset.root=DIR" in message and "experiment=" not in message


def test_saved_dataset_settings_are_plain_data_or_refused():
    config = {"_target_": TARGETS[0], "root": "/data/x", "split_sizes": {"val": 0.05}}
    assert saved_dataset_config({KEY: config}) == config
    assert saved_dataset_config({}) is None
    refused = {
        "root": "${oc.env:HOME}",
        "_target_": "shutil.copyfile",
        "columns": {"_target_": "shutil.copyfile", "src": "a", "dst": "b"},
        "adapter_options": [{"_partial_": True}],
    }
    for key, value in refused.items():
        with pytest.raises(CheckpointError) as info:
            saved_dataset_config({KEY: {**config, key: value}})
        assert "oc.env" not in str(info.value) and "shutil" not in str(info.value)


def test_eval_takes_caches_and_loader_settings_from_its_own_config(tmp_path):
    """A checkpoint says what data to score, never where this machine writes."""
    saved = {
        "_target_": TARGETS[0],
        "name": "csv",
        "root": str(tmp_path),
        "cache": "/somewhere/else",
        "cache_auto_dir": "/somewhere/else",
        "num_workers": 64,
    }
    checkpoint = tmp_path / "model.ckpt"
    torch.save({KEY: saved}, checkpoint)
    cfg = compose_eval([f"ckpt_path={checkpoint}", "dataset.num_workers=1"], tmp_path)
    choose_dataset(cfg, "eval", [f"ckpt_path={checkpoint}", "dataset.num_workers=1"])
    assert cfg.dataset.root == str(tmp_path) and cfg.dataset.name == "csv"
    assert cfg.dataset.cache is None and cfg.dataset.num_workers == 1
    assert cfg.dataset.cache_auto_dir == str(Path(cfg.paths.data_dir, "cache", "csv"))
