"""Typed checks of a composed config, before anything is built.

A wrongly typed or out-of-range value (``optimizer.lr=abc``, ``model.embed_dim=0``) otherwise
surfaces as a long traceback deep inside torch or Lightning, sometimes only when fitting starts,
or not at all (``embed_dim=0`` "trains" to a perfect recall). :func:`check_config` validates the
config of a task with one pydantic model per task and raises a one-line :class:`ConfigError`
naming the key, the bad value, what is expected and an example override.

A field's type says what a key accepts (``Literal``, unions, ``None``, lists, :class:`Range`
bounds attached with ``Annotated``); no field has a value: the defaults are the YAML files' in
``conf/``, and the example in a message is derived from the type
(:func:`~clip_lightning.utils.typecheck.example`). Only the keys the schema names are checked;
every group stays open, so any timm or HF keyword, optimizer argument or Lightning Trainer flag
passes untouched. Unknown keys and missing groups remain Hydra's to report. Values are validated
and worded by :mod:`clip_lightning.utils.typecheck`, which also checks the arguments of model
configs.

The file is one declaration, the schema of every task, kept together so a key's type is found in
one place; the checking machinery is in :mod:`~clip_lightning.utils.typecheck`.
"""

from __future__ import annotations

import functools
import typing
from typing import Annotated, Any, Literal, TypeVar

import pydantic
from omegaconf import DictConfig, OmegaConf
from pydantic import Strict, StringConstraints

from clip_lightning.errors import ConfigError
from clip_lightning.utils.typecheck import STRICT, Doc, Range, describe, example, is_model, text

__all__ = ["TASK_SCHEMAS", "check_config"]

T = TypeVar("T")


PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Fraction = Annotated[float, Range(ge=0, le=1)]
Dropout = Annotated[float, Range(ge=0, lt=1)]
Beta = Annotated[float, Range(ge=0, lt=1)]
# Lightning's "-1 = no limit" convention for max_epochs / max_steps
Limit = Annotated[int, Range(ge=-1)]
# limit_*_batches, overfit_batches: a count of batches, or a fraction of the loader
BatchLimit = NonNegativeInt | Fraction
# a pair of values, given as a list of two (a config has no tuples; the items stay strict)
Pair = Annotated[tuple[T, T], Strict(False)]
Seed = Annotated[int, Range(ge=0, le=2**32 - 1)]
Precision = Literal[
    "64-true",
    "32-true",
    "16-true",
    "bf16-true",
    "16-mixed",
    "bf16-mixed",
    "transformer-engine",
    "transformer-engine-float16",
    "64",
    "32",
    "16",
    "bf16",
    64,
    32,
    16,
]
Devices = Annotated[
    PositiveInt
    | Literal[-1, "auto"]
    | list[NonNegativeInt]
    | Annotated[str, StringConstraints(pattern=r"^\d+(,\d+)*,?$")],
    Doc("a device count >= 1, -1 (all), auto, or device indices such as [0,1] or '0,1'"),
]


class Schema(pydantic.BaseModel):
    """A group of settings: strict types, no values of its own (a key left out is not checked)."""

    model_config = STRICT


# ---------------------------------------------------------------------------------- sections
class OptimizerSchema(Schema):
    """``optimizer``: any torch optimizer; these are the arguments the shipped ones take."""

    lr: PositiveFloat
    weight_decay: NonNegativeFloat
    betas: Pair[Beta]
    eps: PositiveFloat
    momentum: NonNegativeFloat
    layer_decay: Annotated[float, Range(gt=0, le=1)] | None


class SchedulerSchema(Schema):
    """``scheduler``: ``warmup`` < 1 is a fraction of the steps, >= 1 a number of steps."""

    warmup: NonNegativeFloat


class LossSchema(Schema):
    """``loss``: the learnable temperature is stored as a log scale, ``ln(1/temperature)``."""

    init_logit_scale: Annotated[float, Range(ge=0, le=10)]
    max_logit_scale: PositiveFloat
    init_logit_bias: float
    target_temperature: PositiveFloat
    local_loss: bool
    gather_with_grad: bool


class ImageEncoderSchema(Schema):
    name: str
    pretrained: bool
    weights_file: str | None
    # below 16 px a CNN's feature map vanishes; above 4096 px is a typo, not a resolution
    image_size: Annotated[int, Range(ge=16, le=4096)] | None
    freeze: bool
    unfreeze_last: NonNegativeInt
    unfreeze_last_blocks: NonNegativeInt | None  # the old name of unfreeze_last
    channels_last: bool


class TextEncoderSchema(Schema):
    name_or_path: str
    pretrained: bool
    pooling: Literal["cls", "mean"]
    max_length: PositiveInt | None
    freeze: bool
    unfreeze_last: NonNegativeInt
    unfreeze_last_layers: NonNegativeInt | None  # the old name of unfreeze_last
    # null, memory, or a folder that keeps the frozen tower's caption features
    cache: str | None
    cache_features: bool  # the open_clip / HF CLIP text towers' name for it


class HeadSchema(Schema):
    dropout: Dropout


