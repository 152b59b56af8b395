"""Caption tokenization shared by the data loaders and the inference API, so both pad and
truncate identically."""

from __future__ import annotations

from typing import Any

import torch


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Pad to the longest text of the batch (dynamic padding) and truncate to ``max_length``."""
    tokens = tokenizer(
        texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
