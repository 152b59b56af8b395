"""The command line: one console script per task, and a --help that lists each task's main keys
(keys that exist, with a line each) above its config groups."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from setuptools.config.pyprojecttoml import read_configuration

from tests.helpers import CONFIG_DIR, REPO_ROOT
from tests.helpers.tasks import command_in_process, compose_config

TASKS = sorted(path.stem for path in Path(CONFIG_DIR).glob("*.yaml"))
# "  key=VALUE   description" lines of a --help header
KEY_LINE = re.compile(r"^  ([\w./]+)=\S*\s+(\S.*)$")


def has_key(tree: object, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def test_every_task_has_a_console_script() -> None:
    scripts = read_configuration(REPO_ROOT / "pyproject.toml")["project"]["scripts"]
    # a new conf/<task>.yaml with a clip_lightning.cli.<task>.main needs its line in
    # [project.scripts]: clip-lightning-<task> = "clip_lightning.cli.<task>:main"
    assert scripts == {
        f"clip-lightning-{task}": f"clip_lightning.cli.{task}:main" for task in TASKS
    }
    for target in scripts.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target


@pytest.mark.parametrize("task", TASKS)
def test_help_names_the_task_and_existing_main_keys(task: str) -> None:
    cfg = compose_config(task, hydra=True)
    help_cfg = cfg.hydra.help
    assert help_cfg.app_name == f"clip-lightning-{task}"
    header = OmegaConf.to_container(help_cfg, resolve=False)["header"]
    assert header.startswith(f"clip-lightning-{task}: ")
    keys = [match[1] for line in header.splitlines() if (match := KEY_LINE.match(line))]
    assert len(keys) >= 3, header
    tree = OmegaConf.to_container(cfg, resolve=False)
    for key in keys:  # a config group (dataset=NAME, model/head=...) or a key of the config
        assert Path(CONFIG_DIR, key).is_dir() or has_key(tree, key), f"{task}: {key}"


def test_train_help_prints_main_keys_groups_and_completion() -> None:
    run = command_in_process("train", "--help")
    stdout = run.stdout
    assert run.code == 0, run.stderr[-2000:]
    assert "init_from=FILE                  start a new run from a checkpoint's weights" in (stdout)
    assert "experiment: coco_openclip_vitb32," in stdout  # the config groups
    assert 'eval "$(clip-lightning-train -sc install=bash)"' in stdout
    assert "_target_" not in stdout  # not the raw config
