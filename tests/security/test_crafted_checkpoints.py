"""Every crafted checkpoint is refused in one line by every way the project reads one -- the
library and each command-line entry point -- and nothing it asks for happens: the canary folder
stays empty and the environment secret is never printed.

The entry points run in this process through ``run_task``, the wrapper each command line goes
through (config check, one-line report, exit status 1); one case also runs as a real command.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, open_dict

from clip_lightning.cli.embed import embed
from clip_lightning.cli.eval import evaluate
from clip_lightning.cli.export import export
from clip_lightning.cli.loading import load_model
from clip_lightning.cli.search import search
from clip_lightning.cli.task import run_task
from clip_lightning.cli.train import train
from clip_lightning.errors import CheckpointError
from clip_lightning.module import CLIPModule
from tests.helpers import compose_task, run_command
from tests.helpers.security import (
    CASES,
    REFUSED_FOR,
    SECRET,
    SECRET_ENV,
    SECURITY_OVERRIDES,
    Targets,
)

# entry point -> (config, task, the setting that points it at the crafted file)
ENTRY_POINTS: dict[str, tuple[str, Callable[[DictConfig], Any], str]] = {
    "eval": ("eval", evaluate, "ckpt_path"),
    "search": ("search", search, "ckpt_path"),
    "export": ("export", export, "ckpt_path"),
    "embed": ("embed", embed, "ckpt_path"),
    "train ckpt_path=": ("train", train, "ckpt_path"),
    "train resume_dir=": ("train", train, "resume_dir"),
    "train init_from=": ("train", train, "init_from"),
}


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, DictConfig]:
    """Each entry point's composed config, as its command line would compose it."""
    root = tmp_path_factory.mktemp("security-entry-points")
    (root / "images").mkdir()
    extra = {
        "eval": ["dataset=synthetic"],
        "search": [f"images={root / 'images'}", "query=a dog"],
        "export": [f"out={root / 'exported'}"],
        "embed": [f"images={root / 'images'}"],
        "train": SECURITY_OVERRIDES,
    }
    return {
        name: compose_task(config, extra[config], output_dir=root / "run")
        for name, (config, _, _) in ENTRY_POINTS.items()
    }


def _refusal(entry: str, path: Path, configs: dict[str, DictConfig], caplog) -> str:
    """The one line the library (a CheckpointError) or the entry point (logged, exit 1) gives
    for the crafted checkpoint at ``path``."""
    if entry == "library":
        with pytest.raises(CheckpointError) as raised:
            CLIPModule.load_from_checkpoint(path)
        return str(raised.value)
    config_name, task, setting = ENTRY_POINTS[entry]
    cfg = copy.deepcopy(configs[entry])
    with open_dict(cfg):
        cfg[setting] = str(path.parents[1] if setting == "resume_dir" else path)
    caplog.clear()
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exited:
        run_task(task, cfg, config_name)
    assert exited.value.code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.parametrize("entry", ["library", *ENTRY_POINTS])
@pytest.mark.parametrize("case", CASES)
def test_crafted_checkpoint_is_refused_in_one_line_and_nothing_runs(
    case: str,
    entry: str,
    corpus: dict[str, Path],
    configs: dict[str, DictConfig],
    targets: Targets,
    monkeypatch,
    caplog,
    capsys,
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    path = corpus[case]
    if entry == "train resume_dir=":  # through the run directory's last.ckpt, a link to it
        path = corpus[case].parents[1] / "runs" / case / "checkpoints" / "last.ckpt"
    message = _refusal(entry, path, configs, caplog)
    printed = capsys.readouterr()
    assert "\n" not in message
    assert REFUSED_FOR[case] in message
    assert SECRET not in message + printed.out + printed.err + caplog.text
    assert not list(targets.canary.iterdir())


def test_the_corpus_is_made_from_a_checkpoint_that_loads(good_checkpoint: Path) -> None:
    """Each case differs from a loadable checkpoint by its one attack only."""
    reloaded = load_model(good_checkpoint)
    assert reloaded.image_encoder.model.default_cfg["architecture"] == "test_resnet"
    assert "tokenizer.json" in reloaded.hparams["text_encoder"]["saved_files"]


@pytest.mark.slow
def test_the_full_chain_is_one_line_from_the_command_line(
    corpus: dict[str, Path], targets: Targets, tmp_path: Path
) -> None:
    """The issue's exploit -- a dropped pickle loaded through an ``oc.create`` interpolation --
    run as a real command with the secret in its environment."""
    proc = run_command(
        tmp_path,
        "eval",
        f"ckpt_path={corpus['dropped_pickle_chain']}",
        "dataset=synthetic",
        check=False,
        **{SECRET_ENV: SECRET},
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-2000:]
    assert "Traceback" not in output and SECRET not in output
    lines = [line for line in output.splitlines() if "ERROR" in line]
    assert len(lines) == 1 and REFUSED_FOR["dropped_pickle_chain"] in lines[0]
    assert not list(targets.canary.iterdir())
