"""The console filters: each third-party line the user saw twice, or that was noise, is gone,
and only that line."""

from __future__ import annotations

import logging

from huggingface_hub.utils import logging as hub_logging
from transformers.utils import logging as transformers_logging

from clip_lightning.cli.console import quiet_console


def test_hub_warnings_reach_the_console_once(caplog) -> None:
    quiet_console()
    # huggingface_hub's own stream handler printed every warning a second time
    assert hub_logging.get_logger().handlers == []
    with caplog.at_level(logging.WARNING):
        hub_logging.get_logger("huggingface_hub.utils._http").warning("Retrying in 1s")
    assert [r.getMessage() for r in caplog.records] == ["Retrying in 1s"]


def test_only_the_weight_loading_bar_is_disabled() -> None:
    quiet_console()
    loading = transformers_logging.tqdm(range(3), desc="Loading weights")
    downloading = transformers_logging.tqdm(range(3), desc="model.safetensors", disable=False)
    assert loading.disable and not downloading.disable
    loading.close()
    downloading.close()
