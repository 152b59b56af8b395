"""OmegaConf resolvers and config printing for the entry points."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf


def package_path(spec: str) -> str:
    """``${package_path:pkg/sub/dir}``: a folder shipped inside an installed Python package.

    Lets configs point at data that travels with a PyPI package (e.g. the offline MiniLM)
    without hard-coding a site-packages path.
    """
    package, _, sub = spec.partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ValueError(f"package {package!r} is not installed (pip install {package})")
    return str(Path(next(iter(found.submodule_search_locations))) / sub)


def register_resolvers() -> None:
    """``${package_path:...}``, and ``${pid:}`` (this process's id: with a microsecond time it
    keeps run directories of jobs started together apart)."""
    if not OmegaConf.has_resolver("package_path"):
        OmegaConf.register_new_resolver("package_path", package_path)
    if not OmegaConf.has_resolver("pid"):
        # cached in the config like Hydra's ${now:}: a job launched elsewhere keeps the value
        OmegaConf.register_new_resolver("pid", lambda: str(os.getpid()), use_cache=True)


PRINT_ORDER = ("dataset", "model", "loss", "optimizer", "scheduler", "trainer", "callbacks")


def print_config_tree(cfg: DictConfig, order: Sequence[str] = PRINT_ORDER) -> None:
    """Print the resolved config as a rich tree, main groups first."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    fields = [f for f in order if f in cfg] + [f for f in cfg if f not in order]
    for field in fields:
        branch = tree.add(str(field), style="bold")
        value = cfg[field]
        text = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
