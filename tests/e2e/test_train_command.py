"""``python -m clip_lightning.train`` as a process: what the console shows, the exit status and
the run directory; the tests that run a task in the test process cover the rest."""

from __future__ import annotations

import json
from pathlib import Path

from clip_lightning.cli.preflight import QUICKSTART_HINT
from tests.helpers import RECALL_KEYS, TINY_TRAIN_OVERRIDES, needs_no_gpu, run_command


def test_cli_fast_dev_run_writes_a_run_dir_under_logs(tmp_path):
    result = run_command(tmp_path, "train", *TINY_TRAIN_OVERRIDES, "trainer.fast_dev_run=true")
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


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "[ERROR]" in line]


@needs_no_gpu
def test_offline_defaults_name_everything_missing_in_one_line_at_once(tmp_path: Path) -> None:
    """The user story offline took 63 s and 250 lines and named one missing thing per run (the
    ResNet-50 weights; DistilBERT the next run; the COCO layout the third); trainer=gpu on a
    CPU machine was Lightning's raw MisconfigurationException after 20 s."""
    proc = run_command(
        tmp_path, "train", "dataset=coco", "trainer=gpu", "trainer.devices=4", check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    (line,) = error_lines(output)
    assert "cannot start (HF_HUB_OFFLINE is set), 4 things to fix: (1) trainer.accel" in line
    assert "but torch finds no CUDA GPU on this machine: set trainer=cpu" in line
    assert "(2) the resnet50 image weights (timm/resnet50.a1_in1k), not on this machine: " in line
    assert "model.image_encoder.weights_file=FILE" in line
    assert "(3) the text model distilbert-base-uncased" in line
    assert "model.text_encoder.name_or_path=DIR" in line
    assert "(4) the dataset yerevann/coco-karpathy (dataset=coco)" in line
    assert "set dataset.root=DIR" in line and line.endswith(QUICKSTART_HINT)
    assert "Retry" not in output and "Traceback" not in output and "CONFIG" not in output
    assert "MisconfigurationException" not in output
    assert len(output.strip().splitlines()) <= 3, output