class TowerLRSchema(Schema):
    image_encoder: PositiveFloat
    text_encoder: PositiveFloat


class LoRASchema(Schema):
    """``model.lora``: ``r`` null turns LoRA off."""

    r: PositiveInt | None
    alpha: PositiveInt | None
    dropout: Dropout
    towers: list[Literal["image", "text"]]
    target_modules: str | list[str] | None


class ModelSchema(Schema):
    """``model``; its ``loss``, ``optimizer`` and ``scheduler`` are checked as top-level groups."""

    image_encoder: ImageEncoderSchema | None
    text_encoder: TextEncoderSchema | None
    head: HeadSchema | None
    embed_dim: PositiveInt
    tower_lr: TowerLRSchema | None
    compile: bool
    grad_checkpointing: bool
    grad_cache_chunk_size: PositiveInt | None
    clip_grad_norm: PositiveFloat | None
    lora: LoRASchema | None


class AugmentSchema(Schema):
    scale: Pair[Annotated[float, Range(gt=0, le=1)]]
    hflip: Fraction


class SplitSizesSchema(Schema):
    """Counts of images, or fractions of the images without a split."""

    val: NonNegativeInt | Annotated[float, Range(gt=0, lt=1)]
    test: NonNegativeInt | Annotated[float, Range(gt=0, lt=1)]


class DatasetSchema(Schema):
    """``dataset``: ``batch_size`` is per device; ``adapter_options`` are the format's own."""

    root: str | None
    format: str
    split_sizes: SplitSizesSchema | None
    split_seed: int
    train_pairs: Literal["random", "all"]
    augment: AugmentSchema | None
    on_bad_image: Literal["error", "skip"]
    cache: str | None
    cache_image_size: Annotated[int, Range(ge=16)]
    cache_size: Annotated[int, Range(ge=16)] | None  # the old name of cache_image_size
    batch_size: PositiveInt
    eval_batch_size: PositiveInt | None
    num_workers: NonNegativeInt
    pin_memory: bool
    persistent_workers: bool
    prefetch_factor: PositiveInt | None


class TrainerSchema(Schema):
    """``trainer``: the Lightning Trainer flags with a value the project relies on."""

    accelerator: str
    devices: Devices
    num_nodes: PositiveInt
    precision: Precision
    max_epochs: Limit | None
    min_epochs: NonNegativeInt | None
    max_steps: Limit
    limit_train_batches: BatchLimit | None
    limit_val_batches: BatchLimit | None
    limit_test_batches: BatchLimit | None
    overfit_batches: BatchLimit
    val_check_interval: PositiveInt | Annotated[float, Range(gt=0, le=1)] | None
    check_val_every_n_epoch: PositiveInt | None
    accumulate_grad_batches: PositiveInt
    gradient_clip_val: NonNegativeFloat | None
    log_every_n_steps: PositiveInt
    fast_dev_run: bool | NonNegativeInt
    deterministic: bool | Literal["warn"]
    num_sanity_val_steps: Limit | None


ProtocolName = Literal["split", "coco_5k", "coco_1k", "flickr30k_1k"]


class ProtocolSchema(Schema):
    """``protocol``: how the val and test figures are computed (:mod:`clip_lightning.protocols`)."""

    val: ProtocolName
    test: ProtocolName


# ------------------------------------------------------------------------------------- tasks
class TrainConfig(Schema):
    """``conf/train.yaml``."""

    seed: Seed
    ckpt_path: str | None
    resume_dir: str | None
    init_from: str | None
    test: bool
    validate_before_fit: bool
    optimized_metric: str | None
    protocol: ProtocolSchema | None
    dataset: DatasetSchema
    optimizer: OptimizerSchema
    scheduler: SchedulerSchema | None
    loss: LossSchema
    model: ModelSchema
    trainer: TrainerSchema


class ZeroShotSchema(Schema):
    templates: list[str]
    top_k: list[PositiveInt]
    batch_size: PositiveInt
    num_workers: NonNegativeInt


class WiseFTSchema(Schema):
    """``wise_ft``: interpolation weights of the fine-tuned model (0 = pretrained)."""

    alphas: list[Fraction] | None
    alpha: Fraction | None
    base: str | None


class EvalConfig(Schema):
    """``conf/eval.yaml``."""

    seed: Seed
    ckpt_path: str | None
    task: Literal["retrieval", "zeroshot"]
    split: Literal["val", "test"]
    protocol: ProtocolName
    wise_ft: WiseFTSchema | None
    images: str | None
    zeroshot: ZeroShotSchema | None
    dataset: DatasetSchema
    model: ModelSchema | None
    trainer: TrainerSchema | None


class SearchConfig(Schema):
    """``conf/search.yaml``."""

    ckpt_path: str | None
    images: str | None
    index: str | None
    query: str | list[str] | None
    queries_file: str | None
    k: PositiveInt
    export: str | None
    cache_dir: str
    index_dir: str | None
    batch_size: PositiveInt
    num_workers: NonNegativeInt
    on_bad_image: Literal["error", "skip"]
    accelerator: str


