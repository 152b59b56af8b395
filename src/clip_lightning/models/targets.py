"""Which ``_target_``s a model config may name, so loading a checkpoint never runs foreign code.

:class:`~clip_lightning.module.CLIPModule` builds its parts from config mappings, and a
checkpoint stores those mappings. A crafted checkpoint could name any importable callable
(``shutil.copyfile``, ``os.system``) and ``load_from_checkpoint`` would call it. Every
``_target_`` in a model config -- nested ones included, since Hydra instantiates those too -- is
therefore checked before anything is imported or called:

* classes of this package (``clip_lightning.*``) and of ``torch.optim`` (optimizers and LR
  schedulers) are accepted;
* the project's own factory functions are accepted by name (:data:`SHIPPED_FACTORIES`);
* anything else must be registered first with :func:`allow_target`, e.g. a user's own tower::

      from clip_lightning.models import allow_target
      allow_target(MyTower)                    # or allow_target("my_package.towers.MyTower")
      model = CLIPModule.load_from_checkpoint(path)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from hydra.utils import instantiate

from clip_lightning.errors import ConfigError, find_user_error

#: Module prefixes whose *classes* any config may name.
TRUSTED_CLASS_PREFIXES = ("clip_lightning.", "torch.optim.")
#: Functions this project ships as config targets.
SHIPPED_FACTORIES = frozenset({"clip_lightning.optim.cosine_with_warmup"})

_registered: set[str] = set()


def allow_target(target: str | Callable[..., Any]) -> None:
    """Trust ``target`` (a class or function, or its dotted path) as a model-config target."""
    _registered.add(target if isinstance(target, str) else _dotted_name(target))


def _dotted_name(obj: Callable[..., Any]) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _is_trusted_class(path: str) -> bool:
    """True for a class defined under a trusted prefix (not merely imported into one).

    Only modules under a trusted prefix are ever imported here.
    """
    prefix = next((p for p in TRUSTED_CLASS_PREFIXES if path.startswith(p)), None)
    if prefix is None:
        return False
    module_name, _, attribute = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError):
        return False
    return isinstance(obj, type) and f"{obj.__module__}.".startswith(prefix)


def is_allowed(target: str) -> bool:
    """Whether a config may name ``target`` (see the module docstring for the rule)."""
    return target in _registered or target in SHIPPED_FACTORIES or _is_trusted_class(target)


def check_targets(config: Any, key: str) -> None:
    """Raise :class:`ConfigError` at the first ``_target_`` in ``config`` that is not allowed.

    ``key`` names where ``config`` sits (``model.image_encoder``), so the message points there.
    """
    if isinstance(config, Mapping):
        target = config.get("_target_")
        if target is not None and not is_allowed(str(target)):
            raise ConfigError(
                f"{key}._target_={str(target)!r} is not a class clip-lightning builds models "
                "from (clip_lightning.* classes, torch.optim.*, or ones registered with "
                "clip_lightning.models.allow_target); nothing was run -- if it is your own "
                "class, call allow_target on it before building or loading"
            )
        for name, value in config.items():
            if name != "_target_":
                check_targets(value, f"{key}.{name}")
    elif isinstance(config, list | tuple):
        for index, value in enumerate(config):
            check_targets(value, f"{key}[{index}]")


def build(config: Mapping[str, Any], key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` after :func:`check_targets`, passing plain containers.

    A :class:`~clip_lightning.errors.ClipLightningError` raised by the constructor comes out as
    itself rather than wrapped in Hydra's ``InstantiationException``.
    """
    check_targets(config, key)
    try:
        return instantiate(config, _convert_="all", **kwargs)
    except Exception as exc:
        user_error = find_user_error(exc)
        if user_error is not None and user_error is not exc:
            raise user_error from exc
        raise
