"""Resuming: find the checkpoint behind ``ckpt_path=last``, check it belongs to this run, apply
the resume rule to the learning rates, and find the W&B run to continue.

Every run gets a fresh Hydra run directory; a resumed run reads its checkpoint from an earlier
one. ``ckpt_path=last`` picks ``checkpoints/last.ckpt`` of the most recent run of the same
``task_name`` (newest ``last.ckpt`` under ``<log_dir>/<task_name>/runs/``) that trained the same
model on the same data (the newest run at all if none did), or of ``resume_dir`` when given.
Any other value is used as a checkpoint path.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.optim.lr_scheduler import LambdaLR

from clip_lightning.errors import CheckpointError
from clip_lightning.utils.paths import require_checkpoint_file

LAST = "last.ckpt"
WANDB_ID_FILE = "wandb_run_id"
# a test of an earlier run's directory
RunFilter = Callable[[Path], bool]


def find_last_checkpoint(
    runs_dir: Path, exclude: Path | None = None, prefer: RunFilter | None = None
) -> Path | None:
    """The most recently written ``*/checkpoints/last.ckpt`` under ``runs_dir``: of the newest
    run ``prefer`` accepts, if it accepts one, else of the newest run."""
    candidates = sorted(
        (
            ckpt
            for ckpt in runs_dir.glob(f"*/checkpoints/{LAST}")
            if exclude is None or ckpt.parents[1].resolve() != exclude.resolve()
        ),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    preferred = (c for c in candidates if prefer is not None and prefer(c.parents[1]))
    return next(preferred, candidates[0] if candidates else None)


# the dataset keys that say which data a run trains on (loader and cache settings may change)
DATASET_IDENTITY = (
    "_target_", "name", "format", "root", "hub_id", "image_dir", "columns", "adapter_options",
    "split_sizes", "split_seed",
)  # fmt: skip


def same_model_and_data(cfg: DictConfig) -> RunFilter:
    """Whether an earlier run (by the config Hydra saved in ``<run>/.hydra/config.yaml``)
    trained the model ``cfg`` asks for (no difference the resume rule refuses) on the same
    data. A run without a readable saved config does not match."""
    dataset = _identity(cfg.dataset)

    def matches(run_dir: Path) -> bool:
        try:
            saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
            assert isinstance(saved, DictConfig)
            if _foreign_resolvers(saved):  # not a config Hydra wrote for this package
                return False
            saved_model = cast(dict[str, Any], OmegaConf.to_container(saved.model, resolve=True))
            saved_dataset = _identity(saved.dataset)
        except Exception:  # missing, unreadable or unresolvable: not a run to prefer
            return False
        return saved_dataset == dataset and not config_differences(saved_model, cfg)

    return matches


# resolvers a config saved by this package's runs uses; ``oc.env`` only for its own variables
_SAVED_RESOLVERS = {"package_path", "pid", "now", "hydra", "sweep_job_name"}
_RESOLVER_CALL = re.compile(r"\$\{\s*([\w.]+)\s*:\s*([^,}]*)")


def _foreign_resolvers(saved: DictConfig) -> bool:
    """Whether a saved run config calls a resolver this package's configs never use (a file in
    the runs folder is data: ``${oc.create:...}`` or ``${oc.env:HOME}`` there is not resolved)."""
    text = OmegaConf.to_yaml(saved, resolve=False)
    return any(
        name not in _SAVED_RESOLVERS
        and not (name == "oc.env" and argument.strip().startswith("CLIP_LIGHTNING_"))
        for name, argument in _RESOLVER_CALL.findall(text)
    )


def _identity(dataset: DictConfig) -> dict[str, Any]:
    return {
        key: OmegaConf.to_container(value, resolve=True)
        if isinstance(value, DictConfig | ListConfig)
        else value
        for key in DATASET_IDENTITY
        if (value := OmegaConf.select(dataset, key, default=None)) is not None
    }


def resolve_ckpt_path(
    ckpt_path: str | None,
    resume_dir: str | None,
    runs_dir: Path,
    run_dir: Path,
    prefer: RunFilter | None = None,
) -> Path | None:
    """Turn the ``ckpt_path`` / ``resume_dir`` settings into an existing checkpoint file.

    ``resume_dir`` alone means ``ckpt_path=last`` inside that run directory; ``ckpt_path=last``
    takes the newest run ``prefer`` accepts (:func:`same_model_and_data`), else the newest.
    """
    if ckpt_path is None and resume_dir is None:
        return None
    if ckpt_path in (None, "last"):
        if resume_dir is not None:
            found = Path(resume_dir) / "checkpoints" / LAST
            if not found.is_file():
                raise CheckpointError(
                    f"no checkpoints/{LAST} in resume_dir={resume_dir}; point resume_dir at a run "
                    "directory (the one holding checkpoints/), or pass ckpt_path=<file>"
                )
            return found
        newest = find_last_checkpoint(runs_dir, exclude=run_dir, prefer=prefer)
        if newest is None:
            raise CheckpointError(
                f"ckpt_path=last found no earlier run with checkpoints/{LAST} under {runs_dir}; "
                "check task_name (resuming looks in that task's runs), or pass "
                "resume_dir=<run dir> or ckpt_path=<file>"
            )
        return newest
    return require_checkpoint_file(Path(ckpt_path))


def checkpoint_run_dir(ckpt: Path) -> Path:
    """The run directory a checkpoint was written in (``<run>/checkpoints/x.ckpt``)."""
    return ckpt.resolve().parents[1]


# what W&B generates (8 lowercase characters) and what it accepts as a chosen id
_WANDB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def read_wandb_id(run_dir: Path) -> str | None:
    """The W&B run id an earlier run stored, so a resume continues the same W&B run.

    The file is data from a run directory: a link, a large file or anything but an id is
    refused in one line, and its content is never shown.
    """
    path = run_dir / WANDB_ID_FILE
    if not path.is_symlink() and not path.exists():
        return None
    problem = "is a link" if path.is_symlink() else None
    if problem is None and (not path.is_file() or path.stat().st_size > 128):
        problem = "is not a small file"
    run_id = path.read_text(errors="replace").strip() if problem is None else ""
    if problem is None and not _WANDB_ID.fullmatch(run_id):
        problem = "does not hold a W&B run id"
    if problem is not None:
        raise CheckpointError(
            f"{str(path)!r} {problem}; it should hold the id of the W&B run to continue: "
            "delete it to log the resumed run as a new W&B run"
        )
    return run_id


def write_wandb_id(run_dir: Path, run_id: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / WANDB_ID_FILE).write_text(run_id + "\n")


# ------------------------------------------------------------------------- the resume rule
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
    mismatches = tensor_mismatches(state["state_dict"], model.state_dict())
    if mismatches:
        raise CheckpointError(
            f"cannot resume {str(ckpt_path)!r}: its weights do not fit this model "
            f"({'; '.join(mismatches[:3])}{'; ...' if len(mismatches) > 3 else ''}); resume "
            "with the model settings of the checkpoint's run, or start a new run"
        )


def config_differences(hparams: Mapping[str, Any], cfg: DictConfig) -> list[str]:
    """``key=requested (checkpoint: saved)`` for each setting the resume rule refuses.

    Keys present on one side only are skipped: config groups gain keys over time, and a
    changed class already shows as a changed ``_target_``.
    """
    requested = cast(dict[str, Any], OmegaConf.to_container(cfg.model, resolve=True))
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


def tensor_mismatches(saved: Mapping[str, Any], expected: Mapping[str, torch.Tensor]) -> list[str]:
    """Tensors whose shape differs, then tensors only one side has, as short descriptions."""
    shapes = [
        f"{key}: checkpoint {list(saved[key].shape)}, model {list(tensor.shape)}"
        for key, tensor in expected.items()
        if key in saved and tuple(saved[key].shape) != tuple(tensor.shape)
    ]
    only_model = [f"{key} missing from the checkpoint" for key in expected if key not in saved]
    only_saved = [f"{key} not in the model" for key in saved if key not in expected]
    return shapes + only_model + only_saved


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
