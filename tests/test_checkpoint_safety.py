"""Loading a checkpoint never runs code the checkpoint names: every ``_target_`` is checked
against the allowlist of :mod:`clip_lightning.models.targets` before anything is built."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from clip_lightning.errors import ConfigError
from clip_lightning.models import LinearHead, allow_target
from clip_lightning.models.targets import is_allowed
from clip_lightning.module import CLIPModule


@pytest.fixture
def tiny_hparams(tiny_cfg) -> dict:
    return copy.deepcopy(dict(instantiate(tiny_cfg.model).hparams))


def _crafted_checkpoint(tmp_path, hparams: dict):
    path = tmp_path / "crafted.ckpt"
    torch.save(
        {"pytorch-lightning_version": L.__version__, "state_dict": {}, "hyper_parameters": hparams},
        path,
    )
    return path


def test_checkpoint_naming_a_foreign_callable_is_refused_before_it_runs(tmp_path, tiny_hparams):
    source, written = tmp_path / "source.txt", tmp_path / "written.txt"
    source.write_text("payload")
    tiny_hparams["image_encoder"] = {
        "_target_": "shutil.copyfile",
        "src": str(source),
        "dst": str(written),
    }
    path = _crafted_checkpoint(tmp_path, tiny_hparams)
    with pytest.raises(ConfigError) as raised:
        CLIPModule.load_from_checkpoint(path)
    assert not written.exists()
    message = str(raised.value)
    assert "model.image_encoder._target_='shutil.copyfile'" in message
    assert "\n" not in message


def test_nested_targets_are_checked_too(tmp_path, tiny_hparams):
    written = tmp_path / "written.txt"
    tiny_hparams["loss"]["nested"] = {
        "_target_": "pathlib.Path.write_text",
        "self": str(written),
        "data": "x",
    }
    with pytest.raises(ConfigError, match=r"model\.loss\.nested\._target_='pathlib"):
        CLIPModule.load_from_checkpoint(_crafted_checkpoint(tmp_path, tiny_hparams))
    assert not written.exists()


def test_allowlist_accepts_project_classes_and_optimizers_only():
    assert is_allowed("clip_lightning.models.ImageEncoder")
    assert is_allowed("torch.optim.AdamW")
    assert is_allowed("torch.optim.lr_scheduler.LambdaLR")
    assert is_allowed("clip_lightning.optim.cosine_with_warmup")  # the shipped scheduler
    assert not is_allowed("clip_lightning.data.records.load_rgb")  # a function of the package
    assert not is_allowed("clip_lightning.module.Path")  # a class merely imported into it
    assert not is_allowed("os.system")
    assert not is_allowed("clip_lightning.no.such.Thing")


class UserHead(LinearHead):
    """A user's own head class, outside the package."""


def test_allow_target_extends_the_allowlist(tiny_cfg):
    target = f"{__name__}.UserHead"
    assert not is_allowed(target)
    tiny_cfg.model.head = {"_target_": target}
    with pytest.raises(Exception, match=target):
        instantiate(tiny_cfg.model)
    allow_target(UserHead)
    model = instantiate(tiny_cfg.model)
    assert isinstance(model.image_head, UserHead)
