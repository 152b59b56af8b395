"""Performance benchmarks: ``python -m clip_lightning.bench [only=[train_step,retrieval]]``.

Runs the selected sub-benchmarks of :mod:`clip_lightning.benchmarks`, prints their figures and
writes them as JSON to ``<run dir>/bench.json`` (and to ``out=PATH`` if given). BENCHMARKS.md
records the figures with their commands.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from clip_lightning.cli.task import hydra_task
from clip_lightning.errors import ClipLightningError
from clip_lightning.utils.results import write_json

log = logging.getLogger(__name__)


# name in only= -> (module of clip_lightning.benchmarks, whether its run() takes the whole bench
# config besides its own options); imported lazily: each one pulls in only what it needs.
BENCHMARKS: dict[str, tuple[str, bool]] = {
    "train_step": ("train_step", True),
    "text_cache": ("text_cache_speedup", True),
    "retrieval": ("retrieval", False),
    "data_pipeline": ("data_pipeline", False),
    "grad_checkpointing": ("grad_checkpointing", True),
    "vector_search": ("vector_search", False),
    "embed": ("embed_throughput", True),
    "lora": ("lora", True),
    "image_check": ("image_check", False),
}


def run_benchmark(name: str, cfg: DictConfig) -> dict[str, Any]:
    """The figures of one sub-benchmark, run with its options ``cfg[name]``."""
    module, takes_config = BENCHMARKS[name]
    run = importlib.import_module(f"clip_lightning.benchmarks.{module}").run
    options = cast(dict[str, Any], OmegaConf.to_container(cfg[name], resolve=True))
    figures: dict[str, Any] = run(cfg, **options) if takes_config else run(**options)
    return figures


def machine() -> dict[str, Any]:
    """What the figures were measured on (they mean little without it)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_benchmarks(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.only`` in order; returns ``{"machine": ..., name: figures, ...}``."""
    unknown = [name for name in cfg.only if name not in BENCHMARKS]
    if unknown:
        raise ClipLightningError(
            f"unknown benchmark(s) {unknown} in only=; choose from {list(BENCHMARKS)}"
        )
    results: dict[str, Any] = {"machine": machine()}
    for name in cfg.only:
        log.info("running %s", name)
        results[name] = run_benchmark(name, cfg)
        print_figures(name, results[name])
    return results


def print_figures(name: str, figures: dict[str, Any]) -> None:
    table = Table(title=name, show_header=False)
    for key, value in figures.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, list):
            value = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
        table.add_row(key, str(value))
    Console().print(table)


def bench(cfg: DictConfig) -> dict[str, Any]:
    """Run the benchmarks; write their figures to ``<run dir>/bench.json`` (and ``out=``)."""
    results = run_benchmarks(cfg)
    paths = [Path(cfg.paths.output_dir) / "bench.json"]
    if cfg.get("out"):
        paths.append(Path(cfg.out))
    for path in paths:
        write_json(path, results)
        print(f"Wrote {path}")
    return results


@hydra_task("bench")
def main(cfg: DictConfig) -> None:
    bench(cfg)
