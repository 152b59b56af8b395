"""Errors a user can fix. Entry points print them as one clear line instead of a stack trace."""

from typing import TypeVar

Error = TypeVar("Error", bound=BaseException)


class ClipLightningError(Exception):
    """Base class: the message names the problem and the fix."""


class DataError(ClipLightningError):
    """The dataset is missing, malformed, or does not match the configuration."""


class ModelLoadError(ClipLightningError):
    """Encoder weights, configs or tokenizers could not be loaded."""


class ConfigError(ClipLightningError):
    """A config value has the wrong type or is out of range (checked before anything runs)."""


class CheckpointError(ClipLightningError):
    """A checkpoint is missing or does not belong to this model."""


class NonFiniteLossError(ClipLightningError, FloatingPointError):
    """Training produced a NaN/inf loss; raised before it reaches the weights."""


class NonFiniteEmbeddingError(ClipLightningError, FloatingPointError):
    """A model produced NaN/inf embeddings, so no retrieval figure can be computed for it."""


def find_user_error(exc: BaseException) -> ClipLightningError | None:
    """The :class:`ClipLightningError` behind ``exc``, if any.

    Hydra's ``instantiate`` wraps errors raised in constructors (once per nesting level), so
    the user-facing error is usually a few ``__cause__`` links down.
    """
    return find_cause(exc, ClipLightningError)


def find_cause(exc: BaseException, kind: type[Error]) -> Error | None:
    """``exc`` itself or the first ``kind`` among its causes and contexts, if any.

    Libraries re-raise: torch's checkpoint writer turns a full disk (an ``OSError`` in
    ``write``) into ``RuntimeError: ... unexpected pos``, with the ``OSError`` as its context.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
