"""The classes a model config may name, and the one builder that makes them from plain data.

:class:`~clip_lightning.module.CLIPModule` is built from config mappings that name each part by
``_target_``: the user's Hydra config and a checkpoint's hyperparameters alike. A file must not
be able to run code, so the builder never imports a dotted path the config names, never hands
the config to ``hydra.utils.instantiate`` and never resolves an interpolation:

* a ``_target_`` is looked up in a registry: this package's model parts (:data:`PACKAGE_TARGETS`),
  torch's optimizers and LR schedulers, and what the user registered with :func:`allow_target`,
  e.g. their own tower::

      from clip_lightning.models import allow_target
      allow_target(MyTower)                    # or allow_target("my_package.towers.MyTower")
      model = CLIPModule.load_from_checkpoint(path)

* every argument is checked against the constructor's annotations before anything is called
  (:func:`check_arguments`): numbers are numbers, strings are strings, and a value annotated
  ``Any`` is plain data (numbers, strings, bytes, lists, mappings). A nested config (a mapping
  with a ``_target_``) is accepted only where a parameter is annotated :data:`Config` or
  :data:`PartialConfig`; ``_partial_`` only where the caller builds a partial (optimizer,
  scheduler), ``_args_`` nowhere.

Error messages name the key and the expected type, never the value.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, cast

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from clip_lightning.errors import ConfigError
from clip_lightning.utils.renamed_keys import upgrade
from clip_lightning.utils.typecheck import Doc, describe, is_union, matches


class ValueRule:
    """``Annotated`` metadata with a check of its own, run after the type matched."""

    def check(self, value: Any, key: str) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Part(ValueRule):
    """The parameter takes the config of a part that the callee builds with :func:`build`."""

    partial: bool = False

    def check(self, value: Any, key: str) -> None:
        check_part(value, key, partial=self.partial)


@dataclass(frozen=True)
class ArgumentsOf(ValueRule):
    """On ``**kwargs``: they are ``target``'s arguments (a factory that forwards them)."""

    target: Callable[..., Any]

    def check(self, value: Any, key: str) -> None:
        check_arguments(self.target, value, key)


@dataclass(frozen=True)
class ExcludedKeys(ValueRule):
    """On a mapping or ``**kwargs`` forwarded to a library: keys that must not be given, with
    why (the library's own options for loading weights, which the tower sets itself)."""

    keys: frozenset[str]
    why: str

    def check(self, value: Any, key: str) -> None:
        refused = sorted(self.keys & set(value))
        if refused:
            raise ConfigError(f"{key}.{refused[0]} {self.why}")


_PART_DOC = Doc("a config with a _target_")
#: A part config (``{"_target_": ..., **arguments}``) the callee builds with :func:`build`.
Config = Annotated[Mapping[str, Any], Part(), _PART_DOC]
#: A part config built as a ``functools.partial`` (optimizer, scheduler).
PartialConfig = Annotated[Mapping[str, Any], Part(partial=True), _PART_DOC]

#: This package's model parts, by the names configs use (public and defining module).
PACKAGE_TARGETS = frozenset(
    {
        "clip_lightning.module.CLIPModule",
        "clip_lightning.models.ImageEncoder",
        "clip_lightning.models.image_encoder.ImageEncoder",
        "clip_lightning.models.TextEncoder",
        "clip_lightning.models.text_encoder.TextEncoder",
        "clip_lightning.models.IdentityHead",
        "clip_lightning.models.LinearHead",
        "clip_lightning.models.MLPHead",
        "clip_lightning.models.heads.IdentityHead",
        "clip_lightning.models.heads.LinearHead",
        "clip_lightning.models.heads.MLPHead",
        "clip_lightning.models.hf_clip.hf_clip_module",
        "clip_lightning.models.hf_clip.HFImageTower",
        "clip_lightning.models.hf_clip.HFTextTower",
        "clip_lightning.models.open_clip.open_clip_module",
        "clip_lightning.models.open_clip.OpenCLIPImageTower",
        "clip_lightning.models.open_clip.OpenCLIPTextTower",
        "clip_lightning.losses.InfoNCELoss",
        "clip_lightning.losses.SigLIPLoss",
        "clip_lightning.losses.SoftTargetLoss",
        "clip_lightning.optim.cosine_with_warmup",
    }
)
#: Keys of a part config that are not arguments: Hydra's, accepted for configs written for it
#: (``build`` never recurses and always passes plain containers).
IGNORED_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_"})
#: Hydra's instantiation keys, never accepted inside plain data.
RESERVED_KEYS = IGNORED_KEYS | {"_args_"}

