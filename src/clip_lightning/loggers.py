"""Lightning loggers as the configs in ``conf/logger`` use them."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger


class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger`` without the ``anonymous`` argument it always passes.

    Lightning hands ``anonymous=None`` to ``wandb.init`` even when it is not set, and wandb
    (0.31 here) answers every run with "The anonymous setting has no effect and will be
    removed".
    Only an explicit ``anonymous=true`` is passed on.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            del self._wandb_init["anonymous"]
