"""W&B offline: config, parameter counts, metrics in the offline run; resume keeps the id."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import TINY_RUN_OVERRIDES, run_dirs
from tests.helpers.tasks import train_in_process


@pytest.mark.slow
def test_wandb_offline_run_and_resume_keep_one_id(tmp_path: Path) -> None:
    # with the alignment plots (TINY_RUN_OVERRIDES drops them) and a throughput window that
    # fits the epoch
    with_plots = [o for o in TINY_RUN_OVERRIDES if o != "~callbacks.alignment_plots"]
    train_in_process(
        tmp_path,
        *with_plots,
        "logger=wandb",
        "test=false",
        "trainer.log_every_n_steps=1",
        "callbacks.throughput.window=2",
    )
    (first,) = run_dirs(tmp_path)
    run_id = (first / "wandb_run_id").read_text().strip()
    (offline,) = (first / "wandb").glob(f"offline-run-*-{run_id}")
    # wandb >= 0.19 keeps an offline run's config, history and summary in the protobuf
    # transaction log run-<id>.wandb (what `wandb sync` uploads); its keys are stored verbatim
    records = (offline / f"run-{run_id}.wandb").read_bytes()
    for key in (
        b"task_name",
        b"val/rsum",
        b"params/total_trainable",
        b"train/logit_scale",
        b"train/samples_per_sec",
    ):
        assert key in records, key
    # the alignment plots are logged as W&B images (media files of the offline run)
    logged = {p.name.split("_")[0] for p in (offline / "files" / "media" / "images").rglob("*.png")}
    assert {"similarity", "text", "image"} <= logged, logged

    train_in_process(tmp_path, *TINY_RUN_OVERRIDES, "logger=wandb", "test=false", "ckpt_path=last")
    second = run_dirs(tmp_path)[-1]
    assert second != first
    assert (second / "wandb_run_id").read_text().strip() == run_id
    assert list((second / "wandb").glob(f"offline-run-*-{run_id}"))
