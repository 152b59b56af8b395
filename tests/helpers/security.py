"""The crafted checkpoints of the security corpus (``tests/security``).

Each case is a real tiny checkpoint with one attack put into it: a carried file that writes
outside its folder, an interpolation Hydra or OmegaConf would resolve, a ``_target_`` that
would call something, a pickled object, an ``auto_map``, an oversized file. Every payload
aims at :attr:`Targets.canary` (a folder that must stay empty) or at the environment secret
:data:`SECRET` (which must never be printed).
"""

from __future__ import annotations

import copy
import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clip_lightning.models.carried_files import MAX_FILE_BYTES
from tests.helpers import TINY_RUN_OVERRIDES

# the smallest real model: timm's test ResNet at 32 px and a 1-layer, 32-wide BERT
SECURITY_OVERRIDES = [*TINY_RUN_OVERRIDES, "model.image_encoder.name=test_resnet"]
SECRET_ENV = "CLIP_LIGHTNING_TEST_SECRET"
SECRET = "sec-7f3a9c-never-printed"
ENV = f"${{oc.env:{SECRET_ENV}}}"


@dataclass(frozen=True)
class Targets:
    """Where the payloads aim: ``canary`` must stay empty; ``secret_file`` holds :data:`SECRET`
    and ``dropped`` is a pickle that runs code when loaded with ``weights_only=False``."""

    canary: Path
    secret_file: Path
    dropped: Path


class Payload:
    """Unpickled, creates a folder in the canary (what a ``__reduce__`` exploit would do)."""

    def __init__(self, folder: Path):
        self.folder = str(folder)

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.makedirs, (self.folder,)


Hparams = dict[str, Any]


def _copy_secret(targets: Targets) -> dict[str, Any]:
    return {
        "_target_": "shutil.copyfile",
        "src": str(targets.secret_file),
        "dst": str(targets.canary / "copied"),
    }


def _create(targets: Targets) -> str:
    return (
        f"${{oc.create:{{_target_: shutil.copyfile, src: {targets.secret_file}, "
        f"dst: {targets.canary / 'copied'}}}}}"
    )


def _text_files(hparams: Hparams) -> dict[str, bytes]:
    return hparams["text_encoder"]["saved_files"]


def _auto_map(hparams: Hparams, name: str) -> None:
    config = json.loads(_text_files(hparams)[name])
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    _text_files(hparams)[name] = json.dumps(config).encode()


# name -> (hparams, targets) -> None: one attack each, on a copy of a real checkpoint's
# hyper_parameters
HPARAM_CASES: dict[str, Callable[[Hparams, Targets], None]] = {
    "file_absolute": lambda h, t: _text_files(h).__setitem__(str(t.canary / "abs"), b"x"),
    "file_dotdot": lambda h, t: _text_files(h).__setitem__(
        "../" * 12 + str(t.canary / "up").lstrip("/"), b"x"
    ),
    "file_in_subfolder": lambda h, t: _text_files(h).__setitem__("sub/config.json", b"{}"),
    "file_parent_name": lambda h, t: _text_files(h).__setitem__("..", b"x"),
    "file_unknown_name": lambda h, t: _text_files(h).__setitem__("modeling_evil.py", b"x"),
    "file_oversized": lambda h, t: _text_files(h).__setitem__(
        "vocab.txt", b"x" * (MAX_FILE_BYTES + 1)
    ),
    "auto_map_config": lambda h, t: _auto_map(h, "config.json"),
    "auto_map_tokenizer": lambda h, t: _auto_map(h, "tokenizer_config.json"),
    "oc_create": lambda h, t: h["loss"].__setitem__("max_logit_scale", _create(t)),
    "oc_env": lambda h, t: h["loss"].__setitem__("max_logit_scale", ENV),
    "oc_select": lambda h, t: h["head"].__setitem__("dropout", f"${{oc.select:nope,{ENV}}}"),
    "oc_decode": lambda h, t: h["head"].__setitem__("dropout", f"${{oc.decode:'{ENV}'}}"),
    "custom_resolver": lambda h, t: h["image_encoder"].__setitem__(
        "name", f"${{package_path:{t.canary}}}"
    ),
    "unknown_resolver": lambda h, t: h["image_encoder"].__setitem__("name", "${evil:x}"),
    "interpolation_in_list": lambda h, t: h["optimizer"].__setitem__("betas", [0.9, ENV]),
    "interpolation_in_dict": lambda h, t: h["image_encoder"]["data_config"].__setitem__(
        "crop_mode", {"mode": ENV}
    ),
    "interpolation_in_key": lambda h, t: h.__setitem__("tower_lr", {ENV: 1.0}),
    "dropped_pickle_chain": lambda h, t: (
        _text_files(h).__setitem__("vocab.txt", t.dropped.read_bytes()),
        h["loss"].__setitem__(
            "max_logit_scale",
            f"${{oc.create:{{_target_: torch.load, f: {t.dropped}, weights_only: false}}}}",
        ),
    ),
    "target_foreign": lambda h, t: h.__setitem__("head", _copy_secret(t)),
    "target_nested": lambda h, t: h["image_encoder"].__setitem__("data_config", _copy_secret(t)),
    "target_in_list": lambda h, t: h["optimizer"].__setitem__("betas", [_copy_secret(t), 0.98]),
    "target_partial": lambda h, t: h["head"].__setitem__("_partial_", True),
    "target_args": lambda h, t: h["loss"].__setitem__("_args_", [str(t.canary)]),
    "timm_loading_option": lambda h, t: h["image_encoder"].__setitem__(
        "checkpoint_path", str(t.dropped)
    ),
    "pretrained_weights_file": lambda h, t: h["image_encoder"].update(
        pretrained=True, weights_file=str(t.dropped)
    ),
    "hub_model_name": lambda h, t: h["image_encoder"].__setitem__("name", "hf-hub:evil/model"),
    "no_carried_files": lambda h, t: h["text_encoder"].update(
        saved_files=None, name_or_path=str(t.canary)
    ),
    "wrong_type": lambda h, t: h.__setitem__("embed_dim", "32"),
    "tensor_setting": lambda h, t: h["head"].__setitem__("dropout", torch.tensor(0.1)),
}
# whole files rather than one setting
FILE_CASES = ("pickled_object", "plain_pickle")
CASES = (*HPARAM_CASES, *FILE_CASES)

