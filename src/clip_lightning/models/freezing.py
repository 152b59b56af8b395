"""Freezing helpers shared by both towers.

A frozen module gets no gradients *and* stays in eval mode, so dropout is off and BatchNorm
running statistics are not updated by batches the tower is not learning from.
"""

from __future__ import annotations

from torch import nn


def set_frozen_eval(root: nn.Module) -> None:
    """Put in eval mode every submodule of ``root`` whose own parameters are all frozen.

    Called after ``train()`` (Lightning calls it at every epoch start); without it a frozen
    BatchNorm layer would keep updating its running statistics.
    """
    for module in root.modules():
        params = list(module.parameters(recurse=False))
        if params and not any(p.requires_grad for p in params):
            module.eval()


def count_parameters(module: nn.Module) -> dict[str, int]:
    """Trainable and frozen parameter counts, for logging."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return {"trainable": trainable, "frozen": frozen}
