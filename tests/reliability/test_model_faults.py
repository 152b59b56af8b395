"""Predictable model-side faults end in one line that names the problem and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from clip_lightning.errors import CheckpointError, NonFiniteLossError
from clip_lightning.module import CLIPModule
from tests.helpers import TINY_TRAIN_OVERRIDES, build, compose_train, quiet_trainer
from tests.helpers.tasks import train_in_process


@pytest.fixture
def checkpoint(tiny_checkpoint: Path) -> Path:
    """The session's tiny checkpoint."""
    return tiny_checkpoint


def _load_error(path: Path, **overrides) -> str:
    with pytest.raises(CheckpointError) as raised:
        CLIPModule.load_from_checkpoint(path, **overrides)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_a_checkpoint_with_another_embed_dim_names_both(checkpoint):
    message = _load_error(checkpoint, embed_dim=64)
    assert "checkpoint has embed_dim 32, the model 64" in message


def test_a_checkpoint_with_another_head_names_both(checkpoint):
    message = _load_error(checkpoint, head={"_target_": "clip_lightning.models.LinearHead"})
    assert "checkpoint has head clip_lightning.models.MLPHead" in message
    assert "the model clip_lightning.models.LinearHead" in message


def test_a_truncated_checkpoint_says_so(checkpoint, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    assert "truncated" in _load_error(truncated)


def test_nan_stop_names_the_last_checkpoint_only_when_one_exists(tmp_path):
    model, datamodule = build(compose_train(TINY_TRAIN_OVERRIDES, output_dir=tmp_path))
    nan = torch.tensor(float("nan"))
    quiet_trainer(tmp_path / "none", max_steps=1, limit_val_batches=0).fit(model, datamodule)
    with pytest.raises(NonFiniteLossError, match="No checkpoint was saved") as raised:
        model._raise_if_not_finite(nan)
    assert "last good checkpoint" not in str(raised.value)

    saver = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_last=True)
    trainer = quiet_trainer(
        tmp_path, max_steps=1, limit_val_batches=0, enable_checkpointing=True, callbacks=[saver]
    )
    trainer.fit(model, datamodule)
    with pytest.raises(NonFiniteLossError) as raised:
        model._raise_if_not_finite(nan)
    assert f"The last good checkpoint is '{tmp_path / 'ckpts'}" in str(raised.value)


def test_missing_text_tower_folder_is_one_line_from_the_train_command(tmp_path):
    missing = tmp_path / "no-such-model"
    run = train_in_process(
        tmp_path, "experiment=quickstart", f"model.text_encoder.name_or_path={missing}", check=False
    )
    assert run.code == 1
    output = run.output.strip()
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if str(missing) in line]
    assert len(lines) == 1 and "does not exist" in lines[0]
    assert "model.text_encoder.name_or_path" in lines[0]


def test_a_checkpoint_with_the_old_unused_pooler_still_loads(checkpoint, tmp_path):
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    saved["state_dict"]["text_encoder.model.pooler.dense.weight"] = torch.zeros(384, 384)
    saved["state_dict"]["text_encoder.model.pooler.dense.bias"] = torch.zeros(384)
    older = tmp_path / "older.ckpt"
    torch.save(saved, older)
    reloaded = CLIPModule.load_from_checkpoint(older)
    assert reloaded.text_encoder.model.pooler is None
