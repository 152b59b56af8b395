"""The Hydra train entry point: composition, a full tiny run, and the offline failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clip_lightning.cli.train import train
from tests.helpers import RECALL_KEYS, compose_train
from tests.helpers.tasks import command_in_process, train_in_process


def test_train_writes_metrics_json_with_recall_in_percent(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == metrics
    for key in [*RECALL_KEYS, "val/rsum"]:
        assert key in written
    for key in RECALL_KEYS[:-1]:
        assert 0.0 <= written[key] <= 100.0
    assert written["test/rsum"] == pytest.approx(sum(written[k] for k in RECALL_KEYS[:-1]))
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_cfg_job_prints_the_composed_config_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = command_in_process("train", "--cfg", "job")
    stdout = run.stdout
    assert run.code == 0, run.stderr
    assert "_target_: clip_lightning.module.CLIPModule" in stdout
    assert "name: resnet50" in stdout
    assert not (tmp_path / "logs").exists()


def test_real_defaults_are_resnet50_distilbert_on_flickr30k():
    cfg = compose_train([])
    assert cfg.model.image_encoder.name == "resnet50"
    assert cfg.model.image_encoder.pretrained is True
    assert cfg.model.text_encoder.name_or_path == "distilbert-base-uncased"
    assert cfg.dataset.name == "flickr30k"


def test_quickstart_composes_offline_with_a_500_image_test_split():
    cfg = compose_train(["experiment=quickstart"])
    assert cfg.dataset.format == "synthetic"
    assert cfg.dataset.adapter_options.test >= 500
    assert cfg.model.image_encoder.pretrained is False
    assert Path(cfg.model.text_encoder.name_or_path, "config.json").is_file()
    assert cfg.model.text_encoder.freeze is True


def test_real_defaults_fail_fast_offline_with_one_clear_message(tmp_path):
    result = train_in_process(tmp_path, "print_config=false", check=False)
    output = result.output
    assert result.code == 1
    assert "the resnet50 image weights (timm/resnet50.a1_in1k), not on this machine" in output
    assert "experiment=quickstart" in output
    assert "Traceback" not in output
    assert "Epoch" not in output


def test_a_bad_loader_value_fails_at_start_with_one_line(tmp_path):
    result = train_in_process(
        tmp_path, "experiment=quickstart", "dataset.batch_size=abc", check=False
    )
    output = result.output
    assert result.code == 1
    assert "dataset.batch_size='abc' must be an integer >= 1" in output
    assert "Traceback" not in output
    assert "Epoch" not in output
