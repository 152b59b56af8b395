"""One set of shards for the embed, index and search tests (the checkpoint is the session's
``tiny_checkpoint``)."""

from __future__ import annotations

import pytest

from tests.helpers.embedding import write_shards


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, int]]:
    """The brace URL of the shards and their good keys (see :func:`write_shards`)."""
    return write_shards(tmp_path_factory.mktemp("shards"))
