"""LoRA adapters (Hu et al., 2021) on the towers, through ``peft``: ``model.lora.r=8``.

Each targeted linear layer ``W`` of a tower gets a trainable low-rank update ``B·A`` (rank
``r``, scaled by ``alpha / r``); every other weight of that tower is frozen, while the
projection heads and the loss's temperature keep training. The default targets are the
attention and MLP projections of each tower family (:data:`DEFAULT_TARGETS`).

open_clip's transformer blocks use ``nn.MultiheadAttention``, whose query/key/value projection
is a bare parameter that ``peft`` cannot wrap (its own support swaps weights in and out on every
forward call, which breaks DDP, GradCache and activation checkpointing). Each such block is
therefore replaced by :class:`LinearMultiheadAttention`, which computes the same attention from
two ordinary ``nn.Linear`` layers, ``in_proj`` and ``out_proj``. :func:`merged` folds the
adapters into the weights and restores ``nn.MultiheadAttention``, so an export loads in
open_clip or transformers without ``peft``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from torch import nn

from clip_lightning.errors import ConfigError
from clip_lightning.models.freezing import count_parameters
from clip_lightning.models.targets import ArgumentsOf
from clip_lightning.utils.typecheck import Range

if TYPE_CHECKING:
    from clip_lightning.module import CLIPModule

# Attention and MLP projections by tower family, as regular expressions over module names
# (peft matches a string against the whole name).
DEFAULT_TARGETS = {
    # open_clip's own transformers (after LinearMultiheadAttention replaced the attention)
    "open_clip": r".*resblocks\.\d+\.(attn\.(in_proj|out_proj)|mlp\.(c_fc|c_proj))",
    # timm ViTs (also open_clip towers built on a timm trunk)
    "timm_vit": r".*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))",
    # transformers CLIP and SigLIP towers
    "hf_clip": (
        r".*encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))"
    ),
    # BERT-family text encoders (BERT, MiniLM, RoBERTa; DistilBERT's q_lin ... lin2)
    "bert": (
        r".*layer\.\d+\.(attention\.(self\.(query|key|value)|output\.dense|q_lin|k_lin|v_lin"
        r"|out_lin)|intermediate\.dense|output\.dense|ffn\.(lin1|lin2))"
    ),
}
DEFAULT_PATTERN = "|".join(f"(?:{pattern})" for pattern in DEFAULT_TARGETS.values())
TOWER_KEYS = {"image": "image_encoder", "text": "text_encoder"}


class LinearMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (same query/key/value width, no ``bias_k``/``add_zero_attn``)
    computed from ``nn.Linear`` layers that adapters can wrap.

    The forward call takes the same arguments and gives the same output; the attention weights
    are not returned (``None``), as with ``need_weights=False``.
    """

    def __init__(
        self, embed_dim: int, num_heads: int, dropout: float, bias: bool, batch_first: bool
    ):
        super().__init__()
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.batch_first = batch_first
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    def replaces(cls, attention: nn.Module) -> bool:
        """Whether ``attention`` is a ``nn.MultiheadAttention`` this class can stand in for."""
        return (
            isinstance(attention, nn.MultiheadAttention)
            and attention._qkv_same_embed_dim
            and attention.bias_k is None
            and not attention.add_zero_attn
        )

    @classmethod
    def from_attention(cls, attention: nn.MultiheadAttention) -> LinearMultiheadAttention:
        """The equivalent of ``attention``, with its weights."""
        bias = attention.in_proj_bias is not None
        new = cls(
            attention.embed_dim,
            attention.num_heads,
            attention.dropout,
            bias,
            attention.batch_first,
        ).to(attention.in_proj_weight)
        with torch.no_grad():
            new.in_proj.weight.copy_(attention.in_proj_weight)
            new.out_proj.weight.copy_(attention.out_proj.weight)
            if bias:
                new.in_proj.bias.copy_(attention.in_proj_bias)
                new.out_proj.bias.copy_(attention.out_proj.bias)
        return new

    def to_attention(self) -> nn.MultiheadAttention:
        """Back to ``nn.MultiheadAttention`` with this module's (merged) weights."""
        weight = self.in_proj.weight
        attention = nn.MultiheadAttention(
            self.embed_dim,
            self.num_heads,
            dropout=self.dropout,
            bias=self.in_proj.bias is not None,
            batch_first=self.batch_first,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            attention.in_proj_weight.copy_(weight)
            attention.out_proj.weight.copy_(self.out_proj.weight)
            if self.in_proj.bias is not None:
                attention.in_proj_bias.copy_(self.in_proj.bias)
                attention.out_proj.bias.copy_(self.out_proj.bias)
        return attention

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (x.unsqueeze(0) for x in (query, key, value))
        elif not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        width = self.embed_dim
        if query is key and key is value:  # self-attention: one projection
            q, k, v = self.in_proj(query).split(width, dim=-1)
        else:  # each input through its third of the projection (adapters included)
            q = self.in_proj(query)[..., :width]
            k = self.in_proj(key)[..., width : 2 * width]
            v = self.in_proj(value)[..., 2 * width :]
        batch, length, source = query.shape[0], query.shape[1], key.shape[1]
        q, k, v = (
            x.reshape(batch, -1, self.num_heads, width // self.num_heads).transpose(1, 2)
            for x in (q, k, v)
        )
        mask = self._mask(attn_mask, key_padding_mask, batch, length, source, q.dtype)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and mask is None,
        )
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, width))
        if unbatched:
            return out.squeeze(0), None
        return (out if self.batch_first else out.transpose(0, 1)), None

    def _mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        batch: int,
        length: int,
        source: int,
        dtype: torch.dtype,
    ) -> torch.Tensor | None:
        """``nn.MultiheadAttention``'s masks (``True`` = masked out, or additive floats) as one
        additive ``[batch, heads, length, source]`` mask."""
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, dtype)
            if mask.dim() == 3:
                mask = mask.view(batch, self.num_heads, length, source)
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, dtype).view(batch, 1, 1, source)
            mask = padding if mask is None else mask + padding
        return mask


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(dtype)


