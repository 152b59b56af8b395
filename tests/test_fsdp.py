"""``trainer=fsdp`` on the CPU: FSDP2's ``fully_shard`` (Lightning's ModelParallelStrategy) over
two gloo processes trains the tiny model to the same weights as DDP, and its checkpoint -- one
ordinary file gathered on rank 0 -- loads in ``eval`` and ``export`` like any other."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from clip_lightning.cli.eval import evaluate
from clip_lightning.cli.export import export
from clip_lightning.cli.loading import build_datamodule
from clip_lightning.module import CLIPModule
from tests.helpers import TINY_TRAIN_OVERRIDES, compose_train
from tests.helpers.distributed import free_port, join_as_rank, run_ranks
from tests.helpers.tasks import compose_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.distributed,
]

MODEL = [*TINY_TRAIN_OVERRIDES, "model/head=linear", "++trainer.max_steps=2"]
STRATEGIES = {
    "ddp": ["trainer=ddp_sim"],
    "fsdp": [
        "trainer=fsdp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.strategy.process_group_backend=gloo",
    ],
}
DATA = [
    "dataset=synthetic",
    "dataset.adapter_options.train=48",
    "dataset.adapter_options.val=24",
    "dataset.adapter_options.test=24",
    "dataset.adapter_options.image_size=32",
    "dataset.eval_batch_size=24",
]


def _worker(rank: int, port: int, out: str) -> None:
    join_as_rank(rank, port)
    for name, strategy in STRATEGIES.items():
        cfg = compose_train([*MODEL, *strategy], output_dir=Path(out) / name)
        L.seed_everything(0, verbose=False)
        model = instantiate(cfg.model)
        trainer = instantiate(
            cfg.trainer,
            logger=False,
            enable_checkpointing=False,
            limit_val_batches=0,
            enable_progress_bar=False,
        )
        datamodule = build_datamodule(cfg.dataset, model)
        # validate_before_fit: a validation first shards the model; fit must not shard it again
        trainer.validate(model, datamodule=datamodule, verbose=False)
        trainer.fit(model, datamodule=datamodule)
        trainer.save_checkpoint(Path(out) / f"{name}.ckpt")  # every rank: FSDP gathers


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    run_ranks(_worker, free_port(), str(out))
    return out


def test_fsdp_trains_to_ddps_weights_into_one_checkpoint_file(checkpoints: Path) -> None:
    assert (checkpoints / "fsdp.ckpt").is_file()  # not a folder of shards
    fsdp = CLIPModule.load_from_checkpoint(checkpoints / "fsdp.ckpt").state_dict()
    ddp = CLIPModule.load_from_checkpoint(checkpoints / "ddp.ckpt").state_dict()
    assert fsdp.keys() == ddp.keys()
    torch.testing.assert_close(fsdp, ddp, atol=1e-5, rtol=0)
    initial = instantiate(compose_train(MODEL).model).state_dict()
    assert not torch.equal(fsdp["image_head.proj.weight"], initial["image_head.proj.weight"])


def test_an_fsdp_checkpoint_loads_in_eval_and_export(checkpoints: Path, tmp_path: Path) -> None:
    results = {}
    for name in STRATEGIES:
        cfg = compose_config(
            "eval",
            [*DATA, f"ckpt_path={checkpoints / name}.ckpt", "trainer.accelerator=cpu"],
        )
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / name)
        results[name] = evaluate(cfg)["metrics"]
    assert results["fsdp"] == pytest.approx(results["ddp"], abs=1e-4)
    cfg = compose_config(
        "export",
        [
            f"ckpt_path={checkpoints / 'fsdp.ckpt'}",
            f"out={tmp_path / 'exported'}",
            "ignore_crop_pct=true",
        ],
    )
    assert export(cfg)["max_embedding_difference"] < 1e-5
