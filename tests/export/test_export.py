"""Export round trips: the folder written by ``clip_lightning.export`` loads in open_clip
(local-dir) or transformers and gives the checkpoint's embeddings to 1e-5; models a format
cannot represent are refused with one line; the model card carries the run's recall table."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import huggingface_hub
import open_clip
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from transformers import AutoModel, AutoProcessor, AutoTokenizer

from clip_lightning.cli.export import export
from clip_lightning.cli.loading import build_datamodule
from clip_lightning.export import ExportError, export_model
from clip_lightning.export.model_card import read_metrics
from clip_lightning.module import CLIPModule
from clip_lightning.utils.config import register_resolvers
from tests.helpers import CONFIG_DIR, TINY_TRAIN_OVERRIDES, compose_train, quiet_trainer
from tests.helpers.pretrained import hf_clip_cfg, open_clip_cfg

CAPTIONS = ["a red square on the left", "two blue circles", "a large green triangle and a dot"]
IMAGES = [Image.new("RGB", (32, 32), (200, 40 * i, 90)) for i in range(3)]


def trained(cfg, tmp_path, steps: int = 1) -> CLIPModule:
    """The model of ``cfg`` after an optimizer step (so nothing is at its init)."""
    model = instantiate(cfg.model)
    trainer = quiet_trainer(tmp_path, max_steps=steps, limit_val_batches=0)
    trainer.fit(model, datamodule=build_datamodule(cfg.dataset, model))
    return model.eval()


def reloaded(model: CLIPModule, tmp_path) -> CLIPModule:
    """``model`` saved to a checkpoint and rebuilt from it, as the export entry point does."""
    trainer = quiet_trainer(tmp_path, max_steps=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "saved.ckpt")
    return CLIPModule.load_from_checkpoint(tmp_path / "saved.ckpt").eval()


def assert_open_clip_round_trip(model: CLIPModule, out) -> None:
    """The folder ``out`` (or an ``hf-hub:`` name) loaded by open_clip gives ``model``'s
    embeddings."""
    name = out if str(out).startswith("hf-hub:") else f"local-dir:{out}"
    loaded, _, preprocess = open_clip.create_model_and_transforms(name)
    tokenizer = open_clip.get_tokenizer(name)
    loaded.eval()
    pixels = torch.stack([preprocess(image) for image in IMAGES])
    with torch.no_grad():
        images = F.normalize(loaded.encode_image(pixels), dim=-1)
        texts = F.normalize(loaded.encode_text(tokenizer(CAPTIONS)), dim=-1)
    torch.testing.assert_close(images, model.embed_images(pixels), atol=1e-5, rtol=0)
    torch.testing.assert_close(texts, model.encode_text(CAPTIONS), atol=1e-5, rtol=0)
    assert loaded.logit_scale.item() == pytest.approx(model.loss.logit_scale.item())


@pytest.mark.parametrize(
    ("arch", "loss"), [("tiny-clip-test", "infonce"), ("tiny-sigmoid-test", "siglip")]
)
def test_open_clip_model_round_trips_through_local_dir(tmp_path, arch, loss):
    model = trained(open_clip_cfg(tmp_path, arch, [f"loss={loss}"]), tmp_path)
    export_model(model, tmp_path / "out", "open_clip")
    assert_open_clip_round_trip(model, tmp_path / "out")
    # the same preprocessing: open_clip's transform is the tower's own
    torch.testing.assert_close(
        model.encode_image(IMAGES),
        model.embed_images(torch.stack([model.image_encoder.transform()(i) for i in IMAGES])),
    )
    if loss == "siglip":
        loaded = open_clip.create_model(f"local-dir:{tmp_path / 'out'}")
        assert loaded.logit_bias.item() == pytest.approx(model.loss.logit_bias.item())


def test_timm_and_hf_text_model_round_trips_as_custom_text_clip(tmp_path):
    # quickstart towers (timm ResNet-18 + MiniLM) with linear heads
    cfg = compose_train([*TINY_TRAIN_OVERRIDES, "model/head=linear"], output_dir=tmp_path)
    model = reloaded(trained(cfg, tmp_path), tmp_path)
    with pytest.raises(ExportError, match=r"crop_pct=0\.95") as err:
        export_model(model, tmp_path / "refused", "open_clip")
    assert "\n" not in str(err.value) and not (tmp_path / "refused").exists()
    export_model(model, tmp_path / "out", "open_clip", ignore_crop_pct=True)
    config = json.loads((tmp_path / "out" / "open_clip_config.json").read_text())["model_cfg"]
    assert config["vision_cfg"]["timm_model_name"] == "resnet18"
    assert config["text_cfg"]["hf_pooler_type"] == "mean_pooler"
    assert_open_clip_round_trip(model, tmp_path / "out")


def test_mlp_head_is_refused_in_one_line(tmp_path):
    model = instantiate(compose_train(TINY_TRAIN_OVERRIDES, output_dir=tmp_path).model)
    with pytest.raises(ExportError, match="the image head is a MLPHead, which open_clip") as err:
        export_model(model, tmp_path / "out", "open_clip")
    assert "\n" not in str(err.value)
    with pytest.raises(ExportError, match="format=open_clip takes model=open_clip models and"):
        export_model(model, tmp_path / "out", "hf")


@pytest.mark.parametrize(("kind", "loss"), [("clip", "infonce"), ("siglip", "siglip")])
def test_hf_clip_model_round_trips_through_from_pretrained(tmp_path, kind, loss):
    cfg = hf_clip_cfg(tmp_path, kind, [f"loss={loss}"])
    model = reloaded(trained(cfg, tmp_path), tmp_path)
    shutil.rmtree(cfg.model.name_or_path)  # the checkpoint alone is enough
    export_model(model, tmp_path / "out", "hf")
    loaded = AutoModel.from_pretrained(tmp_path / "out").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    padding = "max_length" if kind == "siglip" else "longest"
    tokens = tokenizer(CAPTIONS, padding=padding, max_length=24, return_tensors="pt")
    if kind == "siglip":
        tokens.pop("attention_mask")
    with torch.no_grad():
        pixels = processor(images=IMAGES, return_tensors="pt")["pixel_values"]
        images = F.normalize(loaded.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        texts = F.normalize(loaded.get_text_features(**tokens).pooler_output, dim=-1)
    torch.testing.assert_close(images, model.encode_image(IMAGES), atol=1e-5, rtol=0)
    torch.testing.assert_close(texts, model.encode_text(CAPTIONS), atol=1e-5, rtol=0)
    assert loaded.logit_scale.item() == pytest.approx(model.loss.logit_scale.item())


def test_export_entry_writes_a_model_card_with_the_runs_recall_table(tmp_path):
    cfg = open_clip_cfg(tmp_path)
    model = trained(cfg, tmp_path)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(
        "dataset:\n  name: synthetic\n  format: synthetic\nprotocol:\n  test: coco_5k\n"
    )
    metrics = {
        "test/i2t_r1": 12.5,
        "test/i2t_r5": 50.0,
        "test/i2t_r10": 75.0,
        "test/t2i_r1": 25.0,
        "test/t2i_r5": 62.5,
        "test/t2i_r10": 87.5,
        "test/rsum": 312.5,
        "test/images": 5000.0,
        "test/captions": 25010.0,
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    trainer = quiet_trainer(tmp_path, max_steps=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(run / "checkpoints" / "last.ckpt")
    register_resolvers()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        export_cfg = compose(
            "export", [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"out={tmp_path / 'out'}"]
        )
    result = export(export_cfg)
    assert result["max_embedding_difference"] < 1e-5
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| image → text | 12.50 | 50.00 | 75.00 |" in card
    assert "| text → image | 25.00 | 62.50 | 87.50 |" in card
    assert "name: synthetic, format: synthetic" in card
    assert "protocol coco_5k, test split: 5000 images, 25010 captions, RSUM 312.50" in card
    assert 'create_model_and_transforms("local-dir:' in card
    with pytest.raises(ExportError, match="exists and is not empty"):
        export(export_cfg)


def fake_hub_repo(cache: Path, repo_id: str, files: Path) -> None:
    """``repo_id`` as the hub cache of a machine that downloaded it holds it: the files of the
    folder ``files`` in a snapshot that ``refs/main`` names (what offline loading reads)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(files, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def hub_text_model(tmp_path: Path, monkeypatch) -> Path:
    """A hub cache under ``tmp_path`` (made the process's) holding ``clip-lightning/tiny-bert``:
    the offline MiniLM's tokenizer with a one-layer config."""
    cache = tmp_path / "hub"
    files = tmp_path / "tiny-bert"
    minilm = Path(compose_train(["experiment=quickstart"]).model.text_encoder.name_or_path)
    files.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm / name, files / name)
    config = json.loads((minilm / "config.json").read_text())
    (files / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    fake_hub_repo(cache, "clip-lightning/tiny-bert", files)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_open_clip_export_of_a_hub_text_tower_loads_after_moving(tmp_path, monkeypatch):
    hub_text_model(tmp_path, monkeypatch)
    overrides = [o for o in TINY_TRAIN_OVERRIDES if "config_overrides" not in o]
    cfg = compose_train(
        [
            *overrides,
            "model/head=linear",
            "model.text_encoder.name_or_path=clip-lightning/tiny-bert",
            "model.text_encoder.pretrained=false",
        ]
    )
    model = instantiate(cfg.model).eval()
    export_model(model, tmp_path / "out", "open_clip", ignore_crop_pct=True)
    text_cfg = json.loads((tmp_path / "out" / "open_clip_config.json").read_text())["model_cfg"]
    assert text_cfg["text_cfg"]["hf_model_name"] == "clip-lightning/tiny-bert"
    moved = shutil.move(tmp_path / "out", tmp_path / "elsewhere" / "my-clip")
    assert str(tmp_path / "out") not in "".join(p.read_text() for p in moved.glob("*.json"))
    assert_open_clip_round_trip(model, moved)
    # every file as readable as any new file (safetensors writes its own owner-only)
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in moved.iterdir()} == {
        p.name: 0o666 & ~umask for p in moved.iterdir()
    }


