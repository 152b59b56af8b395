"""Both towers of a transformers ``CLIPModel`` or ``SiglipModel``, behind the tower interface
``CLIPModule`` uses.

Each tower owns its half of the pretrained model (backbone + projection), returns projected
features (pair it with ``model/head=identity``) and hands the loss the pretrained logit scale
(and SigLIP's bias). Images are resized, cropped and normalised as the model's own image
processor says (through the project's evaluation transform); captions are tokenized by the
model's own tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoTokenizer,
    CLIPModel,
    PretrainedConfig,
    SiglipModel,
)

from clip_lightning.data.records import to_rgb
from clip_lightning.data.transforms import build_eval_transform
from clip_lightning.errors import ModelLoadError
from clip_lightning.models.carried_files import (
    CarriedFiles,
    collect,
    loading_options,
    written_out,
)
from clip_lightning.models.pair_factory import ModuleArguments, pretrained_pair_module
from clip_lightning.models.pretrained_pair import (
    Pair,
    PairTower,
    PixelNormalizer,
    PretrainedParts,
    scalar,
    text_feature_cache,
)
from clip_lightning.models.text_cache import CachedTextTower, check_cache_option
from clip_lightning.module import CLIPModule
from clip_lightning.tokenization import tokenize

SUPPORTED = (CLIPModel, SiglipModel)
# PIL resampling codes of HF image processors -> the names timm's transforms take
INTERPOLATION = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def hf_clip_module(
    name_or_path: str, pretrained: bool = True, **module: ModuleArguments
) -> CLIPModule:
    """``model=hf_clip``: both towers from the hub model or local folder ``name_or_path``."""
    shared = {"name_or_path": name_or_path, "pretrained": pretrained}
    config = _load_config(name_or_path, local=False)
    return pretrained_pair_module(shared, embed_dim(config), **module)


def embed_dim(config: PretrainedConfig) -> int:
    """The joint embedding width of a CLIP or SigLIP config."""
    if config.model_type == "siglip":
        text = config.text_config
        return int(getattr(text, "projection_size", None) or text.hidden_size)
    return int(config.projection_dim)


def _load_config(name_or_path: str, local: bool) -> PretrainedConfig:
    try:
        config = AutoConfig.from_pretrained(name_or_path, **loading_options(local))
    except (OSError, ValueError) as exc:
        raise _load_error(name_or_path, exc) from exc
    if config.model_type not in ("clip", "siglip"):
        raise ModelLoadError(
            f"{name_or_path!r} is a {config.model_type!r} model; model=hf_clip takes CLIP or "
            "SigLIP models (e.g. openai/clip-vit-base-patch32, google/siglip-base-patch16-224)"
        )
    return config


def _load_error(name_or_path: str, exc: BaseException) -> ModelLoadError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
    return ModelLoadError(
        f"could not load {name_or_path!r} ({type(exc).__name__}: {detail}); if you are "
        "offline, set model.name_or_path to a local folder saved with save_pretrained "
        "(model, tokenizer and image processor)"
    )


def _build(source: str, pretrained: bool, local: bool) -> PretrainedParts:
    config = _load_config(source, local)
    try:
        if pretrained:
            model = AutoModel.from_pretrained(source, **loading_options(local))
        else:
            model = AutoModel.from_config(config, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc) from exc
    if isinstance(model, CLIPModel):
        image = _Half(model.vision_model, model.visual_projection)
        text = _Half(model.text_model, model.text_projection)
    else:  # SigLIP: the projections are the models' own heads
        image, text = _Half(model.vision_model), _Half(model.text_model)
    return PretrainedParts(
        towers={"image": image, "text": text},
        embed_dim=embed_dim(config),
        logit_scale=scalar(model.logit_scale),
        logit_bias=scalar(getattr(model, "logit_bias", None)),
        config=config,
    )


def _load_preprocessor(loader: Any, name_or_path: str, source: str, local: bool) -> Any:
    """``loader.from_pretrained(source)`` (a tokenizer or image processor class), failures
    reported in one line naming ``name_or_path``."""
    try:
        return loader.from_pretrained(source, **loading_options(local))
    except (OSError, ValueError) as exc:
        raise _load_error(name_or_path, exc) from exc


@contextmanager
def _source(name_or_path: str, saved_files: CarriedFiles | None, key: str) -> Iterator[str]:
    """Where to load from: ``name_or_path``, or the files a checkpoint carries, written out."""
    if saved_files is None:
        yield name_or_path
        return
    with written_out(saved_files, key) as folder:
        yield folder


class _Half(nn.Module):
    """One tower of the pretrained pair: a backbone whose pooled output is projected."""

    def __init__(self, backbone: nn.Module, projection: nn.Module | None = None):
        super().__init__()
        self.backbone: Any = backbone  # a transformers vision or text model
        self.projection = projection if projection is not None else nn.Identity()

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.projection(self.backbone(**inputs).pooler_output)

    def set_grad_checkpointing(self, enable: bool) -> None:
        if enable:
            self.backbone.gradient_checkpointing_enable()
        else:
            self.backbone.gradient_checkpointing_disable()

    def lock(self, unlocked_layers: int) -> None:
        """Freeze everything but the last ``unlocked_layers`` encoder layers and what follows
        them (final norm, pooling head, projection)."""
        self.requires_grad_(False)
        if unlocked_layers <= 0:
            return
        first = next(self.backbone.encoder.layers[-unlocked_layers].parameters())
        unlocked = False
        for param in self.parameters():
            unlocked = unlocked or param is first
            param.requires_grad_(unlocked)


class _HFTower(PairTower):
    """A tower cut from the transformers model its ``name_or_path`` and ``pretrained`` name
    (built from the files a checkpoint carries, when it does)."""

    @classmethod
    def pair_identity(cls, arguments: Mapping[str, Any]) -> tuple[Any, ...]:
        return ("hf", arguments["name_or_path"], arguments["pretrained"])

    @classmethod
    def build_pair(cls, arguments: Mapping[str, Any], key: str) -> PretrainedParts:
        saved_files = arguments["saved_files"]
        with _source(arguments["name_or_path"], saved_files, f"{key}.saved_files") as source:
            return _build(source, arguments["pretrained"], local=saved_files is not None)


class HFImageTower(_HFTower):
    """The vision half of a transformers CLIP/SigLIP model, normalising uint8 batches.

    Args:
        name_or_path: hub id (``openai/clip-vit-base-patch32``) or a ``save_pretrained`` folder.
        pretrained: load the weights; ``false`` builds the architecture from its config (what
            a checkpoint reload does, the state dict follows).
        freeze: lock the tower (LiT) ...
        unfreeze_last: ... except its last N encoder layers and what follows them.
        saved_files: config and image-processor files a checkpoint carries, so the tower
            rebuilds without ``name_or_path`` (then only a label); see :meth:`checkpoint_config`.
        pair: the transformers model, built once for both towers by whoever builds them;
            ``None`` builds it here.
    """

    pair_part = "image"

    def __init__(
        self,
        name_or_path: str,
        pretrained: bool = True,
        freeze: bool = False,
        unfreeze_last: int = 0,
        saved_files: CarriedFiles | None = None,
        pair: Pair = None,
    ):
        super().__init__()
        self.model: _Half
        local = saved_files is not None
        with _source(name_or_path, saved_files, "model.image_encoder.saved_files") as source:
            if pair is None:
                pair = _build(source, pretrained, local)
            self.processor = _load_preprocessor(AutoImageProcessor, name_or_path, source, local)
        self.pair_config: PretrainedConfig = pair.config
        self.adopt(pair, pretrained)
        self.data_config = _timm_data_config(self.processor)
        self.normalize = PixelNormalizer(self.data_config["mean"], self.data_config["std"])
        if freeze:
            self.model.lock(unfreeze_last)
            self.train(self.training)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Projected features of a uint8 batch (normalised here) or a normalised float one."""
        return self.model(pixel_values=self.normalize(images))

    def checkpoint_config(self) -> dict[str, Any]:
        """Config keys a checkpoint overrides so it rebuilds offline without ``name_or_path``:
        random init (the weights are in the state dict) from the inlined config files."""
        files = collect(self.pair_config, self.processor)
        return {"pretrained": False, "saved_files": files}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The project's evaluation transform (PIL -> uint8), built from the processor's
        settings, so an image embeds as in validation everywhere."""
        return build_eval_transform(self.data_config)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        transform = self.transform()
        return torch.stack([transform(to_rgb(image)) for image in images])


def _timm_data_config(processor: Any) -> dict[str, Any]:
    """An HF image processor's resize/crop/normalisation in timm's data-config terms."""
    size = processor.size
    if getattr(size, "shortest_edge", None) or (isinstance(size, dict) and "shortest_edge" in size):
        shortest = size["shortest_edge"]
        crop = processor.crop_size if getattr(processor, "do_center_crop", False) else None
        height, width = (crop["height"], crop["width"]) if crop else (shortest, shortest)
        crop_pct, crop_mode = height / shortest, "center"
    else:  # SigLIP resizes both sides ("squash")
        height, width = size["height"], size["width"]
        crop_pct, crop_mode = 1.0, "squash"
    return {
        "input_size": (3, height, width),
        "interpolation": INTERPOLATION.get(int(processor.resample), "bicubic"),
        "mean": tuple(processor.image_mean),
        "std": tuple(processor.image_std),
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
    }


class HFTextTower(_HFTower, CachedTextTower):
    """The text half of a transformers CLIP/SigLIP model with the model's own tokenizer.

    SigLIP was trained on captions padded to ``max_length`` and pools the last position, so
    its batches are re-padded to ``max_length`` here and no attention mask is applied (as in
    the original); CLIP's causal tower takes dynamically padded batches with their mask.

    Args:
        name_or_path, pretrained, pair: as for :class:`HFImageTower` (shared model).
        max_length: tokens per caption; defaults to the model's maximum (77 CLIP, 64 SigLIP).
        freeze: lock the tower ...
        unfreeze_last: ... except its last N encoder layers and what follows them.
        cache: reuse a fully frozen tower's features: ``null``, ``memory`` or a folder, as in
            :class:`~clip_lightning.models.TextEncoder`.
        saved_files: config and tokenizer files a checkpoint carries (see
            :class:`HFImageTower`).
    """

    pair_part = "text"

    def __init__(
        self,
        name_or_path: str,
        pretrained: bool = True,
        max_length: int | None = None,
        freeze: bool = False,
        unfreeze_last: int = 0,
        cache: str | None = None,
        saved_files: CarriedFiles | None = None,
        pair: Pair = None,
    ):
        super().__init__()
        check_cache_option(cache, freeze, unfreeze_last)
        self.model: _Half
        local = saved_files is not None
        with _source(name_or_path, saved_files, "model.text_encoder.saved_files") as source:
            if pair is None:
                pair = _build(source, pretrained, local)
            self.tokenizer = _load_preprocessor(AutoTokenizer, name_or_path, source, local)
        self.pair_config: PretrainedConfig = pair.config
        self.adopt(pair, pretrained)
        config = self.model.backbone.config
        self.fixed_length = config.model_type.startswith("siglip")
        self.max_length: int = max_length or config.max_position_embeddings
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        if freeze:
            self.model.lock(unfreeze_last)
            self.train(self.training)
        identity = {"name_or_path": str(name_or_path), "max_length": self.max_length}
        self.feature_cache = text_feature_cache(cache, self.model, self.tokenizer, identity)

    def checkpoint_config(self) -> dict[str, Any]:
        """Config keys a checkpoint overrides so it rebuilds offline without ``name_or_path``."""
        files = collect(self.pair_config, self.tokenizer)
        return {"pretrained": False, "saved_files": files}

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Projected features (never cached)."""
        if not self.fixed_length:
            return self.model(input_ids=input_ids, attention_mask=attention_mask)
        missing = self.max_length - input_ids.shape[1]
        if missing > 0:
            input_ids = nn.functional.pad(input_ids, (0, missing), value=self.pad_id)
        return self.model(input_ids=input_ids)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return tokenize(self.tokenizer, texts, self.max_length)
