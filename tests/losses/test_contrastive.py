"""The contrastive term: logits over the positive and its distractors, their cross-entropy,
and fairseq's accuracy, on cases small enough to write down."""

import math

import pytest
import torch

from audio_ssl.losses.contrastive import contrastive_accuracy, contrastive_logits, cross_entropy_sum


def test_logits_are_cosines_over_the_temperature_positive_first():
    # three frames on the unit circle at 0, 90 and 180 degrees; context = the frame's own target
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    context = 2.0 * targets  # cosine ignores the norm
    negatives = torch.tensor([[1, 2], [0, 2], [0, 1]])  # (M, K): the two other frames
    valid = torch.ones(3, 2, dtype=torch.bool)
    logits = contrastive_logits(context, targets, negatives, valid, None, temperature=0.5)
    expected = torch.tensor([[1.0, 0.0, -1.0], [1.0, 0.0, 0.0], [1.0, -1.0, 0.0]]) / 0.5
    torch.testing.assert_close(logits, expected)
    assert logits.dtype == torch.float32


def test_invalid_and_identical_distractors_get_minus_infinity():
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    negatives = torch.tensor([[1, 2], [0, 2], [0, 1]])
    valid = torch.tensor([[True, False], [True, True], [True, True]])
    codes = torch.tensor([[0, 1], [0, 1], [0, 2]])  # (M, G): frames 0 and 1 share their codes
    logits = contrastive_logits(targets, targets, negatives, valid, codes, temperature=0.1)
    assert torch.isinf(logits[0, 1:]).all()  # one invalid, one with the positive's codes
    assert torch.isinf(logits[1, 1]) and torch.isfinite(logits[1, 2])
    assert torch.isfinite(logits[2]).all()
    kept = contrastive_logits(targets, targets, negatives, valid, None, temperature=0.1)
    assert torch.isfinite(kept[1]).all()  # without codes an identical target keeps its logit


def test_cross_entropy_sum_is_minus_log_softmax_of_the_positive():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, float("-inf")], [5.0, 5.0, 5.0]])
    expected = [-(2 - math.log(math.exp(2) + 2)), -(0 - math.log(1 + math.e)), math.log(3)]
    assert cross_entropy_sum(logits).item() == pytest.approx(sum(expected), rel=1e-6)
    rows = torch.tensor([True, False, True])  # a filler row counts for nothing
    assert cross_entropy_sum(logits, rows).item() == pytest.approx(expected[0] + expected[2],
                                                                   rel=1e-6)


def test_uniform_logits_cost_log_of_the_candidates():
    """The plateau of PITFALLS.md: every candidate alike costs log(K + 1) per frame."""
    logits = torch.zeros(4, 101)  # K = 100
    assert cross_entropy_sum(logits).item() / 4 == pytest.approx(math.log(101), rel=1e-6)


def test_accuracy_counts_a_strictly_first_positive():
    logits = torch.tensor([[3.0, 1.0, 2.0],  # positive first
                           [1.0, 3.0, 2.0],  # a distractor first
                           [2.0, 2.0, 2.0],  # all equal: not counted (fairseq)
                           [3.0, 1.0, 2.0]])
    assert contrastive_accuracy(logits).item() == 2.0
    assert contrastive_accuracy(logits, torch.tensor([True, True, True, False])).item() == 1.0
