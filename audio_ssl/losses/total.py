"""The pretraining objectives: the weighted sums of their terms, normalised over DDP ranks.

Each term arrives as this rank's sum and the global count it is divided by. DDP averages
gradients over ranks, so the loss to back-propagate is this rank's share of the global objective
times the world size; the reported values are the global ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from audio_ssl.config import LossConfig
from audio_ssl.losses.distributed import global_sum, world_size


@dataclass
class Objective:
    loss: torch.Tensor  # scalar to call backward on (scaled for DDP's gradient averaging)
    total: torch.Tensor  # the global objective's value, reported


@dataclass
class Wav2Vec2Objective(Objective):
    contrastive: torch.Tensor  # global mean over masked frames of -log p(positive)
    feature_penalty: torch.Tensor  # global mean of the squared conv features


def wav2vec2_objective(ce_sum: torch.Tensor, num_masked: torch.Tensor, diversity: torch.Tensor,
                       penalty_sum: torch.Tensor, penalty_count: torch.Tensor,
                       weights: LossConfig) -> Wav2Vec2Objective:
    """contrastive + diversity_weight * diversity + feature_penalty_weight * feature penalty.

    ce_sum: () this rank's :func:`~audio_ssl.losses.contrastive.cross_entropy_sum`;
    num_masked: () the global masked-frame count; diversity: () the global
    :func:`~audio_ssl.losses.contrastive.diversity_loss` with this rank's gradient (0 for
    continuous targets); penalty_sum, penalty_count: () this rank's
    :func:`~audio_ssl.losses.contrastive.feature_penalty` sum and the global count.
    """
    w = weights
    contrastive_local = ce_sum / num_masked.clamp(min=1)
    penalty_local = penalty_sum / penalty_count
    loss = world_size() * (contrastive_local + w.diversity_weight * diversity
                           + w.feature_penalty_weight * penalty_local)
    contrastive = global_sum(ce_sum) / num_masked.clamp(min=1)
    penalty = global_sum(penalty_sum) / penalty_count
    total = (contrastive + w.diversity_weight * diversity.detach()
             + w.feature_penalty_weight * penalty)
    return Wav2Vec2Objective(loss, total, contrastive, penalty)


def masked_prediction_objective(ce_sum: torch.Tensor, num_masked: torch.Tensor) -> Objective:
    """HuBERT's and BEST-RQ's objective, the cross-entropy at the masked frames alone.

    ce_sum: () this rank's cross-entropy summed over its masked frames; num_masked: () the
    global masked-frame count."""
    loss = world_size() * ce_sum / num_masked.clamp(min=1)
    return Objective(loss, global_sum(ce_sum) / num_masked.clamp(min=1))


__all__ = ["Objective", "Wav2Vec2Objective", "wav2vec2_objective", "masked_prediction_objective"]
