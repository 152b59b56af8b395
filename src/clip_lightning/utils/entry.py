"""What the entry points (train, eval, search) share: loading a trained model, building the
datamodule that matches it, picking a device, and reporting user errors as one line."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from clip_lightning.data.datamodule import CaptionDataModule
from clip_lightning.errors import CheckpointError, ClipLightningError, find_user_error
from clip_lightning.module import CLIPModule

log = logging.getLogger(__name__)
Result = TypeVar("Result")


def exit_on_user_error(task: Callable[[DictConfig], Result]) -> Callable[[DictConfig], Result]:
    """Wrap a Hydra task function: a :class:`ClipLightningError` is logged as one line and the
    process exits with status 1, instead of a stack trace the user has to read through.

    In a multirun the error is re-raised so the sweeper records the failed job.
    Apply it *below* ``@hydra.main`` so ``HydraConfig`` is set when it runs.
    """

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Result:
        try:
            return task(cfg)
        except Exception as exc:
            user_error = find_user_error(exc)  # Hydra's instantiate wraps it
            if user_error is None:
                raise
            log.error("%s", user_error)
            if HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN":
                raise
            sys.exit(1)

    return wrapper


def build_datamodule(cfg_dataset: DictConfig, model: CLIPModule) -> CaptionDataModule:
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
    try:
        model = CLIPModule.load_from_checkpoint(path, map_location="cpu")
    except ClipLightningError:
        raise
    except Exception as exc:  # unpickling and state-dict errors come in many types
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        raise CheckpointError(
            f"{str(path)!r} is not a clip-lightning CLIPModule checkpoint "
            f"({type(exc).__name__}: {detail}); pass ckpt_path= a .ckpt written by "
            "`clip_lightning.train`"
        ) from exc
    return model.to(device).eval()


def resolve_device(name: str) -> torch.device:
    """``auto`` picks the GPU when there is one; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_dir(cfg: DictConfig) -> Path:
    """The run directory (Hydra's output dir), created if a caller composed the config itself."""
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path
