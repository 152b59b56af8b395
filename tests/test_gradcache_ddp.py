"""GradCache under DDP: two gloo processes with ``trainer=ddp_sim``'s strategy take one step of
the real ``CLIPModule`` on the same global batch, once plainly and once in chunks of 3 pairs;
every trainable parameter gets the same all-reduced gradient both ways.

The towers have no BatchNorm and no dropout (a 1-block ViT and a trainable 1-layer BERT), whose
per-chunk statistics or masks GradCache does not reproduce (see :mod:`clip_lightning.gradcache`).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from clip_lightning.cli.loading import build_datamodule
from tests.helpers import TINY_TRAIN_OVERRIDES, compose_train
from tests.helpers.distributed import WORLD_SIZE, free_port, join_as_rank, run_ranks

pytestmark = [
    pytest.mark.slow,
    pytest.mark.distributed,
]

ATOL = 1e-5
OVERRIDES = [
    *[o for o in TINY_TRAIN_OVERRIDES if not o.startswith("+model.text_encoder.config_overrides")],
    "+model.text_encoder.config_overrides={num_hidden_layers:1,hidden_dropout_prob:0,"
    "attention_probs_dropout_prob:0}",
    "model.text_encoder.freeze=false",
    "model.text_encoder.cache=null",
    "model.image_encoder.name=vit_tiny_patch16_224",
    "+model.image_encoder.img_size=32",
    "+model.image_encoder.patch_size=8",
    "+model.image_encoder.depth=1",
    "+model.image_encoder.embed_dim=32",
    "+model.image_encoder.num_heads=2",
    "model.head.dropout=0.0",
    "model.clip_grad_norm=null",
    "dataset.batch_size=6",
    "trainer=ddp_sim",
    "++trainer.max_steps=1",
    "++trainer.limit_val_batches=0",
    "++trainer.enable_progress_bar=false",
]


class GradientRecorder(L.Callback):
    """Saves the gradients the optimizer is about to apply (after DDP's all-reduce)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        torch.save(grads, self.path)


def _worker(rank: int, port: int, out: str) -> None:
    join_as_rank(rank, port)
    for mode, extra in (("plain", []), ("grad_cache", ["+model.grad_cache_chunk_size=3"])):
        cfg = compose_train([*OVERRIDES, *extra], output_dir=Path(out) / mode)
        L.seed_everything(0, verbose=False)
        model = instantiate(cfg.model)
        trainer = instantiate(
            cfg.trainer,
            callbacks=[GradientRecorder(Path(out) / f"{mode}_{rank}.pt")],
            logger=False,
            enable_checkpointing=False,
        )
        trainer.fit(model, datamodule=build_datamodule(cfg.dataset, model))


def test_grad_cache_gradients_equal_plain_ddp_on_the_same_global_batch(tmp_path: Path) -> None:
    run_ranks(_worker, free_port(), str(tmp_path))
    for rank in range(WORLD_SIZE):
        plain = torch.load(tmp_path / f"plain_{rank}.pt")
        chunked = torch.load(tmp_path / f"grad_cache_{rank}.pt")
        assert chunked.keys() == plain.keys()
        towers = {n.split(".")[0] for n in plain}
        assert {"image_encoder", "text_encoder", "image_head", "text_head", "loss"} <= towers
        torch.testing.assert_close(chunked, plain, atol=ATOL, rtol=0)
    # the ranks saw different halves of the batch, and DDP made their gradients one
    torch.testing.assert_close(
        torch.load(tmp_path / "grad_cache_0.pt"), torch.load(tmp_path / "grad_cache_1.pt")
    )
