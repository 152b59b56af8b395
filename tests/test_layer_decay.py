"""Layer-wise LR decay (optimizer.layer_decay): layer i of a tower with top layer L learns at
tower_lr * decay^(L - i); timm towers are numbered by timm's group matcher, open_clip by
block, transformers by encoder layer; the LRs are printed once."""

from __future__ import annotations

import logging

import pytest

from clip_lightning.models.image_encoder import ImageEncoder
from clip_lightning.models.targets import build
from clip_lightning.models.text_encoder import TextEncoder
from clip_lightning.optim import layer_ids
from tests.helpers.pretrained import hf_clip_cfg, minilm_tokenizer_dir, open_clip_cfg

DECAY = ["optimizer.layer_decay=0.5", "model.scheduler=null"]
TOWER_LR = {"image_encoder": 1e-5, "text_encoder": 2e-5}


def groups_by_parameter(model) -> dict[str, dict]:
    optimizer = model.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: group for group in optimizer.param_groups for p in group["params"]}


@pytest.mark.parametrize(
    ("make_cfg", "expected_layers"),
    [
        # open_clip: stem, resblocks.0, resblocks.1, then what follows (top = 3)
        (
            open_clip_cfg,
            {
                "image_encoder.model.conv1.weight": 0,
                "image_encoder.model.ln_pre.weight": 0,
                "image_encoder.model.transformer.resblocks.0.attn.in_proj_weight": 1,
                "image_encoder.model.transformer.resblocks.1.mlp.c_fc.weight": 2,
                "image_encoder.model.proj": 3,
                "text_encoder.model.token_embedding.weight": 0,
                "text_encoder.model.transformer.resblocks.1.ln_2.bias": 2,
                "text_encoder.model.text_projection": 3,
            },
        ),
        # transformers CLIP: embeddings, encoder.layers.0/1, then post-norm and projection
        (
            hf_clip_cfg,
            {
                "image_encoder.model.backbone.embeddings.patch_embedding.weight": 0,
                "image_encoder.model.backbone.encoder.layers.0.self_attn.q_proj.weight": 1,
                "image_encoder.model.backbone.encoder.layers.1.mlp.fc2.bias": 2,
                "image_encoder.model.backbone.post_layernorm.weight": 3,
                "image_encoder.model.projection.weight": 3,
                "text_encoder.model.backbone.embeddings.token_embedding.weight": 0,
                "text_encoder.model.backbone.final_layer_norm.weight": 3,
            },
        ),
    ],
)
def test_learning_rates_fall_geometrically_from_the_top(
    tmp_path, caplog, make_cfg, expected_layers
):
    cfg = make_cfg(
        tmp_path, extra=[*DECAY, "model.tower_lr={image_encoder:1e-5,text_encoder:2e-5}"]
    )
    model = build(cfg.model, "model")  # as train builds it
    with caplog.at_level(logging.INFO):
        groups = groups_by_parameter(model)
    for name, layer in expected_layers.items():
        tower = name.split(".")[0]
        assert groups[name]["lr"] == pytest.approx(TOWER_LR[tower] * 0.5 ** (3 - layer)), name
    # every trainable parameter is in one group; the temperature keeps optimizer.lr
    assert set(groups) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert groups["loss.logit_scale"]["lr"] == cfg.optimizer.lr
    assert "layer-wise LR decay 0.5: image_encoder.layer0 1.25e-06" in caplog.text


def test_timm_towers_follow_their_group_matcher():
    tower = ImageEncoder("resnet18", pretrained=False)
    ids = layer_ids(tower)
    assert ids["model.conv1.weight"] == 0  # the stem
    assert ids["model.layer1.0.conv1.weight"] < ids["model.layer4.1.conv2.weight"]
    assert ids["model.layer4.1.conv2.weight"] == max(ids.values())
    assert set(ids) == {n for n, _ in tower.named_parameters()}


def test_bert_text_towers_are_numbered_by_encoder_layer():
    tower = TextEncoder(
        str(minilm_tokenizer_dir()), pretrained=False, config_overrides={"num_hidden_layers": 2}
    )
    ids = layer_ids(tower)
    assert ids["model.embeddings.word_embeddings.weight"] == 0
    assert ids["model.encoder.layer.0.attention.self.query.weight"] == 1
    assert ids["model.encoder.layer.1.output.dense.weight"] == 2 == max(ids.values())
    assert set(ids) == {n for n, _ in tower.named_parameters()}
