"""Resuming: the resume rule (which settings may change when a run continues) and applying it
to the restored learning rates.

A resumed run must be the same run: :func:`check_resume` refuses, in one line, a checkpoint
whose model or data settings differ from the run's, before ``trainer.fit`` restores it.
:class:`ResumeLearningRates` lets a new peak learning rate or run length apply without the LR
ever rising again.
"""

from __future__ import annotations

import fnmatch
import functools
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from torch.optim.lr_scheduler import LambdaLR

from clip_lightning.checkpoints.compare import describe_mismatch
from clip_lightning.errors import CheckpointError
from clip_lightning.utils.renamed_keys import RENAMED, upgrade

# Config keys that may differ from the checkpoint's: the learning rates (applied, see
# ResumeLearningRates), where the weights first came from (the checkpoint has them now), and
# settings that change how a step runs but not what is trained. Anything else that differs is
# refused: the restored state would silently keep the checkpoint's value.
RESUME_MAY_CHANGE = (
    "optimizer.lr",
    "model.tower_lr.*",
    "model.pretrained",
    "model.*.pretrained",
    "model.*.weights_file",
    "model.*.name_or_path",
    "model.*.architecture",
    "model.*.cache*",
    "model.*.channels_last",
    "model.compile",
    "model.grad_checkpointing",
    "model.grad_cache_chunk_size",
    "model.clip_grad_norm",
)
TOP_LEVEL_GROUPS = ("loss", "optimizer", "scheduler")


def check_resume(
    ckpt_path: Path, state: Mapping[str, Any], cfg: DictConfig, model: torch.nn.Module
) -> None:
    """Refuse, in one line, to resume ``ckpt_path`` into a run it does not belong to (``state``:
    what :func:`~clip_lightning.checkpoints.read_training_checkpoint` read from it).

    Compares the checkpoint's saved hyperparameters with ``cfg`` (every difference outside
    :data:`RESUME_MAY_CHANGE` is listed), then its tensors with ``model``'s. Runs before
    ``trainer.fit``, so a mismatch never ends in a state-dict traceback.
    """
    differences = config_differences(state["hyper_parameters"], cfg)
    if differences:
        raise CheckpointError(
            f"cannot resume {str(ckpt_path)!r}: the run asks for {'; '.join(differences)}; "
            "set these back to the checkpoint's values, or start a new run without "
            "ckpt_path/resume_dir (only optimizer.lr, model.tower_lr.* and the run length "
            "may change on resume)"
        )
    problem = describe_mismatch({}, {}, state["state_dict"], model.state_dict())
    if problem is not None:
        raise CheckpointError(
            f"cannot resume {str(ckpt_path)!r}: its weights do not fit this model "
            f"({problem}); resume with the model settings of the checkpoint's run, or start "
            "a new run"
        )


def config_differences(hparams: Mapping[str, Any], cfg: DictConfig) -> list[str]:
    """``key=requested (checkpoint: saved)`` for each setting the resume rule refuses.

    Keys present on one side only are skipped: config groups gain keys over time, and a
    changed class already shows as a changed ``_target_``.
    """
    requested = cast(dict[str, Any], OmegaConf.to_container(cfg.model, resolve=True))
    hparams = {  # a checkpoint saved before keys were renamed compares by the new names
        name: upgrade(value, f"model.{name}", set(RENAMED.values()), announce=False)
        if isinstance(value, Mapping)
        else value
        for name, value in hparams.items()
    }
    differences = []
    for name in sorted(hparams.keys() & requested.keys()):
        key = name if name in TOP_LEVEL_GROUPS else f"model.{name}"
        for path, saved, asked in _leaf_differences(hparams[name], requested[name], key):
            if not any(fnmatch.fnmatchcase(path, pattern) for pattern in RESUME_MAY_CHANGE):
                differences.append(f"{path}={_short(asked)} (checkpoint: {_short(saved)})")
    return differences


def _leaf_differences(saved: Any, asked: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(saved, Mapping) and isinstance(asked, Mapping):
        for key in sorted(saved.keys() & asked.keys()):
            yield from _leaf_differences(saved[key], asked[key], f"{path}.{key}")
    elif saved != asked:
        yield path, saved, asked


def _short(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


class ResumeLearningRates(Callback):
    """Applies the resume rule to the restored optimizer and LR schedule.

    Lightning restores the optimizer and scheduler exactly as saved, so a new ``optimizer.lr``
    would be ignored and a changed run length would recompute the cosine for a new total from
    the middle of it: the LR would jump back up (or wrap around past its end). Instead:

    * the peak LRs are the ones the current config asks for (``optimizer.lr``,
      ``model.tower_lr.*``); the schedule's progress is kept;
    * if the run length changed, the rest of the run decays linearly from the LR reached to
      zero at the new end, so the LR never rises. A linear tail is the same line however often
      the run is resumed again.

    Resuming a finished schedule into a longer run is refused: it would train at LR 0.
    """

    def __init__(self) -> None:
        self._peaks: list[list[float]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the optimizers are built from the current config; the checkpoint is not restored yet
        self._peaks = [
            [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
            for optimizer in trainer.optimizers
        ]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        schedulers = {id(c.scheduler.optimizer): c.scheduler for c in trainer.lr_scheduler_configs}
        for optimizer, peaks in zip(trainer.optimizers, self._peaks, strict=True):
            progress = []
            for group, peak in zip(optimizer.param_groups, peaks, strict=True):
                saved_peak = group.get("initial_lr", group["lr"])
                progress.append(group["lr"] / saved_peak if saved_peak else 1.0)
                group["initial_lr"], group["lr"] = peak, peak * progress[-1]
            scheduler = schedulers.get(id(optimizer))
            if scheduler is not None:
                scheduler.base_lrs = list(peaks)
                if isinstance(scheduler, LambdaLR):
                    self._keep_decaying(
                        scheduler, progress, int(trainer.estimated_stepping_batches)
                    )

    @staticmethod
    def _keep_decaying(scheduler: LambdaLR, progress: list[float], total_steps: int) -> None:
        step = scheduler.last_epoch
        for index, (reached, schedule) in enumerate(
            zip(progress, scheduler.lr_lambdas, strict=True)
        ):
            if math.isclose(schedule(step), reached, rel_tol=1e-9, abs_tol=1e-12):
                continue  # same schedule as the checkpoint's run: continue it exactly
            if reached <= 1e-12 and step < total_steps:
                raise CheckpointError(
                    f"the checkpoint finished its LR schedule (LR 0 at step {step}); resuming "
                    f"it for {total_steps} steps would train at LR 0: resume with the "
                    "checkpoint's trainer.max_epochs/max_steps, or start a new run"
                )
            scheduler.lr_lambdas[index] = functools.partial(
                linear_to_zero, start_step=step, start_factor=reached, end_step=total_steps
            )


def linear_to_zero(step: int, start_step: int, start_factor: float, end_step: int) -> float:
    """LR factor falling linearly from ``start_factor`` at ``start_step`` to 0 at ``end_step``."""
    if end_step <= start_step:
        return 0.0
    return max(0.0, start_factor * (end_step - step) / (end_step - start_step))
