"""Every option of every config group composes; every experiment runs a fast_dev_run."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from tests.helpers import (
    CONFIG_DIR,
    TINY_MODEL_OVERRIDES,
    compose_train,
    read_metrics,
    run_dirs,
)
from tests.helpers.tasks import train_in_process

CONF = Path(CONFIG_DIR)
# folders of YAML read as files (zero-shot prompt lists), not config groups
DATA_FOLDERS = {"templates"}
CLIP_MODULE = "clip_lightning.module.CLIPModule"


def group_options() -> list[str]:
    """``group=option`` for every YAML file below conf/ except the primary config."""
    options = []
    for path in sorted(CONF.rglob("*.yaml")):
        rel = path.relative_to(CONF)
        if rel.parent == Path(".") or rel.parts[0] in DATA_FOLDERS:
            continue
        options.append(f"{rel.parent.as_posix()}={rel.stem}")
    return options


@pytest.mark.parametrize("override", group_options())
def test_every_config_composes(override: str) -> None:
    cfg = compose_train([override], hydra=override.startswith("hydra/"))
    assert "model" in cfg and "trainer" in cfg
    group, option = override.split("=")
    if group == "experiment":
        assert cfg.task_name == option
    if group == "trainer":
        assert cfg.trainer.accelerator in ("auto", "cpu", "gpu")
        assert isinstance(cfg.trainer.devices, int) and isinstance(cfg.trainer.num_nodes, int)
    if group == "callbacks" or group == "logger":
        # every entry is a complete instantiable node
        entries = OmegaConf.to_container(cfg[group]) or {}
        assert all("_target_" in entry for entry in entries.values() if entry)


def test_slurm_launcher_follows_trainer() -> None:
    cfg = compose_train(
        ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2"],
        hydra=True,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (8, 8, 2)


def test_optuna_search_space_is_the_plugin_schema() -> None:
    cfg = compose_train(["hparams_search=optuna_lr"], hydra=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize" and sweeper.max_failure_rate == 1.0
    assert "optimizer.lr" in sweeper.params


def test_typo_in_an_override_fails_with_hydra_message() -> None:
    with pytest.raises(ConfigCompositionException, match="batchsize"):
        compose_train(["dataset.batchsize=3"])


def test_unknown_option_lists_the_available_ones() -> None:
    with pytest.raises(MissingConfigException) as info:
        compose_train(["loss=nonexistent"])
    message = str(info.value)
    assert "nonexistent" in message
    assert all(name in message for name in ("infonce", "siglip", "soft_target"))


@pytest.mark.parametrize(("group", "base"), [("dataset", "_captions"), ("model", "_pair")])
def test_options_built_on_a_base_hold_only_what_differs(group: str, base: str) -> None:
    """A key an option shares with its base (same value) belongs in the base alone."""
    shared = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{base}.yaml"))
    users = []
    for path in sorted((CONF / group).glob("*.yaml")):
        own = OmegaConf.to_container(OmegaConf.load(path))
        if base not in own.get("defaults", []):
            continue
        users.append(path.stem)
        repeated = [k for k, v in own.items() if k in shared and shared[k] == v]
        assert not repeated, f"{path.name} repeats {repeated} of {base}.yaml"
        composed = compose_train([f"{group}={path.stem}"])[group]
        assert all(k in composed for k in shared)  # the base is composed in
    assert len(users) >= 3


def tower_experiments() -> list[str]:
    """Experiments built from the timm / Hugging Face towers, which TINY_MODEL_OVERRIDES swaps
    for tiny offline ones (open_clip ones train on tiny open_clip models in test_open_clip.py)."""
    names = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    return [n for n in names if compose_train([f"experiment={n}"]).model._target_ == CLIP_MODULE]


def test_every_trainer_argument_overrides_without_plus() -> None:
    """``trainer.X=...`` works for every argument of Lightning's Trainer (``logger`` and
    ``callbacks`` are the top-level groups of the same names)."""
    arguments = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    keys = set(compose_train([]).trainer) - {"_target_"}
    assert keys == arguments - {"logger", "callbacks"}
    cfg = compose_train(["trainer.limit_test_batches=2", "trainer.fast_dev_run=true"])
    assert (cfg.trainer.limit_test_batches, cfg.trainer.fast_dev_run) == (2, True)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", tower_experiments())
def test_experiment_runs_fast_dev_run(experiment: str, tmp_path: Path) -> None:
    """The experiment's own settings (freezing, heads, loss) on tiny offline encoders."""
    train_in_process(tmp_path, f"experiment={experiment}", *TINY_MODEL_OVERRIDES, "debug=fdr")
    (run,) = run_dirs(tmp_path, "debug")
    metrics = read_metrics(run)
    assert metrics["test/rsum"] >= 0.0
    assert "train/loss" in metrics
