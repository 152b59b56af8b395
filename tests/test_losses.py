"""Single-process checks of the contrastive losses against hand-written references.

The references use python floats and explicit loops, independent of the implementation.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clip_lightning.losses import InfoNCELoss, SigLIPLoss, SoftTargetLoss, gather_features


def _features(seed: int, batch: int = 4, dim: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, dim, generator=generator, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(batch, dim, generator=generator, dtype=torch.float64), dim=-1)
    return image, text


def _dot_matrix(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    return [[sum(x * y for x, y in zip(row, col, strict=True)) for col in b] for row in a]


def _transpose(matrix: list[list[float]]) -> list[list[float]]:
    return [list(column) for column in zip(*matrix, strict=True)]


def _log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    log_sum = top + math.log(sum(math.exp(value - top) for value in row))
    return [value - log_sum for value in row]


def _reference_infonce(image: torch.Tensor, text: torch.Tensor, scale: float) -> float:
    logits = [[scale * v for v in row] for row in _dot_matrix(image.tolist(), text.tolist())]
    n = len(logits)
    image_loss = -sum(_log_softmax(logits[i])[i] for i in range(n)) / n
    text_loss = -sum(_log_softmax(_transpose(logits)[i])[i] for i in range(n)) / n
    return (image_loss + text_loss) / 2


def _reference_siglip(image: torch.Tensor, text: torch.Tensor, scale: float, bias: float) -> float:
    image_rows, text_rows = image.tolist(), text.tolist()
    total = 0.0
    for i, image_row in enumerate(image_rows):
        for j, text_row in enumerate(text_rows):
            label = 1.0 if i == j else -1.0
            z = label * (
                scale * sum(a * b for a, b in zip(image_row, text_row, strict=True)) + bias
            )
            total += math.log(1 + math.exp(-z))  # -log(sigmoid(z))
    return total / len(image_rows)


def _reference_soft_target(
    image: torch.Tensor, text: torch.Tensor, scale: float, temperature: float
) -> float:
    image_rows, text_rows = image.tolist(), text.tolist()
    image_sim, text_sim = _dot_matrix(image_rows, image_rows), _dot_matrix(text_rows, text_rows)
    n = len(image_rows)
    targets = []
    for i in range(n):
        row = [(image_sim[i][j] + text_sim[i][j]) / 2 / temperature for j in range(n)]
        targets.append([math.exp(value) for value in _log_softmax(row)])
    logits = [[scale * v for v in row] for row in _dot_matrix(image_rows, text_rows)]
    losses = []
    for direction in (logits, _transpose(logits)):
        per_row = [
            -sum(t * lp for t, lp in zip(targets[i], _log_softmax(direction[i]), strict=True))
            for i in range(n)
        ]
        losses.append(sum(per_row) / n)
    return sum(losses) / 2


@pytest.mark.parametrize("seed", [0, 1])
def test_infonce_matches_reference(seed: int) -> None:
    image, text = _features(seed)
    loss_fn = InfoNCELoss().double()
    expected = _reference_infonce(image, text, scale=loss_fn.scale.item())
    assert loss_fn(image, text).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_siglip_matches_reference(seed: int) -> None:
    image, text = _features(seed)
    loss_fn = SigLIPLoss(init_logit_scale=math.log(5.0), init_logit_bias=-2.0).double()
    assert loss_fn.scale.item() == pytest.approx(5.0)
    expected = _reference_siglip(image, text, scale=loss_fn.scale.item(), bias=-2.0)
    assert loss_fn(image, text).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("seed", "temperature"), [(0, 1.0), (1, 0.1)])
def test_soft_target_matches_reference(seed: int, temperature: float) -> None:
    image, text = _features(seed)
    loss_fn = SoftTargetLoss(init_logit_scale=math.log(3.0), target_temperature=temperature)
    scale = loss_fn.double().scale.item()
    expected = _reference_soft_target(image, text, scale=scale, temperature=temperature)
    assert loss_fn(image, text).item() == pytest.approx(expected, rel=1e-9)


def test_soft_target_does_not_backpropagate_through_targets() -> None:
    image, text = _features(2)
    image.requires_grad_(True)
    loss_fn = SoftTargetLoss(target_temperature=0.5).double()
    loss_fn(image, text).backward()

    frozen = image.detach().clone().requires_grad_(True)
    targets = torch.softmax((image.detach() @ image.detach().T + text @ text.T) / 2 / 0.5, dim=-1)
    logits = frozen @ text.T * loss_fn.scale.detach()
    reference = -(targets * (logits.log_softmax(-1) + logits.T.log_softmax(-1))).sum(-1).mean() / 2
    reference.backward()
    torch.testing.assert_close(image.grad, frozen.grad)


def test_soft_target_equals_infonce_with_one_hot_targets() -> None:
    # As the target temperature goes to 0 the targets become one-hot (for distinct samples).
    image, text = _features(3)
    soft = SoftTargetLoss(target_temperature=1e-3).double()(image, text)
    assert soft.item() == pytest.approx(InfoNCELoss().double()(image, text).item(), rel=1e-9)


@pytest.mark.parametrize("loss_cls", [InfoNCELoss, SoftTargetLoss, SigLIPLoss])
def test_scale_is_clamped_at_max(loss_cls: type[torch.nn.Module]) -> None:
    image, text = _features(4)
    loss_fn = loss_cls().double()
    with torch.no_grad():
        loss_fn.logit_scale.fill_(math.log(1000.0))
    assert loss_fn.scale.item() == pytest.approx(100.0)
    loss_fn(image, text).backward()
    # Saturated: the clamp stops the scale from growing further.
    assert loss_fn.logit_scale.grad.item() == 0.0


def test_clamped_infonce_uses_scale_100() -> None:
    image, text = _features(5)
    loss_fn = InfoNCELoss(init_logit_scale=math.log(1000.0)).double()
    expected = _reference_infonce(image, text, scale=100.0)
    assert loss_fn(image, text).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("loss_cls", [InfoNCELoss, SoftTargetLoss, SigLIPLoss])
def test_gradients_reach_temperature_parameters(loss_cls: type[torch.nn.Module]) -> None:
    image, text = _features(6)
    loss_fn = loss_cls().double()
    loss_fn(image, text).backward()
    names = {name for name, _ in loss_fn.named_parameters()}
    assert names == ({"logit_scale", "logit_bias"} if loss_cls is SigLIPLoss else {"logit_scale"})
    for name, parameter in loss_fn.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().item() > 0, name


def test_initial_temperatures() -> None:
    assert InfoNCELoss().scale.item() == pytest.approx(1 / 0.07, rel=1e-6)
    siglip = SigLIPLoss()
    assert siglip.scale.item() == pytest.approx(10.0, rel=1e-6)
    assert siglip.logit_bias.item() == -10.0


def test_infonce_is_zero_for_aligned_features_with_large_scale() -> None:
    features = torch.eye(4, dtype=torch.float64)
    loss_fn = InfoNCELoss(init_logit_scale=math.log(100.0)).double()
    assert loss_fn(features, features.clone()).item() < 1e-6


def test_gather_is_identity_without_distributed() -> None:
    image, text = _features(7)
    gathered = gather_features(
        image, text, local_loss=False, gather_with_grad=True, rank=0, world_size=1
    )
    assert gathered[0] is image
    assert gathered[1] is text


def test_soft_target_rejects_non_positive_temperature() -> None:
    with pytest.raises(ValueError, match="target_temperature"):
        SoftTargetLoss(target_temperature=0.0)


@pytest.mark.parametrize("loss_cls", [InfoNCELoss, SoftTargetLoss, SigLIPLoss])
def test_init_from_pretrained_sets_scale_and_bias_where_the_loss_has_one(
    loss_cls: type[torch.nn.Module],
) -> None:
    loss_fn = loss_cls()
    loss_fn.init_from_pretrained(math.log(50.0), -3.0)
    assert loss_fn.scale.item() == pytest.approx(50.0, rel=1e-6)
    if hasattr(loss_fn, "logit_bias"):
        assert loss_fn.logit_bias.item() == -3.0
    before = loss_fn.logit_scale.item()
    loss_fn.init_from_pretrained(None, None)
    assert loss_fn.logit_scale.item() == before
    assert loss_fn.logit_scale.requires_grad
