"""Train a CLIP model: ``python -m clip_lightning.train [overrides]``.

Compose config -> instantiate model, data, callbacks, loggers, trainer -> fit -> test the
best checkpoint -> write ``metrics.json`` into the run directory.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from clip_lightning.errors import ClipLightningError
from clip_lightning.utils.config import print_config_tree, register_resolvers
from clip_lightning.utils.instantiate import instantiate_list
from clip_lightning.utils.results import print_recall_table, to_floats, write_json

log = logging.getLogger(__name__)
register_resolvers()


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test one configuration; returns the flat ``val/...`` + ``test/...`` metrics."""
    run_dir = Path(cfg.paths.output_dir)
    if cfg.get("print_config"):
        print_config_tree(cfg)
    L.seed_everything(cfg.seed, workers=True)

    model = instantiate(cfg.model)
    datamodule = instantiate(
        cfg.dataset,
        image_config=model.image_encoder.data_config,
        tokenizer=model.text_encoder.tokenizer,
        max_length=model.text_encoder.max_length,
    )
    datamodule.load_splits()  # a missing dataset fails here, before the trainer starts
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_list(cfg.get("callbacks")),
        logger=instantiate_list(cfg.get("logger")),
    )
    for logger in trainer.loggers:
        logger.log_hyperparams(cfg)  # type: ignore[arg-type]

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = to_floats(trainer.callback_metrics)
    if cfg.get("test"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
        metrics.update(to_floats(trainer.callback_metrics))
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", metrics)
        print_recall_table(metrics, "test" if cfg.get("test") else "val", "Retrieval recall (%)")
        print(f"Run directory: {run_dir}")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        metrics = train(cfg)
    except ClipLightningError as exc:
        log.error("%s", exc)
        if HydraConfig.get().mode.name == "MULTIRUN":
            raise
        sys.exit(1)
    metric_name = cfg.get("optimized_metric")
    return metrics.get(metric_name) if metric_name else None


if __name__ == "__main__":
    main()
