"""The generative objective: regression of masked frames' targets (TERA / Mockingjay style).

The loss is the mean absolute (l1) or squared (l2) error over the masked frames x target
dimensions, normalised by the global masked count as the other objectives are (DDP averages
gradients, so the loss to back-propagate is this rank's share times the world size). The l1
errors of the masked and of the unmasked valid frames are reported for monitoring (no gradient);
padding frames never count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from audio_ssl.losses.distributed import global_sum, world_size
from audio_ssl.losses.total import Objective


@dataclass
class ReconstructionObjective(Objective):
    l1_masked: torch.Tensor  # global mean |prediction - target| over masked frames x dims
    l1_unmasked: torch.Tensor  # the same over the valid frames that were not masked
    num_masked: torch.Tensor  # masked frames in the whole (global) batch
    masked_fraction: torch.Tensor  # masked / valid frames


def reconstruction_objective(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                             valid: torch.Tensor,
                             kind: Literal["l1", "l2"] = "l1") -> ReconstructionObjective:
    """prediction, target: (B, T, F); mask: (B, T) bool, True = masked (never a padding
    frame); valid: (B, T) bool, True = a real frame. ``kind``: the loss, l1 or l2 (mean squared
    error). Values at padding frames may be anything finite: they are selected out."""
    dims = prediction.shape[-1]
    error = prediction.float() - target.float()  # (B, T, F)
    zero = error.new_zeros(())
    l1 = error.abs().sum(-1)  # (B, T)
    per_frame = l1 if kind == "l1" else error.pow(2).sum(-1)  # (B, T)
    loss_sum = torch.where(mask, per_frame, zero).sum()  # () this rank's
    unmasked = valid & ~mask  # (B, T)
    # one all-reduce for every count and reported sum
    sums = global_sum(torch.stack([
        loss_sum, torch.where(mask, l1, zero).sum(), torch.where(unmasked, l1, zero).sum(),
        mask.sum().float(), unmasked.sum().float(), valid.sum().float(),
    ]))  # (6,) global, detached
    num_masked, num_unmasked, num_valid = sums[3], sums[4], sums[5]
    masked_elements = (num_masked * dims).clamp(min=1)
    return ReconstructionObjective(
        loss=world_size() * loss_sum / masked_elements, total=sums[0] / masked_elements,
        l1_masked=sums[1] / masked_elements,
        l1_unmasked=sums[2] / (num_unmasked * dims).clamp(min=1),
        num_masked=num_masked, masked_fraction=num_masked / num_valid.clamp(min=1),
    )


def chance_loss(kind: Literal["l1", "l2"]) -> float:
    """The loss of predicting 0 (each target channel's utterance mean) for unit-variance
    Gaussian targets: E|x| = sqrt(2 / pi) for l1, E[x^2] = 1 for l2."""
    return (2.0 / torch.pi) ** 0.5 if kind == "l1" else 1.0


__all__ = ["ReconstructionObjective", "reconstruction_objective", "chance_loss"]
