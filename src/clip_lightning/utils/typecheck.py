"""Whether a plain value (as Hydra or a checkpoint gives it) is of a ``typing`` type, and what a
type accepts in words.

Two checks share it: the schemas of the task configs (:mod:`clip_lightning.cli.config_schema`)
and the arguments a model config passes to a constructor (:mod:`clip_lightning.models.targets`).
Types are ``int``, ``float``, ``bool``, ``str``, ``bytes``, ``None``, ``Literal``, unions,
``list``/``tuple``/``Sequence``, ``dict``/``Mapping`` and ``Any``, with :class:`Range` /
:class:`Pattern` constraints (and a :class:`Doc` wording) attached by ``Annotated``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

__all__ = ["Doc", "Pattern", "Range", "allows_none", "describe", "is_union", "matches", "text"]


@dataclass(frozen=True)
class Range:
    """Bounds of a number: ``ge``/``gt`` below, ``le``/``lt`` above (None: unbounded)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __contains__(self, value: float) -> bool:
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def __str__(self) -> str:
        low = f"[{text(self.ge)}" if self.ge is not None else f"({text(self.gt)}"
        high = f"{text(self.le)}]" if self.le is not None else f"{text(self.lt)})"
        if (self.ge, self.gt) == (None, None):
            return f"<= {text(self.le)}" if self.le is not None else f"< {text(self.lt)}"
        if (self.le, self.lt) == (None, None):
            return f">= {text(self.ge)}" if self.ge is not None else f"> {text(self.gt)}"
        return f"in {low}, {high}"


@dataclass(frozen=True)
class Pattern:
    """A string that must match ``regex`` in full."""

    regex: str


@dataclass(frozen=True)
class Doc:
    """What the user reads for a type whose generated description would be unwieldy."""

    text: str


_SEQUENCES = (list, tuple, collections.abc.Sequence)
_MAPPINGS = (dict, collections.abc.Mapping)


def is_union(expected: Any) -> bool:
    return typing.get_origin(expected) in (Union, types.UnionType)


def allows_none(expected: Any) -> bool:
    return expected is type(None) or (
        is_union(expected) and type(None) in typing.get_args(expected)
    )


def matches(value: Any, expected: Any) -> bool:
    """Whether ``value`` (plain Python: numbers, strings, lists, dicts) is of type ``expected``.

    ``Any`` (and a type that is not a class, such as a ``TypeVar``) accepts every value: what
    may stand there is the caller's rule. Unknown ``Annotated`` metadata is ignored.
    """
    origin = typing.get_origin(expected)
    if expected is Any:
        return True
    if origin is Annotated:
        base, *constraints = typing.get_args(expected)
        return matches(value, base) and all(_satisfies(value, c) for c in constraints)
    if is_union(expected):
        return any(matches(value, option) for option in typing.get_args(expected))
    if origin is Literal:
        # 16 and True compare equal: a literal matches only a value of its own type
        return any(type(value) is type(v) and value == v for v in typing.get_args(expected))
    if origin in _SEQUENCES or expected in _SEQUENCES:
        if not isinstance(value, list | tuple):
            return False
        items = typing.get_args(expected)
        if origin is not tuple or not items or items[-1] is Ellipsis:
            return all(matches(v, items[0]) for v in value) if items else True
        return len(value) == len(items) and all(map(matches, value, items))
    if origin in _MAPPINGS or expected in _MAPPINGS:
        if not isinstance(value, Mapping):
            return False
        key_type, value_type = typing.get_args(expected) or (Any, Any)
        return all(matches(k, key_type) and matches(v, value_type) for k, v in value.items())
    if expected is type(None):
        return value is None
    if expected is float:  # an integer is a fine float; a bool, a NaN or an inf is not
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected) if isinstance(expected, type) else True


def _satisfies(value: Any, constraint: Any) -> bool:
    if isinstance(constraint, Range):
        return value in constraint
    if isinstance(constraint, Pattern):
        return re.fullmatch(constraint.regex, value) is not None
    return True


def describe(expected: Any) -> str:
    """What the type ``expected`` accepts, in words, e.g. ``a float > 0 or null``."""
    origin = typing.get_origin(expected)
    if origin is Annotated:
        base, *constraints = typing.get_args(expected)
        for constraint in constraints:
            if isinstance(constraint, Doc):
                return constraint.text
        ranges = " ".join(str(c) for c in constraints if isinstance(c, Range))
        return f"{describe(base)} {ranges}".strip()
    if is_union(expected):
        return _join([describe(option) for option in typing.get_args(expected)])
    if origin is Literal:
        choices = dict.fromkeys(text(v) for v in typing.get_args(expected))  # 16 and "16"
        return "one of " + ", ".join(choices)
    if dataclasses.is_dataclass(expected):
        return "a group of settings"
    items = typing.get_args(expected)
    if origin in _SEQUENCES:
        if origin is tuple and items and items[-1] is not Ellipsis:
            return f"a list of {len(items)} values, each {describe(items[0])}"
        return f"a list of values, each {describe(items[0])}"
    if origin in _MAPPINGS or expected in _MAPPINGS:
        return f"a mapping to {describe(items[1])}" if items else "a mapping"
    names = {float: "a float", int: "an integer", bool: "true or false", str: "a string"}
    if expected in names:
        return names[expected]
    if expected is type(None):
        return "null"
    return "any value" if expected is Any else getattr(expected, "__name__", str(expected))


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def text(value: Any) -> str:
    """A value in Hydra's override syntax: ``1e-04``, ``true``, ``null``, ``[0.9,0.98]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(text(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{text(v)}" for k, v in value.items()) + "}"
    return str(value)
