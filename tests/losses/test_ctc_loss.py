"""The CTC loss: the frames an alignment needs, unalignable rows left out, fp32 under autocast."""

import math

import pytest
import torch

from audio_ssl.data.text import ctc_frames_needed
from audio_ssl.losses.ctc import ctc_loss, frames_needed


def test_frames_needed_matches_the_rule():
    targets = torch.tensor([[2, 2, 3, 3, 3], [4, 5, 4, 0, 0], [2, 2, 2, 2, 0]])
    lengths = torch.tensor([5, 3, 2])  # row 2 ends before its padding repeats
    expected = [ctc_frames_needed(t[:n].tolist()) for t, n in zip(targets, lengths)]
    assert frames_needed(targets, lengths).tolist() == expected == [8, 3, 3]


def test_ctc_loss_skips_unalignable_rows_and_stays_fp32():
    logits = torch.randn(3, 4, 5, requires_grad=True)  # (B, T, V)
    targets = torch.tensor([[2, 3, 0], [2, 2, 2], [4, 0, 0]])
    target_lengths = torch.tensor([2, 3, 0])  # row 1 needs 5 frames; row 2 is empty
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ctc_loss(logits.bfloat16(), torch.tensor([4, 4, 4]), targets, target_lengths)
    assert out.kept.tolist() == [True, False, False]
    assert out.loss.dtype == torch.float32 and math.isfinite(out.loss.item())
    expected = torch.nn.functional.ctc_loss(
        logits.bfloat16().float().log_softmax(-1)[:1].transpose(0, 1), targets[:1],
        torch.tensor([4]), torch.tensor([2]), reduction="sum")
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    out.loss.backward()
    assert torch.isfinite(logits.grad).all() and bool((logits.grad[1:] == 0).all())
    none = ctc_loss(logits, torch.tensor([1, 1, 1]), targets, target_lengths)
    assert not none.kept.any() and none.loss.item() == 0.0
