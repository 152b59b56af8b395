"""Which dataset settings a run uses, when the command line does not choose a group.

* ``train`` / ``prepare``: ``dataset.root=DIR`` alone picks the group that reads what DIR holds
  (a CSV table: ``csv``, a ``save_to_disk`` folder: ``hf``, COCO's annotations: ``coco``, ...),
  when the group in use detects formats (``format: auto``). A group that reads no folder (the
  quickstart's ``synthetic``) keeps it and refuses the root: a run never trains on other data
  than the user named.
* ``eval ckpt_path=X``: the dataset settings saved in the checkpoint
  (:mod:`clip_lightning.callbacks.dataset_config`), so it scores the data and splits the run
  trained on; ``dataset.*`` overrides still apply on top.

Typing ``dataset=GROUP`` always wins.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict

from clip_lightning.callbacks.dataset_config import plain_dataset_config, saved_dataset_config
from clip_lightning.checkpoints import read_checkpoint
from clip_lightning.data.formats import detect_format, group_for

log = logging.getLogger(__name__)

# Settings that say where this machine writes (caches) and how it loads: the evaluating
# machine takes them from its own config, never from a file (also inside eval_options).
MACHINE_KEYS = (
    "cache",
    "cache_auto_dir",
    "num_workers",
    "pin_memory",
    "persistent_workers",
    "prefetch_factor",
    "hub_kwargs",
)
PATH_KEYS = ("root", "eval_root", "image_dir")


def choose_dataset(cfg: DictConfig, task: str, overrides: Sequence[str] | None = None) -> None:
    """Replace ``cfg.dataset`` by what ``task`` uses without ``dataset=GROUP`` (see above).

    ``overrides`` are the command line's (default: Hydra's record of them; without a Hydra
    run nothing is chosen).
    """
    if overrides is None:
        if not HydraConfig.initialized():
            return
        overrides = list(HydraConfig.get().overrides.task)
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    if "dataset" not in cfg or any(o.key_or_group == "dataset" for o in parsed):
        return
    if task in ("train", "prepare"):
        _group_of_root(cfg, task, parsed)
    elif task == "eval" and cfg.get("task", "retrieval") == "retrieval" and cfg.get("ckpt_path"):
        _from_checkpoint(cfg, Path(str(cfg.ckpt_path)).expanduser(), parsed)


def _group_of_root(cfg: DictConfig, task: str, overrides: list[Override]) -> None:
    root = cfg.dataset.get("root")
    if root is None or cfg.dataset.get("format") != "auto" or not GlobalHydra().is_initialized():
        return
    folder = Path(str(root)).expanduser()
    group = group_for(folder)
    current = (
        HydraConfig.get().runtime.choices.get("dataset") if HydraConfig.initialized() else None
    )
    if group is None or group == current:
        return
    lines = [str(o.input_line) for o in overrides] + [f"dataset={group}"]
    chosen = compose(task, overrides=lines)
    with open_dict(cfg):
        cfg.dataset = chosen.dataset
    log.info(
        "dataset.root=%s holds %s data: using dataset=%s (type dataset=GROUP to choose another)",
        root,
        detect_format(folder),
        group,
    )


def _from_checkpoint(cfg: DictConfig, path: Path, overrides: list[Override]) -> None:
    saved = _read_saved(path)
    if saved is None:
        return  # not a readable checkpoint (loading it says why), or one without them
    composed = cast(dict[str, Any], OmegaConf.to_container(cfg.dataset, resolve=False))
    saved = _machine_keys_from(composed, saved)
    dataset = OmegaConf.create(saved)
    for override in overrides:
        key = override.key_or_group
        if not key.startswith("dataset."):
            continue
        sub = key.removeprefix("dataset.")
        if override.is_delete():
            _delete(dataset, sub)
        else:
            OmegaConf.update(dataset, sub, OmegaConf.select(cfg.dataset, sub), force_add=True)
    with open_dict(cfg):
        cfg.dataset = dataset
    log.info(
        "dataset: the training run's settings, saved in the checkpoint (%s%s); "
        "type dataset=GROUP to choose others",
        saved.get("name"),
        f" at {saved['root']}" if saved.get("root") else "",
    )


def _read_saved(path: Path) -> dict[str, Any] | None:
    """The checkpoint's dataset settings (weights are memory-mapped, not read)."""
    if not path.is_file():
        return None  # load_model names the problem in one line
    return saved_dataset_config(read_checkpoint(path))


def _machine_keys_from(composed: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` with :data:`MACHINE_KEYS` taken from this machine's ``composed`` settings
    (raw, so its interpolations resolve here), or left to the datamodule's defaults."""
    result = {k: v for k, v in saved.items() if k not in MACHINE_KEYS}
    result.update({k: composed[k] for k in MACHINE_KEYS if k in composed and k in saved})
    if isinstance(result.get("eval_options"), dict):
        result["eval_options"] = {
            k: v for k, v in result["eval_options"].items() if k not in MACHINE_KEYS
        }
    return result


def _delete(node: DictConfig, key: str) -> None:
    parent, _, leaf = key.rpartition(".")
    container = OmegaConf.select(node, parent) if parent else node
    if isinstance(container, DictConfig) and leaf in container:
        del container[leaf]


def dataset_to_save(cfg_dataset: DictConfig) -> dict[str, Any]:
    """The run's resolved ``dataset`` settings as plain data for the checkpoint, folders made
    absolute (eval may run from another working directory)."""
    resolved = OmegaConf.to_container(cfg_dataset, resolve=True)
    assert isinstance(resolved, dict)
    for key in PATH_KEYS:
        if isinstance(resolved.get(key), str):
            resolved[key] = str(Path(resolved[key]).expanduser().absolute())
    return plain_dataset_config(resolved)
