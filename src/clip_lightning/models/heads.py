"""Projection heads mapping encoder features into the shared embedding space."""

from __future__ import annotations

import torch
from torch import nn


class LinearHead(nn.Module):
    """A bias-free linear projection, as in CLIP."""

    def __init__(self, in_features: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_features, embed_dim, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


class MLPHead(nn.Module):
    """Linear -> GELU -> Linear -> Dropout with a residual and LayerNorm (the earlier project's).

    The residual keeps the first projection's signal, so the head starts close to linear and
    the extra capacity helps mostly when the encoders are frozen.
    """

    def __init__(self, in_features: int, embed_dim: int, dropout: float = 0.1):
        super().__init__()
        self.proj = nn.Linear(in_features, embed_dim)
        self.fc = nn.Linear(embed_dim, embed_dim)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = self.proj(features)
        return self.norm(projected + self.dropout(self.fc(self.act(projected))))
