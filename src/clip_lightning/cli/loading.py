"""What the tasks load: a trained model from its checkpoint (or only its weights into a new
model), the datamodule that matches a model, and the device to run on."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from clip_lightning.checkpoints import (
    describe_mismatch,
    require_checkpoint_file,
    weight_shaping_settings,
)
from clip_lightning.data.datamodule import CaptionDataModule
from clip_lightning.data.interface import DataModule
from clip_lightning.data.streaming import WebDataModule
from clip_lightning.errors import CheckpointError
from clip_lightning.module import CLIPModule


def build_datamodule(cfg_dataset: DictConfig, model: CLIPModule) -> DataModule:
    """The ``dataset`` config group instantiated with the data-side facts of ``model``."""
    datamodule: CaptionDataModule | WebDataModule = instantiate(cfg_dataset)
    use_model(datamodule, model)
    return datamodule


def use_model(datamodule: DataModule, model: CLIPModule) -> None:
    """Give ``datamodule`` the data-side facts of ``model``, so the image transforms and the
    tokenizer always match the encoders (training and evaluation)."""
    datamodule.use_model(
        model.image_encoder.data_config,
        model.text_encoder.tokenizer,
        model.text_encoder.max_length,
    )


def load_model(ckpt_path: str | Path | None, device: torch.device | str = "cpu") -> CLIPModule:
    """Rebuild a trained :class:`CLIPModule` from its checkpoint alone, in eval mode.

    Raises :class:`CheckpointError` for a missing path, a file that is not a checkpoint, or a
    checkpoint of another model, naming the path and what to pass instead.
    """
    # the loader itself turns an unreadable or foreign file into a one-line CheckpointError
    model = CLIPModule.load_from_checkpoint(checkpoint_file(ckpt_path), map_location="cpu")
    return model.to(device).eval()


def checkpoint_file(ckpt_path: str | Path | None) -> Path:
    """``ckpt_path`` as an existing file, or a one-line :class:`CheckpointError`."""
    if not ckpt_path:
        raise CheckpointError(
            "no checkpoint given; pass ckpt_path=PATH, e.g. a .ckpt from the checkpoints/ "
            "folder of a `clip_lightning.train` run"
        )
    return require_checkpoint_file(Path(ckpt_path).expanduser())


def load_init_model(ckpt_path: str | Path) -> CLIPModule:
    """The model of ``init_from=``, read by :func:`load_model` (before the run builds its own,
    so a bad file fails first)."""
    require_checkpoint_file(Path(ckpt_path).expanduser(), key="init_from")
    return load_model(ckpt_path)


def load_weights(model: CLIPModule, source: CLIPModule, ckpt_path: str | Path) -> None:
    """Copy the weights of ``source`` (:func:`load_init_model` of ``ckpt_path``) into ``model``
    (``init_from=``): only the weights, so optimizer, schedule and step count start afresh.

    Weights that do not fit ``model`` are one :class:`CheckpointError` naming the first
    setting that differs.
    """
    problem = describe_mismatch(
        weight_shaping_settings(source.hparams),
        weight_shaping_settings(model.hparams),
        source.state_dict(),
        model.state_dict(),
    )
    if problem is not None:
        raise CheckpointError(
            f"init_from={ckpt_path} does not fit this model: {problem}; set the model options "
            "of the checkpoint's run (its .hydra/config.yaml), or drop init_from"
        )
    model.load_state_dict(source.state_dict())


def resolve_device(accelerator: str) -> torch.device:
    """A Lightning ``accelerator`` name as a torch device: ``auto`` picks the GPU when there is
    one, ``gpu`` is CUDA, anything else (``cpu``, ``cuda``, ``mps``) is passed on."""
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda" if accelerator == "gpu" else accelerator)
