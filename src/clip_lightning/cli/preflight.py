"""One check of a run before anything is built: hardware, hub access, model files, data.

Without it a run finds its problems one at a time, each after a model was built: offline, the
ResNet-50 weights fail after a minute of hub retries, the next run stops on DistilBERT, the
third on the data; ``trainer=gpu`` on a CPU machine is Lightning's raw exception after 20 s.
:func:`preflight` looks at everything first -- the accelerator and devices, whether the hub is
reachable (one probe, see :mod:`clip_lightning.utils.hub`), whether each file the model needs
is local or cached, and the data -- and raises one error listing every problem with its fix.
Settings that work but do something the user may not expect (16-bit autocast on a CPU, several
CPU processes) are said in one line each.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
import timm
import torch
from lightning.fabric.accelerators import CUDAAccelerator, MPSAccelerator, XLAAccelerator
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from clip_lightning.data.formats.common import ACCEPTED_LAYOUTS
from clip_lightning.data.loader_settings import available_cores
from clip_lightning.errors import ClipLightningError, find_user_error
from clip_lightning.utils.hub import cached_dataset, cached_file, offline_reason

log = logging.getLogger(__name__)

WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)
# what `train` adds to a list of missing things (eval takes no experiment=)
QUICKSTART_HINT = "or run experiment=quickstart, which trains offline with nothing to download"


@dataclass(frozen=True)
class HubFile:
    """Something the run would fetch from the hub: what it is, whether it is cached, the fix."""

    what: str
    cached: bool
    fix: str
    data: bool = False


def preflight(
    cfg: DictConfig,
    datamodule: Any = None,
    splits: Sequence[str] = (),
    hint: str | None = None,
    train: bool = True,
) -> None:
    """Check ``cfg``'s hardware and model files and the data of ``datamodule``; raise one
    :class:`ClipLightningError` naming every problem with its fix.

    ``splits`` are the evaluation splits the run uses: each needs a source; ``train`` false
    (evaluating) needs no training data. The data is fully
    checked (every image decoded, see ``CaptionDataModule.load_splits``) only when nothing
    else is wrong, so a missing model file is reported at once, not after minutes of
    decoding. ``hint`` ends the message when model files are missing (e.g.
    :data:`QUICKSTART_HINT`).
    """
    hardware = hardware_problems(cfg.get("trainer"))
    needed = hub_files(cfg, data=datamodule is not None)
    offline = offline_reason() if needed else None
    missing = [f for f in needed if not f.cached] if offline else []
    absent = [f"{f.what}, not on this machine: {f.fix}" for f in missing]
    absent += local_model_problems(cfg.get("model"))
    downloads = bool(absent)  # what the hint's offline run would do without
    if datamodule is not None and not any(f.data for f in missing):
        absent += data_problems(datamodule, splits, full=not (hardware or absent), train=train)
    problems = hardware + absent
    if not problems:
        return
    why = f" ({offline})" if missing else ""
    tail = f"; {hint}" if hint and downloads else ""
    if len(problems) == 1:  # the problem's own line, as the part that found it says it
        raise ClipLightningError(
            f"cannot start{why}: {problems[0]}{tail}" if why else problems[0] + tail
        )
    listed = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, start=1))
    raise ClipLightningError(f"cannot start{why}, {len(problems)} things to fix: {listed}{tail}")


# ----------------------------------------------------------------------------------- hardware
def hardware_problems(trainer: DictConfig | None) -> list[str]:
    """Accelerators this machine lacks (problems); CPU surprises are logged, one line each."""
    if trainer is None:
        return []
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    devices = trainer.get("devices", "auto")
    gpus = CUDAAccelerator.auto_device_count() if CUDAAccelerator.is_available() else 0
    problems = []
    if accelerator in ("gpu", "cuda") and not gpus and not MPSAccelerator.is_available():
        problems.append(
            f"trainer.accelerator={accelerator}, but torch finds no CUDA GPU on this machine: "
            "set trainer=cpu (or trainer.accelerator=cpu; trainer=ddp_sim for DDP on CPU)"
        )
    elif accelerator in ("gpu", "cuda") and isinstance(devices, int) and devices > max(gpus, 1):
        problems.append(
            f"trainer.devices={devices}, but this machine has {gpus} GPU(s): set "
            f"trainer.devices={gpus} (or -1 for all of them)"
        )
    if accelerator == "tpu" and not XLAAccelerator.is_available():
        problems.append(
            "trainer.accelerator=tpu, but no TPU is available (torch_xla finds none): set "
            "trainer.accelerator=gpu or trainer=cpu"
        )
    if accelerator == "mps" and not MPSAccelerator.is_available():
        problems.append(
            "trainer.accelerator=mps, but this is no Apple-silicon Mac: set trainer=cpu"
        )
    on_cpu = accelerator == "cpu" or (
        accelerator == "auto"
        and not gpus
        and not MPSAccelerator.is_available()
        and not XLAAccelerator.is_available()
    )
    if on_cpu:
        _cpu_notes(devices, str(trainer.get("precision", "32-true")))
    return problems


@rank_zero_only
def _cpu_notes(devices: Any, precision: str) -> None:
    if isinstance(devices, int) and devices > 1:
        log.warning(
            "trainer.devices=%d on CPU (no GPU here): %d processes will train with DDP over "
            "gloo on %d cores; set trainer.devices=1 for one process",
            devices,
            devices,
            available_cores(),
        )
    if precision in ("16-mixed", "16"):
        log.warning(
            "trainer.precision=%s runs as bf16-mixed on CPU (float16 autocast needs a GPU); set "
            "trainer.precision=bf16-mixed or 32-true to choose",
            precision,
        )


# -------------------------------------------------------------------------------- model files
def hub_files(cfg: DictConfig, data: bool = True) -> list[HubFile]:
    """What the run's model and (with ``data``) its dataset would fetch from the hub (nothing
    for local files); a run that reads no dataset, e.g. zero-shot on an image folder, passes
    ``data=False``."""
    model, dataset = cfg.get("model"), cfg.get("dataset")
    needed: list[HubFile] = []
    if model is not None:
        image, text = model.get("image_encoder"), model.get("text_encoder")
        if image is not None and "name" in image:
            needed += _timm_weights(image)
        if text is not None and "name_or_path" in text:
            needed += _hf_model(
                str(text.name_or_path),
                bool(text.get("pretrained", True)),
                "model.text_encoder.name_or_path",
                "text model",
            )
        if "name_or_path" in model:
            needed += _hf_model(
                str(model.name_or_path),
                bool(model.get("pretrained", True)),
                "model.name_or_path",
                "CLIP model",
            )
        if "arch" in model:
            needed += _open_clip_weights(str(model.arch), model.get("pretrained"))
    if (
        data
        and dataset is not None
        and dataset.get("root") is None
        and dataset.get("hub_id")
        and dataset.get("format", "auto") in ("auto", "hf")
    ):
        needed.append(
            HubFile(
                f"the dataset {dataset.hub_id} (dataset={dataset.get('name')})",
                cached_dataset(str(dataset.hub_id)),
                f"set dataset.root=DIR to a local copy: {'; '.join(ACCEPTED_LAYOUTS)}",
                data=True,
            )
        )
    return needed


def _timm_weights(image: DictConfig) -> list[HubFile]:
    if not image.get("pretrained", False) or image.get("weights_file"):
        return []
    name = str(image.name)
    config = timm.models.get_pretrained_cfg(name) if timm.is_model(name) else None
    if config is None:
        return []  # an unknown name or a model without weights: building it says so
    cached = bool(config.hf_hub_id) and cached_file(str(config.hf_hub_id), WEIGHT_FILES)
    if not cached and isinstance(config.url, str) and config.url:
        file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(config.url).path).name
        cached = file.is_file()
    return [
        HubFile(
            f"the {name} image weights ({config.hf_hub_id or config.url})",
            cached,
            "set model.image_encoder.weights_file=FILE (a local copy of them) or "
            "model.image_encoder.pretrained=false (random init)",
        )
    ]


def _hf_model(name_or_path: str, pretrained: bool, key: str, what: str) -> list[HubFile]:
    if _looks_local(name_or_path):
        return []  # local_model_problems checks folders
    files = ("config.json",)
    cached = cached_file(name_or_path, files) and (
        not pretrained or cached_file(name_or_path, WEIGHT_FILES)
    )
    return [
        HubFile(
            f"the {what} {name_or_path}",
            cached,
            f"set {key}=DIR, a local folder saved with save_pretrained (model and tokenizer)",
        )
    ]


def _open_clip_weights(arch: str, pretrained: Any) -> list[HubFile]:
    if not pretrained or _looks_local(str(pretrained)):
        return []
    config = open_clip.get_pretrained_cfg(arch, str(pretrained)) or {}
    repo = str(config.get("hf_hub", "")).rstrip("/")
    if not repo:
        return []  # open_clip reports an unknown tag itself
    return [
        HubFile(
            f"the open_clip weights {arch}/{pretrained} ({repo})",
            cached_file(repo, WEIGHT_FILES),
            "set model.pretrained=FILE (a local open_clip weights file)",
        )
    ]


def _looks_local(name: str) -> bool:
    """A path, not a hub id: it exists, or is written like a path."""
    return (
        Path(name).expanduser().exists() or name.startswith(("/", ".", "~")) or name.count("/") > 1
    )


def local_model_problems(model: DictConfig | None) -> list[str]:
    """Local files the model config names that are not there."""
    if model is None:
        return []
    checks = [
        (model.get("image_encoder"), "weights_file", "model.image_encoder.weights_file", "file"),
        (model.get("text_encoder"), "name_or_path", "model.text_encoder.name_or_path", "folder"),
        (model, "name_or_path", "model.name_or_path", "folder"),
        (model, "pretrained", "model.pretrained", "file"),
    ]
    problems = []
    for node, field, key, kind in checks:
        value = node.get(field) if node is not None else None
        if not isinstance(value, str) or not value or not _looks_local(value):
            continue
        path = Path(value).expanduser()
        state = "does not exist" if not path.exists() else f"is not a {kind}"
        if kind == "file" and not path.is_file():
            problems.append(f"{key}={value} {state}: point it at the weights file")
        elif kind == "folder" and not path.is_dir():
            problems.append(
                f"{key}={value} {state}: point it at a folder saved with save_pretrained "
                "(model and tokenizer), or at a hub id"
            )
    return problems


# --------------------------------------------------------------------------------------- data
def data_problems(datamodule: Any, splits: Sequence[str], full: bool, train: bool) -> list[str]:
    """The data's problem (one message: the data layer reports all of a kind at once).

    ``check_sources`` finds the files and reads the annotations; with ``full`` the images
    are decoded and split too (the training data only with ``train``), and each of
    ``splits`` must have data.
    """
    try:
        datamodule.check_sources(train=train)
        if full:
            if train:
                datamodule.load_splits()
            datamodule.require_eval_data(splits)
    except Exception as exc:
        error = find_user_error(exc)
        if error is None:
            raise
        return [" ".join(str(error).split())]
    return []
