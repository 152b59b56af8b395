"""Reading checkpoints as data: the one place a ``.ckpt`` file is read, and the one place a
file that cannot be read becomes a one-line :class:`~clip_lightning.errors.CheckpointError`.

A checkpoint may come from anywhere (a colleague, a download), so reading one must not run code
or reveal anything about the machine:

* the file is unpickled with ``weights_only=True``
  (:func:`~clip_lightning.utils.torch_io.read_torch_file`): tensors and plain containers only,
  no class is imported or called (a pickled object is refused);
* :func:`read_checkpoint` refuses any string holding an OmegaConf interpolation (``${...}``):
  nothing in a checkpoint is ever resolved, so ``${oc.env:...}`` or ``${oc.create:...}`` can
  only be a crafted file;
* :func:`model_arguments` checks the saved model settings as a config is checked before it is
  built (:mod:`clip_lightning.models.targets`: registered classes only, arguments of their
  declared types, carried files a closed set), and that each tower rebuilds from the
  checkpoint alone: no pretrained weights, no hub or folder model name, its config and
  tokenizer files carried.

Every reader goes through these: ``CLIPModule.load_from_checkpoint``, ``eval``, ``search``,
``export``, resuming ``train`` and Lightning's own restore (:class:`~.plugins.AtomicCheckpointIO`).
"""

from __future__ import annotations

import inspect
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from clip_lightning.errors import CheckpointError, ConfigError
from clip_lightning.models.targets import check_arguments, lookup
from clip_lightning.utils.torch_io import read_torch_file

#: The module settings that are towers, rebuilt from the checkpoint alone.
TOWERS = ("image_encoder", "text_encoder")
#: What a checkpoint needs to continue training, not only to rebuild the model.
TRAINING_STATE = ("state_dict", "hyper_parameters", "optimizer_states", "loops")


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint at ``path`` as data; a one-line :class:`CheckpointError` when it is
    unreadable, not a Lightning checkpoint, or holds an interpolation."""
    shown = repr(str(path))
    try:
        state = read_torch_file(Path(path).expanduser())
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise _unreadable(shown, exc) from exc
        raise CheckpointError(
            f"checkpoint {shown} holds pickled Python objects, not only tensors and plain "
            "data; loading them would run code, so it is refused: pass a .ckpt written by "
            "clip_lightning.train"
        ) from exc
    except Exception as exc:  # truncated zip, not a torch file, a directory: many types
        raise _unreadable(shown, exc) from exc
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{shown} holds a {type(state).__name__}, not a Lightning checkpoint; pass a .ckpt "
            "written by clip_lightning.train"
        )
    found = _interpolation(state, "")
    if found is not None:
        raise CheckpointError(
            f"checkpoint {shown} holds an OmegaConf interpolation ('${{...}}') at {found}; a "
            "checkpoint is data and is never resolved, and clip_lightning.train never writes "
            "one: this file was altered, load only checkpoints from runs you trust"
        )
    return state


def _unreadable(shown: str, exc: BaseException) -> CheckpointError:
    detail = (str(exc).strip().splitlines() or ["no detail"])[0][:200]
    return CheckpointError(
        f"cannot read checkpoint {shown} ({type(exc).__name__}: {detail}); it is truncated or "
        "not a clip-lightning checkpoint: pass a .ckpt written by clip_lightning.train"
    )


def _interpolation(value: Any, where: str) -> str | None:
    """Where the first string holding ``${`` sits in ``value`` (e.g. ``hyper_parameters.head``),
    or None. Tensors are skipped; only the location is reported, never the string."""
    if isinstance(value, str):
        return where or "the top level" if "${" in value else None
    if isinstance(value, Mapping):
        for name, item in value.items():
            label = _label(name)
            if isinstance(name, str) and "${" in name:
                return f"{where}.<a key>" if where else "<a key>"
            found = _interpolation(item, f"{where}.{label}" if where else label)
            if found is not None:
                return found
    elif isinstance(value, list | tuple | set):
        for index, item in enumerate(value):
            found = _interpolation(item, f"{where}[{index}]")
            if found is not None:
                return found
    return None


def _label(name: Any) -> str:
    text = str(name)
    return text if len(text) <= 40 and text.isprintable() else "<a key>"


def model_arguments(
    state: Mapping[str, Any], path: str | os.PathLike[str], model_class: Callable[..., Any]
) -> dict[str, Any]:
    """The saved ``hyper_parameters`` of a checkpoint read by :func:`read_checkpoint`, checked
    as the arguments of ``model_class`` (a :class:`~clip_lightning.module.CLIPModule`).

    Settings the class no longer takes are dropped (as Lightning does). A tower's feature-cache
    folder is replaced by ``memory``: where a training run kept its cache is not for a file to
    say. Raises a one-line :class:`CheckpointError` naming the first setting that is refused.
    """
    shown = repr(str(path))
    hparams, weights = state.get("hyper_parameters"), state.get("state_dict")
    if not isinstance(hparams, dict) or not isinstance(weights, dict):
        raise CheckpointError(
            f"{shown} has no model settings and weights (hyper_parameters, state_dict): it is "
            "not a clip-lightning checkpoint; pass a .ckpt written by clip_lightning.train"
        )
    if not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise CheckpointError(f"{shown}: its state_dict holds values that are not tensors")
    taken = inspect.signature(model_class).parameters
    arguments = {k: v for k, v in hparams.items() if k in taken}
    try:
        check_arguments(model_class, arguments, "model")
        for name in TOWERS:
            if isinstance(arguments.get(name), Mapping):
                arguments[name] = _portable_tower(arguments[name], f"model.{name}")
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {shown} is refused: {exc}") from exc
    return arguments


def _portable_tower(config: Mapping[str, Any], key: str) -> dict[str, Any]:
    """A tower's saved config, which must rebuild it from the checkpoint alone."""
    if config.get("pretrained"):
        raise ConfigError(
            f"{key}.pretrained is set, but a checkpoint carries its own weights and never "
            "loads pretrained ones"
        )
    for name in ("name", "arch"):  # timm's and open_clip's model name
        if ":" in str(config.get(name, "")):
            raise ConfigError(
                f"{key}.{name} names a model source (hf-hub:, local-dir:) that would be fetched "
                "or read; a checkpoint rebuilds built-in architectures only"
            )
    takes = inspect.signature(lookup(config["_target_"], key)).parameters
    if "saved_files" in takes and config.get("saved_files") is None:
        raise ConfigError(
            f"{key} carries no saved_files: a checkpoint rebuilds this tower from the config "
            "and tokenizer files it carries, never from a folder or hub id it names"
        )
    if config.get("cache") not in (None, "memory"):
        return {**config, "cache": "memory"}
    return dict(config)


def read_training_checkpoint(
    path: str | os.PathLike[str], model_class: Callable[..., Any]
) -> dict[str, Any]:
    """A checkpoint to resume training from: read and its settings checked as for loading it
    (:func:`model_arguments`); one without the training state is refused too."""
    state = read_checkpoint(path)
    model_arguments(state, path, model_class)
    missing = [key for key in TRAINING_STATE if key not in state]
    if missing:
        raise CheckpointError(
            f"{str(path)!r} has no {', '.join(missing)}, so training cannot continue from "
            "it; resume from a full checkpoint such as checkpoints/last.ckpt (eval and search "
            "take any checkpoint)"
        )
    return state
