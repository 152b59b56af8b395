"""Fixtures of the data tests; the on-disk dataset builders are in :mod:`tests.helpers.data`."""

from __future__ import annotations

import datasets
import pytest


@pytest.fixture(autouse=True)
def _hf_cache_in_tmp(tmp_path, monkeypatch):
    """Parquet loading writes an arrow cache; keep it out of the user's ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
