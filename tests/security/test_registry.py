"""The one builder of model parts: a registry of classes by name, and arguments checked against
the constructors' annotations before anything is called -- for the user's config and a
checkpoint alike."""

from __future__ import annotations

import re

import pytest

from clip_lightning.errors import ConfigError
from clip_lightning.models import LinearHead, MLPHead, allow_target, targets
from clip_lightning.models.targets import build, check_arguments, check_part, is_allowed
from clip_lightning.module import CLIPModule

HEAD = "clip_lightning.models.MLPHead"


def _refusal(config: dict, key: str = "model.head", **kwargs) -> str:
    with pytest.raises(ConfigError) as raised:
        build(config, key, **kwargs)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_registry_holds_the_package_parts_and_torch_optimizers_only() -> None:
    assert is_allowed("clip_lightning.models.ImageEncoder")
    assert is_allowed("clip_lightning.models.image_encoder.ImageEncoder")
    assert is_allowed("torch.optim.AdamW")
    assert is_allowed("torch.optim.lr_scheduler.LambdaLR")
    assert is_allowed("clip_lightning.optim.cosine_with_warmup")  # the shipped scheduler
    assert not is_allowed("torch.optim.Optimizer")  # a base class, not an optimizer
    assert not is_allowed("clip_lightning.data.records.load_rgb")  # a function of the package
    assert not is_allowed("clip_lightning.module.Path")  # a class merely imported into it
    assert not is_allowed("os.system")
    assert not is_allowed("clip_lightning.no.such.Thing")


class UserHead(LinearHead):
    """A user's own head class, outside the package."""


def test_allow_target_lets_a_config_name_a_users_class(monkeypatch) -> None:
    monkeypatch.setattr(targets, "_registered", {})
    config = {"_target_": f"{__name__}.UserHead"}
    assert "is not a class clip-lightning builds models from" in _refusal(
        config, in_features=4, embed_dim=2
    )
    allow_target(UserHead)
    assert isinstance(build(config, "model.head", in_features=4, embed_dim=2), UserHead)


def test_a_class_registered_by_path_is_imported_when_named(monkeypatch) -> None:
    monkeypatch.setattr(targets, "_registered", {})
    allow_target(f"{__name__}.UserHead")
    head = build({"_target_": f"{__name__}.UserHead"}, "model.head", in_features=4, embed_dim=2)
    assert isinstance(head, UserHead) and head.proj.weight.shape == (2, 4)


def test_arguments_have_the_types_the_constructor_declares() -> None:
    head = build({"_target_": HEAD, "dropout": 0}, "model.head", in_features=4, embed_dim=2)
    assert isinstance(head, MLPHead) and head.dropout.p == 0  # an integer is a fine float
    wrong = _refusal({"_target_": HEAD, "dropout": "0.1"}, in_features=4, embed_dim=2)
    assert wrong == "model.head.dropout must be a float, got a string"
    unknown = _refusal({"_target_": HEAD, "bias": True}, in_features=4, embed_dim=2)
    assert unknown == "model.head.bias is not an argument of clip_lightning.models.heads.MLPHead"
    missing = _refusal({"_target_": HEAD}, in_features=4)
    assert "model.head: missing a required argument: 'embed_dim'" in missing


def test_only_optimizer_and_scheduler_configs_are_partial() -> None:
    sgd = build({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.5}, "o", partial=True)
    assert sgd.keywords == {"lr": 0.5}
    assert "_partial_ is only accepted in optimizer and scheduler" in _refusal(
        {"_target_": HEAD, "_partial_": True}, in_features=4, embed_dim=2
    )


def test_a_pair_factory_checks_the_module_arguments_it_forwards() -> None:
    factory = {
        "_target_": "clip_lightning.models.hf_clip.hf_clip_module",
        "_recursive_": False,
        "name_or_path": "openai/clip-vit-base-patch32",
        "tower_lr": {"image_encoder": "fast"},
    }
    with pytest.raises(ConfigError, match=r"^model\.tower_lr must be a mapping to a float"):
        check_part(factory, "model")


def test_library_loading_options_are_refused_where_the_tower_sets_them() -> None:
    timm_tower = {"_target_": "clip_lightning.models.ImageEncoder", "checkpoint_path": "x.pth"}
    with pytest.raises(ConfigError, match=r"image_encoder\.checkpoint_path is an option of how"):
        check_part(timm_tower, "model.image_encoder")
    open_clip_tower = {
        "_target_": "clip_lightning.models.open_clip.OpenCLIPImageTower",
        "model_kwargs": {"force_image_size": 64, "weights_only": False},
    }
    with pytest.raises(ConfigError, match=r"model_kwargs\.weights_only is an option of how"):
        check_part(open_clip_tower, "model.image_encoder")


def test_lora_and_layer_decay_settings_are_plain_data_of_their_types() -> None:
    """model.lora and optimizer.layer_decay, as a checkpoint holds them, pass the same checks."""
    copy = {"_target_": "shutil.copyfile", "src": "a", "dst": "b"}
    adamw = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
    refused = {
        "model.lora.target_modules._target_ is not accepted here": {
            "lora": {"r": 4, "target_modules": copy}
        },
        "model.lora.r must be an integer >= 1 or null, got a string": {"lora": {"r": "4"}},
        "model.lora.towers must be a list of values, each one of image, text": {
            "lora": {"r": 4, "towers": ["vision"]}
        },
        "model.lora.rank is not an argument of": {"lora": {"rank": 4}},
        "model.optimizer.layer_decay._target_ is not accepted here": {
            "optimizer": {**adamw, "layer_decay": copy}
        },
        "model.optimizer.layer_decay must be a float in (0, 1] or null, got float": {
            "optimizer": {**adamw, "layer_decay": 1.5}
        },
        "model.optimizer.momentum is not an argument of torch.optim.adamw.AdamW": {
            "optimizer": {**adamw, "layer_decay": 0.75, "momentum": 0.9}
        },
    }
    for expected, arguments in refused.items():
        with pytest.raises(ConfigError, match=re.escape(expected)):
            check_arguments(CLIPModule, arguments, "model")
    lora = {"r": 4, "alpha": 8, "dropout": 0.1, "towers": ["text"], "target_modules": ["fc1"]}
    check_arguments(
        CLIPModule, {"lora": lora, "optimizer": {**adamw, "layer_decay": 0.75}}, "model"
    )
