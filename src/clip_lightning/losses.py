"""Contrastive losses for CLIP-style dual encoders, with global negatives under DDP.

The design follows open_clip's ``loss.py``: every rank all-gathers the (L2-normalised) features
of all ranks, so each sample is contrasted against the negatives of the *global* batch, not only
of its own GPU's share. Each loss owns its learnable temperature (``logit_scale``, stored in log
space as in CLIP, plus ``logit_bias`` for SigLIP), so the LightningModule simply optimises them.

Gradient semantics under DDP (``gather_with_grad=True``). ``torch.distributed.nn.functional.
all_gather`` sums, in its backward, the gradients that every rank sends to a slot. Writing ``L``
for the loss of one process on the concatenated global batch:

* ``local_loss=False``: every rank computes the same global ``L``; rank ``r`` therefore receives
  ``world_size * dL/dx_r`` for its own features, and the loss parameters get ``dL/ds`` on every
  rank. DDP averages over ranks, which yields exactly ``dL/dθ`` for all parameters.
* ``local_loss=True``: rank ``r`` computes ``L_r`` (its own rows against all gathered columns),
  normalised so that ``mean_r L_r == L``. Summing gradients in the gather and averaging in DDP
  gives ``d(mean_r L_r)/dθ = dL/dθ``. Cheaper: a ``B x W·B`` rather than ``W·B x W·B`` logit
  matrix per rank.

With ``gather_with_grad=False`` (as in open_clip) the gathered features carry no gradient and the
local features are spliced back into their slot. For ``local_loss=False`` the tower gradients
after DDP averaging are then ``1/world_size`` of the single-process gradient (the loss
parameters' are exact), which acts as a smaller tower learning rate. With ``local_loss=True`` no
gradient flows through the other ranks' negatives at all, which is an approximation.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["InfoNCELoss", "SigLIPLoss", "SoftTargetLoss", "gather_features"]


def _dist_info() -> tuple[int, int]:
    """(rank, world_size) of the default process group, or (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenated all-gather whose backward sums the gradients of every rank into each slot."""
    with warnings.catch_warnings():
        # Deprecated in favour of functional collectives, which have no autograd support on gloo.
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_fn.all_gather(tensor), dim=0)


def gather_features(
    image_features: Tensor,
    text_features: Tensor,
    *,
    local_loss: bool,
    gather_with_grad: bool,
    rank: int,
    world_size: int,
) -> tuple[Tensor, Tensor]:
    """All-gather image and text features of all ranks, concatenated in rank order.

    Without grad, the local (grad-carrying) features are put back into this rank's slot so that
    the global loss still back-propagates into the local towers; with ``local_loss`` the local
    features enter the loss directly, so the slot is left as gathered.
    """
    if world_size == 1:
        return image_features, text_features
    if gather_with_grad:
        return _all_gather_with_grad(image_features), _all_gather_with_grad(text_features)
    gathered = []
    for features in (image_features, text_features):
        slots = [torch.empty_like(features) for _ in range(world_size)]
        dist.all_gather(slots, features.contiguous())
        if not local_loss:
            slots[rank] = features
        gathered.append(torch.cat(slots, dim=0))
    return gathered[0], gathered[1]


class _ContrastiveLoss(nn.Module):
    """Shared state: the learnable log-space logit scale, its clamp, and the DDP gather."""

    def __init__(
        self,
        init_logit_scale: float,
        max_logit_scale: float,
        local_loss: bool,
        gather_with_grad: bool,
    ) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.max_logit_scale = max_logit_scale
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad

    @torch.no_grad()
    def init_from_pretrained(self, logit_scale: float | None, logit_bias: float | None) -> None:
        """Start from a pretrained model's temperature instead of this loss's defaults.

        ``logit_scale`` is in log space, as ``init_logit_scale`` and CLIP/open_clip store it.
        ``None`` keeps the current value; a bias is ignored by losses that have none.
        """
        if logit_scale is not None:
            self.logit_scale.fill_(float(logit_scale))
        bias = getattr(self, "logit_bias", None)
        if logit_bias is not None and isinstance(bias, nn.Parameter):
            bias.fill_(float(logit_bias))

    @property
    def scale(self) -> Tensor:
        """Effective multiplicative scale ``min(exp(logit_scale), max_logit_scale)``.

        Clamping the exponent (not the parameter) keeps training stable as in CLIP: once the
        scale saturates, its gradient is zero and it stops growing.
        """
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def _gather(self, image_features: Tensor, text_features: Tensor) -> tuple[Tensor, Tensor, int]:
        """Gathered (image, text) features and the global row index of this rank's first row."""
        rank, world_size = _dist_info()
        all_image, all_text = gather_features(
            image_features,
            text_features,
            local_loss=self.local_loss,
            gather_with_grad=self.gather_with_grad,
            rank=rank,
            world_size=world_size,
        )
        return all_image, all_text, rank * image_features.shape[0]

    def extra_repr(self) -> str:
        return (
            f"max_logit_scale={self.max_logit_scale}, local_loss={self.local_loss}, "
            f"gather_with_grad={self.gather_with_grad}"
        )


class InfoNCELoss(_ContrastiveLoss):
    """CLIP's symmetric cross-entropy over image→text and text→image logits.

    Assumes one caption per image in the (global) batch: the matching pair is the only positive
    of its row, all other samples of the global batch are negatives.
    """

    def __init__(
        self,
        init_logit_scale: float = math.log(1 / 0.07),
        max_logit_scale: float = 100.0,
        local_loss: bool = False,
        gather_with_grad: bool = True,
    ) -> None:
        super().__init__(init_logit_scale, max_logit_scale, local_loss, gather_with_grad)

    def forward(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """Mean of the two cross-entropies; features are L2-normalised ``[B, D]``."""
        all_image, all_text, offset = self._gather(image_features, text_features)
        scale = self.scale
        if self.local_loss:
            logits_per_image = scale * image_features @ all_text.T
            logits_per_text = scale * text_features @ all_image.T
        else:
            logits_per_image = scale * all_image @ all_text.T
            logits_per_text = logits_per_image.T
            offset = 0
        labels = offset + torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
        return (
            F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
        ) / 2


class SoftTargetLoss(_ContrastiveLoss):
    """Symmetric cross-entropy against soft targets built from within-modality similarity.

    Targets are ``softmax((image·imageᵀ + text·textᵀ) / 2 / target_temperature)`` per row, so a
    pair whose images or captions are (near-)duplicates of another pair's shares its probability
    mass. This helps when the batch can hold the same image several times or near-identical
    captions (e.g. sampling every (image, caption) pair of COCO with its 5 captions per image),
    where one-hot InfoNCE targets would push apart pairs that actually match.

    Choices that differ from the common soft-target CLIP formulation:

    * the targets are detached: they are a label, not something to optimise (otherwise the
      loss can be lowered by making the within-modality similarities spikier);
    * both directions use the row-normalised targets (the similarity is symmetric, so row ``i``
      of the text→image targets equals row ``i`` of the image→text targets), whereas the
      common formulation's ``targets.T`` has rows that do not sum to one;
    * ``target_temperature`` divides the similarities, as a temperature does (the common formulation
      multiplied); lower values give sharper targets, and at the default 1.0 they agree. With
      L2-normalised features the similarities lie in ``[-1, 1]``, so 1.0 gives quite soft targets.
    """

    def __init__(
        self,
        init_logit_scale: float = math.log(1 / 0.07),
        max_logit_scale: float = 100.0,
        target_temperature: float = 1.0,
        local_loss: bool = False,
        gather_with_grad: bool = True,
    ) -> None:
        super().__init__(init_logit_scale, max_logit_scale, local_loss, gather_with_grad)
        if target_temperature <= 0:
            raise ValueError(f"target_temperature must be positive, got {target_temperature}")
        self.target_temperature = target_temperature

    def forward(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """Mean of the image→text and text→image soft cross-entropies."""
        all_image, all_text, _ = self._gather(image_features, text_features)
        rows_image, rows_text = (
            (image_features, text_features) if self.local_loss else (all_image, all_text)
        )
        with torch.no_grad():
            similarity = (rows_image @ all_image.T + rows_text @ all_text.T) / 2
            targets = F.softmax(similarity / self.target_temperature, dim=-1)
        scale = self.scale
        logits_per_image = scale * rows_image @ all_text.T
        logits_per_text = scale * rows_text @ all_image.T
        image_loss = -(targets * F.log_softmax(logits_per_image, dim=-1)).sum(-1).mean()
        text_loss = -(targets * F.log_softmax(logits_per_text, dim=-1)).sum(-1).mean()
        return (image_loss + text_loss) / 2


class SigLIPLoss(_ContrastiveLoss):
    """Pairwise sigmoid loss (Zhai et al. 2023): each (image, text) pair is a binary problem.

    ``loss = -Σ_ij logsigmoid(label_ij · (scale · image_i·text_j + bias)) / B`` with ``label``
    +1 on the diagonal and -1 elsewhere. Normalisation under DDP: the global loss divides the
    global sum by the global batch size; with ``local_loss`` each rank divides its local rows'
    sum by its local batch size, so the mean over ranks (what DDP's gradient averaging
    optimises) is again the single-process loss on the concatenated batch.
    """

    def __init__(
        self,
        init_logit_scale: float = math.log(10),
        init_logit_bias: float = -10.0,
        max_logit_scale: float = 100.0,
        local_loss: bool = False,
        gather_with_grad: bool = True,
    ) -> None:
        super().__init__(init_logit_scale, max_logit_scale, local_loss, gather_with_grad)
        self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)))

    def forward(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """Sum of pairwise log-sigmoid losses divided by the number of image rows."""
        all_image, all_text, offset = self._gather(image_features, text_features)
        if self.local_loss:
            rows = image_features
        else:
            rows, offset = all_image, 0
        logits = self.scale * rows @ all_text.T + self.logit_bias
        labels = -torch.ones_like(logits)
        positives = torch.arange(logits.shape[0], device=logits.device)
        labels[positives, positives + offset] = 1.0
        return -F.logsigmoid(labels * logits).sum() / logits.shape[0]
