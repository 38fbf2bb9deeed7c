"""CPC's InfoNCE per step against a frame-by-frame loop, and its distractor sampler."""

from __future__ import annotations

import math

import pytest
import torch

from audio_ssl.losses.cpc import cpc_step_sums, sample_distractors


def _naive(predictions, targets, lengths, distractors, valid):
    """Per step k: sum over real pairs (b, t) of -log softmax of [p.z_{t+k}, p.z_d ...]/sqrt(C),
    a Python loop over every frame; distractors of a target with no valid ones dropped."""
    batch, frames, steps, channels = predictions.shape
    ce, correct, count = [0.0] * steps, [0] * steps, [0] * steps
    for b in range(batch):
        for t in range(frames):
            for k in range(1, steps + 1):
                u = t + k
                if u >= int(lengths[b]):
                    continue
                p = predictions[b, t, k - 1].double()
                scores = [float(p @ targets[b, u].double()) / math.sqrt(channels)]
                if valid[b, u]:
                    scores += [float(p @ targets[b, int(d)].double()) / math.sqrt(channels)
                               for d in distractors[b, u]]
                top = max(scores)
                log_z = top + math.log(sum(math.exp(s - top) for s in scores))
                ce[k - 1] += log_z - scores[0]
                correct[k - 1] += int(all(scores[0] > s for s in scores[1:]))
                count[k - 1] += 1
    return torch.tensor(ce), torch.tensor(correct, dtype=torch.float), torch.tensor(count).float()


def test_step_sums_equal_a_loop_over_frames_with_fixed_distractors():
    g = torch.Generator().manual_seed(0)
    batch, frames, steps, channels, num = 3, 9, 4, 5, 3
    predictions = torch.randn(batch, frames, steps, channels, generator=g) * 2
    targets = torch.randn(batch, frames, channels, generator=g)
    lengths = torch.tensor([9, 6, 1])  # a padded row and a one-frame row (no distractor at all)
    distractors = torch.randint(0, 5, (batch, frames, num), generator=g)  # fixed, not sampled
    valid = torch.arange(frames)[None, :] < lengths[:, None]
    valid[2] = False  # one frame: nothing to draw from
    valid[0, 4] = False  # a target scored against its positive alone
    sums = cpc_step_sums(predictions, targets, lengths, distractors, valid)
    ce, correct, count = _naive(predictions, targets, lengths, distractors, valid)
    assert torch.equal(sums.count, count) and sums.count.tolist() == [13, 11, 9, 7]
    assert torch.equal(sums.correct, correct)
    assert sums.ce_sum.double() == pytest.approx(ce.double(), rel=1e-5, abs=1e-5)


def test_step_sums_give_gradients_and_skip_steps_longer_than_the_batch():
    predictions = torch.randn(2, 3, 5, 4, requires_grad=True)
    targets = torch.randn(2, 3, 4, requires_grad=True)
    lengths = torch.tensor([3, 3])
    indices, valid = sample_distractors(lengths, 3, 2, torch.Generator().manual_seed(1))
    sums = cpc_step_sums(predictions, targets, lengths, indices, valid)
    assert sums.count.tolist() == [4, 2, 0, 0, 0]
    sums.ce_sum.sum().backward()
    assert predictions.grad.abs().sum() > 0 and targets.grad.abs().sum() > 0


def test_distractors_skip_the_positive_and_stay_in_each_utterance():
    """A batch of several utterances of different lengths (the offset bug of SpeechBrain's
    sampler shows only after the first utterance): never the target frame, never padding."""
    lengths = torch.tensor([40, 7, 2, 1, 25, 40])
    frames, num = 40, 10
    indices, valid = sample_distractors(lengths, frames, num, torch.Generator().manual_seed(3))
    assert indices.shape == (6, frames, num) and valid.shape == (6, frames)
    u = torch.arange(frames)
    real = u[None, :] < lengths[:, None]
    assert torch.equal(valid, real & (lengths[:, None] > 1))
    sel = valid[..., None].expand_as(indices)
    assert not (indices == u[None, :, None].expand_as(indices))[sel].any()  # never the positive
    assert (indices < lengths[:, None, None])[sel].all() and (indices >= 0).all()
    # a two-frame utterance has one other frame: always it
    assert (indices[2, 0] == 1).all() and (indices[2, 1] == 0).all()
    # uniform over the others: every other frame of a long row is drawn, about equally often
    counts = torch.bincount(indices[0].flatten(), minlength=frames).float()
    assert (counts > 0).all() and counts.max() / counts.min() < 4


def test_distractor_draws_are_a_function_of_the_generator():
    lengths = torch.tensor([30, 12])
    a = sample_distractors(lengths, 30, 10, torch.Generator().manual_seed(5))
    b = sample_distractors(lengths, 30, 10, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
