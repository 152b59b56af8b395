"""Smoke test of ``python -m clip_lightning.bench`` (run through the task wrapper): every
sub-benchmark at tiny sizes."""

from __future__ import annotations

import json
import math

import pytest

from clip_lightning.cli.bench import BENCHMARKS, bench
from clip_lightning.errors import ClipLightningError
from tests.helpers.pretrained import TINY_OPEN_CLIP
from tests.helpers.tasks import task_in_process

TINY_BENCH = [
    "trainer.accelerator=cpu",
    "model.image_encoder.image_size=32",
    "+model.text_encoder.config_overrides={num_hidden_layers:1}",
    "model.embed_dim=32",
    "train_step.batch_size=8",
    "train_step.warmup_steps=1",
    "train_step.steps=2",
    "text_cache.batch_size=8",
    "text_cache.dataset_size=16",
    "text_cache.steps=1",
    "text_cache.repeats=1",
    "retrieval.num_images=50",
    "retrieval.repeats=1",
    "+data_pipeline.num_images=8",
    "+data_pipeline.batch_size=4",
    "+data_pipeline.workers=[0]",
    "+data_pipeline.image_size=32",
    "+data_pipeline.cache_image_size=32",
    "grad_checkpointing.batch_size=8",
    "grad_checkpointing.steps=1",
    "grad_checkpointing.repeats=1",
    "vector_search.num_vectors=2000",
    "vector_search.dim=32",
    "vector_search.num_queries=20",
    "vector_search.latency_queries=5",
    "embed.num_images=8",
    "embed.image_size=32",
    "embed.batch_size=4",
    "embed.workers=[0]",
    "embed.samples_per_shard=4",
    "image_check.num_images=8",
    "image_check.repeats=1",
    "image_check.workers=1",
]


# Signed or possibly-zero figures: the overhead is a difference of two noisy medians, and a tiny
# retrieval run may allocate nothing above the memory already resident.
SIGNED = {"overhead_ms_per_step", "peak_extra_mib", "full_peak_mib", "lora_peak_mib"}


def _non_positive(figures: dict) -> dict:
    return {
        k: v
        for k, v in figures.items()
        if k not in SIGNED and isinstance(v, int | float) and v <= 0
    }


@pytest.mark.slow
def test_every_benchmark_runs_and_writes_json(tmp_path):
    names = list(BENCHMARKS)
    out = tmp_path / "figures.json"
    tiny_open_clip = tmp_path / "tiny-clip"  # the LoRA benchmark's pair, as a local-dir model
    tiny_open_clip.mkdir()
    config = {"model_cfg": TINY_OPEN_CLIP["tiny-clip-test"]}
    (tiny_open_clip / "open_clip_config.json").write_text(json.dumps(config))
    lora = [f"lora.arch=local-dir:{tiny_open_clip}", "lora.batch_size=4", "lora.steps=1"]
    overrides = [
        f"only=[{','.join(names)}]", f"out={out}", f"hydra.run.dir={tmp_path / 'run'}",
        *TINY_BENCH, *lora, "lora.repeats=1",
    ]  # fmt: skip
    task_in_process(bench, "bench", tmp_path, *overrides)

    figures = json.loads(out.read_text())
    assert json.loads((tmp_path / "run" / "bench.json").read_text()) == figures
    assert figures["machine"]["cpu_count"] >= 1
    for name in names:
        assert figures[name], name
        assert not _non_positive(figures[name]), (name, figures[name])
    assert figures["train_step"]["trainer_pairs_per_s"] > 0
    assert figures["train_step"]["plain_pairs_per_s"] > 0
    assert figures["text_cache"]["cached_steps_per_s"] > 0
    assert figures["text_cache"]["uncached_steps_per_s"] > 0
    assert figures["retrieval"]["seconds"] > 0
    assert figures["retrieval"]["peak_extra_mib"] >= 0
    assert math.isfinite(figures["train_step"]["overhead_ms_per_step"])
    assert figures["lora"]["lora_trainable_params"] < figures["lora"]["full_trainable_params"]
    assert figures["lora"]["lora_total_params"] > figures["lora"]["full_total_params"]  # adapters
    for variant in ("full", "lora"):  # lora.batch_size=4 pairs a step
        step_s = figures["lora"][f"{variant}_step_s"]
        assert figures["lora"][f"{variant}_pairs_per_s"] == pytest.approx(4 / step_s)
    rates = figures["data_pipeline"]["images_per_second"]
    assert all(rate > 0 for by_workers in rates.values() for rate in by_workers.values())
    assert all(rate > 0 for rate in figures["image_check"]["images_per_second"].values())


def test_image_check_times_a_first_and_a_second_start(tmp_path):
    from omegaconf import OmegaConf

    from clip_lightning.cli.bench import run_benchmark

    cfg = OmegaConf.create({"image_check": {"num_images": 6, "repeats": 1, "workers": 1}})
    figures = run_benchmark("image_check", cfg)
    assert (figures["num_images"], figures["repeats"], figures["workers"]) == (6, 1, 1)
    rates = figures["images_per_second"]
    assert sorted(rates) == [
        "first start: full decode, 1 processes, memo written",
        "full decode, 1 process",
        "full decode, 1 threads",
        "second start: memo read, nothing decoded",
    ]
    assert all(rate > 0 for rate in rates.values())


def test_unknown_benchmark_is_rejected():
    from omegaconf import OmegaConf

    from clip_lightning.cli.bench import run_benchmarks

    with pytest.raises(ClipLightningError, match="choose from"):
        run_benchmarks(OmegaConf.create({"only": ["nope"]}))
