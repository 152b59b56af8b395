"""Console output of the command-line tasks: what a run shows is its config, progress, the
recall table and the run directory, not third-party noise.

Each filter names one message of one library; nothing else is silenced.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

from huggingface_hub.utils import logging as hub_logging
from lightning.fabric.utilities.warnings import PossibleUserWarning
from transformers.utils import logging as transformers_logging

# Lightning's INFO lines through its rank-zero loggers that are not about the run: the
# advertisements for its hosted services ("💡 Tip: For seamless cloud uploads ...", "... try
# installing litlogger ..."), its note that it keeps the configured callbacks.ModelSummary
# instead of adding its own, and its Ctrl-C notice (the task wrapper reports Ctrl-C itself)
_RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)
_DROPPED_PREFIXES = (
    "💡 Tip:",
    "Trainer already configured with model summary callbacks",
    "\nDetected KeyboardInterrupt",
)
# transformers' per-tensor progress bar while it copies weights into a model (~1 s)
_WEIGHT_LOADING_BAR = "Loading weights"


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_DROPPED_PREFIXES)


_DROP_LINES = _DropLines()


def _no_weight_loading_bar(factory: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """transformers' tqdm hook: its weight-loading bar is disabled, download bars are kept."""
    if kwargs.get("desc") == _WEIGHT_LOADING_BAR:
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


def quiet_console() -> None:
    """Install the filters (idempotent: once per process is enough, more is harmless)."""
    # faiss reports at INFO which of its builds it tried to load (index, search, bench)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _DROP_LINES not in logger.filters:
            logger.addFilter(_DROP_LINES)
    # huggingface_hub prints through a handler of its own and again through the root logger
    # (Hydra's console and the run's log file): every hub warning appeared twice
    hub = hub_logging.get_logger()
    for handler in list(hub.handlers):
        hub.removeHandler(handler)
    transformers_logging.set_tqdm_hook(_no_weight_loading_bar)
    # Lightning's own pytree helper uses torch's deprecated LeafSpec on every optimizer step
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
    # said once by the preflight (clip_lightning.cli.preflight), with the fix
    warnings.filterwarnings(
        "ignore",
        message=r"You passed `Trainer\(accelerator='cpu', precision='16-mixed'\)`",
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
    # log_every_n_steps counts optimizer steps across epochs, so several short epochs (a small
    # dataset) still log their loss; Lightning warns as if the count restarted every epoch
    warnings.filterwarnings(
        "ignore",
        message=r"The number of training batches \(\d+\) is smaller than the logging interval",
        category=PossibleUserWarning,
    )
    # FSDP2 (trainer=fsdp) warns on every tower returning a view, in case a caller modifies it
    # in place; CLIPModule never does
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(.*\) returned a view tensor")
