"""Optimizer parameter groups and the LR schedule.

Each tower gets its own learning rate (pretrained towers want a smaller one than the freshly
initialised heads), and biases, norm weights and the loss's temperature get no weight decay.

With layer-wise LR decay (``optimizer.layer_decay``, as in BEiT, ELECTRA and the CLIP
fine-tuning recipes) a tower's layers are numbered from the stem (0) through its blocks to
what follows the last block (the top, ``L``), and layer ``i`` learns at
``tower_lr · decay^(L − i)``: the top at the tower's rate, each layer below ``decay`` times
slower, so the general features near the input move least.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from timm.models import group_parameters
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_cosine_schedule_with_warmup

from clip_lightning.models.targets import Part, check_part, check_value
from clip_lightning.utils.typecheck import Doc, Range

#: ``optimizer.layer_decay``: the factor between the learning rates of adjacent layers.
LayerDecay = Annotated[float, Range(gt=0, le=1)]


def split_layer_decay(
    optimizer: Mapping[str, Any],
) -> tuple[dict[str, Any], float | None]:
    """The optimizer config without ``layer_decay``, and its value: ``optimizer.layer_decay``
    shapes the parameter groups (:func:`param_groups`), it is not an argument of the optimizer
    class."""
    rest = {k: v for k, v in optimizer.items() if k != "layer_decay"}
    return rest, optimizer.get("layer_decay")


@dataclass(frozen=True)
class _OptimizerRule(Part):
    """A partial optimizer config that may hold ``layer_decay`` besides the class's arguments."""

    partial: bool = True

    def check(self, value: Any, key: str) -> None:
        rest, layer_decay = split_layer_decay(value)
        check_value(layer_decay, LayerDecay | None, f"{key}.layer_decay")
        check_part(rest, key, partial=True)


#: The ``optimizer`` argument of :class:`~clip_lightning.module.CLIPModule`.
OptimizerPart = Annotated[Mapping[str, Any], _OptimizerRule(), Doc("a config with a _target_")]


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")


def param_groups(
    towers: Mapping[str, nn.Module],
    rest: nn.Module,
    tower_lr: Mapping[str, float],
    lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
) -> list[dict]:
    """Groups ``(tower or rest) x (decay, no decay)``; frozen parameters and empty groups dropped.

    ``rest`` holds everything that is not a tower (projection heads, the loss's logit scale).
    With ``layer_decay`` each tower's groups are further split by layer (``image_encoder.layer3``,
    ...), each at its geometrically decayed LR (module docstring).
    """
    tower_ids = {id(p) for tower in towers.values() for p in tower.parameters()}
    named_sets = {name: list(tower.named_parameters()) for name, tower in towers.items()}
    named_sets["head"] = [(n, p) for n, p in rest.named_parameters() if id(p) not in tower_ids]
    groups = []
    for set_name, named in named_sets.items():
        layers: dict[str, int] = {}
        top = 0
        if layer_decay is not None and set_name in towers:
            layers = layer_ids(towers[set_name])
            top = max(layers.values(), default=0)
        for layer in range(top + 1):
            in_layer = [(n, p) for n, p in named if p.requires_grad and layers.get(n, 0) == layer]
            group_lr = tower_lr.get(set_name, lr) * (layer_decay or 1.0) ** (top - layer)
            name = f"{set_name}.layer{layer}" if layers else set_name
            groups.extend(_decay_split(in_layer, group_lr, weight_decay, name))
    return groups


def _decay_split(
    named: Sequence[tuple[str, nn.Parameter]], lr: float, weight_decay: float, name: str
) -> list[dict[str, Any]]:
    """The weight-decayed and the undecayed parameters of ``named`` as groups (empty dropped)."""
    decay = [p for n, p in named if not _no_decay(n, p)]
    no_decay = [p for n, p in named if _no_decay(n, p)]
    return [
        {"params": params, "lr": lr, "weight_decay": wd, "name": name + suffix}
        for params, wd, suffix in ((decay, weight_decay, ""), (no_decay, 0.0, "_no_decay"))
        if params
    ]


# a block of a transformer stack: open_clip's resblocks.N, HF's layers.N / layer.N, blocks.N
_BLOCK = re.compile(r"(?:^|\.)(?:resblocks|layers?|blocks)\.(\d+)\.")
# what comes before the blocks: patch/token/position embeddings, open_clip's conv1 and ln_pre
_STEM = re.compile(r"embed|(?:^|\.)(?:conv1|ln_pre|cls_token|reg_token)(?:\.|$)")


def layer_ids(tower: nn.Module) -> dict[str, int]:
    """Each parameter's layer, 0 (stem) to the top (what follows the last block).

    A timm tower is numbered by timm's own group matcher (``model.group_matcher``). Other towers
    (open_clip, transformers) by their block stack: block ``n`` is layer ``n + 1``, the
    embeddings before it are layer 0, and everything else (final norms, pooling, projection)
    is the top.
    """
    inner = getattr(tower, "model", None)
    if inner is not None and hasattr(inner, "group_matcher"):
        groups = group_parameters(inner, inner.group_matcher(coarse=False))
        ranks = {group: rank for rank, group in enumerate(sorted(groups))}
        return {f"model.{n}": ranks[group] for group, names in groups.items() for n in names}
    named = [name for name, _ in tower.named_parameters()]
    blocks = [int(m.group(1)) if (m := _BLOCK.search(name)) else None for name in named]
    order = {block: rank for rank, block in enumerate(sorted({b for b in blocks if b is not None}))}
    top = len(order) + 1
    return {
        name: order[block] + 1 if block is not None else (0 if _STEM.search(name) else top)
        for name, block in zip(named, blocks, strict=True)
    }


def describe_lrs(groups: Sequence[Mapping[str, Any]]) -> str:
    """The learning rate of each group, one ``name lr`` pair per group, for the start-up log."""
    rates = dict.fromkeys(g["name"].removesuffix("_no_decay") for g in groups)
    for group in groups:
        rates[group["name"].removesuffix("_no_decay")] = group["lr"]
    return ", ".join(f"{name} {lr:.3g}" for name, lr in rates.items())


def cosine_with_warmup(
    optimizer: Optimizer, num_training_steps: int, warmup: float = 0.05
) -> LambdaLR:
    """Linear warmup then cosine decay; ``warmup`` < 1 is a fraction of the steps, else a count."""
    warmup_steps = int(warmup * num_training_steps) if warmup < 1 else int(warmup)
    return get_cosine_schedule_with_warmup(optimizer, warmup_steps, num_training_steps)
