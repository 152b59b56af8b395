"""Typed checks of a composed config, before anything is built.

A wrongly typed or out-of-range value (``optimizer.lr=abc``, ``model.embed_dim=0``) otherwise
surfaces as a long traceback deep inside torch or Lightning, sometimes only when fitting starts,
or not at all (``embed_dim=0`` "trains" to a perfect recall). :func:`check_config` compares the
config of a task with one declarative schema and raises a one-line :class:`ConfigError` naming
the key, the bad value, what is expected and an example override.

The schema is made of dataclasses whose field types say what a key accepts: ``typing`` types
(``int``, ``float``, ``bool``, ``str``, ``Literal``, unions, ``None``, ``list``, ``tuple``) and
:class:`Range` / :class:`Pattern` constraints attached with ``Annotated``. A field's default is
not a default (the YAML files in ``conf/`` hold those): it is the example the error message
suggests. Only the keys the schema names are checked; every group stays open, so any timm or
HF keyword, optimizer argument or Lightning Trainer flag passes untouched. Unknown keys and
missing groups remain Hydra's to report. Types are matched and worded by
:mod:`clip_lightning.utils.typecheck`, which also checks the arguments of model configs.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf

from clip_lightning.errors import ConfigError
from clip_lightning.utils.typecheck import (
    Doc,
    Pattern,
    Range,
    allows_none,
    describe,
    is_union,
    matches,
    text,
)

__all__ = ["TASK_SCHEMAS", "Doc", "Pattern", "Range", "check_config"]


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
    | Annotated[str, Pattern(r"\d+(,\d+)*,?")],
    Doc("a device count >= 1, -1 (all), auto, or device indices such as [0,1] or '0,1'"),
]


# ---------------------------------------------------------------------------------- sections
@dataclass
class OptimizerSchema:
    """``optimizer``: any torch optimizer; these are the arguments the shipped ones take."""

    lr: PositiveFloat = 1e-4
    weight_decay: NonNegativeFloat = 0.1
    betas: tuple[Beta, Beta] = (0.9, 0.98)
    eps: PositiveFloat = 1e-6
    momentum: NonNegativeFloat = 0.9
    layer_decay: Annotated[float, Range(gt=0, le=1)] | None = 0.75


@dataclass
class SchedulerSchema:
    """``scheduler``: ``warmup`` < 1 is a fraction of the steps, >= 1 a number of steps."""

    warmup: NonNegativeFloat = 0.05


@dataclass
class LossSchema:
    """``loss``: the learnable temperature is stored as a log scale, ``ln(1/temperature)``."""

    init_logit_scale: Annotated[float, Range(ge=0, le=10)] = 2.6593
    max_logit_scale: PositiveFloat = 100.0
    init_logit_bias: float = -10.0
    target_temperature: PositiveFloat = 1.0
    local_loss: bool = False
    gather_with_grad: bool = True


@dataclass
class ImageEncoderSchema:
    name: str = "resnet50"
    pretrained: bool = True
    weights_file: str | None = "/path/to/weights.safetensors"
    # below 16 px a CNN's feature map vanishes; above 4096 px is a typo, not a resolution
    image_size: Annotated[int, Range(ge=16, le=4096)] | None = 224
    freeze: bool = False
    unfreeze_last_blocks: NonNegativeInt = 2
    channels_last: bool = False


@dataclass
class TextEncoderSchema:
    name_or_path: str = "distilbert-base-uncased"
    pretrained: bool = True
    pooling: Literal["cls", "mean"] = "mean"
    max_length: PositiveInt | None = 77
    freeze: bool = False
    unfreeze_last_layers: NonNegativeInt = 2
    # null, memory, or a folder that keeps the frozen tower's caption features
    cache: str | None = "memory"
    cache_features: bool = True  # the open_clip / HF CLIP text towers' name for it


@dataclass
class HeadSchema:
    dropout: Dropout = 0.1


@dataclass
class TowerLRSchema:
    image_encoder: PositiveFloat = 1e-4
    text_encoder: PositiveFloat = 1e-5


@dataclass
class LoRASchema:
    """``model.lora``: ``r`` null turns LoRA off."""

    r: PositiveInt | None = 8
    alpha: PositiveInt | None = 16
    dropout: Dropout = 0.1
    towers: list[Literal["image", "text"]] = field(default_factory=lambda: ["image", "text"])
    target_modules: str | list[str] | None = field(default_factory=lambda: ["qkv", "proj"])


@dataclass
class ModelSchema:
    """``model``; its ``loss``, ``optimizer`` and ``scheduler`` are checked as top-level groups."""

    image_encoder: ImageEncoderSchema | None = field(default_factory=ImageEncoderSchema)
    text_encoder: TextEncoderSchema | None = field(default_factory=TextEncoderSchema)
    head: HeadSchema | None = field(default_factory=HeadSchema)
    embed_dim: PositiveInt = 256
    tower_lr: TowerLRSchema | None = field(default_factory=TowerLRSchema)
    compile: bool = False
    grad_checkpointing: bool = False
    grad_cache_chunk_size: PositiveInt | None = 128
    clip_grad_norm: PositiveFloat | None = 1.0
    lora: LoRASchema | None = field(default_factory=LoRASchema)


@dataclass
class AugmentSchema:
    scale: tuple[Annotated[float, Range(gt=0, le=1)], Annotated[float, Range(gt=0, le=1)]] = (
        0.5,
        1.0,
    )
    hflip: Fraction = 0.5


@dataclass
class SplitSizesSchema:
    """Counts of images, or fractions of the images without a split."""

    val: NonNegativeInt | Annotated[float, Range(gt=0, lt=1)] = 1000
    test: NonNegativeInt | Annotated[float, Range(gt=0, lt=1)] = 1000


@dataclass
class DatasetSchema:
    """``dataset``: ``batch_size`` is per device; ``adapter_options`` are the format's own."""

    root: str | None = "/data/flickr30k"
    format: str = "auto"
    split_sizes: SplitSizesSchema | None = field(default_factory=SplitSizesSchema)
    split_seed: int = 0
    train_pairs: Literal["random", "all"] = "all"
    augment: AugmentSchema | None = field(default_factory=AugmentSchema)
    on_bad_image: Literal["error", "skip"] = "skip"
    cache: str | None = "auto"
    cache_size: Annotated[int, Range(ge=16)] = 256
    batch_size: PositiveInt = 64
    eval_batch_size: PositiveInt | None = 128
    num_workers: NonNegativeInt = 4
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: PositiveInt | None = 2


