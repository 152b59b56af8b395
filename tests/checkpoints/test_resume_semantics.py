"""The resume rule: new learning rates apply, a changed run length never makes the LR rise, and
a checkpoint of another model, optimizer or schedule is refused in one line naming what differs.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from clip_lightning.checkpoints import check_resume, read_training_checkpoint, tensor_mismatches
from clip_lightning.cli.train import train
from clip_lightning.errors import CheckpointError
from clip_lightning.module import CLIPModule
from tests.helpers import TINY_TRAIN_OVERRIDES, compose_train

# TINY_TRAIN_OVERRIDES: 48 train images, 16 per step -> 3 optimizer steps per epoch; the LR
# is logged every step
STEPS_PER_EPOCH = 3
RUN = [
    *TINY_TRAIN_OVERRIDES,
    "trainer.max_epochs=2",
    "callbacks.model_checkpoint.save_top_k=-1",  # keep epoch_000.ckpt: a mid-schedule resume
    "trainer.log_every_n_steps=1",
    "model.tower_lr.image_encoder=1e-3",  # differs from optimizer.lr, to tell the groups apart
    "test=false",
    "~callbacks.alignment_plots",
    "~callbacks.rich_progress_bar",
]
HEAD, IMAGE = "lr-AdamW/head", "lr-AdamW/image_encoder"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs (6 steps, cosine to zero) with a checkpoint after each epoch."""
    run_dir = tmp_path_factory.mktemp("first")
    train(compose_train(RUN, output_dir=run_dir))
    return run_dir


def resume(run_dir: Path, ckpt: Path, *overrides: str) -> Path:
    train(compose_train([*RUN, f"ckpt_path={ckpt}", *overrides], output_dir=run_dir))
    return run_dir


def logged_lrs(run_dir: Path, group: str) -> dict[int, float]:
    """The LR each optimizer step used, as LearningRateMonitor logged it (step -> lr)."""
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return {int(row["step"]): float(row[group]) for row in csv.DictReader(f) if row[group]}


def test_same_config_continues_the_schedule_exactly(first_run: Path, tmp_path: Path) -> None:
    resumed = resume(tmp_path, first_run / "checkpoints" / "epoch_000.ckpt")
    before, after = logged_lrs(first_run, HEAD), logged_lrs(resumed, HEAD)
    assert sorted(after) == [3, 4, 5]
    assert after == pytest.approx({step: before[step] for step in after}, rel=1e-9)


def test_new_learning_rates_apply_on_resume(first_run: Path, tmp_path: Path) -> None:
    resumed = resume(
        tmp_path,
        first_run / "checkpoints" / "epoch_000.ckpt",
        "optimizer.lr=4e-3",  # twice the quickstart's 2e-3
        "model.tower_lr.image_encoder=3e-3",  # three times 1e-3
    )
    for group, factor in ((HEAD, 2.0), (IMAGE, 3.0)):
        before, after = logged_lrs(first_run, group), logged_lrs(resumed, group)
        assert after == pytest.approx({s: factor * before[s] for s in after}, rel=1e-9), group
    saved = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu")
    peaks = {g["name"]: g["initial_lr"] for g in saved["optimizer_states"][0]["param_groups"]}
    assert peaks["head"] == pytest.approx(4e-3) and peaks["image_encoder"] == pytest.approx(3e-3)


def test_longer_run_decays_from_the_lr_reached_and_never_rises(
    first_run: Path, tmp_path: Path
) -> None:
    # epoch_000 is step 3 of a 6-step cosine; 4 epochs is 12 steps. Recomputing the cosine
    # for 12 steps at step 3 would jump the LR back up to 85 % of its peak.
    resumed = resume(tmp_path, first_run / "checkpoints" / "epoch_000.ckpt", "trainer.max_epochs=4")
    reached = logged_lrs(first_run, HEAD)[STEPS_PER_EPOCH]
    lrs = logged_lrs(resumed, HEAD)
    assert sorted(lrs) == list(range(3, 12))
    assert lrs[3] == pytest.approx(reached, rel=1e-9)  # continuous at the resume point
    steps = sorted(lrs)
    assert all(lrs[a] >= lrs[b] for a, b in itertools.pairwise(steps))
    assert lrs[11] == pytest.approx(reached * (12 - 11) / (12 - 3), rel=1e-9)  # linear to 0


def test_longer_run_from_a_finished_schedule_is_refused(first_run: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="finished its LR schedule") as caught:
        resume(tmp_path, first_run / "checkpoints" / "last.ckpt", "trainer.max_epochs=3")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["model.embed_dim=64"], "model.embed_dim=64 (checkpoint: 32)"),
        (["model/head=linear"], "model.head._target_=clip_lightning.models.LinearHead"),
        (["optimizer=sgd", "optimizer.lr=2e-3"], "optimizer._target_=torch.optim.SGD"),
        (["optimizer.weight_decay=0.2"], "optimizer.weight_decay=0.2 (checkpoint: 0.05)"),
        (["scheduler.warmup=0.5"], "scheduler.warmup=0.5 (checkpoint: 0.05)"),
        (["loss=siglip"], "loss._target_=clip_lightning.losses.SigLIPLoss"),
        (["model.image_encoder.name=resnet34"], "model.image_encoder.name=resnet34"),
    ],
)
def test_changed_model_optimizer_or_schedule_is_refused_naming_it(
    first_run: Path, overrides: list[str], named: str
) -> None:
    cfg = compose_train([*RUN, *overrides])
    path = first_run / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError) as caught:
        check_resume(path, read_training_checkpoint(path, CLIPModule), cfg, instantiate(cfg.model))
    message = str(caught.value)
    assert named in message and "\n" not in message
    assert "start a new run" in message


def test_changed_embed_dim_stops_the_train_task_before_fitting(
    first_run: Path, tmp_path: Path
) -> None:
    with pytest.raises(CheckpointError, match=r"model\.embed_dim=64 \(checkpoint: 32\)"):
        resume(tmp_path, first_run / "checkpoints" / "last.ckpt", "model.embed_dim=64")
    assert not (tmp_path / "checkpoints").exists()


def test_weights_that_do_not_fit_are_named(first_run: Path) -> None:
    cfg = compose_train(RUN)
    model = instantiate(cfg.model)
    saved = torch.load(first_run / "checkpoints" / "last.ckpt", map_location="cpu")["state_dict"]
    saved["image_head.fc.weight"] = torch.zeros(3, 3)
    del saved["text_head.fc.bias"]
    expected = model.state_dict()
    assert {"image_head.fc.weight", "text_head.fc.bias"} <= expected.keys()
    mismatches = tensor_mismatches(saved, expected)
    assert mismatches[0].startswith("image_head.fc.weight: checkpoint [3, 3], model [")
    assert "text_head.fc.bias missing from the checkpoint" in mismatches


def test_truncated_checkpoint_is_one_line(first_run: Path, tmp_path: Path) -> None:
    whole = (first_run / "checkpoints" / "last.ckpt").read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a clip-lightning checkpoint"):
        read_training_checkpoint(truncated, CLIPModule)


def test_weights_only_checkpoint_cannot_be_resumed(first_run: Path, tmp_path: Path) -> None:
    full = torch.load(first_run / "checkpoints" / "last.ckpt", map_location="cpu")
    weights_only = tmp_path / "weights.ckpt"
    torch.save({k: full[k] for k in ("state_dict", "hyper_parameters")}, weights_only)
    with pytest.raises(CheckpointError, match="has no optimizer_states, loops") as caught:
        read_training_checkpoint(weights_only, CLIPModule)
    assert "\n" not in str(caught.value)
