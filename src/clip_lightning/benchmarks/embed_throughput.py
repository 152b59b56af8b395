"""``embed`` throughput: images per second one process embeds from WebDataset shards.

Builds Flickr-sized JPEGs (500x375, as the data-pipeline benchmark) written as shards, then runs
the real ``embed`` path -- :class:`~clip_lightning.indexing.sources.ShardSource` parts read by
DataLoader workers, ``trainer.predict`` on the benchmark's model at ``image_size`` pixels, the
:class:`~clip_lightning.indexing.writer.EmbeddingWriter` writing clip-retrieval's layout -- once
per worker count, on the device and precision of the ``trainer`` group. Images only: a caption
costs a tokenization and a text-tower pass, which the text-cache benchmark covers.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clip_lightning.benchmarks.data_pipeline import make_jpegs
from clip_lightning.data.shards import write_split
from clip_lightning.data.streaming import expand_sources
from clip_lightning.indexing import layout
from clip_lightning.indexing.sources import EmbedDataModule, ShardSource
from clip_lightning.indexing.writer import EmbeddingWriter
from clip_lightning.module import CLIPModule


def build_model(cfg: DictConfig, image_size: int | None) -> CLIPModule:
    """The benchmark's model, its timm image tower at ``image_size`` (None: as configured)."""
    model_cfg = cfg.model
    if image_size is not None and "image_encoder" in model_cfg:
        model_cfg = OmegaConf.merge(model_cfg, {"image_encoder": {"image_size": image_size}})
    model: CLIPModule = instantiate(model_cfg)
    return model.eval()


def embed_seconds(
    model: CLIPModule, cfg: DictConfig, urls: list[str], out: Path, batch_size: int, workers: int
) -> float:
    """Seconds of one ``trainer.predict`` over every shard, writing the parts to ``out``."""
    source = ShardSource(urls)
    writer = EmbeddingWriter(
        out, source.num_parts(), ["image"], source.columns(), int(model.hparams["embed_dim"])
    )
    data = EmbedDataModule(
        source,
        out,
        ["image"],
        model.image_encoder.transform(),
        model.text_encoder.tokenizer,
        model.text_encoder.max_length,
        batch_size=batch_size,
        num_workers=workers,
    )
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        devices=1,
        callbacks=[writer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
    )
    start = time.perf_counter()
    trainer.predict(model, datamodule=data, return_predictions=False)
    return time.perf_counter() - start


def run(
    cfg: DictConfig,
    num_images: int = 512,
    image_size: int | None = 224,
    batch_size: int = 64,
    workers: Sequence[int] = (2,),
    samples_per_shard: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Images per second of ``embed`` for each worker count (see the module docstring)."""
    model = build_model(cfg, image_size)
    figures: dict[str, Any] = {
        "images": num_images,
        "image_size": model.image_encoder.data_config["input_size"][-1],
        "image_encoder": str(OmegaConf.select(cfg, "model.image_encoder.name")),
        "precision": str(cfg.trainer.precision),
        "batch_size": batch_size,
    }
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "jpegs").mkdir()
        records = make_jpegs(Path(tmp) / "jpegs", num_images, seed=seed)
        write_split(records, Path(tmp) / "shards", samples_per_shard=samples_per_shard, desc="")
        count = -(-num_images // samples_per_shard)
        urls = expand_sources(f"{tmp}/shards/{{00000..{count - 1:05d}}}.tar")[0]
        for worker_count in workers:
            out = Path(tmp) / f"embeddings_{worker_count}"
            seconds = embed_seconds(model, cfg, urls, out, batch_size, worker_count)
            rows = sum(
                record.rows
                for record in layout.finished_parts(
                    out, [layout.part_name(p, count) for p in range(count)], ["image"]
                ).values()
            )
            if rows != num_images:
                raise RuntimeError(f"embed wrote {rows} of {num_images} images")
            figures[f"images_per_second_{worker_count}_workers"] = num_images / seconds
    return figures
