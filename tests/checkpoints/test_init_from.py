"""init_from=CKPT starts a new run from a checkpoint's weights only; ckpt_path=last resumes the
newest run of the same model and data."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from clip_lightning.checkpoints import resolve_ckpt_path, same_model_and_data
from clip_lightning.cli.train import train
from clip_lightning.errors import CheckpointError, ConfigError
from tests.helpers import TINY_TRAIN_OVERRIDES, compose_train

ONE_EPOCH = [*TINY_TRAIN_OVERRIDES, "test=false"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """One tiny epoch (3 steps); its last.ckpt and metrics."""
    run = tmp_path_factory.mktemp("first")
    return run / "checkpoints" / "last.ckpt", train(compose_train(ONE_EPOCH, output_dir=run))


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_the_weights_only(first_run, tmp_path) -> None:
    last, metrics = first_run
    cfg = compose_train([*ONE_EPOCH, f"init_from={last}", "validate_before_fit=true"], tmp_path)
    train(cfg)
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        before_fit = next(row for row in csv.DictReader(f) if row.get("val/rsum"))
    # step 0 of the new run scores the checkpoint's weights exactly as the first run did
    assert before_fit["step"] == "0"
    assert float(before_fit["val/rsum"]) == pytest.approx(metrics["val/rsum"], abs=1e-4)
    # a new step count, optimizer and LR schedule: one epoch is 3 steps, not 6
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 3
    assert state["lr_schedulers"][0]["last_epoch"] == 3


def test_init_from_refuses_other_weights_and_a_resume(first_run, tmp_path) -> None:
    last, _ = first_run
    cfg = compose_train([*ONE_EPOCH, f"init_from={last}", "model.embed_dim=16"], tmp_path)
    with pytest.raises(CheckpointError, match=r"does not fit this model: .*embed_dim 32.* 16"):
        train(cfg)
    cfg = compose_train([*ONE_EPOCH, f"init_from={last}", "ckpt_path=last"], tmp_path)
    with pytest.raises(ConfigError, match="pass only one of them"):
        train(cfg)


def fake_run(runs: Path, name: str, cfg: DictConfig, age: float) -> Path:
    """A run directory with the config Hydra saves and a last.ckpt written ``age`` s ago."""
    (runs / name / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, runs / name / ".hydra" / "config.yaml")
    ckpt = runs / name / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    os.utime(ckpt, (ckpt.stat().st_mtime - age,) * 2)
    return ckpt


def test_last_prefers_the_newest_run_of_the_same_model_and_data(tmp_path: Path) -> None:
    cfg = compose_train(TINY_TRAIN_OVERRIDES)
    runs = tmp_path / "runs"
    matching = fake_run(runs, "a", cfg, age=30)
    other_data = fake_run(
        runs, "b", compose_train([*TINY_TRAIN_OVERRIDES, "dataset.adapter_options.train=96"]), 20
    )
    fake_run(runs, "c", compose_train([*TINY_TRAIN_OVERRIDES, "model.embed_dim=64"]), age=10)
    # a new learning rate is what a resume may change: still the same model
    resumed = compose_train([*TINY_TRAIN_OVERRIDES, "optimizer.lr=1e-4"])
    prefer = same_model_and_data(resumed)
    assert resolve_ckpt_path("last", None, runs, runs / "new", prefer) == matching
    # with no matching run, the newest one (whose resume then names what differs)
    assert resolve_ckpt_path("last", None, runs, runs / "a", prefer) == runs / "c" / (
        "checkpoints/last.ckpt"
    )
    assert same_model_and_data(
        compose_train([*TINY_TRAIN_OVERRIDES, "dataset.adapter_options.train=96"])
    )(other_data.parents[1])


def test_last_never_resolves_a_foreign_resolver_in_an_earlier_runs_saved_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A saved run config is data: ``${oc.env:...}`` of a variable that is not the package's
    own, or any resolver its configs never use, makes the run a non-match unresolved (resolved,
    both would equal the dataset's name and match)."""
    cfg = compose_train(TINY_TRAIN_OVERRIDES)
    runs = tmp_path / "runs"
    monkeypatch.setenv("SECRET_VALUE", cfg.dataset.name)
    calls: list[str] = []
    OmegaConf.register_new_resolver("canary", lambda: calls.append("x") or cfg.dataset.name)
    try:
        for name, value in (("env", "${oc.env:SECRET_VALUE}"), ("canary", "${canary:}")):
            crafted = cfg.copy()
            crafted.dataset.name = value
            fake_run(runs, name, crafted, age=10)
            assert not same_model_and_data(cfg)(runs / name)
    finally:
        OmegaConf.clear_resolver("canary")
    assert calls == []
    fake_run(runs, "plain", cfg, age=20)
    assert same_model_and_data(cfg)(runs / "plain")
