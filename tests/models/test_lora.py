"""LoRA (model.lora): only adapters, heads and the temperature train, also under GradCache and
activation checkpointing; checkpoints reload and resume; export merges the adapters, so
open_clip / transformers load it without peft and give the checkpoint's embeddings; WiSE-FT
interpolates the merged weights; the default targets are the attention and MLP projections of
each tower family; a tower without default targets is one line naming
model.lora.target_modules."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel

from clip_lightning.cli.export import export
from clip_lightning.cli.loading import build_datamodule, load_model
from clip_lightning.errors import ConfigError, find_user_error
from clip_lightning.models.image_encoder import ImageEncoder
from clip_lightning.models.lora import (
    LinearMultiheadAttention,
    LoRASettings,
    add_lora,
    has_lora,
    merged,
)
from clip_lightning.models.targets import build
from clip_lightning.models.text_encoder import TextEncoder
from clip_lightning.wise_ft import WeightSpaceEnsemble
from tests.helpers import compose_export, quiet_trainer
from tests.helpers.pretrained import (
    finetuned_checkpoint,
    hf_clip_cfg,
    minilm_tokenizer_dir,
    open_clip_cfg,
)

CAPTIONS = ["a red square on the left", "two blue circles", "a large green triangle"]
LORA = ["model.lora.r=4", "model.tower_lr={image_encoder:1e-2,text_encoder:1e-2}"]


@pytest.fixture(scope="module")
def open_clip_lora(tmp_path_factory):
    """The tiny open_clip pair with LoRA r=4 on both towers, after 2 steps, and its checkpoint."""
    root = tmp_path_factory.mktemp("lora")
    cfg = open_clip_cfg(root, extra=LORA)
    return cfg, finetuned_checkpoint(cfg, root)


@pytest.fixture(scope="module")
def hf_lora(tmp_path_factory):
    """The same for the tiny transformers CLIP pair."""
    root = tmp_path_factory.mktemp("hf_lora")
    cfg = hf_clip_cfg(root, extra=LORA)
    return cfg, finetuned_checkpoint(cfg, root)


@pytest.mark.parametrize("batch_first", [True, False])
def test_linear_attention_equals_multihead_attention(batch_first):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    linear = LinearMultiheadAttention.from_attention(attention).eval()
    x = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
    context = torch.randn(3, 7, 16) if batch_first else torch.randn(7, 3, 16)
    causal = torch.full((5, 5), float("-inf")).triu(1)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[0, -2:] = True
    for args, kwargs in (
        ((x, x, x), {"attn_mask": causal, "need_weights": False}),  # open_clip's text blocks
        ((x, context, context), {"key_padding_mask": padding}),  # cross-attention
    ):
        expected = attention(*args, **kwargs)[0]
        torch.testing.assert_close(linear(*args, **kwargs)[0], expected)
        torch.testing.assert_close(linear.to_attention()(*args, **kwargs)[0], expected)


def test_only_adapters_and_the_temperature_train(open_clip_lora, tmp_path):
    cfg, _ = open_clip_lora
    model = build(cfg.model, "model")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable - {"loss.logit_scale"} == {n for n in trainable if ".lora_" in n}
    # the attention of every open_clip block is adapted (through the linear stand-in)
    blocks = model.image_encoder.model.transformer.resblocks
    assert all(isinstance(block.attn, LinearMultiheadAttention) for block in blocks)
    assert {"in_proj", "out_proj"} <= {n.split(".")[-4] for n in trainable if ".attn." in n}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=build_datamodule(cfg.dataset, model))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable
    assert any(".lora_B." in n for n in changed)  # B starts at zero: the update is real


@pytest.mark.parametrize("make_cfg", [open_clip_cfg, hf_clip_cfg])
def test_every_adapter_learns_under_grad_cache_and_activation_checkpointing(tmp_path, make_cfg):
    extra = ["model.grad_checkpointing=true", "model.grad_cache_chunk_size=4"]
    cfg = make_cfg(tmp_path, extra=[*LORA, *extra])
    model = build(cfg.model, "model")
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_B." in n}
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=build_datamodule(cfg.dataset, model))
    params = dict(model.named_parameters())
    assert adapters and all(not torch.equal(params[n], before) for n, before in adapters.items())


def test_checkpoint_reloads_and_resumes(open_clip_lora, tmp_path):
    cfg, checkpoint = open_clip_lora
    reloaded = load_model(checkpoint)
    assert has_lora(reloaded) and reloaded.hparams.lora["r"] == 4
    model = build(cfg.model, "model")
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=0)
    trainer.fit(model, datamodule=build_datamodule(cfg.dataset, model), ckpt_path=checkpoint)
    assert trainer.global_step == 3


def test_merged_model_has_no_adapters_and_the_same_embeddings(open_clip_lora):
    _, checkpoint = open_clip_lora
    model = load_model(checkpoint)
    plain = merged(model)
    assert not has_lora(plain) and has_lora(model)  # a copy: the checkpoint model keeps them
    assert not any("lora" in key or "base_layer" in key for key in plain.state_dict())
    torch.testing.assert_close(plain.encode_text(CAPTIONS), model.encode_text(CAPTIONS))


@pytest.mark.parametrize(("kind", "pair"), [("open_clip", "open_clip_lora"), ("hf", "hf_lora")])
def test_export_merges_the_adapters(request, tmp_path, kind, pair):
    _, checkpoint = request.getfixturevalue(pair)
    out = tmp_path / "out"
    cfg = compose_export([f"ckpt_path={checkpoint}", f"format={kind}", f"out={out}"], tmp_path)
    result = export(cfg)  # loaded back by open_clip / transformers and compared
    assert result["max_embedding_difference"] < 1e-4
    # plain weights: nothing for peft to load, the library's own layer names
    assert not (out / "adapter_config.json").exists()
    (weights,) = out.glob("*.safetensors")
    keys = load_file(weights).keys()
    assert keys and not any("lora" in key or "base_layer" in key for key in keys)


def test_wise_ft_interpolates_the_merged_weights(open_clip_lora):
    cfg, checkpoint = open_clip_lora
    model = load_model(checkpoint)
    ensemble = WeightSpaceEnsemble(model)
    torch.testing.assert_close(ensemble.at(1.0).encode_text(CAPTIONS), model.encode_text(CAPTIONS))
    pretrained = build(cfg.model, "model", lora=None).eval()
    torch.testing.assert_close(
        ensemble.at(0.0).encode_text(CAPTIONS), pretrained.encode_text(CAPTIONS)
    )


def test_wise_ft_export_to_transformers_interpolates_the_merged_weights(hf_lora, tmp_path):
    _, checkpoint = hf_lora
    out = tmp_path / "out"
    overrides = [f"ckpt_path={checkpoint}", "wise_ft.alpha=0.5", "format=hf", f"out={out}"]
    assert export(compose_export(overrides, tmp_path))["max_embedding_difference"] < 1e-4
    expected = WeightSpaceEnsemble(load_model(checkpoint)).at(0.5)
    layer = "encoder.layers.0.self_attn.q_proj.weight"  # an adapted projection, merged
    loaded = AutoModel.from_pretrained(out).vision_model.get_parameter(layer)
    wanted = expected.image_encoder.model.backbone.get_parameter(layer)
    torch.testing.assert_close(loaded, wanted)
    finetuned = merged(load_model(checkpoint)).image_encoder.model.backbone.get_parameter(layer)
    assert not torch.allclose(loaded, finetuned)  # θ(0.5), not the fine-tuned weights


def adapted(tower: nn.Module) -> set[str]:
    """Names of the modules of ``tower`` that carry a LoRA adapter."""
    return {n for n, m in tower.named_modules() if isinstance(m, BaseTunerLayer)}


def test_default_targets_are_every_attention_and_mlp_projection_of_timm_vits_and_bert():
    vit = ImageEncoder(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=32,
        num_heads=2,
    )
    text = str(minilm_tokenizer_dir())
    bert = TextEncoder(text, pretrained=False, config_overrides={"num_hidden_layers": 2})
    distilbert = TextEncoder(
        text,
        pretrained=False,
        architecture="distilbert",
        config_overrides={"n_layers": 2, "dim": 32, "hidden_dim": 64, "n_heads": 2},
    )
    add_lora({"image_encoder": vit, "text_encoder": bert}, LoRASettings(r=4))
    add_lora({"text_encoder": distilbert}, LoRASettings(r=4, towers=["text"]))
    vit_parts = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
    assert adapted(vit) == {f"model.blocks.{i}.{part}" for i in (0, 1) for part in vit_parts}
    bert_parts = [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ]
    assert adapted(bert) == {
        f"model.encoder.layer.{i}.{part}" for i in (0, 1) for part in bert_parts
    }
    distil_parts = ["attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"]
    assert adapted(distilbert) == {
        f"model.transformer.layer.{i}.{part}"
        for i in (0, 1)
        for part in [*distil_parts, "ffn.lin1", "ffn.lin2"]
    }
    for tower in (vit, bert, distilbert):  # the adapters train, the weights under them do not
        trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
        assert trainable and all(".lora_" in n for n in trainable)


def test_a_cnn_without_default_targets_names_the_option():
    tower = ImageEncoder("resnet18", pretrained=False)
    with pytest.raises(ConfigError, match=r"model\.lora\.target_modules") as error:
        add_lora({"image_encoder": tower}, LoRASettings(r=4, towers=["image"]))
    assert "\n" not in str(error.value)
    add_lora(
        {"image_encoder": tower}, LoRASettings(r=4, towers=["image"], target_modules=["conv2"])
    )
    trainable = [n for n, p in tower.named_parameters() if p.requires_grad]
    assert trainable and all(".conv2.lora_" in n for n in trainable)


def test_a_cached_text_tower_refuses_lora(tmp_path):
    cfg = open_clip_cfg(
        tmp_path,
        extra=[
            "model.lora.r=4",
            "model.text_encoder.freeze=true",
            "model.text_encoder.cache=memory",
        ],
    )
    with pytest.raises(Exception) as error:
        build(cfg.model, "model")
    assert "model.text_encoder.cache=null" in str(find_user_error(error.value))
