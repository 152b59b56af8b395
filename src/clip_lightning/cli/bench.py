"""Performance benchmarks: ``python -m clip_lightning.bench [only=[train_step,retrieval]]``.

Runs the selected sub-benchmarks of :mod:`clip_lightning.benchmarks`, prints their figures and
writes them as JSON to ``<run dir>/bench.json`` (and to ``out=PATH`` if given). BENCHMARKS.md
records the figures with their commands.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Callable
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


def _train_step(cfg: DictConfig) -> dict[str, Any]:
    from clip_lightning.benchmarks.train_step import run

    return run(cfg, **cfg.train_step)


def _text_cache(cfg: DictConfig) -> dict[str, Any]:
    from clip_lightning.benchmarks.text_cache_speedup import run

    return run(cfg, **cfg.text_cache)


def _retrieval(cfg: DictConfig) -> dict[str, Any]:
    from clip_lightning.benchmarks.retrieval import run

    return run(**cfg.retrieval)


def _data_pipeline(cfg: DictConfig) -> dict[str, Any]:
    from clip_lightning.benchmarks.data_pipeline import run

    options = cast(dict[str, Any], OmegaConf.to_container(cfg.data_pipeline, resolve=True))
    return run(**options)


def _grad_checkpointing(cfg: DictConfig) -> dict[str, Any]:
    from clip_lightning.benchmarks.grad_checkpointing import run

    return run(cfg, **cfg.grad_checkpointing)


def _vector_search(cfg: DictConfig) -> dict[str, Any]:
    from clip_lightning.benchmarks.vector_search import run

    return run(**cfg.vector_search)


def _embed(cfg: DictConfig) -> dict[str, Any]:
    from clip_lightning.benchmarks.embed_throughput import run

    options = cast(dict[str, Any], OmegaConf.to_container(cfg.embed, resolve=True))
    return run(cfg, **options)


def _lora(cfg: DictConfig) -> dict[str, Any]:
    from clip_lightning.benchmarks.lora import run

    return run(cfg, **cfg.lora)


# Imported lazily: each sub-benchmark pulls in only what it needs.
BENCHMARKS: dict[str, Callable[[DictConfig], dict[str, Any]]] = {
    "train_step": _train_step,
    "text_cache": _text_cache,
    "retrieval": _retrieval,
    "data_pipeline": _data_pipeline,
    "grad_checkpointing": _grad_checkpointing,
    "vector_search": _vector_search,
    "embed": _embed,
    "lora": _lora,
}


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
        results[name] = BENCHMARKS[name](cfg)
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


@hydra_task("bench")
def main(cfg: DictConfig) -> None:
    """Run the benchmarks; write their figures to ``<run dir>/bench.json`` (and ``out=``)."""
    results = run_benchmarks(cfg)
    paths = [Path(cfg.paths.output_dir) / "bench.json"]
    if cfg.get("out"):
        paths.append(Path(cfg.out))
    for path in paths:
        write_json(path, results)
        print(f"Wrote {path}")
