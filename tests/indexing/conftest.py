"""One tiny checkpoint and one set of shards for every embed, index and search test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.embedding import write_shards
from tests.test_zeroshot import save_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, int]]:
    """The brace URL of the shards and their good keys (see :func:`write_shards`)."""
    return write_shards(tmp_path_factory.mktemp("shards"))
