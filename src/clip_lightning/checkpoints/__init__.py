"""Checkpoints: finding, reading, comparing and resuming them, one job per module.

* :mod:`.find`: ``ckpt_path`` / ``resume_dir`` turned into a file (``ckpt_path=last`` finds the
  newest ``last.ckpt`` of an earlier run of the same model and data);
* :mod:`.read`: the one reader, which treats a file as data (no code runs, no interpolation
  resolves) and checks its model settings before anything is built;
* :mod:`.compare`: which settings shape the weights, and what does not fit a model;
* :mod:`.resume`: the resume rule and the learning rates of a resumed run;
* :mod:`.wandb_id`: the W&B run a resumed run continues.
"""

from clip_lightning.checkpoints.compare import (
    SETTINGS_KEY,
    describe_mismatch,
    settings_saved_in,
    tensor_mismatches,
    weight_shaping_settings,
)
from clip_lightning.checkpoints.find import (
    LAST,
    checkpoint_run_dir,
    find_last_checkpoint,
    require_checkpoint_file,
    resolve_ckpt_path,
    resume_folders,
    same_model_and_data,
)
from clip_lightning.checkpoints.read import (
    model_arguments,
    read_checkpoint,
    read_training_checkpoint,
)
from clip_lightning.checkpoints.resume import (
    ResumeLearningRates,
    check_resume,
    config_differences,
    linear_to_zero,
)
from clip_lightning.checkpoints.wandb_id import (
    WANDB_ID_FILE,
    continue_wandb_run,
    read_wandb_id,
    remember_wandb_run,
    write_wandb_id,
)

__all__ = [
    "LAST",
    "SETTINGS_KEY",
    "WANDB_ID_FILE",
    "ResumeLearningRates",
    "check_resume",
    "checkpoint_run_dir",
    "config_differences",
    "continue_wandb_run",
    "describe_mismatch",
    "find_last_checkpoint",
    "linear_to_zero",
    "model_arguments",
    "read_checkpoint",
    "read_training_checkpoint",
    "read_wandb_id",
    "remember_wandb_run",
    "require_checkpoint_file",
    "resolve_ckpt_path",
    "resume_folders",
    "same_model_and_data",
    "settings_saved_in",
    "tensor_mismatches",
    "weight_shaping_settings",
    "write_wandb_id",
]
