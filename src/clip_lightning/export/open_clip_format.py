"""``format=open_clip``: a folder ``open_clip.create_model_and_transforms("local-dir:DIR")`` and
``open_clip.get_tokenizer("local-dir:DIR")`` load.

Two kinds of model map onto open_clip faithfully:

* ``model=open_clip`` models: the original architecture config, built as ``CustomTextCLIP``
  (the towers' weights are ``visual.*`` and ``text.*``);
* timm image tower + HF text tower + linear heads: open_clip's ``CustomTextCLIP`` with a
  ``timm_model_name`` vision tower (``TimmModel``: trunk + bias-free linear projection) and an
  ``hf_model_name`` text tower (``HFTextEncoder``: transformer, pooler, linear projection).

Anything open_clip cannot reproduce (an MLP head, a pooling or text architecture its HF
adapter lacks, timm options it does not forward) is refused with one line.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.hf_configs import arch_dict
from safetensors.torch import save_file
from torch import nn

from clip_lightning.export.faithful import Encoders, ExportError
from clip_lightning.models.heads import LinearHead
from clip_lightning.models.image_encoder import ImageEncoder
from clip_lightning.models.open_clip import OpenCLIPImageTower, OpenCLIPTextTower
from clip_lightning.models.text_encoder import TextEncoder
from clip_lightning.module import CLIPModule

WEIGHTS = "open_clip_model.safetensors"
# our TextEncoder pooling -> open_clip's HFTextEncoder pooler of the same computation
POOLERS = {"mean": "mean_pooler", "cls": "cls_last_hidden_state_pooler"}
# open_clip.create_model options a model=open_clip run may use, and where they live in the config
CREATE_OPTIONS = {
    "force_image_size": ("vision_cfg", "image_size"),
    "force_patch_dropout": ("vision_cfg", "patch_dropout"),
    "force_context_length": ("text_cfg", "context_length"),
}
# ImageEncoder arguments that do not change the network (or that the config carries itself)
IMAGE_ENCODER_ARGS = {
    "_target_",
    "name",
    "pretrained",
    "weights_file",
    "image_size",
    "data_config",
    "freeze",
    "unfreeze_last",
    "unfreeze_last_blocks",
    "channels_last",
}  # fmt: skip  (unfreeze_last_blocks: its name in checkpoints saved before the rename)


def write_open_clip(model: CLIPModule, out: Path, ignore_crop_pct: bool = False) -> list[str]:
    """Write ``open_clip_config.json``, the weights and tokenizer files; returns card notes."""
    image, text = model.image_encoder, model.text_encoder
    if isinstance(image, OpenCLIPImageTower) and isinstance(text, OpenCLIPTextTower):
        config, notes = _open_clip_config(model, image, text)
        parts: dict[str, nn.Module] = {"visual.": image.model, "text.": text.model}
    elif isinstance(image, ImageEncoder) and isinstance(text, TextEncoder):
        config, notes = _timm_hf_config(model, image, text, out, ignore_crop_pct)
        parts = {
            "visual.trunk.": image.model,
            "visual.head.": model.image_head,
            "text.transformer.": text.model,
            "text.": model.text_head,
        }
    else:
        raise ExportError(
            f"format=open_clip takes model=open_clip models or a timm image tower with an HF "
            f"text tower, not {type(image).__name__} + {type(text).__name__}; try format=hf"
        )
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    target = open_clip.create_model(f"local-dir:{out}", pretrained_text=False)
    state = _state_dict(model, parts)
    if isinstance(text, TextEncoder):  # open_clip builds the HF model without its pooler
        state = {k: v for k, v in state.items() if not k.startswith("text.transformer.pooler.")}
    target_state = target.state_dict()
    for key in ("logit_scale", "logit_bias"):
        if key in state:
            state[key] = state[key].reshape(target_state[key].shape)
    missing, unexpected = set(target_state) - set(state), set(state) - set(target_state)
    if missing or unexpected:
        raise ExportError(
            "open_clip's model does not match this one's weights (missing "
            f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); it cannot be "
            "exported to format=open_clip"
        )
    target.load_state_dict(state)
    save_file({k: v.contiguous() for k, v in target.state_dict().items()}, out / WEIGHTS)
    return notes


def name_text_config_source(out: Path, hub_repo: str | None) -> list[str]:
    """Point ``text_cfg.hf_model_name`` of a folder whose HF text tower is not a hub model at
    where the folder will be loaded from; returns the model card's note.

    open_clip reads an HF text tower's architecture from ``hf_model_name``: a hub id, or a
    folder path. A tower built locally (a local folder, ``config_overrides``) has no hub id,
    so the export names a hub repository it is uploaded to (``hub_repo``, which holds this
    folder's ``config.json``), or else this folder's absolute path.
    """
    path = out / "open_clip_config.json"
    config = json.loads(path.read_text())
    text = config["model_cfg"].get("text_cfg", {})
    name = text.get("hf_model_name")
    if name is None or name != str(out.resolve()):
        return []  # an open_clip text tower, or a hub model: the folder loads from anywhere
    if hub_repo is None:
        return [
            f"The text tower is not a hub model: open_clip reads its architecture from {name} "
            "(text_cfg.hf_model_name, this folder). Moved elsewhere, set that key to the new "
            "path; exported with push_to_hub=user/repo it loads anywhere as hf-hub:user/repo."
        ]
    text["hf_model_name"] = text["hf_tokenizer_name"] = hub_repo
    path.write_text(json.dumps(config, indent=2) + "\n")
    return [
        f"The text tower's architecture is read from the hub repository {hub_repo} (its "
        "config.json), so the model loads anywhere as hf-hub:" + hub_repo + "."
    ]


def load_open_clip(out: Path) -> Encoders:
    """The exported folder loaded back through open_clip, as (image, text) encoders."""
    loaded, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    loaded.eval()
    return Encoders(
        image=loaded.encode_image,
        text=lambda texts: loaded.encode_text(tokenizer(texts)),
        preprocess=preprocess,
    )


def _logit_config(model: CLIPModule, config: dict[str, Any]) -> None:
    """A SigLIP loss's bias becomes the model's ``logit_bias``; other losses have none."""
    config.pop("init_logit_bias", None)
    if getattr(model.loss, "logit_bias", None) is not None:
        config["init_logit_bias"] = float(model.loss.logit_bias.detach())


def _open_clip_config(
    model: CLIPModule, image: OpenCLIPImageTower, text: OpenCLIPTextTower
) -> tuple[dict[str, Any], list[str]]:
    tower = model.hparams["image_encoder"]
    config = copy.deepcopy(open_clip.get_model_config(tower["arch"]))
    preprocess = dict(image.model.preprocess_cfg)
    for option, value in (tower.get("model_kwargs") or {}).items():
        if option in CREATE_OPTIONS:
            section, key = CREATE_OPTIONS[option]
            config[section][key] = value
        elif option == "force_quick_gelu":
            config["quick_gelu"] = bool(value)
        elif option != "force_preprocess_cfg":  # already in preprocess_cfg
            raise ExportError(
                f"open_clip option {option}={value!r} of this model is not part of an open_clip "
                "config; it cannot be exported to format=open_clip"
            )
    config["custom_text"] = True
    _logit_config(model, config)
    notes = []
    if text.max_length != text.context_length:
        notes.append(
            f"Trained on captions truncated to {text.max_length} tokens; open_clip's tokenizer "
            f"truncates at the context length, {text.context_length}."
        )
    return {"model_cfg": config, "preprocess_cfg": preprocess}, notes


def _timm_hf_config(
    model: CLIPModule, image: ImageEncoder, text: TextEncoder, out: Path, ignore_crop_pct: bool
) -> tuple[dict[str, Any], list[str]]:
    for name, head in (("image", model.image_head), ("text", model.text_head)):
        if not isinstance(head, LinearHead):
            raise ExportError(
                f"the {name} head is a {type(head).__name__}, which open_clip cannot rebuild: "
                "its towers end in a bias-free linear projection or in its own MLP, without "
                "this head's residual and LayerNorm; a model trained with model/head=linear "
                "exports to format=open_clip (the quickstart's MLP heads do not)"
            )
    image_args = model.hparams["image_encoder"]
    extra = set(image_args) - IMAGE_ENCODER_ARGS
    if extra or image.num_features != image.model.num_features:
        raise ExportError(
            f"timm image tower {image_args['name']!r} "
            f"{'with ' + ', '.join(sorted(extra)) if extra else 'pools through a pre-logits head'}"
            "; open_clip's TimmModel cannot rebuild it, so it cannot be exported to "
            "format=open_clip"
        )
    model_type = text.model.config.model_type
    if model_type not in arch_dict:
        raise ExportError(
            f"open_clip's HF text adapter knows {', '.join(sorted(arch_dict))} models, not "
            f"{model_type!r}; this model cannot be exported to format=open_clip"
        )
    notes = []
    data = image.data_config
    if data.get("crop_mode", "center") not in ("center", "squash"):
        raise ExportError(f"open_clip has no crop_mode {data['crop_mode']!r}; cannot export")
    if data.get("crop_mode") != "squash" and data.get("crop_pct", 1.0) != 1.0:
        if not ignore_crop_pct:
            raise ExportError(
                f"this model is evaluated with crop_pct={data['crop_pct']} and open_clip "
                "always centre-crops the full resized image; pass ignore_crop_pct=true to "
                "export with open_clip's crop anyway"
            )
        notes.append(
            f"Trained and evaluated with crop_pct={data['crop_pct']}; open_clip's "
            "preprocessing centre-crops the full resized image (crop_pct 1.0)."
        )
    # open_clip rebuilds the text model from hf_model_name: a hub id when the tower is exactly
    # that hub model, else this folder (its config.json is written here; see
    # name_text_config_source for where it points once the folder leaves this place)
    tower = model.hparams["text_encoder"]
    source = str(tower["name_or_path"])
    hub_model = not (
        Path(source).exists() or tower.get("config_overrides") or tower.get("architecture")
    )
    hf_name = source if hub_model else str(out.resolve())
    text.model.config.save_pretrained(out)
    text.tokenizer.save_pretrained(out)
    height, width = data["input_size"][1:]
    config = {
        "embed_dim": model.hparams["embed_dim"],
        "vision_cfg": {
            "timm_model_name": image_args["name"],
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "timm_proj_bias": False,
            "image_size": [height, width],
        },
        "text_cfg": {
            "hf_model_name": hf_name,
            "hf_tokenizer_name": hf_name,
            "hf_proj_type": "linear",
            "hf_pooler_type": POOLERS[text.pooling],
            "context_length": text.max_length,
        },
        "custom_text": True,
    }
    _logit_config(model, config)
    preprocess = {
        "size": [height, width],
        "mean": list(data["mean"]),
        "std": list(data["std"]),
        "interpolation": data.get("interpolation", "bicubic"),
        "resize_mode": "squash" if data.get("crop_mode") == "squash" else "shortest",
    }
    return {"model_cfg": config, "preprocess_cfg": preprocess}, notes


def _state_dict(model: CLIPModule, parts: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The module's weights under open_clip's ``CustomTextCLIP`` names (``parts`` by prefix)."""
    state = {
        prefix + key: value.detach().cpu()
        for prefix, module in parts.items()
        for key, value in module.state_dict().items()
    }
    state["logit_scale"] = model.loss.logit_scale.detach().cpu()
    if getattr(model.loss, "logit_bias", None) is not None:
        state["logit_bias"] = model.loss.logit_bias.detach().cpu()
    return state
