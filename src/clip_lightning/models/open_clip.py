"""Both towers of a pretrained open_clip model, behind the tower interface ``CLIPModule`` uses.

An open_clip model already projects into its joint space, so each tower returns projected
features (pair it with ``model/head=identity``) and hands the loss its pretrained logit scale
(and SigLIP's bias). The model is always built as ``CustomTextCLIP`` (``force_custom_text``):
its text tower is then one module, ``model.text``, so the two towers own disjoint parameters.
Preprocessing and tokenization are open_clip's own, translated into the data pipeline's terms
(a timm data config and an HF-style tokenizer call).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import open_clip
import torch
from open_clip.transform import PreprocessCfg
from PIL import Image
from torch import nn

from clip_lightning.data.records import to_rgb
from clip_lightning.data.transforms import build_eval_transform
from clip_lightning.errors import ModelLoadError
from clip_lightning.models.pair_factory import ModuleArguments, pretrained_pair_module
from clip_lightning.models.pretrained_pair import (
    Pair,
    PairTower,
    PixelNormalizer,
    PretrainedParts,
    scalar,
    text_feature_cache,
)
from clip_lightning.models.targets import ExcludedKeys, plain
from clip_lightning.models.text_cache import CachedTextTower, check_cache_option
from clip_lightning.module import CLIPModule

#: The towers' ``model_kwargs`` for ``open_clip.create_model``: its ``force_*`` options and the
#: model class's arguments, not its options that load files, download, or that the towers set.
ModelKwargs = Annotated[
    dict[str, Any],
    ExcludedKeys(
        frozenset(inspect.signature(open_clip.create_model).parameters)
        - {
            "model_kwargs",
            "force_quick_gelu",
            "force_patch_dropout",
            "force_image_size",
            "force_preprocess_cfg",
            "force_context_length",
            "precision",
        },
        "is an option of how open_clip loads weights, which the towers set themselves from "
        "model.pretrained",
    ),
]


def open_clip_module(
    arch: str,
    pretrained: str | None,
    model_kwargs: ModelKwargs | None = None,
    **module: ModuleArguments,
) -> CLIPModule:
    """``model=open_clip``: both towers from the open_clip model ``arch`` / ``pretrained``."""
    shared = {
        "arch": arch,
        "pretrained": pretrained,
        "model_kwargs": dict(plain(model_kwargs) or {}),
    }
    return pretrained_pair_module(shared, _model_config(arch)["embed_dim"], **module)


def _model_config(arch: str) -> dict[str, Any]:
    config = open_clip.get_model_config(arch)
    if config is None:
        raise ModelLoadError(
            f"open_clip has no model {arch!r}; set model.arch to one of open_clip.list_models() "
            "(e.g. ViT-B-32, RN50, ViT-B-16-SigLIP)"
        )
    return config


def _build(
    arch: str, pretrained: str | Literal[False] | None, model_kwargs: dict[str, Any]
) -> PretrainedParts:
    config = _model_config(arch)
    try:
        model = open_clip.create_model(
            arch,
            pretrained=pretrained or None,
            force_custom_text=True,
            # a rebuild from a checkpoint (pretrained=None) must not download tower weights
            pretrained_text=bool(pretrained),
            **model_kwargs,
        )
    except Exception as exc:  # download, file and state-dict errors come in many types
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        raise ModelLoadError(
            f"could not load open_clip weights {pretrained!r} for {arch!r} "
            f"({type(exc).__name__}: {detail}); set model.pretrained to a tag from "
            f"open_clip.list_pretrained_tags_by_model({arch!r}) or, offline, to a local "
            "weights file"
        ) from exc
    # open_clip's ``visual`` and ``text`` modules (untyped: open_clip ships no annotations)
    return PretrainedParts(
        towers={"visual": model.visual, "text": model.text},
        embed_dim=int(config["embed_dim"]),
        logit_scale=scalar(model.logit_scale),
        logit_bias=scalar(getattr(model, "logit_bias", None)),
    )


class _OpenCLIPTower(PairTower):
    """A tower cut from the open_clip model its ``arch``, ``pretrained`` and ``model_kwargs``
    name."""

    @classmethod
    def pair_identity(cls, arguments: Mapping[str, Any]) -> tuple[Any, ...]:
        model_kwargs = dict(arguments["model_kwargs"] or {})
        return ("open_clip", arguments["arch"], arguments["pretrained"] or None, model_kwargs)

    @classmethod
    def build_pair(cls, arguments: Mapping[str, Any], key: str) -> PretrainedParts:
        model_kwargs = dict(arguments["model_kwargs"] or {})
        return _build(arguments["arch"], arguments["pretrained"], model_kwargs)

    def checkpoint_config(self) -> dict[str, Any]:
        """Config keys a checkpoint overrides: random init (the weights are in the state
        dict); open_clip builds the architecture from ``arch`` alone."""
        return {"pretrained": False}


class OpenCLIPImageTower(_OpenCLIPTower):
    """open_clip's vision tower (projection included), normalising uint8 batches on its device.

    Args:
        arch: an open_clip model name (``ViT-B-32``, ``RN50``, ``ViT-B-16-SigLIP``, ...).
        pretrained: an open_clip pretrained tag (online) or a local weights file; ``None`` (or
            ``false``, what a checkpoint stores) builds random weights: a checkpoint reload
            does, the state dict follows.
        freeze: lock the tower (LiT) ...
        unfreeze_last: ... except its last N layer groups (open_clip's ``lock``).
        model_kwargs: forwarded to ``open_clip.create_model`` (``force_image_size``, ...).
        pair: the open_clip model, built once for both towers by whoever builds them;
            ``None`` builds it here.
    """

    pair_part = "visual"

    def __init__(
        self,
        arch: str = "ViT-B-32",
        pretrained: str | Literal[False] | None = None,
        freeze: bool = False,
        unfreeze_last: int = 0,
        model_kwargs: ModelKwargs | None = None,
        pair: Pair = None,
    ):
        super().__init__()
        if pair is None:
            pair = _build(arch, pretrained, dict(model_kwargs or {}))
        self.adopt(pair, pretrained=bool(pretrained))
        self.preprocess_cfg = PreprocessCfg(**self.model.preprocess_cfg)
        self.data_config = _timm_data_config(self.preprocess_cfg)
        self.normalize = PixelNormalizer(self.preprocess_cfg.mean, self.preprocess_cfg.std)
        if freeze:
            self.model.lock(unlocked_groups=unfreeze_last, freeze_bn_stats=True)
            self.train(self.training)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Projected features of a uint8 batch (normalised here) or a normalised float one."""
        return self.model(self.normalize(images))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The project's evaluation transform (PIL -> uint8) with open_clip's resize and crop,
        so an image embeds as in validation everywhere."""
        return build_eval_transform(self.data_config)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        transform = self.transform()
        return torch.stack([transform(to_rgb(image)) for image in images])


def _timm_data_config(cfg: PreprocessCfg) -> dict[str, Any]:
    """open_clip's preprocessing in the timm terms the data pipeline builds transforms from.

    open_clip resizes the shortest side and centre-crops (``crop_pct`` 1), or squashes.
    """
    if cfg.resize_mode not in ("shortest", "squash"):
        raise ModelLoadError(
            f"open_clip resize_mode {cfg.resize_mode!r} has no equivalent in the data pipeline; "
            "pass model.image_encoder.model_kwargs.force_preprocess_cfg={resize_mode: shortest}"
        )
    return {
        "input_size": cfg.input_size,
        "interpolation": cfg.interpolation,
        "mean": tuple(cfg.mean),
        "std": tuple(cfg.std),
        "crop_pct": 1.0,
        "crop_mode": "squash" if cfg.resize_mode == "squash" else "center",
    }


class OpenCLIPTokenizer:
    """open_clip's tokenizer behind the HF-style call the data pipeline makes.

    Captions are padded to the full context length, as open_clip does: SigLIP text towers
    pool the last position, so the padding is part of what the model computes. The attention
    mask covers each caption up to its last non-pad token; it only keys the feature cache.
    """

    def __init__(self, tokenizer: Any, pad_id: int):
        self.tokenizer = tokenizer
        self.pad_id = pad_id

    def __call__(
        self, texts: list[str], max_length: int | None = None, **_: Any
    ) -> dict[str, torch.Tensor]:
        input_ids = self.tokenizer(list(texts), context_length=max_length).long()
        return {"input_ids": input_ids, "attention_mask": content_mask(input_ids, self.pad_id)}

    def get_vocab(self) -> dict[str, int]:
        inner = getattr(self.tokenizer, "tokenizer", None)
        return inner.get_vocab() if inner is not None else dict(self.tokenizer.encoder)


def content_mask(input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """1 up to and including each row's last non-pad token (a pad id inside a caption stays 1)."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = torch.where(input_ids != pad_id, positions, -1).max(dim=1).values
    return (positions <= last.unsqueeze(1)).long()


class OpenCLIPTextTower(_OpenCLIPTower, CachedTextTower):
    """open_clip's text tower (projection included) with open_clip's tokenizer.

    Args:
        arch, pretrained, model_kwargs, pair: as for :class:`OpenCLIPImageTower` (shared
            model).
        max_length: tokens per caption; defaults to the model's context length (its maximum).
        freeze: lock the tower ...
        unfreeze_last: ... except its last N groups, counted as open_clip's ``lock``
            does: 1 is the projection, 2 adds the last block and final LayerNorm, and so on.
        cache: reuse a fully frozen tower's features: ``null``, ``memory`` or a folder, as in
            :class:`~clip_lightning.models.TextEncoder`.
    """

    pair_part = "text"

    def __init__(
        self,
        arch: str = "ViT-B-32",
        pretrained: str | Literal[False] | None = None,
        max_length: int | None = None,
        freeze: bool = False,
        unfreeze_last: int = 0,
        cache: str | None = None,
        model_kwargs: ModelKwargs | None = None,
        pair: Pair = None,
    ):
        super().__init__()
        check_cache_option(cache, freeze, unfreeze_last)
        if pair is None:
            pair = _build(arch, pretrained, dict(model_kwargs or {}))
        self.adopt(pair, pretrained=bool(pretrained))
        # what open_clip's tokenizer pads to (an HF text tower's own limit may be larger)
        configured = _model_config(arch)["text_cfg"].get("context_length", 77)
        forced = (model_kwargs or {}).get("force_context_length")
        self.context_length: int = forced or configured
        if max_length is not None and max_length > self.context_length:
            raise ModelLoadError(
                f"model.text_encoder.max_length={max_length} exceeds {arch}'s context length "
                f"{self.context_length}; lower it or leave it null"
            )
        self.max_length = max_length or self.context_length
        pad_id = getattr(self.model, "pad_id", None)
        self.pad_id = int(self.model.config.pad_token_id if pad_id is None else pad_id)
        try:
            self.tokenizer = OpenCLIPTokenizer(open_clip.get_tokenizer(arch), self.pad_id)
        except Exception as exc:  # hub and file errors come in many types
            raise ModelLoadError(
                f"could not load the tokenizer of open_clip model {arch!r} "
                f"({type(exc).__name__}); it is downloaded once from the Hugging Face hub: "
                "run once online or pre-fill HF_HOME"
            ) from exc
        self.frozen = freeze and not unfreeze_last
        if freeze:
            self.model.lock(unlocked_layers=unfreeze_last, freeze_layer_norm=True)
            self.train(self.training)
        identity = {"arch": arch, "max_length": self.max_length}
        self.feature_cache = text_feature_cache(cache, self.model, self.tokenizer, identity)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Projected features; rows trimmed of padding (the feature cache does) are re-padded."""
        missing = self.max_length - input_ids.shape[1]
        if missing > 0:
            input_ids = nn.functional.pad(input_ids, (0, missing), value=self.pad_id)
        return self.model(input_ids)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts, max_length=self.max_length)
