"""The Hydra train entry point: composition, a full tiny run, and the offline failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clip_lightning.cli.train import train
from tests.helpers import TINY_TRAIN_OVERRIDES, compose_train
from tests.helpers.tasks import command_in_process, train_in_process

RECALL_KEYS = [f"test/{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)] + ["test/rsum"]


def run_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clip_lightning.train", *args],
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


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


def test_cli_fast_dev_run_writes_a_run_dir_under_logs(tmp_path):
    result = run_cli([*TINY_TRAIN_OVERRIDES, "trainer.fast_dev_run=true"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = list((tmp_path / "logs" / "quickstart" / "runs").iterdir())
    assert len(run_dirs) == 1
    metrics = json.loads((run_dirs[0] / "metrics.json").read_text())
    assert set(RECALL_KEYS) <= set(metrics)
    assert result.stdout.strip().splitlines()[-1] == f"Run directory: {run_dirs[0]}"
    # Lightning's adverts and its warnings about our deliberate choices stay off the console,
    # as do an always-0 FLOPs column and transformers' weight-loading bar
    output = result.stdout + result.stderr
    for noise in (
        "💡 Tip",
        "LeafSpec",
        "module(s) in eval mode",
        "Test metric",
        "FLOPs",
        "Loading weights",
        "Trainer already configured",
        "smaller than the logging interval",
    ):
        assert noise not in output, noise
    # the recall table names the split it scored and its size (one test batch of 24 images),
    # and warns once that a split this small gives coarse figures
    assert "test split: 24 images, 120 captions" in result.stdout
    assert output.count("the test split has only 24 images") == 1
    assert (metrics["test/images"], metrics["test/captions"]) == (24, 120)


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
