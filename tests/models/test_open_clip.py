"""model=open_clip: tiny random-init open_clip models with local "pretrained" weights train with
every loss, hand the loss their logit scale/bias, lock towers, cache text features, use
GradCache and reload from a checkpoint without the weights file."""

from __future__ import annotations

import json

import lightning as L
import open_clip
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from clip_lightning.cli.loading import build_datamodule
from clip_lightning.errors import ModelLoadError, find_user_error
from clip_lightning.models.open_clip import OpenCLIPImageTower
from clip_lightning.module import CLIPModule
from tests.helpers import compose_train, quiet_trainer
from tests.helpers.distributed import RankWeights, train_on_ranks
from tests.helpers.pretrained import (
    PRETRAINED_BIAS,
    PRETRAINED_SCALE,
    TINY_OPEN_CLIP,
    assert_one_step_trains_both_towers_and_the_scale,
    fit,
    open_clip_cfg,
    synthetic_overrides,
    write_open_clip_weights,
)

CAPTIONS = ["a red square on the left!", "two blue circles", "a large green triangle"]


@pytest.mark.parametrize(
    ("arch", "loss"), [("tiny-clip-test", "infonce"), ("tiny-sigmoid-test", "siglip")]
)
def test_pretrained_logit_scale_seeds_the_loss_and_one_step_trains(tmp_path, arch, loss):
    cfg = open_clip_cfg(tmp_path, arch, [f"loss={loss}"])
    model = instantiate(cfg.model)
    assert model.loss.logit_scale.item() == pytest.approx(PRETRAINED_SCALE)
    if loss == "siglip":
        assert model.loss.logit_bias.item() == pytest.approx(PRETRAINED_BIAS)
    weights = torch.load(cfg.model.pretrained)
    torch.testing.assert_close(
        model.image_encoder.model.conv1.weight, weights["visual.conv1.weight"]
    )
    assert_one_step_trains_both_towers_and_the_scale(model, cfg, tmp_path)


@pytest.mark.parametrize("arch", ["tiny-clip-test", "tiny-sigmoid-test"])
def test_towers_give_open_clips_own_embeddings(tmp_path, arch):
    cfg = open_clip_cfg(tmp_path, arch)
    model = instantiate(cfg.model).eval()
    reference, _, preprocess = open_clip.create_model_and_transforms(
        arch, pretrained=cfg.model.pretrained
    )
    reference.eval()
    images = [Image.new("RGB", (40, 36), (200, 30 * i, 90)) for i in range(3)]
    with torch.no_grad():
        expected_images = reference.encode_image(torch.stack([preprocess(i) for i in images]))
        expected_texts = reference.encode_text(open_clip.get_tokenizer(arch)(CAPTIONS))
    torch.testing.assert_close(
        model.image_encoder(model.image_encoder.preprocess(images)), expected_images
    )
    torch.testing.assert_close(
        model.encode_text(CAPTIONS), torch.nn.functional.normalize(expected_texts, dim=-1)
    )


def test_locked_image_and_last_text_layer_unlocked(tmp_path):
    cfg = open_clip_cfg(
        tmp_path,
        extra=[
            "model.image_encoder.freeze=true",
            "model.text_encoder.freeze=true",
            "model.text_encoder.unfreeze_last_layers=2",
        ],
    )
    model = instantiate(cfg.model)
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    text = model.text_encoder.model
    assert not text.token_embedding.weight.requires_grad
    assert not any(p.requires_grad for p in text.transformer.resblocks[0].parameters())
    # open_clip's groups: 1 = the projection, 2 = also the last block and the final LayerNorm
    assert all(p.requires_grad for p in text.transformer.resblocks[-1].parameters())
    assert text.ln_final.weight.requires_grad and text.text_projection.requires_grad
    model.train()
    assert not model.image_encoder.model.training
    frozen = {n: p.detach().clone() for n, p in model.image_encoder.named_parameters()}
    fit(model, cfg, tmp_path)
    for name, param in model.image_encoder.named_parameters():
        assert torch.equal(param, frozen[name]), name


def test_frozen_text_cache_equals_uncached_features_even_with_last_token_pooling(tmp_path):
    # SigLIP pools the last position: rows the cache trims of padding must be re-padded
    cfg = open_clip_cfg(
        tmp_path,
        "tiny-sigmoid-test",
        ["model.text_encoder.freeze=true", "model.text_encoder.cache=memory"],
    )
    model = instantiate(cfg.model).eval()
    tower = model.text_encoder
    tokens = tower.tokenize(CAPTIONS + CAPTIONS[:1])
    cached = tower(**tokens)
    torch.testing.assert_close(cached, tower.encode(**tokens))
    assert (tower.feature_cache.misses, tower.feature_cache.hits) == (3, 1)
    assert torch.equal(tower(**tokens), cached)


def test_cache_needs_a_fully_frozen_text_tower(tmp_path):
    cfg = open_clip_cfg(tmp_path, extra=["model.text_encoder.cache=memory"])
    assert "model.text_encoder.cache needs a fully frozen" in str(user_error(cfg))


