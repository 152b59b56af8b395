"""Zero-shot classification of a tiny ImageFolder of colour squares: accuracies equal a
brute-force computation from the model's own embeddings; bad folders fail clearly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import open_dict
from PIL import Image

from clip_lightning.callbacks.zeroshot_accuracy import ZeroShotClassification
from clip_lightning.cli.eval import evaluate
from clip_lightning.cli.loading import build_datamodule
from clip_lightning.cli.train import train
from clip_lightning.errors import ConfigError, DataError
from clip_lightning.module import CLIPModule
from clip_lightning.zeroshot import (
    class_embeddings,
    folder_classnames,
    image_folder,
    read_lines,
    zeroshot_classify,
)
from tests.helpers import CONFIG_DIR, TINY_TRAIN_OVERRIDES, compose_train, quiet_trainer
from tests.helpers.data import COLOURS, make_folder
from tests.helpers.tasks import compose_config

TEMPLATES = ["a photo of a {}.", "{} square"]


@pytest.fixture
def checkpoint(tiny_checkpoint: Path) -> Path:
    """The session's tiny checkpoint."""
    return tiny_checkpoint


def test_accuracy_equals_brute_force(checkpoint, tmp_path):
    model = CLIPModule.load_from_checkpoint(checkpoint).eval()
    folder = make_folder(tmp_path / "colours", COLOURS)
    result = zeroshot_classify(model, folder, TEMPLATES, ks=(1, 5), batch_size=4)

    names = sorted(COLOURS)
    prompts = [[t.format(n.replace("_", " ")) for t in TEMPLATES] for n in names]
    text = torch.stack([model.encode_text(p).mean(0) for p in prompts])
    text = text / text.norm(dim=-1, keepdim=True)
    files = [(c, path) for c, n in enumerate(names) for path in sorted((folder / n).iterdir())]
    images = model.encode_image([Image.open(p) for _, p in files])
    labels = np.array([c for c, _ in files])
    ranking = np.argsort(-(images @ text.T).numpy(), axis=1)
    top1 = 100 * np.mean(ranking[:, 0] == labels)
    top5 = 100 * np.mean([labels[i] in ranking[i, :5] for i in range(len(labels))])

    assert result.num_images == len(files) == 18
    assert result.top_k[1] == pytest.approx(top1)
    assert result.top_k[5] == pytest.approx(top5)
    assert result.top_k[5] >= result.top_k[1]
    for c, name in enumerate(names):
        expected = 100 * np.mean(ranking[labels == c, 0] == c)
        assert result.per_class[name.replace("_", " ")] == (pytest.approx(expected), 3)


def test_class_embeddings_are_normalised_means_of_prompt_embeddings(checkpoint):
    model = CLIPModule.load_from_checkpoint(checkpoint).eval()
    embeddings = class_embeddings(model, ["red", "blue"], TEMPLATES)
    expected = model.encode_text(["a photo of a red.", "red square"]).mean(0)
    torch.testing.assert_close(embeddings[0], expected / expected.norm())
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2))


def test_eval_zeroshot_task_writes_results_json(checkpoint, tmp_path):
    folder = make_folder(tmp_path / "colours", dict(list(COLOURS.items())[:3]), per_class=2)
    cfg = compose_config(
        "eval",
        [
            "task=zeroshot",
            f"ckpt_path={checkpoint}",
            f"images={folder}",
            "trainer.accelerator=cpu",
        ],
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    results = evaluate(cfg)
    written = json.loads((tmp_path / "run" / "zeroshot_results.json").read_text())
    assert written == results
    assert written["num_classes"] == 3 and written["num_images"] == 6
    assert set(written["per_class"]) == {"dark red", "green", "blue"}
    assert written["top5"] == 100.0  # three classes: the right one is always in the top 5
    assert 0.0 <= written["top1"] <= 100.0
    # the same figures in CLIP_benchmark's layout, as fractions
    (layout_file,) = (tmp_path / "run").glob("*_zeroshot_classification.json")
    layout = json.loads(layout_file.read_text())
    assert layout["dataset"] == "colours" and layout["task"] == "zeroshot_classification"
    assert layout["metrics"]["acc1"] == pytest.approx(written["top1"] / 100)
    assert layout["metrics"]["acc5"] == 1.0


def test_empty_and_single_class_folders_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a usable image folder"):
        image_folder(tmp_path / "empty")
    (tmp_path / "no_images" / "cat").mkdir(parents=True)
    (tmp_path / "no_images" / "cat" / "notes.txt").write_text("no image here")
    with pytest.raises(DataError, match="not a usable image folder"):
        image_folder(tmp_path / "no_images")
    single = make_folder(tmp_path / "single", {"red": (200, 0, 0)})
    with pytest.raises(DataError, match="only one class folder") as err:
        image_folder(single)
    assert "\n" not in str(err.value)


def test_callback_logs_top1_every_n_epochs_equal_to_eval(tmp_path):
    folder = make_folder(tmp_path / "colours", COLOURS, per_class=2)
    cfg = compose_train(TINY_TRAIN_OVERRIDES, output_dir=tmp_path)
    model = instantiate(cfg.model)
    callback = ZeroShotClassification(str(folder), templates=TEMPLATES, every_n_epochs=2)
    logger = CSVLogger(tmp_path, name="", version="")
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=2,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[callback],
        logger=logger,
    )
    trainer.fit(model, datamodule=build_datamodule(cfg.dataset, model))
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    logged = [float(r["zeroshot/top1"]) for r in rows if r.get("zeroshot/top1")]
    assert len(logged) == 1  # epoch 2 only
    expected = zeroshot_classify(model, folder, TEMPLATES, ks=(1, 5))
    assert logged[0] == pytest.approx(expected.top_k[1])
    assert float(trainer.callback_metrics["zeroshot/top5"]) == pytest.approx(expected.top_k[5])
    assert model.training  # the callback left the model as it found it


def test_class_names_file_and_bad_callback_settings(tmp_path):
    folder = make_folder(tmp_path / "colours", dict(list(COLOURS.items())[:2]), per_class=1)
    dataset = image_folder(folder)
    names = tmp_path / "names.txt"
    names.write_text("crimson\nemerald\n")
    assert folder_classnames(dataset, names) == ["crimson", "emerald"]
    names.write_text("crimson\n")
    with pytest.raises(DataError, match="names 1 classes but the image folder has 2"):
        folder_classnames(dataset, names)
    with pytest.raises(ConfigError, match="exactly one of templates"):
        ZeroShotClassification(str(folder))
    templates = read_lines(CONFIG_DIR + "/templates/imagenet.yaml", "templates")
    assert len(templates) == 80 and all("{}" in t for t in templates)


def test_validate_before_fit_logs_a_step_0_baseline(tmp_path):
    folder = make_folder(tmp_path / "colours", dict(list(COLOURS.items())[:3]), per_class=1)
    overrides = [
        *TINY_TRAIN_OVERRIDES,
        "validate_before_fit=true",
        "test=false",
        "callbacks=[none,zeroshot]",
        f"callbacks.zeroshot.images={folder}",
        "callbacks.zeroshot.templates=['a {} square']",
        "callbacks.zeroshot.templates_file=null",
        "++trainer.limit_train_batches=1",
        "++trainer.limit_val_batches=1",
    ]
    train(compose_train(overrides, output_dir=tmp_path))
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).open()))
    steps = [int(r["step"]) for r in rows if r.get("val/rsum")]
    assert steps[0] == 0 and len(steps) == 2  # the baseline before any update, then epoch 1
    assert any(r.get("zeroshot/top1") and int(r["step"]) == 0 for r in rows)
