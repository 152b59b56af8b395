"""Console output of the command-line tasks: what a run shows is its config, progress, the
recall table and the run directory, not third-party noise.

Each filter names one message of one library; nothing else is silenced.
"""

from __future__ import annotations

import logging
import warnings

from lightning.fabric.utilities.warnings import PossibleUserWarning

# Lightning's advertisements for its hosted services ("💡 Tip: For seamless cloud uploads ...",
# "... try installing litlogger ..."), logged at INFO through its rank-zero loggers
_TIP_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
_TIP_PREFIX = "💡 Tip:"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIP_PREFIX)


_DROP_TIPS = _DropTips()


def quiet_console() -> None:
    """Install the filters (idempotent: once per process is enough, more is harmless)."""
    for name in _TIP_LOGGERS:
        logger = logging.getLogger(name)
        if _DROP_TIPS not in logger.filters:
            logger.addFilter(_DROP_TIPS)
    # Lightning's own pytree helper uses torch's deprecated LeafSpec on every optimizer step
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
    # frozen towers are kept in eval mode on purpose (no dropout / batch-norm updates in a
    # locked tower), which Lightning flags at the start of every fit
    warnings.filterwarnings(
        "ignore",
        message=r"Found \d+ module\(s\) in eval mode at the start of training",
        category=PossibleUserWarning,
    )
    # embed's loader yields ready batches from an IterableDataset, whose sample indices
    # Lightning cannot track for its prediction writer; embed's writer does not use them
    warnings.filterwarnings(
        "ignore", message=r"Couldn't infer the batch indices fetched from your dataloader"
    )
