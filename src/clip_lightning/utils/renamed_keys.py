"""Config keys renamed in this release: the old name is still read, with one line naming the new.

``dataset.cache_size`` became ``dataset.cache_image_size`` (it is an image side in pixels), and
the image tower's ``unfreeze_last_blocks`` and the text tower's ``unfreeze_last_layers`` became
one ``unfreeze_last`` (the last N trainable groups of either tower). The YAML keeps each old key
as ``null`` so that an override typed with it still composes; :func:`upgrade_config` moves a
given one to its new name after the config check, :func:`upgrade` does the same for a part
config read from a checkpoint saved with the old names, and :func:`renamed_argument` for a
constructor called with one (``CaptionDataModule(cache_size=...)``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, MutableMapping
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf, open_dict

__all__ = ["RENAMED", "renamed_argument", "upgrade", "upgrade_config"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: old name -> new name, within a tower config or the dataset group
RENAMED = {
    "unfreeze_last_blocks": "unfreeze_last",
    "unfreeze_last_layers": "unfreeze_last",
    "cache_size": "cache_image_size",
}
# the groups of a composed config whose keys were renamed
_RENAMED_GROUPS = ("dataset", "model.image_encoder", "model.text_encoder")


def upgrade(
    config: Mapping[str, Any], key: str, takes: Collection[str], announce: bool = True
) -> dict[str, Any]:
    """A copy of ``config`` with each old name that the callee no longer ``takes`` given its
    new name (with ``announce``, one line each naming ``key``); a null old name (the YAML's
    placeholder) is dropped."""
    upgraded = dict(config)
    _rename(upgraded, key, takes, announce)
    return upgraded


def upgrade_config(cfg: DictConfig) -> None:
    """Give each renamed key of the composed ``cfg`` its new name, in place."""
    for path in _RENAMED_GROUPS:
        group = OmegaConf.select(cfg, path)
        if isinstance(group, DictConfig):
            with open_dict(group):
                _rename(group, path, set(RENAMED.values()), announce=True)


def _rename(
    config: MutableMapping[str, Any], key: str, takes: Collection[str], announce: bool
) -> None:
    for old, new in RENAMED.items():
        if old in config and old not in takes and new in takes:
            value = config.pop(old)
            if value is None:
                continue
            config[new] = value
            if announce:
                _announce(f"{key}.{old}", f"{key}.{new}")


def renamed_argument(value: T, old_value: T | None, old_key: str, new_key: str) -> T:
    """A constructor's argument that may still come by its old name (``old_value``, None when
    not given): that one wins, with one line naming the new key."""
    if old_value is None:
        return value
    _announce(old_key, new_key)
    return old_value


def _announce(old_key: str, new_key: str) -> None:
    log.warning("%s is now %s (the old name is read until the next release)", old_key, new_key)
