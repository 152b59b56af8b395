"""What the project reads back besides a checkpoint's model is data too: a run directory's
W&B id, a text-feature cache, a search index manifest, the carried files written out for a
tokenizer, a checkpoint's feature-cache folder."""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from PIL import Image

from clip_lightning.checkpoints import WANDB_ID_FILE, read_wandb_id, write_wandb_id
from clip_lightning.cli.loading import load_model
from clip_lightning.cli.task import run_task
from clip_lightning.cli.train import train
from clip_lightning.errors import CheckpointError, ModelLoadError
from clip_lightning.indexing.folder import EMBEDDINGS, MANIFEST, build_folder_index
from clip_lightning.models.carried_files import written_out
from clip_lightning.models.text_cache import TextFeatureCache
from clip_lightning.module import CLIPModule
from tests.helpers import compose_task
from tests.helpers.security import SECRET, SECURITY_OVERRIDES, Payload, Targets

# the worker of the corpus, whose real checkpoint (a session fixture) these tests share


def test_a_wandb_id_file_is_read_only_when_it_holds_an_id(tmp_path: Path, targets: Targets):
    write_wandb_id(tmp_path, "a1b2c3d4")
    assert read_wandb_id(tmp_path) == "a1b2c3d4"
    (tmp_path / WANDB_ID_FILE).write_text(f"not an id: {SECRET}\n")
    with pytest.raises(CheckpointError, match="does not hold a W&B run id") as raised:
        read_wandb_id(tmp_path)
    assert SECRET not in str(raised.value)
    (tmp_path / WANDB_ID_FILE).write_text("x" * 200)
    with pytest.raises(CheckpointError, match="is not a small file"):
        read_wandb_id(tmp_path)
    assert read_wandb_id(tmp_path / "elsewhere") is None


def test_resume_refuses_a_wandb_id_that_links_elsewhere(
    good_checkpoint: Path, targets: Targets, tmp_path: Path, caplog, capsys
) -> None:
    """A run directory whose W&B id is a link to a secret (its content an id-like string)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(good_checkpoint, run / "checkpoints" / "last.ckpt")
    (run / WANDB_ID_FILE).symlink_to(targets.secret_file)
    cfg = compose_task("train", SECURITY_OVERRIDES, output_dir=tmp_path / "resumed")
    with open_dict(cfg):
        cfg.resume_dir = str(run)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exited:
        run_task(train, cfg, "train")
    assert exited.value.code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"{WANDB_ID_FILE}' is a link" in errors[0]
    printed = capsys.readouterr()
    assert SECRET not in errors[0] + printed.out + printed.err
    assert not (tmp_path / "resumed" / "checkpoints").exists()


def test_a_checkpoints_feature_cache_folder_is_not_used(
    good_checkpoint: Path, targets: Targets, tmp_path: Path
) -> None:
    state = torch.load(good_checkpoint, map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["text_encoder"]["cache"] == "memory"
    crafted = copy.deepcopy(state)
    crafted["hyper_parameters"]["text_encoder"]["cache"] = str(targets.canary)
    torch.save(crafted, tmp_path / "cache-folder.ckpt")
    model = CLIPModule.load_from_checkpoint(tmp_path / "cache-folder.ckpt")
    model.encode_text(["a red square"])  # fills the cache
    cache = model.text_encoder.feature_cache
    assert cache is not None and cache.path is None and len(cache) == 1
    assert not model.text_encoder.save_feature_cache()
    assert not list(targets.canary.iterdir())


def test_a_text_feature_cache_that_is_not_one_is_refused(tmp_path: Path, targets: Targets):
    fingerprint = {"weights": "abc"}
    good = TextFeatureCache(tmp_path / "good.pt", fingerprint)
    good.features = {b"\x01": torch.ones(4)}
    good._unsaved = 1
    assert good.save() and len(TextFeatureCache(tmp_path / "good.pt", fingerprint)) == 1
    torch.save({"fingerprint": fingerprint, "keys": [b"\x01"], "features": "x"}, tmp_path / "a")
    (tmp_path / "b").write_bytes(pickle.dumps(Payload(targets.canary / "cache")))
    torch.save({"payload": Payload(targets.canary / "cache")}, tmp_path / "c")
    for name in ("a", "b", "c"):
        with pytest.raises(ModelLoadError, match="is not a cache clip-lightning wrote"):
            TextFeatureCache(tmp_path / name, fingerprint)
    assert not list(targets.canary.iterdir())


def test_carried_files_are_written_into_a_private_folder_removed_afterwards() -> None:
    with written_out({"vocab.txt": b"[PAD]\n"}, "model.text_encoder.saved_files") as folder:
        assert os.stat(folder).st_mode & 0o777 == 0o700
        assert os.listdir(folder) == ["vocab.txt"]
        assert os.stat(os.path.join(folder, "vocab.txt")).st_mode & 0o777 == 0o600
    assert not os.path.exists(folder)


def test_a_search_manifest_naming_a_file_outside_the_folder_is_not_reused(
    good_checkpoint: Path, targets: Targets, tmp_path: Path
) -> None:
    folder, cache = tmp_path / "images", tmp_path / "cache"
    folder.mkdir()
    for name, color in (("red.png", "red"), ("blue.png", "blue")):
        Image.new("RGB", (32, 32), color).save(folder / name)
    model = load_model(good_checkpoint)
    first = build_folder_index(model, folder, "fp", cache)
    (index,) = [p.parent for p in cache.rglob(MANIFEST)]
    manifest = json.loads((index / MANIFEST).read_text())
    manifest["files"] = ["blue.png", f"../{targets.secret_file.name}"]
    (index / MANIFEST).write_text(json.dumps(manifest))
    again = build_folder_index(model, folder, "fp", cache)
    assert not again.reused and again.files == first.files == ["blue.png", "red.png"]
    np.testing.assert_allclose(again.embeddings, np.load(index / EMBEDDINGS), atol=1e-6)