@dataclass(frozen=True)
class LoRASettings:
    """``model.lora``: LoRA on (``r``) or off (``None``), and where the adapters go.

    ``target_modules`` ``None`` means :data:`DEFAULT_PATTERN`; else a regular expression over
    module names, or a list of name suffixes, as peft takes them. ``alpha`` ``None`` means ``r``.
    """

    r: Annotated[int, Range(ge=1)] | None = None
    alpha: Annotated[int, Range(ge=1)] | None = None
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0
    towers: Sequence[Literal["image", "text"]] = ("image", "text")
    target_modules: str | Sequence[str] | None = None


#: ``model.lora`` as :class:`~clip_lightning.module.CLIPModule` takes it: plain data, checked
#: against :class:`LoRASettings` (a checkpoint's copy as well as the user's config).
LoRAConfig = Annotated[Mapping[str, Any], ArgumentsOf(LoRASettings)]


def add_lora(towers: Mapping[str, nn.Module], settings: LoRASettings) -> None:
    """Give the towers named in ``settings.towers`` LoRA adapters and freeze their weights
    (nothing when ``settings.r`` is ``None``)."""
    if settings.r is None:
        return
    targets = settings.target_modules or DEFAULT_PATTERN
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha or settings.r,
        lora_dropout=settings.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
    )
    for name in settings.towers:
        tower = towers[TOWER_KEYS[name]]
        if getattr(tower, "feature_cache", None) is not None:
            raise ConfigError(
                "model.text_encoder.cache serves a frozen text tower's features, but LoRA "
                "trains that tower: set model.text_encoder.cache=null or model.lora.towers=[image]"
            )
        _replace_attention(tower, config)
        if not any(check_target_module_exists(config, n) for n, _ in tower.named_modules()):
            raise ConfigError(
                f"the {name} tower ({_describe(tower)}) has no layer model.lora.target_modules "
                "matches (the defaults cover transformer attention and MLP projections); set "
                "model.lora.target_modules=[...] to its layer names (e.g. [conv1,conv2] for a "
                f"ResNet) or drop {name} from model.lora.towers"
            )
        tower.requires_grad_(False)
        inject_adapter_in_model(config, tower)
        for param_name, param in tower.named_parameters():
            param.requires_grad_("lora_" in param_name)


def _replace_attention(tower: nn.Module, config: LoraConfig) -> None:
    """Swap in :class:`LinearMultiheadAttention` where a target names its projections."""
    for name, module in list(tower.named_modules()):
        targeted = any(
            check_target_module_exists(config, f"{name}.{part}") for part in ("in_proj", "out_proj")
        )
        if targeted and LinearMultiheadAttention.replaces(module):
            tower.set_submodule(name, LinearMultiheadAttention.from_attention(module))


def _describe(tower: nn.Module) -> str:
    inner = getattr(tower, "model", tower)
    return f"{type(tower).__name__}, {type(inner).__name__}"


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` holds LoRA adapters."""
    return any(isinstance(module, BaseTunerLayer) for module in model.modules())


def merge_adapters(root: nn.Module) -> None:
    """Fold every adapter of ``root`` into its layer's weight, in place, and put the plain
    layers (and ``nn.MultiheadAttention``) back where the adapters and stand-ins were."""
    for name, module in list(root.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            root.set_submodule(name, module.get_base_layer())
    for name, module in list(root.named_modules()):
        if isinstance(module, LinearMultiheadAttention):
            root.set_submodule(name, module.to_attention())


def merged(model: CLIPModule) -> CLIPModule:
    """``model`` with its LoRA adapters merged (a copy; ``model`` itself without adapters):
    the plain architecture an export writes and WiSE-FT interpolates."""
    if not has_lora(model):
        return model
    plain = copy.deepcopy(model)
    merge_adapters(plain)
    plain.hparams["lora"] = None
    plain.lora = LoRASettings()
    return plain


def trainable_summary(model: nn.Module, settings: LoRASettings) -> str:
    """One line: trainable of total parameters, and the adapters when LoRA is on."""
    counts = count_parameters(model)
    total = counts["trainable"] + counts["frozen"]
    share = 100.0 * counts["trainable"] / max(total, 1)
    line = f"trainable parameters: {counts['trainable']:,} of {total:,} ({share:.2f}%)"
    if settings.r is not None:
        line += f"; LoRA r={settings.r} on the {' and '.join(settings.towers)} tower(s)"
    return line
