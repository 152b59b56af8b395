"""Global-negative losses under DDP give exactly the single-process gradient.

Two gloo processes on the CPU each take half of a fixed global batch and run one backward through
a DistributedDataParallel model that holds both towers and the loss (so DDP averages the gradient of
the loss's temperature like every other one). The workers save their gradients; the assertions run
here, in the parent, against one process computing the same loss on the concatenated batch.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from clip_lightning import losses
from clip_lightning.losses import InfoNCELoss, SigLIPLoss, SoftTargetLoss
from tests.helpers.distributed import WORLD_SIZE, run_ranks

pytestmark = [pytest.mark.distributed]

LOCAL_BATCH = 4
IMAGE_DIM, TEXT_DIM, EMBED_DIM = 6, 5, 4
ATOL = 1e-5

LOSS_CLASSES: dict[str, type[nn.Module]] = {
    "infonce": InfoNCELoss,
    "soft_target": SoftTargetLoss,
    "siglip": SigLIPLoss,
}
# Case name -> (loss name, constructor kwargs); each must reproduce the single-process gradient.
EXACT_CASES = {
    f"{loss_name}{'_local' if local_loss else ''}": (loss_name, {"local_loss": local_loss})
    for loss_name in LOSS_CLASSES
    for local_loss in (False, True)
}


class DualEncoder(nn.Module):
    """Two linear towers with L2 normalisation, and the loss with its learnable temperature."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image_tower = nn.Linear(IMAGE_DIM, EMBED_DIM)
        self.text_tower = nn.Linear(TEXT_DIM, EMBED_DIM)
        self.loss = loss

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        image_features = F.normalize(self.image_tower(images), dim=-1)
        text_features = F.normalize(self.text_tower(texts), dim=-1)
        return self.loss(image_features, text_features)


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    size = WORLD_SIZE * LOCAL_BATCH
    return (
        torch.randn(size, IMAGE_DIM, generator=generator),
        torch.randn(size, TEXT_DIM, generator=generator),
    )


def _gradients(model: nn.Module, images: torch.Tensor, texts: torch.Tensor) -> dict:
    """One forward/backward of ``model``; the loss value and the gradients of ``DualEncoder``."""
    loss = model(images, texts)
    loss.backward()
    encoder = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return {
        "loss": loss.detach(),
        "grads": {name: p.grad.clone() for name, p in encoder.named_parameters()},
    }


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        images, texts = _global_batch()
        local = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)

        def run(name: str, loss: nn.Module) -> None:
            ddp = nn.parallel.DistributedDataParallel(DualEncoder(loss))
            torch.save(
                _gradients(ddp, images[local], texts[local]), Path(out_dir, f"{name}_{rank}")
            )

        for name, (loss_name, kwargs) in EXACT_CASES.items():
            run(name, LOSS_CLASSES[loss_name](**kwargs))
        run("infonce_no_grad_gather", InfoNCELoss(gather_with_grad=False))
        # Naive baseline: every rank contrasts only its own half of the batch.
        with mock.patch.object(losses, "_dist_info", return_value=(0, 1)):
            for loss_name, loss_cls in LOSS_CLASSES.items():
                run(f"{loss_name}_naive", loss_cls())
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run all cases in one pair of ranks and return the folder."""
    out_dir = tmp_path_factory.mktemp("ddp_losses")
    run_ranks(_worker, str(out_dir / "rendezvous"), str(out_dir))
    return out_dir


def _load(out_dir: Path, name: str) -> list[dict]:
    return [torch.load(out_dir / f"{name}_{rank}") for rank in range(WORLD_SIZE)]


def _single_process(loss_name: str) -> dict:
    images, texts = _global_batch()
    return _gradients(DualEncoder(LOSS_CLASSES[loss_name]()), images, texts)


@pytest.mark.parametrize("case", sorted(EXACT_CASES))
def test_ddp_gradient_equals_single_process(ddp_results: Path, case: str) -> None:
    loss_name, kwargs = EXACT_CASES[case]
    expected = _single_process(loss_name)
    results = _load(ddp_results, case)
    for result in results:
        torch.testing.assert_close(result["grads"], expected["grads"], atol=ATOL, rtol=0)
    # Global loss on every rank, or per-rank shares whose mean is the global loss.
    rank_losses = torch.stack([result["loss"] for result in results])
    if kwargs["local_loss"]:
        rank_losses = rank_losses.mean(dim=0, keepdim=True)
    for loss in rank_losses:
        torch.testing.assert_close(loss, expected["loss"], atol=ATOL, rtol=0)


def test_gather_without_grad_scales_tower_gradients(ddp_results: Path) -> None:
    """Documented open_clip behaviour: towers get 1/world_size, the temperature is exact."""
    expected = {
        name: grad if name.startswith("loss.") else grad / WORLD_SIZE
        for name, grad in _single_process("infonce")["grads"].items()
    }
    for result in _load(ddp_results, "infonce_no_grad_gather"):
        torch.testing.assert_close(result["grads"], expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("loss_name", sorted(LOSS_CLASSES))
def test_naive_per_rank_loss_gives_a_different_gradient(ddp_results: Path, loss_name: str) -> None:
    expected = _single_process(loss_name)["grads"]
    naive = _load(ddp_results, f"{loss_name}_naive")[0]["grads"]
    difference = max((naive[name] - grad).abs().max().item() for name, grad in expected.items())
    assert difference > 100 * ATOL
