"""The pretraining objectives as weighted sums of their terms (one process: global = local)."""

import pytest
import torch

from audio_ssl.config import LossConfig
from audio_ssl.losses.total import masked_prediction_objective, wav2vec2_objective


def test_wav2vec2_objective_is_the_weighted_sum_of_its_means():
    weights = LossConfig(diversity_weight=0.1, feature_penalty_weight=10.0)
    ce_sum, num_masked = torch.tensor(46.0), torch.tensor(10.0)
    diversity = torch.tensor(0.25, requires_grad=True)
    penalty_sum, penalty_count = torch.tensor(3.0), torch.tensor(600.0)
    out = wav2vec2_objective(ce_sum, num_masked, diversity, penalty_sum, penalty_count, weights)
    assert out.contrastive.item() == pytest.approx(4.6)
    assert out.feature_penalty.item() == pytest.approx(0.005)
    assert out.total.item() == pytest.approx(4.6 + 0.1 * 0.25 + 10.0 * 0.005)
    assert out.loss.item() == pytest.approx(out.total.item())
    assert not out.total.requires_grad
    out.loss.backward()
    assert diversity.grad.item() == pytest.approx(0.1)  # the diversity term's weight


def test_no_masked_frame_gives_a_finite_zero_contrastive_term():
    out = wav2vec2_objective(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0),
                             torch.tensor(2.0), torch.tensor(4.0), LossConfig())
    assert out.contrastive.item() == 0.0
    assert out.total.item() == pytest.approx(LossConfig().feature_penalty_weight * 0.5)


def test_masked_prediction_objective_is_the_mean_cross_entropy():
    ce_sum = torch.tensor(12.0, requires_grad=True)
    out = masked_prediction_objective(ce_sum, torch.tensor(4.0))
    assert out.loss.item() == out.total.item() == 3.0
    out.loss.backward()
    assert ce_sum.grad.item() == 0.25
