"""model=hf_clip: tiny random transformers CLIPModel / SiglipModel folders train with their
losses, hand the loss their logit scale/bias, match the HF model's own features, lock towers,
cache text features and reload from a checkpoint."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from PIL import Image
from transformers import AutoModel, AutoProcessor, AutoTokenizer

from clip_lightning.cli.loading import build_datamodule
from clip_lightning.errors import ModelLoadError, find_user_error
from clip_lightning.module import CLIPModule
from tests.helpers import quiet_trainer
from tests.helpers.pretrained import (
    PRETRAINED_BIAS,
    PRETRAINED_SCALE,
    assert_one_step_trains_both_towers_and_the_scale,
    fit,
    hf_clip_cfg,
    minilm_tokenizer_dir,
)

CAPTIONS = ["a red square on the left", "two blue circles", "a large green triangle"]


@pytest.mark.parametrize(("kind", "loss"), [("clip", "infonce"), ("siglip", "siglip")])
def test_pretrained_logit_scale_seeds_the_loss_and_one_step_trains(tmp_path, kind, loss):
    cfg = hf_clip_cfg(tmp_path, kind, [f"loss={loss}"])
    model = instantiate(cfg.model)
    assert model.loss.logit_scale.item() == pytest.approx(PRETRAINED_SCALE)
    if loss == "siglip":
        assert model.loss.logit_bias.item() == pytest.approx(PRETRAINED_BIAS)
    assert_one_step_trains_both_towers_and_the_scale(model, cfg, tmp_path)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_towers_give_the_hf_models_own_features(tmp_path, kind):
    cfg = hf_clip_cfg(tmp_path, kind)
    model = instantiate(cfg.model).eval()
    folder = cfg.model.name_or_path
    reference = AutoModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    images = [Image.new("RGB", (40, 36), (200, 30 * i, 90)) for i in range(3)]
    padding = "max_length" if kind == "siglip" else "longest"
    tokens = tokenizer(CAPTIONS, padding=padding, max_length=24, return_tensors="pt")
    if kind == "siglip":  # trained without a mask, like the original
        tokens.pop("attention_mask")
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        expected_images = reference.get_image_features(pixel_values=pixels).pooler_output
        expected_texts = reference.get_text_features(**tokens).pooler_output
    torch.testing.assert_close(model.embed_images(pixels), F.normalize(expected_images, dim=-1))
    torch.testing.assert_close(model.encode_text(CAPTIONS), F.normalize(expected_texts, dim=-1))


def test_locked_image_and_last_text_layer_unlocked(tmp_path):
    cfg = hf_clip_cfg(
        tmp_path,
        "clip",
        [
            "model.image_encoder.freeze=true",
            "model.text_encoder.freeze=true",
            "model.text_encoder.unfreeze_last_layers=1",
        ],
    )
    model = instantiate(cfg.model)
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    text = model.text_encoder.model
    layers = text.backbone.encoder.layers
    assert not any(p.requires_grad for p in text.backbone.embeddings.parameters())
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in layers[-1].parameters())
    assert text.backbone.final_layer_norm.weight.requires_grad
    assert text.projection.weight.requires_grad
    frozen = {n: p.detach().clone() for n, p in model.image_encoder.named_parameters()}
    fit(model, cfg, tmp_path)
    for name, param in model.image_encoder.named_parameters():
        assert torch.equal(param, frozen[name]), name


def test_frozen_siglip_text_cache_equals_uncached_features(tmp_path):
    cfg = hf_clip_cfg(
        tmp_path,
        "siglip",
        ["model.text_encoder.freeze=true", "model.text_encoder.cache=memory"],
    )
    tower = instantiate(cfg.model).eval().text_encoder
    tokens = tower.tokenize([*CAPTIONS, CAPTIONS[0]])
    cached = tower(**tokens)
    torch.testing.assert_close(cached, tower.encode(**tokens))
    assert (tower.feature_cache.misses, tower.feature_cache.hits) == (3, 1)


def test_checkpoint_rebuilds_without_the_model_folder(tmp_path):
    cfg = hf_clip_cfg(tmp_path, "siglip", ["loss=siglip"])
    model = instantiate(cfg.model)
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=build_datamodule(cfg.dataset, model))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    shutil.rmtree(cfg.model.name_or_path)  # the checkpoint carries config, tokenizer, processor
    reloaded = CLIPModule.load_from_checkpoint(tmp_path / "model.ckpt").eval()
    assert reloaded.hparams.text_encoder["pretrained"] is False
    model.eval()
    torch.testing.assert_close(reloaded.encode_text(CAPTIONS), model.encode_text(CAPTIONS))
    assert reloaded.loss.logit_bias.item() == pytest.approx(model.loss.logit_bias.item())


def test_a_folder_of_another_model_type_is_a_one_line_error(tmp_path):
    cfg = hf_clip_cfg(tmp_path, "clip", [f"model.name_or_path={minilm_tokenizer_dir()}"])
    with pytest.raises(Exception) as err:
        instantiate(cfg.model)
    error = find_user_error(err.value)
    assert isinstance(error, ModelLoadError) and "\n" not in str(error)
    assert "is a 'bert' model; model=hf_clip takes CLIP or SigLIP models" in str(error)
