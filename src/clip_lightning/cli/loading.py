"""What the tasks load: a trained model from its checkpoint, the datamodule that matches a
model, and the device to run on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clip_lightning.data.datamodule import CaptionDataModule
from clip_lightning.data.streaming import WebDataModule
from clip_lightning.errors import CheckpointError, ConfigError
from clip_lightning.module import CLIPModule


def build_datamodule(
    cfg_dataset: DictConfig, model: CLIPModule
) -> CaptionDataModule | WebDataModule:
    """The ``dataset`` config group instantiated with the data-side facts of ``model``, so the
    image transforms and the tokenizer always match the encoders (training and evaluation)."""
    return instantiate(
        cfg_dataset,
        image_config=model.image_encoder.data_config,
        tokenizer=model.text_encoder.tokenizer,
        max_length=model.text_encoder.max_length,
    )


def load_model(ckpt_path: str | Path | None, device: torch.device | str = "cpu") -> CLIPModule:
    """Rebuild a trained :class:`CLIPModule` from its checkpoint alone, in eval mode.

    Raises :class:`CheckpointError` for a missing path, a file that is not a checkpoint, or a
    checkpoint of another model, naming the path and what to pass instead.
    """
    if not ckpt_path:
        raise CheckpointError(
            "no checkpoint given; pass ckpt_path=PATH, e.g. a .ckpt from the checkpoints/ "
            "folder of a `clip_lightning.train` run"
        )
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist; pass ckpt_path= a .ckpt from the "
            "checkpoints/ folder of a `clip_lightning.train` run"
        )
    # the loader itself turns an unreadable or foreign file into a one-line CheckpointError
    model = CLIPModule.load_from_checkpoint(path, map_location="cpu")
    return model.to(device).eval()


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes: the same checkpoint however it was copied or moved."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_inference_model(cfg: DictConfig) -> tuple[CLIPModule, dict[str, str]]:
    """The model of ``ckpt_path=`` (a trained checkpoint) or of the ``model`` group (a
    pretrained pair such as ``model=open_clip``), and what identifies it: ``model`` (the
    checkpoint's SHA-256, or a digest of the resolved model config) and ``checkpoint``."""
    if cfg.get("ckpt_path"):
        model = load_model(cfg.ckpt_path)
        path = Path(cfg.ckpt_path).expanduser().resolve()
        return model, {"model": f"sha256:{file_digest(path)}", "checkpoint": str(path)}
    if cfg.get("model") is None:
        raise ConfigError(
            "no model given; pass ckpt_path=CKPT (a trained model) or a pretrained pair, e.g. "
            "model=open_clip model.arch=ViT-B-32 model.pretrained=laion2b_s34b_b79k"
        )
    config = OmegaConf.to_container(cfg.model, resolve=True)
    text = json.dumps(config, sort_keys=True, default=str)
    model = instantiate(cfg.model).eval()
    return model, {"model": f"config:{hashlib.sha256(text.encode()).hexdigest()[:16]}"}


def resolve_device(accelerator: str) -> torch.device:
    """A Lightning ``accelerator`` name as a torch device: ``auto`` picks the GPU when there is
    one, ``gpu`` is CUDA, anything else (``cpu``, ``cuda``, ``mps``) is passed on."""
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda" if accelerator == "gpu" else accelerator)