def test_grad_cache_step_equals_full_batch_step(tmp_path):
    def one_step(extra: list[str], root) -> dict[str, torch.Tensor]:
        cfg = open_clip_cfg(
            root,
            extra=[
                "optimizer=sgd",
                "optimizer.lr=1.0",
                "optimizer.momentum=0.0",
                "model.tower_lr={image_encoder:1.0,text_encoder:1.0}",
                "model.clip_grad_norm=null",
                "model.scheduler=null",
                *extra,
            ],
        )
        L.seed_everything(0)
        model = instantiate(cfg.model)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        L.seed_everything(0)
        fit(model, cfg, root)
        return {n: p.detach() - before[n] for n, p in model.named_parameters()}

    full = one_step([], tmp_path / "full")
    chunked = one_step(["model.grad_cache_chunk_size=4"], tmp_path / "chunked")
    for name, delta in full.items():
        torch.testing.assert_close(chunked[name], delta, atol=2e-5, rtol=1e-4, msg=name)


def test_checkpoint_rebuilds_without_the_weights_file(tmp_path):
    cfg = open_clip_cfg(tmp_path)
    model = instantiate(cfg.model)
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=build_datamodule(cfg.dataset, model))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    (tmp_path / "tiny-clip-test.pt").unlink()
    reloaded = CLIPModule.load_from_checkpoint(tmp_path / "model.ckpt").eval()
    assert reloaded.hparams.image_encoder["pretrained"] is False
    model.eval()
    torch.testing.assert_close(reloaded.encode_text(CAPTIONS), model.encode_text(CAPTIONS))
    assert reloaded.loss.logit_scale.item() == pytest.approx(model.loss.logit_scale.item())


def test_the_module_builds_the_pair_once_and_hands_it_to_both_towers(tmp_path, monkeypatch):
    cfg = open_clip_cfg(tmp_path)
    built: list[torch.nn.Module] = []

    def create_model(*args, **kwargs):
        built.append(create(*args, **kwargs))
        return built[-1]

    create = open_clip.create_model
    monkeypatch.setattr(open_clip, "create_model", create_model)
    first, second = instantiate(cfg.model), instantiate(cfg.model)
    assert len(built) == 2  # one model per module, each shared by its two towers
    for model, pair in zip((first, second), built, strict=True):
        assert model.image_encoder.model is pair.visual
        assert model.text_encoder.model is pair.text
    tower = OpenCLIPImageTower("tiny-clip-test", pretrained=cfg.model.pretrained)
    assert len(built) == 3 and tower.model is built[2].visual  # on its own: its own model


def user_error(cfg) -> ModelLoadError:
    with pytest.raises(Exception) as err:
        instantiate(cfg.model)
    error = find_user_error(err.value)
    assert isinstance(error, ModelLoadError) and "\n" not in str(error)
    return error


def test_unknown_arch_and_missing_weights_are_one_line_errors(tmp_path):
    error = user_error(open_clip_cfg(tmp_path, extra=["model.arch=no-such-arch"]))
    assert "open_clip has no model 'no-such-arch'" in str(error)
    missing = tmp_path / "missing.pt"
    error = user_error(open_clip_cfg(tmp_path, extra=[f"model.pretrained={missing}"]))
    assert "offline, to a local weights file" in str(error)


@pytest.mark.parametrize(
    ("experiment", "arch", "loss"),
    [
        ("flickr30k_openclip_vitb32", "ViT-B-32", "InfoNCELoss"),
        ("coco_openclip_vitb32", "ViT-B-32", "InfoNCELoss"),
        ("flickr30k_siglip_lit", "ViT-B-16-SigLIP", "SigLIPLoss"),
    ],
)
def test_pretrained_experiments_start_from_a_validated_baseline(experiment, arch, loss):
    cfg = compose_train([f"experiment={experiment}"])
    assert cfg.model._target_.endswith("open_clip_module") and cfg.model.arch == arch
    assert cfg.loss._target_.endswith(loss) and cfg.validate_before_fit is True
    assert cfg.model.pretrained in open_clip.list_pretrained_tags_by_model(arch)
    assert cfg.scheduler.warmup > 0 and cfg.model.tower_lr.text_encoder <= 2e-5
    if experiment.startswith("flickr30k_openclip"):  # the report's Karpathy test protocol
        assert cfg.protocol.test == "flickr30k_1k"
    elif experiment.startswith("coco"):
        assert cfg.protocol.test == "coco_5k"


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    ("experiment", "extra"),
    [("flickr30k_openclip_vitb32", ["model.lora.r=4"]), ("flickr30k_siglip_lit", [])],
)
def test_pretrained_experiment_trains_under_ddp_with_identical_ranks(tmp_path, experiment, extra):
    # the open_clip run trains LoRA adapters: their gradients are synchronised like any other
    # the tiny model goes in as a local-dir, the way a model open_clip does not list is given
    arch = "tiny-sigmoid-test" if "siglip" in experiment else "tiny-clip-test"
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP[arch]}))
    write_open_clip_weights(arch, folder / "open_clip_model.pt")
    train_on_ranks(
        tmp_path,
        f"experiment={experiment}",
        f"model.arch=local-dir:{folder}",
        "model.pretrained=null",
        *synthetic_overrides(),
        "trainer=ddp_sim",
        "++trainer.max_steps=2",
        "++trainer.limit_val_batches=1",
        "test=false",
        "~callbacks.alignment_plots",
        "~callbacks.early_stopping",
        f"+callbacks.rank_weights._target_={RankWeights.__module__}.RankWeights",
        f"+callbacks.rank_weights.dirpath={tmp_path}",
        *extra,
    )
    ranks = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert ranks[0] == ranks[1]
    (metrics,) = [json.loads(p.read_text()) for p in (tmp_path / "logs").rglob("metrics.json")]
    assert "train/loss" in metrics and "val/rsum" in metrics
    if extra:  # adapters and the temperature only
        assert metrics["params/trainable"] < 0.2 * metrics["params/total"]
