"""Train a CLIP model: ``python -m clip_lightning.train [overrides]``.

Compose config -> instantiate model, data, callbacks, loggers, trainer -> fit -> test the
best checkpoint -> write ``metrics.json`` into the run directory.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clip_lightning.cli.loading import build_datamodule
from clip_lightning.cli.task import hydra_task
from clip_lightning.cli.wandb_run import continue_wandb_run, remember_wandb_run
from clip_lightning.utils.config import print_config_tree
from clip_lightning.utils.instantiate import instantiate_list
from clip_lightning.utils.results import print_recall_table, to_floats, write_json
from clip_lightning.utils.resume import checkpoint_run_dir, read_wandb_id, resolve_ckpt_path


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test one configuration; returns the flat ``val/...`` + ``test/...`` metrics."""
    run_dir = Path(cfg.paths.output_dir)
    if cfg.get("print_config"):
        print_config_tree(cfg)
    L.seed_everything(cfg.seed, workers=True)

    model = instantiate(cfg.model)
    datamodule = build_datamodule(cfg.dataset, model)
    datamodule.load_splits()  # a missing dataset fails here, before the trainer starts
    # ckpt_path=last: the newest last.ckpt of this task's earlier runs (or of resume_dir)
    ckpt_path = resolve_ckpt_path(
        cfg.get("ckpt_path"),
        cfg.get("resume_dir"),
        runs_dir=Path(HydraConfig.get().run.dir).parent
        if HydraConfig.initialized()
        else run_dir.parent,
        run_dir=run_dir,
    )
    if ckpt_path is not None:
        continue_wandb_run(cfg.get("logger"), read_wandb_id(checkpoint_run_dir(ckpt_path)))
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_list(cfg.get("callbacks")),
        logger=instantiate_list(cfg.get("logger")),
    )
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    if trainer.is_global_zero:
        remember_wandb_run(trainer.loggers, run_dir)

    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = to_floats(trainer.callback_metrics)
    if cfg.get("test"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
        metrics.update(to_floats(trainer.callback_metrics))
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", metrics)
        print_recall_table(metrics, "test" if cfg.get("test") else "val", "Retrieval recall (%)")
    return metrics


@hydra_task("train")
def main(cfg: DictConfig) -> float | None:
    """Train; returns ``optimized_metric`` for a sweeper."""
    metrics = train(cfg)
    metric_name = cfg.get("optimized_metric")
    return metrics.get(metric_name) if metric_name else None
