"""The built wheel works on its own: configs ship inside it and the entry points (console scripts
and ``python -m``) find them from any working directory, with the installed copy (not this
checkout) doing the work."""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, TINY_RUN_OVERRIDES, run_process, train_env

RECALL_KEYS = [f"test/{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (the checkout stays clean), installed with
    ``pip --target`` into a fresh folder; its heavy dependencies come from this venv."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    env = train_env(root)
    run_process(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(source)],
        root,
        env,
    )
    (wheel,) = (root / "dist").glob("clip_lightning-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "clip_lightning/conf/train.yaml" in names
    assert "clip_lightning/conf/experiment/quickstart.yaml" in names
    target = root / "site"
    run_process(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], root, env
    )
    return target


@pytest.mark.slow
def test_the_installed_wheel_trains_from_an_unrelated_directory(installed, tmp_path):
    env = train_env(tmp_path, PYTHONPATH=str(installed))  # ahead of the editable checkout
    where = run_process(
        [sys.executable, "-c", "import clip_lightning; print(clip_lightning.__file__)"],
        tmp_path,
        env,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed)

    # the console script (pip puts it in <target>/bin) and Hydra's tab completion through it
    script = str(installed / "bin" / "clip-lightning-train")
    job = run_process([script, "--cfg", "job"], tmp_path, env)
    assert "_target_: clip_lightning.module.CLIPModule" in job.stdout
    completion = run_process([script, "-sc", "install=bash"], tmp_path, env)
    assert "complete -o nospace -o default -F hydra_bash_completion clip-lightning-train" in (
        completion.stdout
    )

    run_process([sys.executable, "-m", "clip_lightning.train", *TINY_RUN_OVERRIDES], tmp_path, env)
    (metrics_file,) = tmp_path.glob("logs/quickstart/runs/*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert all(0.0 <= metrics[key] <= 100.0 for key in RECALL_KEYS)
