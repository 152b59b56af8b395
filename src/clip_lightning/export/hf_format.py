"""``format=hf``: a transformers folder ``AutoModel.from_pretrained(DIR)`` loads.

Only ``model=hf_clip`` models are written: their towers are the two halves of a ``CLIPModel``
or ``SiglipModel``, so putting them back together is exact. Other models (a timm image tower,
an HF text encoder with our heads, open_clip towers) have no transformers class that computes
the same thing, and are refused.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from clip_lightning.export.faithful import Encoders, ExportError
from clip_lightning.models.carried_files import loading_options
from clip_lightning.models.hf_clip import HFImageTower, HFTextTower
from clip_lightning.module import CLIPModule


def write_hf(model: CLIPModule, out: Path) -> list[str]:
    """Write the reassembled transformers model, its tokenizer and image processor."""
    image, text = model.image_encoder, model.text_encoder
    if not (isinstance(image, HFImageTower) and isinstance(text, HFTextTower)):
        raise ExportError(
            f"format=hf writes transformers CLIPModel/SiglipModel folders, which only "
            f"model=hf_clip models are; this one has {type(image).__name__} + "
            f"{type(text).__name__} towers: format=open_clip takes model=open_clip models and "
            "timm + HF text towers with model/head=linear"
        )
    target = AutoModel.from_config(image.pair_config)
    names = ("vision_model", "visual_projection", "text_model", "text_projection")
    halves = {names[0]: image.model.backbone, names[1]: image.model.projection}
    halves |= {names[2]: text.model.backbone, names[3]: text.model.projection}
    state = {
        f"{prefix}.{key}": value
        for prefix, module in halves.items()
        for key, value in module.state_dict().items()
    }
    target_state = target.state_dict()
    state["logit_scale"] = model.loss.logit_scale.detach().reshape(
        target_state["logit_scale"].shape
    )
    if "logit_bias" in target_state:  # SigLIP; a loss without a bias scores as a zero bias
        bias = getattr(model.loss, "logit_bias", None)
        bias = torch.zeros(()) if bias is None else bias.detach()
        state["logit_bias"] = bias.reshape(target_state["logit_bias"].shape)
    target.load_state_dict(state, strict=True)
    target.save_pretrained(out)
    text.tokenizer.save_pretrained(out)
    image.processor.save_pretrained(out)
    return []


def load_hf(out: Path, max_length: int) -> Encoders:
    """The exported folder loaded back through transformers, as (image, text) encoders: as
    data from that folder only (no code shipped with a model, nothing downloaded)."""
    loaded = AutoModel.from_pretrained(out, **loading_options(local=True)).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, **loading_options(local=True))
    siglip = loaded.config.model_type == "siglip"

    def encode_text(texts: list[str]) -> torch.Tensor:
        # SigLIP: padded to max_length and unmasked, as it was trained
        padding = "max_length" if siglip else "longest"
        tokens = tokenizer(
            texts, padding=padding, truncation=True, max_length=max_length, return_tensors="pt"
        )
        if siglip:
            tokens.pop("attention_mask", None)
        return loaded.get_text_features(**tokens).pooler_output

    return Encoders(
        image=lambda pixels: loaded.get_image_features(pixel_values=pixels).pooler_output,
        text=encode_text,
    )
