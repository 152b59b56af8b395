"""Evaluate a trained checkpoint: ``python -m clip_lightning.eval ckpt_path=PATH [overrides]``,
or a pretrained pair as published: ``model=open_clip model.arch=ARCH model.pretrained=TAG``.

``task=retrieval`` scores image<->text Recall@K on a split of the ``dataset`` group, under an
evaluation ``protocol`` (:mod:`clip_lightning.protocols`), with the same Lightning
test/validation loop the training run used, so the figures match the ones it logged;
``task=zeroshot`` classifies an ImageFolder (:mod:`clip_lightning.zeroshot`). Results are
printed and written as JSON into the run directory.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from clip_lightning.cli.eval_model import EvalModel, load_eval_model
from clip_lightning.cli.loading import checkpoint_file, resolve_device, use_model
from clip_lightning.cli.preflight import preflight
from clip_lightning.cli.task import hydra_task, run_dir
from clip_lightning.clip_benchmark_format import (
    classification_layout,
    file_name,
    retrieval_layout,
)
from clip_lightning.data.datamodule import CaptionDataModule
from clip_lightning.data.streaming import WebDataModule
from clip_lightning.errors import ClipLightningError, ConfigError, DataError
from clip_lightning.protocols import get_protocol, use_protocol
from clip_lightning.utils.results import (
    print_recall_table,
    to_floats,
    trivial_recalls,
    write_json,
)
from clip_lightning.zeroshot import zeroshot_classify

TASKS = ("retrieval", "zeroshot")


def evaluate_retrieval(
    cfg: DictConfig, candidate: EvalModel | None = None, show: bool = True
) -> dict[str, Any]:
    """Recall@K of the model on ``cfg.split`` under ``cfg.protocol``; metric keys as in training
    (``test/...``). ``candidate`` replaces the model the config names (WiSE-FT passes its own);
    ``show`` prints the recall table."""
    split = cfg.split
    if split not in ("val", "test"):
        raise DataError(f"split={split!r} is not supported; use split=val or split=test")
    protocol = get_protocol(cfg.get("protocol", "split"))
    if protocol.karpathy is not None and split != "test":
        raise ConfigError(
            f"protocol={protocol.name} scores the Karpathy test split; drop split={split} "
            f"(or use protocol=split split={split})"
        )
    L.seed_everything(cfg.seed, verbose=False)
    if candidate is None and cfg.get("model") is None:
        checkpoint_file(cfg.ckpt_path)  # a wrong path first, before the data is checked
    datamodule = instantiate(cfg.dataset)
    # the data and hardware, before the model is loaded
    preflight(cfg, datamodule, [split], train=False)
    candidate = candidate or load_eval_model(cfg)
    model = candidate.model
    use_model(datamodule, model)
    checked: CaptionDataModule | None  # the data a protocol checks; None: eval shards
    if isinstance(datamodule, WebDataModule):  # eval shards (or an eval folder), no training
        checked = datamodule.eval_data
        if checked is None and protocol.karpathy is not None:
            raise DataError(
                f"protocol={protocol.name} needs Karpathy's split file, which eval shards do not "
                "carry; pass dataset.eval_root= the dataset folder instead, or protocol=split"
            )
    else:
        checked = datamodule
    if checked is not None:  # eval shards keep the model's plain RetrievalRecall (split)
        use_protocol(model, checked, split, protocol.name)
    # the training run's hardware settings (trainer group), on one device, writing nothing
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        devices=1,
        num_nodes=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=run_dir(cfg),
    )
    loop = trainer.test if split == "test" else trainer.validate
    loop(model, datamodule=datamodule, verbose=False)
    metrics = {
        k: v for k, v in to_floats(trainer.callback_metrics).items() if k.startswith(f"{split}/")
    }
    images, captions = int(metrics[f"{split}/images"]), int(metrics[f"{split}/captions"])
    if show:
        scored = protocol.describe(split, images, captions)
        print_recall_table(metrics, split, f"Retrieval recall (%), {datamodule.name}, {scored}")
    return {
        "task": "retrieval",
        **candidate.source,
        "dataset": datamodule.name,
        "protocol": protocol.name,
        "split": split,
        "images": images,
        "captions": captions,
        "trivial": trivial_recalls(metrics, split),
        "metrics": metrics,
    }


def evaluate_zeroshot(
    cfg: DictConfig, candidate: EvalModel | None = None, show: bool = True
) -> dict[str, Any]:
    """Zero-shot top-k and per-class accuracy of the model on the ImageFolder ``images``
    (``candidate`` and ``show`` as for :func:`evaluate_retrieval`)."""
    options = cfg.zeroshot
    preflight(cfg)
    device = resolve_device(cfg.trainer.accelerator)
    candidate = candidate or load_eval_model(cfg, device)
    result = zeroshot_classify(
        candidate.model.to(device),
        cfg.images,
        list(options.templates),
        ks=list(options.top_k),
        batch_size=options.batch_size,
        num_workers=options.num_workers,
    )
    if show:
        table = Table(title=f"Zero-shot accuracy (%), {result.num_images} images")
        table.add_column("class")
        table.add_column("images", justify="right")
        table.add_column("top-1", justify="right")
        for name, (accuracy, count) in result.per_class.items():
            table.add_row(name, str(count), f"{accuracy:.2f}")
        table.caption = "  ".join(f"top-{k} {v:.2f}" for k, v in result.top_k.items())
        Console().print(table)
    return {
        "task": "zeroshot",
        **candidate.source,
        "images": str(cfg.images),
        "templates": list(options.templates),
        **result.to_dict(),
    }


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.task`` and write its results JSON into the run directory."""
    if cfg.task not in TASKS:
        raise ClipLightningError(f"task={cfg.task!r} is unknown; use one of {', '.join(TASKS)}")
    if OmegaConf.select(cfg, "wise_ft.alphas"):
        # imported here: the WiSE-FT sweep scores each model with this module's functions
        from clip_lightning.cli.wise_ft import evaluate_wise_ft

        return evaluate_wise_ft(cfg)
    results = evaluate_retrieval(cfg) if cfg.task == "retrieval" else evaluate_zeroshot(cfg)
    path = run_dir(cfg) / (
        "eval_results.json" if cfg.task == "retrieval" else "zeroshot_results.json"
    )
    write_json(path, results)
    # the same figures in CLIP_benchmark's layout, to compare with published models
    layout = (retrieval_layout if cfg.task == "retrieval" else classification_layout)(results)
    write_json(run_dir(cfg) / file_name(layout), layout)
    print(f"Results: {path}")
    return results


@hydra_task("eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)
