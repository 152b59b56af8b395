"""Renamed config keys: the old name still works for one release, with one line naming the new
one, and a checkpoint saved with the old names loads and resumes by the new ones."""

from __future__ import annotations

import logging

import pytest
import torch

from clip_lightning.checkpoints.resume import config_differences
from clip_lightning.cli.config_schema import check_config
from clip_lightning.data.datamodule import CaptionDataModule
from clip_lightning.errors import ConfigError
from clip_lightning.module import CLIPModule
from clip_lightning.utils.renamed_keys import upgrade_config
from tests.helpers import TINY_TRAIN_OVERRIDES, compose_train

OLD_OVERRIDES = [
    "dataset.cache_size=128",
    "model.image_encoder.unfreeze_last_blocks=2",
    "model.text_encoder.unfreeze_last_layers=1",
]
NEW_KEYS = {
    "dataset.cache_size": "dataset.cache_image_size",
    "model.image_encoder.unfreeze_last_blocks": "model.image_encoder.unfreeze_last",
    "model.text_encoder.unfreeze_last_layers": "model.text_encoder.unfreeze_last",
}


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_old_keys_typed_as_overrides_are_read_by_their_new_names(caplog) -> None:
    cfg = compose_train([*TINY_TRAIN_OVERRIDES, *OLD_OVERRIDES])
    check_config(cfg, "train")
    with caplog.at_level(logging.WARNING):
        upgrade_config(cfg)
    assert cfg.dataset.cache_image_size == 128
    assert cfg.model.image_encoder.unfreeze_last == 2
    assert cfg.model.text_encoder.unfreeze_last == 1
    assert "cache_size" not in cfg.dataset
    assert "unfreeze_last_blocks" not in cfg.model.image_encoder
    lines = warnings(caplog)
    assert len(lines) == len(NEW_KEYS)  # one line per old key
    for old, new in NEW_KEYS.items():
        assert any(line.startswith(f"{old} is now {new} ") for line in lines), lines


def test_without_old_keys_nothing_is_said_and_the_placeholders_go(caplog) -> None:
    cfg = compose_train(TINY_TRAIN_OVERRIDES)
    assert cfg.dataset.cache_size is None and cfg.model.image_encoder.unfreeze_last_blocks is None
    with caplog.at_level(logging.WARNING):
        upgrade_config(cfg)
    assert not warnings(caplog)
    assert "cache_size" not in cfg.dataset and cfg.dataset.cache_image_size == 256
    assert "unfreeze_last_layers" not in cfg.model.text_encoder


def test_an_old_key_with_a_bad_value_is_refused_by_the_name_typed() -> None:
    cfg = compose_train([*TINY_TRAIN_OVERRIDES, "dataset.cache_size=3"])
    with pytest.raises(ConfigError, match=r"^dataset\.cache_size=3 must be an integer >= 16"):
        check_config(cfg, "train")


def test_the_datamodule_takes_cache_size_by_its_old_name(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        datamodule = CaptionDataModule(format="synthetic", cache_size=24)
    assert datamodule.cache_image_size == 24
    assert warnings(caplog) == [
        "dataset.cache_size is now dataset.cache_image_size "
        "(the old name is read until the next release)"
    ]


def test_a_checkpoint_saved_with_the_old_names_loads_and_resumes(
    tiny_checkpoint, tmp_path, caplog
) -> None:
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    hparams = state["hyper_parameters"]
    for tower, old in (
        ("image_encoder", "unfreeze_last_blocks"),
        ("text_encoder", "unfreeze_last_layers"),
    ):
        config = {k: v for k, v in hparams[tower].items() if not k.startswith("unfreeze_last")}
        hparams[tower] = config | {old: 0}  # as a checkpoint of the previous release holds it
    old = tmp_path / "old.ckpt"
    torch.save(state, old)

    with caplog.at_level(logging.WARNING):
        model = CLIPModule.load_from_checkpoint(old)
    reference = CLIPModule.load_from_checkpoint(tiny_checkpoint)
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor)
    assert any(
        "unfreeze_last_blocks is now model.image_encoder.unfreeze_last" in line
        for line in warnings(caplog)
    )

    cfg = compose_train(TINY_TRAIN_OVERRIDES)
    upgrade_config(cfg)
    assert config_differences(hparams, cfg) == []
    cfg.model.image_encoder.unfreeze_last = 1
    assert config_differences(hparams, cfg) == [
        "model.image_encoder.unfreeze_last=1 (checkpoint: 0)"
    ]