@dataclass
class TrainerSchema:
    """``trainer``: the Lightning Trainer flags with a value the project relies on."""

    accelerator: str = "cpu"
    devices: Devices = 1
    num_nodes: PositiveInt = 1
    precision: Precision = "bf16-mixed"
    max_epochs: Limit | None = 10
    min_epochs: NonNegativeInt | None = 1
    max_steps: Limit = 1000
    limit_train_batches: BatchLimit | None = 0.1
    limit_val_batches: BatchLimit | None = 0.1
    limit_test_batches: BatchLimit | None = 0.1
    overfit_batches: BatchLimit = 2
    val_check_interval: PositiveInt | Annotated[float, Range(gt=0, le=1)] | None = 0.5
    check_val_every_n_epoch: PositiveInt | None = 1
    accumulate_grad_batches: PositiveInt = 4
    gradient_clip_val: NonNegativeFloat | None = 1.0
    log_every_n_steps: PositiveInt = 10
    fast_dev_run: bool | NonNegativeInt = True
    deterministic: bool | Literal["warn"] = True
    num_sanity_val_steps: Limit | None = 2


ProtocolName = Literal["split", "coco_5k", "coco_1k", "flickr30k_1k"]


@dataclass
class ProtocolSchema:
    """``protocol``: how the val and test figures are computed (:mod:`clip_lightning.protocols`)."""

    val: ProtocolName = "split"
    test: ProtocolName = "coco_1k"


# ------------------------------------------------------------------------------------- tasks
@dataclass
class TrainConfig:
    """``conf/train.yaml``."""

    seed: Seed = 12345
    ckpt_path: str | None = "last"
    resume_dir: str | None = "logs/train/runs/<time>"
    init_from: str | None = "logs/train/runs/<time>/checkpoints/last.ckpt"
    test: bool = True
    validate_before_fit: bool = True
    optimized_metric: str | None = "val/rsum"
    protocol: ProtocolSchema | None = field(default_factory=ProtocolSchema)
    dataset: DatasetSchema = field(default_factory=DatasetSchema)
    optimizer: OptimizerSchema = field(default_factory=OptimizerSchema)
    scheduler: SchedulerSchema | None = field(default_factory=SchedulerSchema)
    loss: LossSchema = field(default_factory=LossSchema)
    model: ModelSchema = field(default_factory=ModelSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)


@dataclass
class ZeroShotSchema:
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    top_k: list[PositiveInt] = field(default_factory=lambda: [1, 5])
    batch_size: PositiveInt = 64
    num_workers: NonNegativeInt = 0


@dataclass
class WiseFTSchema:
    """``wise_ft``: interpolation weights of the fine-tuned model (0 = pretrained)."""

    alphas: list[Fraction] | None = field(default_factory=lambda: [0, 0.25, 0.5, 0.75, 1])
    alpha: Fraction | None = 0.5
    base: str | None = "logs/train/runs/<time>/checkpoints/base.ckpt"


@dataclass
class EvalConfig:
    """``conf/eval.yaml``."""

    seed: Seed = 12345
    ckpt_path: str | None = "logs/train/runs/<time>/checkpoints/last.ckpt"
    task: Literal["retrieval", "zeroshot"] = "retrieval"
    split: Literal["val", "test"] = "test"
    protocol: ProtocolName = "coco_5k"
    wise_ft: WiseFTSchema | None = field(default_factory=WiseFTSchema)
    images: str | None = "/data/imagenet/val"
    zeroshot: ZeroShotSchema | None = field(default_factory=ZeroShotSchema)
    dataset: DatasetSchema = field(default_factory=DatasetSchema)
    model: ModelSchema | None = field(default_factory=ModelSchema)
    trainer: TrainerSchema | None = field(default_factory=TrainerSchema)


