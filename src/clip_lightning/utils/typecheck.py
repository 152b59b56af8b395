"""Whether a plain value (as Hydra or a checkpoint gives it) is of a ``typing`` type, what a type
accepts in words, and a value it accepts.

Two checks share it: the schemas of the task configs (:mod:`clip_lightning.cli.config_schema`,
pydantic models) and the arguments a model config passes to a constructor
(:mod:`clip_lightning.models.targets`). Both are validated by pydantic in strict mode (no
``"3"`` for ``3``, no bool for a number, no NaN or inf for a float), with :class:`Range` bounds
(and a :class:`Doc` wording) attached by ``Annotated``.
"""

from __future__ import annotations

import collections.abc
import functools
import math
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import annotated_types
import pydantic
from pydantic import ConfigDict, Strict, TypeAdapter

__all__ = ["STRICT", "Doc", "Range", "allows_none", "describe", "example", "matches", "text"]

#: How every value is validated: a config's types are meant, never coerced.
STRICT = ConfigDict(strict=True, allow_inf_nan=False, arbitrary_types_allowed=True)


@dataclass(frozen=True)
class Range(annotated_types.GroupedMetadata):
    """Bounds of a number: ``ge``/``gt`` below, ``le``/``lt`` above (None: unbounded).

    Pydantic enforces them (it reads the group as ``annotated_types`` bounds); :func:`describe`
    and :func:`example` word them.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __iter__(self) -> Iterator[annotated_types.BaseMetadata]:
        for bound, value in (
            (annotated_types.Ge, self.ge),
            (annotated_types.Gt, self.gt),
            (annotated_types.Le, self.le),
            (annotated_types.Lt, self.lt),
        ):
            if value is not None:
                yield bound(value)

    def __str__(self) -> str:
        low = f"[{text(self.ge)}" if self.ge is not None else f"({text(self.gt)}"
        high = f"{text(self.le)}]" if self.le is not None else f"{text(self.lt)})"
        if (self.ge, self.gt) == (None, None):
            return f"<= {text(self.le)}" if self.le is not None else f"< {text(self.lt)}"
        if (self.le, self.lt) == (None, None):
            return f">= {text(self.ge)}" if self.ge is not None else f"> {text(self.gt)}"
        return f"in {low}, {high}"

    def example(self) -> float:
        """A value in the range: the lower bound if included, else the first whole number above
        it where the upper bound allows, else the upper bound (or the middle)."""
        if self.ge is not None:
            return self.ge
        high = self.le if self.le is not None else self.lt
        if self.gt is None:
            return 0 if high is None else (self.le if self.le is not None else high - 1)
        above = math.floor(self.gt) + 1
        if high is None or above < high or above == self.le:
            return above
        return self.le if self.le is not None else (self.gt + high) / 2


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


def is_model(expected: Any) -> bool:
    return isinstance(expected, type) and issubclass(expected, pydantic.BaseModel)


def matches(value: Any, expected: Any) -> bool:
    """Whether ``value`` (plain Python: numbers, strings, lists, dicts) is of type ``expected``.

    ``Any`` (and a type that is not a class, such as a ``TypeVar``) accepts every value: what
    may stand there is the caller's rule. A list stands for a tuple (configs have no tuples).
    """
    try:
        adapter = _adapter(expected)
    except TypeError:  # an annotation that cannot be hashed, so not cached
        adapter = _adapter.__wrapped__(expected)
    try:
        adapter.validate_python(value)
    except pydantic.ValidationError:
        return False
    return True


@functools.cache
def _adapter(expected: Any) -> TypeAdapter[Any]:
    try:
        return TypeAdapter(_lists_as_tuples(expected), config=STRICT)
    except pydantic.PydanticSchemaGenerationError:  # a type pydantic cannot check: the
        return TypeAdapter(Any)  # caller's plain-data rule is what remains


def _lists_as_tuples(expected: Any) -> Any:
    """``expected`` with each tuple accepting a list (its items stay strict)."""
    origin: Any = typing.get_origin(expected)
    args = typing.get_args(expected)
    if origin is Annotated:
        base_and_metadata = (_lists_as_tuples(args[0]), *expected.__metadata__)
        return Annotated[base_and_metadata]
    if is_union(expected):
        return Union[tuple(_lists_as_tuples(a) for a in args)]  # noqa: UP007 -- from a tuple
    if origin in (None, Literal, collections.abc.Callable) or not args:
        return expected
    generic = origin[tuple(a if a is Ellipsis else _lists_as_tuples(a) for a in args)]
    return Annotated[generic, Strict(False)] if origin is tuple else generic


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
    if is_model(expected):
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


def example(expected: Any, given: Any = None) -> Any:
    """A value of type ``expected``, derived from the type alone (never a default): the lower
    bound of a range, the first choice of a literal, null where a union allows it, an empty
    group; for a string, ``given`` (the value that was refused) as a string."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin is Annotated:
        base, *constraints = args
        ranges = [c for c in constraints if isinstance(c, Range)]
        return base(ranges[0].example()) if ranges else example(base, given)
    if is_union(expected):
        return None if allows_none(expected) else example(args[0], given)
    if origin is Literal:
        return args[0]
    if origin in _SEQUENCES:
        if origin is tuple and args and args[-1] is not Ellipsis:
            return [example(a) for a in args]
        return [example(args[0])] if args else []
    if expected is str:
        return "text" if given is None or isinstance(given, list | dict) else text(given)
    if is_model(expected) or origin in _MAPPINGS or expected in _MAPPINGS:
        return {}
    return {bool: True, int: 0, float: 0.0}.get(expected)


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