_INTERPOLATION = "holds an OmegaConf interpolation"
# what each refusal names (the first check that stops the case)
REFUSED_FOR = {
    **dict.fromkeys(
        ("file_absolute", "file_dotdot", "file_in_subfolder", "file_parent_name"),
        "holds a file named",
    ),
    "file_unknown_name": "holds a file named 'modeling_evil.py'",
    "file_oversized": "over the 64 MiB a carried file may have",
    "auto_map_config": "['config.json'] holds an auto_map",
    "auto_map_tokenizer": "['tokenizer_config.json'] holds an auto_map",
    **dict.fromkeys(
        (
            "oc_create",
            "oc_env",
            "oc_select",
            "oc_decode",
            "custom_resolver",
            "unknown_resolver",
            "interpolation_in_list",
            "interpolation_in_dict",
            "interpolation_in_key",
            "dropped_pickle_chain",
        ),
        _INTERPOLATION,
    ),
    "target_foreign": "model.head._target_='shutil.copyfile' is not a class",
    "target_nested": "model.image_encoder.data_config._target_ is not accepted here",
    "target_in_list": "model.optimizer.betas[0]._target_ is not accepted here",
    "target_partial": "model.head._partial_ is only accepted in optimizer and scheduler",
    "target_args": "model.loss._args_ is not supported",
    "timm_loading_option": "model.image_encoder.checkpoint_path is an option of how timm",
    "pretrained_weights_file": "model.image_encoder.pretrained is set",
    "hub_model_name": "model.image_encoder.name names a model source",
    "no_carried_files": "model.text_encoder carries no saved_files",
    "wrong_type": "model.embed_dim must be an integer, got a string",
    "tensor_setting": "model.head.dropout must be plain data",
    "pickled_object": "holds pickled Python objects",
    "plain_pickle": "cannot read checkpoint",
}


def write_case(name: str, good: dict[str, Any], targets: Targets, path: Path) -> Path:
    """Write the crafted checkpoint ``name`` (from the real checkpoint ``good``) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if name == "plain_pickle":  # not a torch file at all: the exploit as a bare pickle
        path.write_bytes(pickle.dumps(Payload(targets.canary / "pickled")))
        return path
    # tensors shared with ``good``; the optimizer moments are left out to keep the corpus
    # small (every case is refused before they are read)
    state = {**good, "hyper_parameters": copy.deepcopy(good["hyper_parameters"])}
    state["optimizer_states"] = []
    if name == "pickled_object":
        state["callbacks"] = {"payload": Payload(targets.canary / "pickled")}
    else:
        HPARAM_CASES[name](state["hyper_parameters"], targets)
    torch.save(state, path)
    return path


def write_targets(root: Path) -> Targets:
    """An empty canary folder, a file holding :data:`SECRET`, and a dropped pickle payload."""
    canary = root / "canary"
    canary.mkdir(parents=True)
    secret_file = root / "secret.txt"
    secret_file.write_text(SECRET)
    dropped = root / "dropped.pkl"
    dropped.write_bytes(pickle.dumps(Payload(canary / "dropped")))
    return Targets(canary, secret_file, dropped)
