"""Image tower: any timm model, returning pooled features."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, cast

import timm
import torch
from PIL import Image
from timm.data import resolve_model_data_config
from timm.models import group_parameters
from torch import nn

from clip_lightning.data.records import to_rgb
from clip_lightning.data.transforms import build_eval_transform
from clip_lightning.errors import ModelLoadError
from clip_lightning.models.freezing import set_frozen_eval
from clip_lightning.models.targets import ExcludedKeys

#: An ImageEncoder's ``**model_kwargs``: the architecture's arguments, not timm.create_model's
#: own options (where weights come from, caching, scripting), which the tower sets itself.
TimmModelArgument = Annotated[
    Any,
    ExcludedKeys(
        frozenset(inspect.signature(timm.create_model).parameters) - {"kwargs"},
        "is an option of how timm loads weights, which the tower sets itself from "
        "model.image_encoder.pretrained and weights_file",
    ),
]


class ImageEncoder(nn.Module):
    """A timm backbone with its classifier removed (``num_classes=0`` gives pooled features).

    Args:
        name: any ``timm.create_model`` name, e.g. ``resnet50``.
        pretrained: load timm's pretrained weights (from the HF hub, or ``weights_file``).
        weights_file: a local weights file to use instead of downloading.
        image_size: override the model's default input resolution.
        freeze: lock the whole tower (LiT-style) ...
        unfreeze_last: ... except its last N blocks (timm's fine-grained block groups).
        channels_last: NHWC memory format, faster for CNNs under mixed precision on GPUs.
        data_config: the preprocessing (input size, mean/std, crop) to use instead of timm's
            defaults for ``name``; checkpoints store it (see :meth:`checkpoint_config`) so an
            image is transformed the same way on every machine and timm version.
        model_kwargs: forwarded to ``timm.create_model`` (e.g. ``drop_path_rate``): the
            architecture's arguments, not ``create_model``'s own loading options.
    """

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor
    # a timm backbone carries no pretrained temperature: the loss starts from its own
    init_logit_scale: float | None = None
    init_logit_bias: float | None = None

    def __init__(
        self,
        name: str = "resnet50",
        pretrained: bool = True,
        weights_file: str | None = None,
        image_size: int | None = None,
        freeze: bool = False,
        unfreeze_last: int = 0,
        channels_last: bool = False,
        data_config: dict[str, Any] | None = None,
        **model_kwargs: TimmModelArgument,
    ):
        super().__init__()
        overlay = {"file": weights_file} if weights_file else None
        try:
            # Any, not timm's nn.Module hint: num_features, group_matcher, ... are timm's own
            self.model = cast(
                Any,
                timm.create_model(
                    name,
                    pretrained=pretrained,
                    num_classes=0,
                    pretrained_cfg_overlay=overlay,
                    **model_kwargs,
                ),
            )
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ModelLoadError(
                    f"timm has no model {name!r}; set model.image_encoder.name to one of "
                    "timm.list_models() (e.g. resnet50, vit_base_patch16_224)"
                ) from exc
            raise _weights_error(name, exc) from exc
        except Exception as exc:  # network and hub errors come in many types
            raise _weights_error(name, exc) from exc
        # the pooled output width: models with a pre-logits head (MobileNetV3) widen it
        self.num_features: int = getattr(self.model, "head_hidden_size", self.model.num_features)
        # tuples as timm gives them, also when a checkpoint's config comes back as lists
        self.data_config: dict[str, Any] = {
            key: tuple(value) if isinstance(value, list) else value
            for key, value in (data_config or resolve_model_data_config(self.model)).items()
        }
        if image_size is not None and data_config is None:
            self.data_config["input_size"] = (3, image_size, image_size)
        self.channels_last = channels_last
        # uint8 batches (what the data pipeline yields) are normalised here, on the device
        mean = torch.tensor(self.data_config["mean"]).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.data_config["std"]).view(1, 3, 1, 1) * 255
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if freeze:
            self.model.requires_grad_(False)
            if unfreeze_last > 0:
                groups = group_parameters(self.model, self.model.group_matcher(coarse=False))
                trainable = {n for g in sorted(groups)[-unfreeze_last:] for n in groups[g]}
                for param_name, param in self.model.named_parameters():
                    param.requires_grad_(param_name in trainable)
            self.train(self.training)

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        set_frozen_eval(self.model)
        return self

    def checkpoint_config(self) -> dict[str, Any]:
        """Config keys a checkpoint overrides so it rebuilds anywhere without downloading:
        random init (the weights are in the state dict) with this exact preprocessing."""
        return {"pretrained": False, "weights_file": None, "data_config": self.data_config}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass instead of storing them (less memory)."""
        self.model.set_grad_checkpointing(enable)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features of a uint8 batch (normalised here) or an already normalised float one."""
        if images.dtype == torch.uint8:
            images = (images.float() - self.pixel_mean) / self.pixel_std
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The evaluation transform matching this encoder: PIL image -> uint8 ``[3, H, W]``.

        The same function the data pipeline evaluates with (``forward`` normalises uint8).
        """
        return build_eval_transform(self.data_config)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """Turn PIL images into a uint8 batch, each converted to 8-bit RGB first (``to_rgb``)."""
        transform = self.transform()
        return torch.stack([transform(to_rgb(image)) for image in images])


def _weights_error(name: str, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"could not load pretrained weights for image encoder {name!r} "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}). "
        "If you are offline, point model.image_encoder.weights_file at a local weights file, "
        "set model.image_encoder.pretrained=false, or run `experiment=quickstart`, "
        "which trains fully offline."
    )