_registered: dict[str, Callable[..., Any] | None] = {}


def allow_target(target: str | Callable[..., Any]) -> None:
    """Let model configs (and checkpoints) name ``target``: a class or function, or its dotted
    path, imported when a config first names it."""
    if isinstance(target, str):
        _registered.setdefault(target, None)
    else:
        _registered[f"{target.__module__}.{target.__qualname__}"] = target


@functools.cache
def _torch_targets() -> dict[str, type]:
    """torch's optimizers and LR schedulers, by their public names."""
    found: dict[str, type] = {}
    for module, base in (
        (torch.optim, torch.optim.Optimizer),
        (torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler),
    ):
        for name in module.__all__:
            obj = getattr(module, name, None)
            if isinstance(obj, type) and issubclass(obj, base) and obj is not base:
                found[f"{module.__name__}.{name}"] = obj
    return found


def is_allowed(target: str) -> bool:
    """Whether a config may name ``target`` (see the module docstring for the rule)."""
    return target in PACKAGE_TARGETS or target in _registered or target in _torch_targets()


def lookup(target: Any, key: str) -> Callable[..., Any]:
    """The registered class or function named ``target``; :class:`ConfigError` otherwise.

    Only names in the registry are imported: this package's modules, torch's, or paths the
    user passed to :func:`allow_target`.
    """
    if not isinstance(target, str):
        raise ConfigError(f"{key}._target_ must be a string, got {type(target).__name__}")
    if not is_allowed(target):
        shown = repr(target if len(target) <= 80 else target[:77] + "...")
        raise ConfigError(
            f"{key}._target_={shown} is not a class clip-lightning builds models from (its "
            "own model parts, torch.optim optimizers and schedulers, or ones registered with "
            "clip_lightning.models.allow_target); nothing was run -- if it is your own class, "
            "call allow_target on it before building or loading"
        )
    torch_target = _torch_targets().get(target)
    if torch_target is not None:
        return torch_target
    obj = _registered.get(target)
    if obj is None:
        module_name, _, attribute = target.rpartition(".")
        try:
            obj = cast(Callable[..., Any], getattr(importlib.import_module(module_name), attribute))
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"{key}._target_={target!r} is registered but cannot be imported "
                f"({type(exc).__name__}); check the path given to allow_target"
            ) from exc
    return obj


def plain(config: Any) -> Any:
    """An OmegaConf container as plain dicts and lists, interpolations resolved.

    Only for configs the user composed (their command line is trusted); a checkpoint holds
    plain data already and is never resolved.
    """
    if isinstance(config, DictConfig | ListConfig):
        return OmegaConf.to_container(config, resolve=True)
    return config


def check_part(config: Any, key: str, partial: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``config`` is a part config :func:`build` may build:
    a registered ``_target_`` whose arguments :func:`check_arguments` accepts."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{key} must be a config with a _target_, got {type(config).__name__}")
    target = lookup(config.get("_target_"), key)
    config = upgrade(config, key, inspect.signature(target).parameters, announce=False)
    if "_args_" in config:
        raise ConfigError(f"{key}._args_ is not supported: pass arguments by name")
    if "_partial_" in config and config["_partial_"] is not partial:
        raise ConfigError(
            f"{key}._partial_ must be {str(partial).lower()} here"
            if partial
            else f"{key}._partial_ is only accepted in optimizer and scheduler configs"
        )
    check_arguments(
        target, {k: v for k, v in config.items() if k not in IGNORED_KEYS}, key, partial
    )


def check_arguments(
    target: Callable[..., Any], arguments: Mapping[str, Any], key: str, partial: bool = False
) -> None:
    """Check each argument against ``target``'s signature and annotations.

    Names it does not take are refused, unless it takes ``**kwargs``: each of those is checked
    against that annotation, and its :class:`ValueRule` metadata checks them together (an
    :class:`ArgumentsOf` instead of the annotation).
    """
    parameters = inspect.signature(target).parameters
    hints = _type_hints(target)
    var_keyword = next((p for p in parameters.values() if p.kind is p.VAR_KEYWORD), None)
    extra: dict[str, Any] = {}
    for name, value in arguments.items():
        if not isinstance(name, str):
            raise ConfigError(f"{key} has a key that is not a string ({type(name).__name__})")
        parameter = parameters.get(name)
        if parameter is not None and parameter.kind not in (
            parameter.VAR_POSITIONAL,
            parameter.VAR_KEYWORD,
        ):
            check_value(value, hints.get(name, Any), f"{key}.{name}")
        elif var_keyword is not None:
            extra[name] = value
        else:
            raise ConfigError(f"{key}.{name} is not an argument of {_name(target)}")
    if var_keyword is None or not extra:
        return
    expected = hints.get(var_keyword.name, Any)
    base, rules = expected, []
    if typing.get_origin(expected) is typing.Annotated:
        base, *metadata = typing.get_args(expected)
        rules = [m for m in metadata if isinstance(m, ValueRule)]
    if not any(isinstance(rule, ArgumentsOf) for rule in rules):
        for name, value in extra.items():
            check_value(value, base, f"{key}.{name}")
    for rule in rules:
        rule.check(extra, key)