@dataclass
class SearchConfig:
    """``conf/search.yaml``."""

    ckpt_path: str | None = "logs/train/runs/<time>/checkpoints/last.ckpt"
    images: str | None = "/data/photos"
    index: str | None = "/data/index"
    query: str | list[str] | None = "a dog running on the beach"
    queries_file: str | None = "queries.txt"
    k: PositiveInt = 5
    export: str | None = "embeddings.npy"
    cache_dir: str = "/tmp/search-cache"
    index_dir: str | None = "/tmp/search-cache"
    batch_size: PositiveInt = 64
    num_workers: NonNegativeInt = 0
    on_bad_image: Literal["error", "skip"] = "skip"
    accelerator: str = "cpu"


@dataclass
class EmbedConfig:
    """``conf/embed.yaml``."""

    ckpt_path: str | None = "logs/train/runs/<time>/checkpoints/last.ckpt"
    images: str | None = "/data/photos"
    fields: list[Literal["image", "text"]] | None = field(default_factory=lambda: ["image"])  # type: ignore[assignment]  # a literal list
    part_size: PositiveInt = 10000
    dtype: Literal["float16", "float32"] = "float16"
    batch_size: PositiveInt = 256
    num_workers: NonNegativeInt = 4
    on_bad_image: Literal["error", "skip"] = "skip"
    dataset: DatasetSchema | None = field(default_factory=DatasetSchema)
    model: ModelSchema | None = field(default_factory=ModelSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)


@dataclass
class IndexOptionsSchema:
    fields: list[Literal["image", "text"]] = field(default_factory=lambda: ["image"])
    kind: Literal["auto", "flat", "ivfpq"] = "auto"
    flat_below: NonNegativeInt = 1000000
    max_memory: str | PositiveInt = "4G"
    nlist: PositiveInt | None = 1024
    k: PositiveInt = 10
    recall_queries: PositiveInt = 1000
    target_recall: Fraction = 0.9
    seed: Seed = 0


@dataclass
class IndexConfig:
    """``conf/index.yaml``."""

    embeddings: str | None = "/data/embeddings"
    out: str | None = "/data/index"
    index: IndexOptionsSchema = field(default_factory=IndexOptionsSchema)


@dataclass
class PrepareConfig:
    """``conf/prepare.yaml``."""

    max_listed: PositiveInt | None = 20
    dataset: DatasetSchema = field(default_factory=DatasetSchema)


@dataclass
class BenchConfig:
    """``conf/bench.yaml``: the training groups, without a scheduler."""

    seed: Seed = 12345
    only: list[str] = field(default_factory=lambda: ["train_step"])
    optimizer: OptimizerSchema = field(default_factory=OptimizerSchema)
    loss: LossSchema = field(default_factory=LossSchema)
    model: ModelSchema = field(default_factory=ModelSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)


@dataclass
class ExportConfig:
    """``conf/export.yaml``."""

    ckpt_path: str | None = "logs/train/runs/<time>/checkpoints/last.ckpt"
    format: Literal["open_clip", "hf"] = "open_clip"
    out: str | None = "exported/"
    push_to_hub: str | None = "user/my-clip"
    ignore_crop_pct: bool = True
    wise_ft: WiseFTSchema | None = field(default_factory=WiseFTSchema)


TASK_SCHEMAS: dict[str, type] = {
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
    _check_section(cfg, TASK_SCHEMAS[task], prefix="")


def _check_section(cfg: DictConfig, schema: type, prefix: str) -> None:
    hints = typing.get_type_hints(schema, include_extras=True)
    for spec in dataclasses.fields(schema):
        if spec.name not in cfg:  # absent (or ???): Hydra's business, not a type error
            continue
        key, expected, value = f"{prefix}{spec.name}", hints[spec.name], cfg[spec.name]
        section = _section_schema(expected)
        if section is not None and isinstance(value, DictConfig):
            _check_section(value, section, prefix=f"{key}.")
            continue
        plain = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
        if section is not None:
            valid = plain is None and allows_none(expected)
        else:
            valid = matches(plain, expected)
        if not valid:
            raise ConfigError(
                f"{key}={_show(plain)} must be {describe(expected)}; "
                f"e.g. {key}={text(_example(spec))}"
            )


def _example(spec: dataclasses.Field) -> Any:
    """A schema field's default: the value an error message suggests."""
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def _section_schema(expected: Any) -> type | None:
    """The dataclass behind ``Section`` or ``Section | None``, else None."""
    options = typing.get_args(expected) if is_union(expected) else (expected,)
    sections = [t for t in options if isinstance(t, type) and dataclasses.is_dataclass(t)]
    return sections[0] if sections else None


def _show(value: Any) -> str:
    """A bad value as the user typed it: strings quoted, so ``'abc'`` and ``abc`` read apart."""
    return repr(value) if isinstance(value, str) else text(value)
