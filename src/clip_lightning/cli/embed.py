"""Embed a collection: ``python -m clip_lightning.embed ckpt_path=CKPT images=DIR out=DIR``.

The source is an image folder (``images=``) or any ``dataset`` group (a CSV/parquet table, a HF
folder, Flickr30k/COCO, WebDataset shards through ``dataset.urls=``); the model a trained
checkpoint or a pretrained pair (``model=open_clip ...``). It runs as Lightning's
``trainer.predict``, so ``trainer=ddp trainer.devices=N trainer.num_nodes=M`` and
``hydra/launcher=slurm`` spread it over GPUs and nodes, and each rank writes its own parts in
clip-retrieval's layout (:mod:`clip_lightning.indexing.layout`). Running the same command again
finishes what a killed run left and rewrites nothing that is done.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clip_lightning.cli.eval_model import load_eval_model, model_identity
from clip_lightning.cli.loading import build_datamodule
from clip_lightning.cli.task import hydra_task, run_dir
from clip_lightning.data.datamodule import CaptionDataModule
from clip_lightning.data.records import FileImage
from clip_lightning.data.streaming import WebDataModule, check_local_shards
from clip_lightning.errors import DataError
from clip_lightning.indexing import layout
from clip_lightning.indexing.folder import image_folder
from clip_lightning.indexing.sources import (
    EmbedDataModule,
    Item,
    ItemSource,
    ShardSource,
    Source,
    record_items,
)
from clip_lightning.indexing.writer import EmbeddingWriter
from clip_lightning.module import CLIPModule
from clip_lightning.utils.instantiate import instantiate_list
from clip_lightning.utils.results import write_json

log = logging.getLogger(__name__)


def build_source(cfg: DictConfig, model: CLIPModule) -> Source:
    """The collection of ``images=`` or of the ``dataset`` group (exactly one of them)."""
    if cfg.images and cfg.get("dataset"):
        raise DataError("pass images=DIR or dataset=..., not both")
    if cfg.images:
        root, files = image_folder(cfg.images)
        items = [Item(FileImage(root / name), str(root / name)) for name in files]
        return ItemSource(items, cfg.part_size, f"folder:{root}")
    if not cfg.get("dataset"):
        raise DataError(
            "nothing to embed; pass images=DIR (a folder of images) or a dataset, e.g. "
            "dataset=csv dataset.root=DIR or dataset=webdataset 'dataset.urls=\"/data/{0..9}.tar\"'"
        )
    dataset = cfg.dataset
    if "split_sizes" in dataset:  # every split is embedded: no image is held out for val/test
        dataset = OmegaConf.merge(dataset, {"split_sizes": {"val": 0, "test": 0}})
    if "num_workers" in dataset:  # its loaders are never built: embed's takes num_workers=
        dataset = OmegaConf.merge(dataset, {"num_workers": 0})
    datamodule = build_datamodule(dataset, model)
    if isinstance(datamodule, WebDataModule):
        check_local_shards(datamodule.shards)
        return ShardSource(datamodule.shards, datamodule.caption_field)
    assert isinstance(datamodule, CaptionDataModule)  # the only other dataset class
    records = datamodule.load_records()
    return ItemSource(record_items(records), cfg.part_size, datamodule.source)


def embed_fields(cfg: DictConfig, source: Source) -> list[str]:
    """``fields=`` checked against the source; null: images, and captions where there are."""
    if cfg.fields is None:
        return ["image", "text"] if source.has_captions else ["image"]
    fields = [str(f) for f in cfg.fields]
    if not fields:
        raise DataError("fields=[] embeds nothing; pass fields=[image], [text] or [image,text]")
    if "text" in fields and not source.has_captions:
        raise DataError("this source has no captions to embed; pass fields=[image]")
    return sorted(set(fields), key=layout.FIELDS.index)


def summarize(out: Path, manifest: dict[str, Any], reused: int, seconds: float) -> dict[str, Any]:
    """Rows, parts and bad samples of the whole output (earlier runs included)."""
    names = layout.part_names(manifest)
    records = layout.finished_parts(out, names, manifest["fields"])
    bad = sum(r.bad for r in records.values())
    return {
        "out": str(out),
        "parts": len(names),
        "finished_parts": len(records),
        "parts_from_earlier_runs": reused,
        "rows": sum(r.rows for r in records.values()),
        "bad_samples_skipped": bad,
        "first_bad_samples": [name for r in records.values() for name in r.first_bad][:5],
        "seconds": round(seconds, 2),
    }


def embed(cfg: DictConfig) -> dict[str, Any]:
    """Embed the source into ``cfg.out``; returns the summary (written to ``summary.json``)."""
    model = load_eval_model(cfg).model  # a checkpoint, or a pretrained pair as published
    identity = model_identity(cfg)
    source = build_source(cfg, model)
    fields = embed_fields(cfg, source)
    out = Path(cfg.out).expanduser().resolve()
    dim = int(model.hparams["embed_dim"])
    manifest = {
        "format": 1,
        **identity,
        "source": source.fingerprint(),
        "fields": fields,
        "dtype": cfg.dtype,
        "dim": dim,
        "parts": source.num_parts(),
        "columns": list(source.columns()),
    }
    layout.check_manifest(out, manifest)
    writer = EmbeddingWriter(
        out, source.num_parts(), fields, source.columns(), dim, dtype=cfg.dtype
    )
    data = EmbedDataModule(
        source,
        out,
        fields,
        model.image_encoder.transform(),
        model.text_encoder.tokenizer,
        model.text_encoder.max_length,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        on_bad_image=cfg.on_bad_image,
    )
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=[writer, *instantiate_list(cfg.get("callbacks"))],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=run_dir(cfg),
    )
    start = time.perf_counter()
    trainer.predict(model, datamodule=data, return_predictions=False)
    summary = summarize(out, manifest, len(data.finished), time.perf_counter() - start)
    if trainer.is_global_zero:
        write_json(out / layout.SUMMARY, summary)
        report(summary)
    return summary


def report(summary: dict[str, Any]) -> None:
    done = summary["finished_parts"] - summary["parts_from_earlier_runs"]
    parts = "part" if summary["parts"] == 1 else "parts"
    print(
        f"Embedded {summary['rows']} samples in {summary['parts']} {parts} into "
        f"{summary['out']} ({done} now, {summary['parts_from_earlier_runs']} from an earlier "
        f"run, {summary['seconds']:.1f} s)"
    )
    if summary["bad_samples_skipped"]:
        print(
            f"Skipped {summary['bad_samples_skipped']} bad samples (on_bad_image=skip), first: "
            + "; ".join(summary["first_bad_samples"])
        )


@hydra_task("embed")
def main(cfg: DictConfig) -> None:
    embed(cfg)