def check_value(value: Any, expected: Any, key: str) -> None:
    """``value`` must match ``expected``; a part config where a :class:`Part` is annotated,
    plain data everywhere else."""
    rules = _rules(expected, value)
    if not any(isinstance(rule, Part) for rule in rules):
        _check_plain(value, key)
    if not matches(value, expected):
        raise ConfigError(f"{key} must be {describe(expected)}, got {_kind(value)}")
    for rule in rules:
        rule.check(value, key)


def _rules(expected: Any, value: Any) -> list[ValueRule]:
    """The :class:`ValueRule` metadata of ``expected`` that apply to ``value``.

    In a union (``Config | None``) a rule applies when its own member is the one that matches.
    """
    if typing.get_origin(expected) is typing.Annotated:
        base, *metadata = typing.get_args(expected)
        if not matches(value, base):
            return []
        return [m for m in metadata if isinstance(m, ValueRule)]
    if is_union(expected):
        for option in typing.get_args(expected):
            found = _rules(option, value)
            if found:
                return found
    return []


def _check_plain(value: Any, key: str) -> None:
    """Plain data only: None, bool, numbers, strings, bytes, and lists/mappings of them, with
    no Hydra keys (``_target_``, ``_partial_``, ``_args_``, ...) at any depth."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{key}[{index}]")
        return
    if isinstance(value, Mapping):
        for name, item in value.items():
            if not isinstance(name, str):
                raise ConfigError(f"{key} has a key that is not a string ({type(name).__name__})")
            if name in RESERVED_KEYS:
                raise ConfigError(
                    f"{key}.{name} is not accepted here: only the parts of a model config are "
                    "built, a value inside one is plain data"
                )
            _check_plain(item, f"{key}.{name}")
        return
    raise ConfigError(
        f"{key} must be plain data (numbers, strings, lists, mappings), got {_kind(value)}"
    )


def build(config: Any, key: str, partial: bool = False, **kwargs: Any) -> Any:
    """Build the part ``config`` describes: its registered ``_target_`` called with its checked
    arguments, plus ``kwargs`` from the calling code (which take precedence).

    With ``partial`` the result is a ``functools.partial`` that the caller completes
    (an optimizer gets its parameter groups, a scheduler its optimizer).
    """
    config = with_new_names(plain(config), key)
    check_part(config, key, partial)
    target = lookup(config["_target_"], key)
    arguments = {k: v for k, v in config.items() if k not in IGNORED_KEYS} | kwargs
    signature = inspect.signature(target)
    try:
        (signature.bind_partial if partial else signature.bind)(**arguments)
    except TypeError as exc:  # a required argument missing
        raise ConfigError(f"{key}: {exc} of {_name(target)}") from exc
    if partial:
        return functools.partial(target, **arguments)
    return target(**arguments)


def with_new_names(config: Any, key: str) -> Any:
    """``config`` with each renamed argument under the name its target takes now (a checkpoint
    or an override may still use the old one); anything but a mapping passes unchanged."""
    if not isinstance(config, Mapping):
        return config
    takes = inspect.signature(lookup(config.get("_target_"), key)).parameters
    return upgrade(config, key, takes)


@functools.cache
def _type_hints(target: Callable[..., Any]) -> dict[str, Any]:
    """The annotations of ``target`` (a class: of its ``__init__``); none where they cannot be
    evaluated, which leaves every argument to the plain-data rule."""
    function = target
    if isinstance(target, type):  # the __init__ the class runs, maybe inherited
        function = next(vars(c)["__init__"] for c in target.__mro__ if "__init__" in vars(c))
    try:
        return typing.get_type_hints(function, include_extras=True)
    except Exception:  # unresolvable forward references, C extensions: many types
        return {}


def _name(target: Callable[..., Any]) -> str:
    return f"{target.__module__}.{target.__qualname__}"


def _kind(value: Any) -> str:
    """What a bad value is, without echoing it (a file's content is never printed)."""
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return "null" if value is None else type(value).__name__
