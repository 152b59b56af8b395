"""Two CPU processes (gloo) share one Hydra run dir; only rank 0 writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.experiments.conftest import TINY, read_metrics, run_dirs, run_train


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_sim_writes_one_run_dir(tmp_path: Path) -> None:
    run_train(tmp_path, *TINY, "trainer=ddp_sim", "test=false")
    runs = run_dirs(tmp_path)
    assert len(runs) == 1, runs
    assert len(list((tmp_path / "logs").rglob("metrics.json"))) == 1
    metrics = read_metrics(runs[0])
    assert {"val/rsum", "val/i2t_r1", "train/loss"} <= metrics.keys()
    assert (runs[0] / "checkpoints" / "last.ckpt").is_file()
