"""Train a CLIP model: ``python -m clip_lightning.train [overrides]``.

Compose config -> instantiate model, data, callbacks, loggers, trainer -> fit -> test the
best checkpoint -> write ``metrics.json`` into the run directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from clip_lightning.callbacks.dataset_config import DatasetConfigCheckpoint
from clip_lightning.checkpoints import (
    ResumeLearningRates,
    check_resume,
    checkpoint_run_dir,
    continue_wandb_run,
    read_training_checkpoint,
    read_wandb_id,
    remember_wandb_run,
    resolve_ckpt_path,
    resume_folders,
    same_model_and_data,
)
from clip_lightning.cli.dataset_choice import dataset_to_save
from clip_lightning.cli.loading import load_init_model, load_weights, use_model
from clip_lightning.cli.preflight import QUICKSTART_HINT, preflight
from clip_lightning.cli.task import hydra_task
from clip_lightning.errors import ConfigError
from clip_lightning.models.freezing import count_parameters
from clip_lightning.models.lora import trainable_summary
from clip_lightning.models.targets import build
from clip_lightning.module import CLIPModule
from clip_lightning.plugins import remove_stale_temporaries
from clip_lightning.protocols import PROTOCOLS, use_protocol
from clip_lightning.utils.config import print_config_tree
from clip_lightning.utils.instantiate import instantiate_list
from clip_lightning.utils.results import print_recall_table, to_floats, write_json

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test one configuration; returns the flat ``val/...`` + ``test/...`` metrics."""
    run_dir = Path(cfg.paths.output_dir)
    if cfg.get("init_from") and (cfg.get("ckpt_path") or cfg.get("resume_dir")):
        raise ConfigError(
            "init_from starts a new run from a checkpoint's weights, ckpt_path/resume_dir "
            "continue one: pass only one of them"
        )
    # the data first: it and everything the model needs are checked before anything is built
    datamodule = instantiate(cfg.dataset)
    preflight(cfg, datamodule, ["val", "test"] if cfg.get("test") else ["val"], QUICKSTART_HINT)
    if cfg.get("print_config"):
        print_config_tree(cfg)
    L.seed_everything(cfg.seed, workers=True)

    runs_dir = (
        Path(HydraConfig.get().run.dir).parent if HydraConfig.initialized() else run_dir.parent
    )
    callbacks = instantiate_list(cfg.get("callbacks"))
    callbacks.append(DatasetConfigCheckpoint(dataset_to_save(cfg.dataset)))  # eval reads it
    # a kill -9 mid-save leaves a temporary up to a checkpoint in size, also when it was the
    # run's first save (no last.ckpt): clean this run's folders and every one a resume reads
    remove_stale_saves(
        {Path(c.dirpath) for c in callbacks if isinstance(c, ModelCheckpoint) and c.dirpath}
        | resume_folders(cfg.get("ckpt_path"), cfg.get("resume_dir"), runs_dir)
    )
    # ckpt_path=last: the newest last.ckpt of this task's earlier runs of the same model and
    # data (or of resume_dir)
    ckpt_path = resolve_ckpt_path(
        cfg.get("ckpt_path"),
        cfg.get("resume_dir"),
        runs_dir=runs_dir,
        run_dir=run_dir,
        prefer=same_model_and_data(cfg),
    )
    # read and checked as data before anything is built
    resumed = read_training_checkpoint(ckpt_path, CLIPModule) if ckpt_path is not None else {}
    wandb_id = read_wandb_id(checkpoint_run_dir(ckpt_path)) if ckpt_path is not None else None
    source = load_init_model(cfg.init_from) if cfg.get("init_from") else None
    model = build(cfg.model, "model")  # the registry builder a checkpoint goes through too
    if source is not None:
        load_weights(model, source, cfg.init_from)
        del source
    rank_zero_info(trainable_summary(model, model.lora))
    use_model(datamodule, model)
    protocols = {  # a run without a test split (test=false) is not held to its test protocol
        stage: use_protocol(model, datamodule, stage, name)
        for stage, name in (cfg.get("protocol") or {}).items()
        if stage == "val" or cfg.get("test")
    }
    if ckpt_path is not None:
        check_resume(ckpt_path, resumed, cfg, model)  # one line for a checkpoint of another run
        callbacks.append(ResumeLearningRates())  # new LRs apply, the LR never rises again
        continue_wandb_run(cfg.get("logger"), wandb_id)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=instantiate_list(cfg.get("logger")),
    )
    for logger in trainer.loggers:
        logger.log_hyperparams(cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True)))
    if trainer.is_global_zero:
        remember_wandb_run(trainer.loggers, run_dir)

    if cfg.get("validate_before_fit") and ckpt_path is None:
        # val/* at step 0: the dashboard starts from the (pretrained) model before any update
        trainer.validate(model, datamodule=datamodule, verbose=False)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = to_floats(trainer.callback_metrics)
    counts = count_parameters(model)
    metrics["params/trainable"] = float(counts["trainable"])
    metrics["params/total"] = float(counts["trainable"] + counts["frozen"])
    if cfg.get("test"):
        callback = trainer.checkpoint_callback
        best = callback.best_model_path if isinstance(callback, ModelCheckpoint) else ""
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update(to_floats(trainer.callback_metrics))
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", metrics)
        stage = "test" if cfg.get("test") else "val"
        scored = protocols.get(stage, PROTOCOLS["split"]).describe(
            stage, metrics.get(f"{stage}/images", 0), metrics.get(f"{stage}/captions", 0)
        )
        print_recall_table(metrics, stage, f"Retrieval recall (%), {scored}")
    return metrics


@rank_zero_only
def remove_stale_saves(folders: set[Path]) -> None:
    for stale in remove_stale_temporaries(folders):
        log.warning("removed %s, left by a checkpoint save that was killed", stale)


@hydra_task("train")
def main(cfg: DictConfig) -> float | None:
    """Train; returns ``optimized_metric`` for a sweeper."""
    metrics = train(cfg)
    metric_name = cfg.get("optimized_metric")
    return metrics.get(metric_name) if metric_name else None
