"""Finding the checkpoint a run continues from: ``ckpt_path`` / ``resume_dir`` turned into a file.

Every run gets a fresh Hydra run directory; a resumed run reads its checkpoint from an earlier
one. ``ckpt_path=last`` picks ``checkpoints/last.ckpt`` of the most recent run of the same
``task_name`` (newest ``last.ckpt`` under ``<log_dir>/<task_name>/runs/``) that trained the same
model on the same data (the newest run at all if none did), or of ``resume_dir`` when given.
Any other value is used as a checkpoint path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, ListConfig, OmegaConf

from clip_lightning.checkpoints.resume import config_differences
from clip_lightning.errors import CheckpointError
from clip_lightning.utils.paths import path_problem

LAST = "last.ckpt"
#: A test of an earlier run's directory.
RunFilter = Callable[[Path], bool]
#: The dataset keys that say which data a run trains on (loader and cache settings may change).
DATASET_IDENTITY = (
    "_target_", "name", "format", "root", "hub_id", "image_dir", "columns", "adapter_options",
    "split_sizes", "split_seed",
)  # fmt: skip


def require_checkpoint_file(path: Path, key: str = "ckpt_path") -> Path:
    """``path`` if it is a file, else a :class:`CheckpointError` that says what it is instead."""
    if path.is_file():
        return path
    if path.is_dir():
        found = [p for p in (path / "checkpoints" / LAST, path / LAST) if p.is_file()]
        found += sorted(path.glob("*.ckpt")) + sorted(path.glob("checkpoints/*.ckpt"))
        fix = f"e.g. {key}={found[0]}" if found else "it holds none"
        raise CheckpointError(
            f"{key}={path} is a folder, not a checkpoint file; pass a .ckpt file ({fix})"
        )
    raise CheckpointError(
        f"{key}={path} {path_problem(path)}; pass {key}= a .ckpt file from the checkpoints/ "
        "folder of a `clip_lightning.train` run"
    )


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


def resume_folders(ckpt_path: str | None, resume_dir: str | None, runs_dir: Path) -> set[Path]:
    """The checkpoint folders ``ckpt_path`` / ``resume_dir`` make a resume look in."""
    if resume_dir is not None:
        return {Path(resume_dir) / "checkpoints"}
    if ckpt_path == "last":
        return set(runs_dir.glob("*/checkpoints"))
    return {Path(ckpt_path).parent} if ckpt_path else set()


def checkpoint_run_dir(ckpt: Path) -> Path:
    """The run directory a checkpoint was written in (``<run>/checkpoints/x.ckpt``)."""
    return ckpt.resolve().parents[1]