class EmbedConfig(Schema):
    """``conf/embed.yaml``."""

    ckpt_path: str | None
    images: str | None
    fields: list[Literal["image", "text"]] | None
    part_size: PositiveInt
    dtype: Literal["float16", "float32"]
    batch_size: PositiveInt
    num_workers: NonNegativeInt
    on_bad_image: Literal["error", "skip"]
    dataset: DatasetSchema | None
    model: ModelSchema | None
    trainer: TrainerSchema


class IndexOptionsSchema(Schema):
    fields: list[Literal["image", "text"]]
    kind: Literal["auto", "flat", "ivfpq"]
    flat_below: NonNegativeInt
    max_memory: PositiveInt | str
    nlist: PositiveInt | None
    k: PositiveInt
    recall_queries: PositiveInt
    target_recall: Fraction
    seed: Seed


class IndexConfig(Schema):
    """``conf/index.yaml``."""

    embeddings: str | None
    out: str | None
    index: IndexOptionsSchema


class PrepareConfig(Schema):
    """``conf/prepare.yaml``."""

    max_listed: PositiveInt | None
    dataset: DatasetSchema


class BenchConfig(Schema):
    """``conf/bench.yaml``: the training groups, without a scheduler."""

    seed: Seed
    only: list[str]
    optimizer: OptimizerSchema
    loss: LossSchema
    model: ModelSchema
    trainer: TrainerSchema


class ExportConfig(Schema):
    """``conf/export.yaml``."""

    ckpt_path: str | None
    format: Literal["open_clip", "hf"]
    out: str | None
    push_to_hub: str | None
    ignore_crop_pct: bool
    wise_ft: WiseFTSchema | None


TASK_SCHEMAS: dict[str, type[Schema]] = {
    "train": TrainConfig,
    "eval": EvalConfig,
    "search": SearchConfig,
    "embed": EmbedConfig,
    "index": IndexConfig,
    "prepare": PrepareConfig,
    "bench": BenchConfig,
    "export": ExportConfig,
}


# --------------------------------------------------------------------------------- checking
def check_config(cfg: DictConfig, task: str) -> None:
    """Raise :class:`ConfigError` for the first value of ``cfg`` the ``task``'s schema rejects.

    ``task`` is the entry point (``train``, ``eval``, ``search``, ``prepare``, ``bench``,
    ``export``), not ``cfg.task_name`` (an experiment renames that).
    """
    if task not in TASK_SCHEMAS:
        raise ValueError(f"no config schema for task {task!r}; known: {', '.join(TASK_SCHEMAS)}")
    schema = TASK_SCHEMAS[task]
    values = _named_values(cfg, schema)
    try:
        schema.model_validate(values)
    except pydantic.ValidationError as exc:
        # a key the schema names but the config lacks (or leaves ???) is Hydra's business;
        # a list too short for a pair is not
        refused = [
            e["loc"]
            for e in exc.errors()
            if e["type"] != "missing" or not isinstance(e["loc"][-1], str)
        ]
        if refused:
            raise ConfigError(_message(schema, values, refused[0])) from None


def _named_values(cfg: DictConfig, schema: type[Schema]) -> dict[str, Any]:
    """The values of the keys ``schema`` names, as plain data (interpolations resolved).

    Only those: another key may hold an interpolation that resolves only in a running app.
    """
    values: dict[str, Any] = {}
    hints = _hints(schema)
    for name in schema.model_fields:
        if name not in cfg:  # absent, or ??? (missing)
            continue
        value, section = cfg[name], _section(hints[name])
        if section is not None and isinstance(value, DictConfig):
            values[name] = _named_values(value, section)
        elif isinstance(value, DictConfig) or OmegaConf.is_list(value):
            values[name] = OmegaConf.to_container(value, resolve=True)
        else:
            values[name] = value
    return values


def _message(schema: type[Schema], values: dict[str, Any], location: tuple[Any, ...]) -> str:
    """``key=value must be <type>; e.g. key=<example>`` for the key at pydantic's ``location``
    (which goes on into a list or a union's member: the key is where the sections end)."""
    path: list[str] = []
    value: Any = values
    for name in location:
        expected = _hints(schema)[name]
        path.append(name)
        value = value[name]
        section = _section(expected)
        if section is None or not isinstance(value, dict):
            break
        schema = section
    key, fix = ".".join(path), example(expected, value)
    return f"{key}={_show(value)} must be {describe(expected)}; e.g. {key}={_show(fix)}"


@functools.cache
def _hints(schema: type[Schema]) -> dict[str, Any]:
    """The field types of ``schema`` as written, ``Range`` and ``Doc`` included."""
    return typing.get_type_hints(schema, include_extras=True)


def _section(expected: Any) -> type[Schema] | None:
    """The schema behind ``Section`` or ``Section | None``, else None."""
    options = typing.get_args(expected) if typing.get_origin(expected) is not None else (expected,)
    return next((t for t in options if is_model(t)), None)


def _show(value: Any) -> str:
    """A value as the user types it: strings quoted, so ``'abc'`` and ``abc`` read apart."""
    return repr(value) if isinstance(value, str) else text(value)
