"""The ``model=open_clip`` / ``model=hf_clip`` factories' common step: a :class:`CLIPModule`
whose config names the pretrained model once, for both towers."""

from __future__ import annotations

from typing import Annotated, Any

from clip_lightning.models.targets import ArgumentsOf, plain
from clip_lightning.module import CLIPModule

#: A pair factory's ``**module``: the :class:`CLIPModule` arguments it forwards.
ModuleArguments = Annotated[Any, ArgumentsOf(CLIPModule)]


def pretrained_pair_module(shared: dict[str, Any], embed_dim: int, **module: Any) -> CLIPModule:
    """A :class:`CLIPModule` whose two towers get the same ``shared`` arguments.

    Lets a model config say ``model.arch=ViT-B-16`` once instead of once per tower; the
    towers' configs (hence checkpoints) still carry everything needed to rebuild them, and
    the module builds the pretrained model they share once
    (:func:`~clip_lightning.models.pretrained_pair.shared_pair`).
    ``embed_dim`` is the pretrained model's joint width (the heads are identities).
    """
    for tower in ("image_encoder", "text_encoder"):
        module[tower] = {**plain(module[tower]), **shared}
    return CLIPModule(embed_dim=embed_dim, **module)
