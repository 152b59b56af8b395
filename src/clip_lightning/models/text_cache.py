"""Memoised features of a frozen text tower, in memory and optionally on disk.

A frozen tower maps the same tokens to the same features every epoch, so recomputing them is
wasted work -- often most of a step when the image tower is small. Captions are keyed by their
token ids (padding removed). A cache file is only valid for the exact tower that wrote it, so
its name and contents carry a fingerprint of everything that shapes a feature: the weights
themselves, the tokenizer, ``max_length`` and the pooling.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clip_lightning.errors import ModelLoadError
from clip_lightning.utils.torch_io import read_torch_file

Encode = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def hash_module_weights(module: nn.Module) -> str:
    """SHA-256 over every tensor of the state dict (name, dtype, shape and bytes).

    Hashing the weights rather than a file name also tells apart two random initialisations
    and two ``config_overrides`` of the same checkpoint.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def hash_tokenizer(tokenizer: Any) -> str:
    """SHA-256 of a tokenizer's full definition (vocabulary, normaliser, special tokens)."""
    if getattr(tokenizer, "is_fast", False):
        definition = tokenizer.backend_tokenizer.to_str()
    else:
        definition = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(f"{type(tokenizer).__name__}|{definition}".encode()).hexdigest()


class TextFeatureCache:
    """Token ids -> pooled features; computes only the captions it has not seen.

    Args:
        path: a file to load the cache from (when it exists and its fingerprint matches) and
            to :meth:`save` it to; ``None`` keeps it in memory only.
        fingerprint: what identifies the tower that computes the features; a file written
            with a different fingerprint is ignored.
    """

    def __init__(
        self, path: str | Path | None = None, fingerprint: Mapping[str, Any] | None = None
    ) -> None:
        self.features: dict[bytes, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0
        self.path = Path(path) if path is not None else None
        self.fingerprint = dict(fingerprint or {})
        self._unsaved = 0
        if self.path is not None:
            self.load()

    @classmethod
    def from_option(
        cls, cache: str | os.PathLike | None, fingerprint: Mapping[str, Any]
    ) -> TextFeatureCache | None:
        """The cache a text tower's ``cache`` option asks for, named like the dataset's.

        ``None``: no cache; ``"memory"``: in memory only; a folder: in memory and in a file
        there whose name carries a digest of ``fingerprint``, so a changed tower never reads
        stale features.
        """
        if cache is None:
            return None
        if str(cache) == "memory":
            return cls(fingerprint=fingerprint)
        digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
        return cls(Path(cache).expanduser() / f"text-features-{digest[:24]}.pt", fingerprint)

    def __len__(self) -> int:
        return len(self.features)

    def __call__(
        self, encode: Encode, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        # One host copy per batch, not one per caption (each would be a GPU sync).
        ids = input_ids.cpu().numpy().astype(np.int64, copy=False)
        mask = attention_mask.cpu().numpy().astype(bool)
        keys = [row[row_mask].tobytes() for row, row_mask in zip(ids, mask, strict=True)]
        first_missing: dict[bytes, int] = {}
        for row, key in enumerate(keys):
            if key not in self.features and key not in first_missing:
                first_missing[key] = row
        self.misses += len(first_missing)
        self.hits += len(keys) - len(first_missing)
        if first_missing:
            self._compute(encode, input_ids, attention_mask, first_missing)
        features = torch.stack([self.features[key] for key in keys])
        return features.to(input_ids.device, non_blocking=True)

    def _compute(
        self,
        encode: Encode,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        missing: dict[bytes, int],
    ) -> None:
        """Encode the missing captions in float32, so a cache does not depend on precision."""
        rows = torch.tensor(list(missing.values()), device=input_ids.device)
        mask = attention_mask[rows]
        width = int(mask.sum(1).max())
        device = input_ids.device
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            computed = encode(input_ids[rows, :width], mask[:, :width]).float()
        if self.features:
            # A cache loaded from disk lives on the CPU until the first batch says where to be.
            stored_device = next(iter(self.features.values())).device
            if stored_device != device:
                self.features = {k: v.to(device) for k, v in self.features.items()}
        self.features.update(zip(missing, computed, strict=True))
        self._unsaved += len(missing)

    def load(self) -> bool:
        """Read :attr:`path` if it exists and was written for the same fingerprint.

        The file is read as data (:func:`~clip_lightning.utils.torch_io.read_torch_file`); one
        that is not a cache this class wrote is a one-line :class:`ModelLoadError`.
        """
        if self.path is None or not self.path.is_file():
            return False
        try:
            payload = read_torch_file(self.path)
            usable = _is_cache_payload(payload)
        except Exception:  # a pickled object, a truncated or foreign file: many types
            usable = False
        if not usable:
            raise ModelLoadError(
                f"text feature cache {str(self.path)!r} is not a cache clip-lightning wrote "
                "(unreadable, or not token keys with one feature row each); delete it and it "
                "is rebuilt"
            )
        if payload["fingerprint"] != self.fingerprint:
            return False
        self.features = dict(zip(payload["keys"], payload["features"], strict=True))
        self._unsaved = 0
        return True

    def save(self) -> bool:
        """Write the cache to :attr:`path` atomically (temporary file + ``os.replace``).

        Skipped when nothing new was computed since the last load or save, so calling it
        every epoch costs nothing once the cache is complete.
        """
        if self.path is None or not self._unsaved or not self.features:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self.features)
        payload = {
            "fingerprint": self.fingerprint,
            "keys": keys,
            "features": torch.stack([self.features[k] for k in keys]).cpu(),
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            torch.save(payload, tmp)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        self._unsaved = 0
        return True


def _is_cache_payload(payload: Any) -> bool:
    """What :meth:`TextFeatureCache.save` writes: a fingerprint, token-id keys and one float
    feature row per key."""
    if not isinstance(payload, dict) or not isinstance(payload.get("fingerprint"), dict):
        return False
    keys, features = payload.get("keys"), payload.get("features")
    return (
        isinstance(keys, list)
        and all(isinstance(key, bytes) for key in keys)
        and isinstance(features, torch.Tensor)
        and features.is_floating_point()
        and features.dim() == 2
        and features.shape[0] == len(keys)
    )


def check_cache_option(cache: str | None, freeze: bool, unfreeze_last: int) -> None:
    """A feature cache is only valid for a fully frozen tower (a learning one gives new
    features every step); anything else is a configuration error."""
    if cache is not None and (not freeze or unfreeze_last):
        raise ModelLoadError(
            "model.text_encoder.cache needs a fully frozen text tower (a learning one gives new "
            "features every step): set model.text_encoder.freeze=true and "
            "model.text_encoder.unfreeze_last=0, or model.text_encoder.cache=null"
        )


class CachedTextTower(nn.Module):
    """Base of the text towers: ``forward`` serves a frozen tower's features from its
    :class:`TextFeatureCache` when it has one, and otherwise runs the subclass's ``encode``."""

    feature_cache: TextFeatureCache | None = None

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The tower's features for a tokenized batch (never cached); subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__} must define encode()")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.feature_cache is not None:
            return self.feature_cache(self.encode, input_ids, attention_mask)
        return self.encode(input_ids, attention_mask)

    def save_feature_cache(self) -> bool:
        """Persist the feature cache if it has a folder and new entries; True if written."""
        return self.feature_cache is not None and self.feature_cache.save()
