"""The typed config check: every shipped config passes, every bad value is one line naming it."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from clip_lightning.cli.config_schema import TASK_SCHEMAS, check_config
from clip_lightning.errors import ClipLightningError, ConfigError
from clip_lightning.utils.typecheck import describe, example, is_model, matches
from tests.helpers import CONFIG_DIR, TINY_TRAIN_OVERRIDES, compose_train
from tests.helpers.tasks import compose_config

CONF = Path(CONFIG_DIR)
# the groups of conf/train.yaml a user picks from, nested model groups included
TRAIN_GROUPS = [
    "dataset",
    "model",
    "model/image_encoder",
    "model/text_encoder",
    "model/head",
    "loss",
    "optimizer",
    "scheduler",
    "trainer",
    "callbacks",
    "logger",
    "debug",
    "hparams_search",
]
GROUP_OPTIONS = [
    f"{group}={path.stem}"
    for group in TRAIN_GROUPS
    for path in sorted((CONF / group).glob("*.yaml"))
    if not (group == "debug" and path.stem == "default")  # the base of the debug presets
]
EXPERIMENTS = sorted(path.stem for path in (CONF / "experiment").glob("*.yaml"))


def compose_task(task: str, overrides: list[str] = ()) -> object:
    return compose_config(task, overrides=list(overrides))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_shipped_experiment_passes(experiment: str) -> None:
    check_config(compose_train([f"experiment={experiment}"]), "train")


@pytest.mark.parametrize("option", GROUP_OPTIONS)
def test_every_config_group_option_passes(option: str) -> None:
    check_config(compose_train([option]), "train")


@pytest.mark.parametrize(
    "task", [t for t in TASK_SCHEMAS if t != "train" and (CONF / f"{t}.yaml").is_file()]
)
def test_every_task_config_passes(task: str) -> None:
    check_config(compose_task(task), task)


def test_open_groups_accept_keys_the_schema_does_not_name() -> None:
    # timm / HF / torch keywords the project passes through untouched
    cfg = compose_train(
        [
            *TINY_TRAIN_OVERRIDES,
            "+model.image_encoder.drop_path_rate=0.1",
            "+optimizer.amsgrad=true",
            "trainer.benchmark=true",
            "+dataset.adapter_options.extra=whatever",
        ]
    )
    check_config(cfg, "train")


BAD_TRAIN_VALUES = [
    ("optimizer.lr=abc", "optimizer.lr='abc'"),
    ("optimizer.lr=-1", "optimizer.lr=-1"),
    ("optimizer.lr=0", "optimizer.lr=0"),
    ("optimizer.lr=nan", "optimizer.lr=nan"),
    ("optimizer.weight_decay=-0.1", "optimizer.weight_decay=-0.1"),
    ("optimizer.betas=[0.9,1.5]", "optimizer.betas=[0.9,1.5]"),
    ("optimizer.betas=[0.9]", "optimizer.betas=[0.9]"),
    ("scheduler.warmup=-1", "scheduler.warmup=-1"),
    ("scheduler.warmup=abc", "scheduler.warmup='abc'"),
    ("model.embed_dim=0", "model.embed_dim=0"),
    ("model.embed_dim=12.5", "model.embed_dim=12.5"),
    ("model.image_encoder.image_size=0", "model.image_encoder.image_size=0"),
    ("model.image_encoder.image_size=3", "model.image_encoder.image_size=3"),
    ("model.text_encoder.max_length=0", "model.text_encoder.max_length=0"),
    ("model.text_encoder.pooling=max", "model.text_encoder.pooling='max'"),
    ("model.tower_lr.image_encoder=abc", "model.tower_lr.image_encoder='abc'"),
    ("model.tower_lr.text_encoder=-1e-5", "model.tower_lr.text_encoder=-1e-05"),
    ("model.grad_cache_chunk_size=0", "model.grad_cache_chunk_size=0"),
    ("model.clip_grad_norm=-1", "model.clip_grad_norm=-1"),
    ("model.head.dropout=1.5", "model.head.dropout=1.5"),
    ("loss.init_logit_scale=abc", "loss.init_logit_scale='abc'"),
    ("loss.init_logit_scale=inf", "loss.init_logit_scale=inf"),
    ("loss.max_logit_scale=0", "loss.max_logit_scale=0"),
    ("dataset.batch_size=0", "dataset.batch_size=0"),
    ("dataset.batch_size=abc", "dataset.batch_size='abc'"),
    ("dataset.eval_batch_size=-3", "dataset.eval_batch_size=-3"),
    ("dataset.num_workers=-1", "dataset.num_workers=-1"),
    ("dataset.prefetch_factor=0", "dataset.prefetch_factor=0"),
    ("dataset.train_pairs=some", "dataset.train_pairs='some'"),
    ("dataset.augment.hflip=2", "dataset.augment.hflip=2"),
    ("trainer.max_epochs=abc", "trainer.max_epochs='abc'"),
    ("trainer.max_epochs=-2", "trainer.max_epochs=-2"),
    ("++trainer.max_steps=1.5", "trainer.max_steps=1.5"),
    ("trainer.devices=0", "trainer.devices=0"),
    ("trainer.devices=abc", "trainer.devices='abc'"),
    ("trainer.precision=17", "trainer.precision=17"),
    ("trainer.precision=fp16", "trainer.precision='fp16'"),
    ("trainer.num_nodes=0", "trainer.num_nodes=0"),
    ("++trainer.limit_train_batches=1.5", "trainer.limit_train_batches=1.5"),
    ("seed=-1", "seed=-1"),
    ("seed=abc", "seed='abc'"),
    ("ckpt_path=5", "ckpt_path=5"),
    ("resume_dir=true", "resume_dir=true"),
]


@pytest.mark.parametrize(("override", "shown"), BAD_TRAIN_VALUES)
def test_bad_value_is_one_line_naming_key_value_and_fix(override: str, shown: str) -> None:
    cfg = compose_train([*TINY_TRAIN_OVERRIDES, override])
    with pytest.raises(ConfigError) as caught:
        check_config(cfg, "train")
    message = str(caught.value)
    key = shown.split("=")[0]
    assert message.startswith(f"{shown} must be "), message
    assert f"; e.g. {key}=" in message
    assert "\n" not in message
    assert isinstance(caught.value, ClipLightningError)


def test_the_example_fix_passes_the_check() -> None:
    cfg = compose_train([*TINY_TRAIN_OVERRIDES, "optimizer.lr=abc"])
    with pytest.raises(ConfigError, match=r"e\.g\. optimizer\.lr=(\S+)$") as caught:
        check_config(cfg, "train")
    fix = str(caught.value).rpartition("e.g. ")[2]
    check_config(compose_train([*TINY_TRAIN_OVERRIDES, fix]), "train")


@pytest.mark.parametrize(
    ("task", "override", "shown"),
    [
        ("search", "k=0", "k=0"),
        ("search", "k=-1", "k=-1"),
        ("search", "k=abc", "k='abc'"),
        ("search", "batch_size=0", "batch_size=0"),
        ("eval", "split=train", "split='train'"),
        ("eval", "zeroshot.top_k=[0,5]", "zeroshot.top_k=[0,5]"),
        ("prepare", "max_listed=0", "max_listed=0"),
        ("prepare", "dataset.batch_size=0", "dataset.batch_size=0"),
        ("bench", "optimizer.lr=abc", "optimizer.lr='abc'"),
        ("bench", "model.embed_dim=0", "model.embed_dim=0"),
    ],
)
def test_bad_values_of_other_tasks(task: str, override: str, shown: str) -> None:
    cfg = compose_task(task, [override])
    with pytest.raises(ConfigError, match=f"^{re.escape(shown)} must be "):
        check_config(cfg, task)


def leaf_types(schema: type) -> list[tuple[str, object]]:
    """Every (key, type) a schema checks that is not a section, nested sections included."""
    found = []
    for name, expected in typing.get_type_hints(schema, include_extras=True).items():
        if name not in schema.model_fields:
            continue
        options = typing.get_args(expected) or (expected,)
        sections = [t for t in options if is_model(t)]
        if sections:
            found += [(f"{name}.{key}", t) for key, t in leaf_types(sections[0])]
        else:
            found.append((name, expected))
    return found


@pytest.mark.parametrize("task", sorted(TASK_SCHEMAS))
def test_every_derived_example_is_accepted(task: str) -> None:
    leaves = leaf_types(TASK_SCHEMAS[task])
    assert leaves
    for key, expected in leaves:
        fix = example(expected, given=5)  # the refused value a string key suggests quoted
        assert matches(fix, expected), f"{key}: {fix!r} is not {describe(expected)}"


def test_unknown_task_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="no config schema for task 'quickstart'"):
        check_config(compose_train(TINY_TRAIN_OVERRIDES), "quickstart")
