"""Optimizer parameter groups and the LR schedule.

Each tower gets its own learning rate (pretrained towers want a smaller one than the freshly
initialised heads), and biases, norm weights and the loss's temperature get no weight decay.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_cosine_schedule_with_warmup


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")


def param_groups(
    towers: Mapping[str, nn.Module],
    rest: nn.Module,
    tower_lr: Mapping[str, float],
    lr: float,
    weight_decay: float,
) -> list[dict]:
    """Groups ``(tower or rest) x (decay, no decay)``; frozen parameters and empty groups dropped.

    ``rest`` holds everything that is not a tower (projection heads, the loss's logit scale).
    """
    tower_ids = {id(p) for tower in towers.values() for p in tower.parameters()}
    named_sets = {name: list(tower.named_parameters()) for name, tower in towers.items()}
    named_sets["head"] = [(n, p) for n, p in rest.named_parameters() if id(p) not in tower_ids]
    groups = []
    for set_name, named in named_sets.items():
        group_lr = tower_lr.get(set_name, lr)
        trainable = [(n, p) for n, p in named if p.requires_grad]
        decay = [p for n, p in trainable if not _no_decay(n, p)]
        no_decay = [p for n, p in trainable if _no_decay(n, p)]
        for params, wd, suffix in ((decay, weight_decay, ""), (no_decay, 0.0, "_no_decay")):
            if params:
                groups.append(
                    {
                        "params": params,
                        "lr": group_lr,
                        "weight_decay": wd,
                        "name": set_name + suffix,
                    }
                )
    return groups


def cosine_with_warmup(
    optimizer: Optimizer, num_training_steps: int, warmup: float = 0.05
) -> LambdaLR:
    """Linear warmup then cosine decay; ``warmup`` < 1 is a fraction of the steps, else a count."""
    warmup_steps = int(warmup * num_training_steps) if warmup < 1 else int(warmup)
    return get_cosine_schedule_with_warmup(optimizer, warmup_steps, num_training_steps)