def test_open_clip_export_of_a_local_text_tower_loads_from_its_hub_repository(
    tmp_path, monkeypatch
):
    cache = hub_text_model(tmp_path, monkeypatch)  # the hub cache an upload lands in
    cfg = compose_train([*TINY_TRAIN_OVERRIDES, "model/head=linear"])  # a local one-layer MiniLM
    model = instantiate(cfg.model).eval()
    export_model(model, tmp_path / "out", "open_clip", ignore_crop_pct=True, hub_repo="me/my-clip")
    card = (tmp_path / "out" / "README.md").read_text()
    assert 'create_model_and_transforms("hf-hub:me/my-clip")' in card
    assert "loads anywhere as hf-hub:me/my-clip" in card
    # uploaded (as push_to_hub does), the folder alone serves the model from the hub
    fake_hub_repo(cache, "me/my-clip", tmp_path / "out")
    shutil.rmtree(tmp_path / "out")
    assert_open_clip_round_trip(model, "hf-hub:me/my-clip")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"test/i2t_r1": "abc"}', "'test/i2t_r1' is 'abc', not a number"),
        ("[1, 2]", "holds list, not an object"),
        ('{"test/i2t_r1": 1', "is not readable JSON"),
    ],
)
def test_a_model_card_refuses_a_metrics_file_that_is_not_numbers(tmp_path, content, problem):
    """A run's metrics.json that is not an object of numbers stops the export in one line that
    names the file and the fix (the card never shows a table it cannot vouch for)."""
    path = tmp_path / "metrics.json"
    path.write_text(content)
    with pytest.raises(ExportError, match=problem) as raised:
        read_metrics(path)
    assert f"fix {path} or move it away" in str(raised.value)
    path.write_text('{"test/i2t_r1": 12.5, "test/rsum": NaN}')
    assert read_metrics(path)["test/i2t_r1"] == 12.5
