"""``dataset.on_bad_image`` for shards: a bad sample stops the run in one line (``error``) or
is counted and reported once per worker and epoch (``skip``)."""

from __future__ import annotations

import logging

from clip_lightning.errors import DataError

log = logging.getLogger(__name__)


class BadSampleError(DataError):
    """A shard sample that cannot be trained on, under ``on_bad_image=error``.

    torch re-raises an exception from a DataLoader worker as ``type(exc)(text)`` with the
    worker's traceback in ``text``; keeping only its last line leaves the user one line.
    """

    def __init__(self, message: str):
        last = message.strip().splitlines()[-1] if message.strip() else message
        super().__init__(last.removeprefix(f"{type(self).__module__}.{type(self).__qualname__}: "))


class BadSamples:
    """Applies ``on_bad_image`` to unreadable shards and samples; under ``skip`` counts them
    and logs the count once per worker and epoch."""

    def __init__(self, policy: str, where: str):
        self.policy, self.where = policy, where
        self.count, self.first = 0, ""

    def __call__(self, exc: Exception) -> bool:
        """A webdataset error handler (True: continue), also called for bad samples."""
        message = " ".join(str(exc).split()) or repr(exc)
        if self.policy == "error":
            raise BadSampleError(
                f"{message}; skip bad samples with dataset.on_bad_image=skip"
            ) from exc
        self.count += 1
        self.first = self.first or message
        return True

    def report(self, epoch: int) -> None:
        if self.count:
            log.warning(
                "%s, epoch %d: skipped %d bad sample(s) (dataset.on_bad_image=skip), first: %s",
                self.where,
                epoch,
                self.count,
                self.first,
            )
