"""Config faults as a user hits them: ``train`` with a bad value or a checkpoint that cannot be
resumed exits 1 with one line naming the key, and no traceback (run through the task wrapper in
this process; ``tests/e2e`` covers the command's exit status)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import TINY_RUN_OVERRIDES, run_dirs
from tests.helpers.tasks import train_in_process


def error_lines(output: str, needle: str) -> list[str]:
    return [line for line in output.splitlines() if needle in line]


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("optimizer.lr=abc", "optimizer.lr='abc' must be a float > 0; e.g. optimizer.lr="),
        ("model.image_encoder.image_size=0", "model.image_encoder.image_size=0 must be an integer"),
        ("model.embed_dim=0", "model.embed_dim=0 must be an integer >= 1"),
        ("trainer.devices=abc", "trainer.devices='abc' must be a device count"),
        ("init_from=missing.ckpt", "init_from=missing.ckpt does not exist; pass init_from="),
    ],
)
def test_bad_value_exits_1_with_one_line(tmp_path: Path, override: str, line: str) -> None:
    run = train_in_process(tmp_path, *TINY_RUN_OVERRIDES, override, check=False)
    output = run.output
    assert run.code == 1, output[-2000:]
    assert len(error_lines(output, line)) == 1, output[-2000:]
    assert "Traceback" not in output
    # refused before anything was built or written
    assert not any((run / "checkpoints").exists() for run in run_dirs(tmp_path))


def test_truncated_checkpoint_exits_1_with_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"PK\x03\x04 not the rest of a checkpoint")
    run = train_in_process(tmp_path, *TINY_RUN_OVERRIDES, f"ckpt_path={broken}", check=False)
    output = run.output
    assert run.code == 1, output[-2000:]
    lines = error_lines(output, "truncated or not a clip-lightning checkpoint")
    assert len(lines) == 1 and str(broken) in lines[0]
    assert "Traceback" not in output


@pytest.mark.slow
def test_resume_with_a_changed_embed_dim_names_it(tmp_path: Path) -> None:
    train_in_process(tmp_path, *TINY_RUN_OVERRIDES, "test=false")
    run = train_in_process(
        tmp_path,
        *TINY_RUN_OVERRIDES,
        "test=false",
        "ckpt_path=last",
        "model.embed_dim=64",
        check=False,
    )
    output = run.output
    assert run.code == 1, output[-2000:]
    (line,) = error_lines(output, "cannot resume")
    assert "model.embed_dim=64 (checkpoint: 128)" in line
    assert "Traceback" not in output
