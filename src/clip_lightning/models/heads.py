"""Projection heads mapping encoder features into the shared embedding space."""

from __future__ import annotations

import torch
from torch import nn

from clip_lightning.errors import ConfigError


class IdentityHead(nn.Module):
    """No projection, for towers that already project into the shared space (open_clip, HF CLIP).

    The tower's width must already be ``embed_dim``: a silent mismatch would only surface as a
    shape error deep in the loss, so it is refused here.
    """

    def __init__(self, in_features: int, embed_dim: int):
        super().__init__()
        if in_features != embed_dim:
            raise ConfigError(
                f"model.head=identity needs the tower's output width ({in_features}) to equal "
                f"model.embed_dim ({embed_dim}); set model.embed_dim={in_features} or use "
                "model/head=linear"
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class LinearHead(nn.Module):
    """A bias-free linear projection, as in CLIP."""

    def __init__(self, in_features: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_features, embed_dim, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


class MLPHead(nn.Module):
    """Linear -> GELU -> Linear -> Dropout with a residual and LayerNorm.

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
