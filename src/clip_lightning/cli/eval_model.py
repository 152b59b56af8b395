"""Which model ``clip_lightning.eval`` scores: a trained checkpoint (``ckpt_path=``), or a
pretrained CLIP pair exactly as published (``model=open_clip ...`` / ``model=hf_clip ...``),
the zero-shot baseline a fine-tuned model is compared against. Both go through the same
metric and output."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from clip_lightning.cli.loading import load_model
from clip_lightning.errors import ConfigError
from clip_lightning.models.targets import build
from clip_lightning.module import CLIPModule

# What a model config takes from the training groups; scoring uses none of them (the
# temperature comes from the pretrained model, nothing is optimised).
SCORING_PARTS: dict[str, Any] = {
    "loss": {"_target_": "clip_lightning.losses.InfoNCELoss"},
    "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True},
    "scheduler": None,
}
PAIR_FACTORIES = ("open_clip_module", "hf_clip_module")


@dataclass
class EvalModel:
    """A model to score and what it is, as the result files name it.

    ``source`` holds ``checkpoint`` (the path, or ``None`` for a pretrained model) and, for a
    pretrained model, CLIP_benchmark's ``model`` and ``pretrained`` names.
    """

    model: CLIPModule
    source: dict[str, Any] = field(default_factory=dict)


def load_eval_model(cfg: DictConfig, device: torch.device | str = "cpu") -> EvalModel:
    """The checkpoint at ``cfg.ckpt_path``, or the pretrained pair ``cfg.model``, in eval mode."""
    model_cfg = cfg.get("model")
    if model_cfg is None:
        return EvalModel(load_model(cfg.ckpt_path, device), {"checkpoint": str(cfg.ckpt_path)})
    if cfg.get("ckpt_path"):
        raise ConfigError(
            "pass either ckpt_path=CKPT (a trained model) or model=open_clip|hf_clip (a "
            "pretrained baseline), not both"
        )
    return EvalModel(pretrained_model(model_cfg).to(device).eval(), pretrained_source(model_cfg))


def pretrained_model(model_cfg: DictConfig) -> CLIPModule:
    """The ``model`` config of a pretrained pair, built with its pretrained weights.

    Only a pair (open_clip, transformers CLIP/SigLIP) is a model before any training: a timm
    + text-model pair starts with random projection heads, so it has no baseline to score.
    """
    target = str(model_cfg.get("_target_", ""))
    if not target.endswith(PAIR_FACTORIES):
        raise ConfigError(
            "a pretrained baseline needs a pretrained CLIP pair: model=open_clip "
            "model.arch=ARCH model.pretrained=TAG_OR_FILE or model=hf_clip "
            "model.name_or_path=ID_OR_DIR (other models start with random projection heads)"
        )
    if not model_cfg.get("pretrained"):
        raise ConfigError(
            "the baseline is a pretrained model, but model.pretrained is off; set "
            "model.pretrained to an open_clip tag or weights file (model=open_clip) or to true "
            "(model=hf_clip)"
        )
    model: CLIPModule = build(scoring_config(model_cfg), "model")
    return model


def scoring_config(model_cfg: DictConfig) -> DictConfig:
    """A copy of ``model_cfg`` with :data:`SCORING_PARTS` in place of the training groups it
    interpolates (``${loss}``, ...), which the eval, embed and search configs do not have."""
    config = model_cfg.copy()
    with open_dict(config):
        for key, value in SCORING_PARTS.items():
            config[key] = value
    return config


def pretrained_source(model_cfg: DictConfig) -> dict[str, Any]:
    """CLIP_benchmark's names of a pretrained pair: open_clip's architecture and tag, or the
    transformers model id."""
    if "arch" in model_cfg:
        return {"checkpoint": None, "model": model_cfg.arch, "pretrained": model_cfg.pretrained}
    return {"checkpoint": None, "model": "hf_clip", "pretrained": model_cfg.name_or_path}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes: the same checkpoint however it was copied or moved."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_identity(cfg: DictConfig) -> dict[str, str]:
    """What identifies the model of ``cfg`` (``embed`` and ``search index=`` compare it):
    ``model``, the checkpoint's SHA-256 or a digest of the pretrained pair's config, and the
    ``checkpoint`` path, which may move."""
    model_cfg = cfg.get("model")
    if model_cfg is None:
        path = Path(cfg.ckpt_path).expanduser().resolve()
        return {"model": f"sha256:{file_digest(path)}", "checkpoint": str(path)}
    own = {k: v for k, v in scoring_config(model_cfg).items() if k not in SCORING_PARTS}
    text = json.dumps(OmegaConf.to_container(OmegaConf.create(own), resolve=True), sort_keys=True)
    return {"model": f"config:{hashlib.sha256(text.encode()).hexdigest()[:16]}"}
