"""One check before anything is built: everything missing offline in one message with each fix,
hardware the machine lacks in one line, and one line for settings that quietly change on a CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from huggingface_hub import constants
from hydra.utils import instantiate

from clip_lightning.cli import preflight as preflight_module
from clip_lightning.cli.preflight import QUICKSTART_HINT, hardware_problems, preflight
from clip_lightning.data.loader_settings import available_cores, loader_options
from clip_lightning.errors import ClipLightningError
from clip_lightning.utils import hub
from tests.helpers import compose_train, needs_no_gpu


def test_an_unreachable_hub_is_probed_once_then_nothing_is_fetched(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(hub.datasets.config, "HF_HUB_OFFLINE", False)
    hub.offline_reason.cache_clear()
    try:
        reason = hub.offline_reason()
        assert reason is not None and reason.startswith("the Hugging Face hub is not reachable")
        assert constants.HF_HUB_OFFLINE and hub.datasets.config.HF_HUB_OFFLINE
        assert hub.offline_reason() is reason  # decided once per process
    finally:
        hub.offline_reason.cache_clear()  # the environment is restored by monkeypatch


def test_missing_local_files_and_data_are_listed_together(tmp_path: Path) -> None:
    cfg = compose_train(
        [
            "model.image_encoder.weights_file=/no/such/weights.safetensors",
            f"model.text_encoder.name_or_path={tmp_path / 'no-model'}",
            f"dataset.root={tmp_path / 'no-data'}",
        ]
    )
    with pytest.raises(ClipLightningError) as info:
        preflight(cfg, instantiate(cfg.dataset), ["val"], QUICKSTART_HINT)
    message = str(info.value)
    assert message.startswith("cannot start, 3 things to fix: (1) model.image_encoder")
    assert "weights_file=/no/such/weights.safetensors does not exist" in message
    assert f"(2) model.text_encoder.name_or_path={tmp_path / 'no-model'} does not exist" in message
    assert f"(3) dataset.root={tmp_path / 'no-data'} does not exist" in message


@pytest.mark.skipif(
    preflight_module.XLAAccelerator.is_available(), reason="checks a machine without TPU"
)
def test_a_tpu_accelerator_without_a_tpu_names_the_fix() -> None:
    (problem,) = hardware_problems(compose_train(["trainer.accelerator=tpu"]).trainer)
    assert problem.startswith("trainer.accelerator=tpu, but no TPU is available")
    assert "set trainer.accelerator=gpu or trainer=cpu" in problem


@needs_no_gpu
def test_fp16_and_several_devices_on_a_cpu_each_say_so_in_one_line(caplog) -> None:
    trainer = compose_train(
        ["trainer.accelerator=cpu", "trainer.devices=4", "trainer.precision=16-mixed"]
    ).trainer
    with caplog.at_level(logging.WARNING):
        assert hardware_problems(trainer) == []
    lines = caplog.text.strip().splitlines()
    assert len(lines) == 2
    assert "trainer.devices=4 on CPU (no GPU here): 4 processes will train with DDP" in lines[0]
    assert "trainer.precision=16-mixed runs as bf16-mixed on CPU" in lines[1]


def test_num_workers_above_the_core_count_is_capped_in_one_line(caplog) -> None:
    cores = available_cores()
    with caplog.at_level(logging.WARNING):
        options = loader_options(cores + 3, False, True, 2)
        assert loader_options(cores, False, True, 2)["num_workers"] == cores
    assert options["num_workers"] == cores
    (line,) = caplog.text.strip().splitlines()
    assert f"dataset.num_workers={cores + 3} is more than the {cores} CPU cores" in line
