"""The wav2vec 2.0 objective: InfoNCE over cosine similarity, diversity loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_GATHER_ABOVE = 16_384  # masked frames beyond which the M x M similarity matrix is not built


def contrastive_logits(context: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
                       valid: torch.Tensor, codes: torch.Tensor | None,
                       temperature: float) -> torch.Tensor:
    """Logits (M, 1 + K) in fp32: column 0 the positive, then the K distractors.

    context: (M, F) context vectors at the masked frames; targets: (M, F) their quantized
    targets; negatives: (M, K) indices into the M targets; valid: (M, K) bool; codes: (M, G)
    the quantizer's choices, used to find distractors identical to the positive (logit -inf);
    None keeps their logits (equal to the positive's).
    """
    with torch.autocast(device_type=context.device.type, enabled=False):
        c = F.normalize(context.float(), dim=-1, eps=1e-8)  # (M, F)
        t = F.normalize(targets.float(), dim=-1, eps=1e-8)  # (M, F)
        positive = (c * t).sum(-1, keepdim=True)  # (M, 1)
        if c.shape[0] <= _GATHER_ABOVE:
            similarity = c @ t.T  # (M, M): cheaper than gathering M x K x F targets
            negative = similarity.gather(1, negatives)  # (M, K)
        else:
            negative = torch.einsum("mf,mkf->mk", c, t[negatives])
        invalid = ~valid
        if codes is not None:
            invalid = invalid | (codes[negatives] == codes[:, None, :]).all(-1)  # (M, K)
        negative = negative.masked_fill(invalid, float("-inf"))
        return torch.cat([positive, negative], dim=-1) / temperature


def contrastive_accuracy(logits: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Number of frames (as a float tensor) whose positive ranks first, not counting rows where
    all logits are equal (fairseq's definition). rows: (M,) bool, the rows that count (None:
    all; False for the filler rows of a fixed-size batch of frames)."""
    best = logits.argmax(-1) == 0
    worst = logits.argmin(-1) == 0
    correct = best & ~worst  # (M,)
    if rows is not None:
        correct = correct & rows
    return correct.sum().float()


def diversity_loss(prob_perplexity: torch.Tensor, groups: int, codes: int) -> torch.Tensor:
    """(GV - perplexity) / GV: 0 when every code of every group is used equally often."""
    total = groups * codes
    return (total - prob_perplexity) / total


def feature_penalty(features: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of squared conv features over valid frames, and how many values were summed.

    features: (B, T, C) before the layer norm; valid: (B, T) bool. The penalty is sum / count.
    """
    squares = features.float().pow(2)  # (B, T, C)
    if valid is None:  # a fill on the device, not a copy from the host (which would wait)
        return squares.sum(), squares.new_full((), float(squares.numel()))
    squares = squares * valid[..., None]
    return squares.sum(), valid.sum().float() * features.shape[-1]


def cross_entropy_sum(logits: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over rows of -log softmax at column 0 (the positive); rows: (M,) bool, the rows
    that count (None: all)."""
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    if rows is not None:
        target = target.masked_fill(~rows, -100)  # cross_entropy's ignore_index
    return F.cross_entropy(logits, target, reduction="sum")


@torch.no_grad()
def similarity_sums(logits: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
                    temperature: float, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Sums behind the plateau diagnostics, as one (5,) fp32 tensor so DDP can add them up:
    cos(c, positive), cos(c, distractor), cos(positive, distractor), distractors counted, rows.

    logits: (M, 1 + K) from :func:`contrastive_logits` (distractors that do not count are -inf);
    targets: (M, F); negatives: (M, K); rows: (M,) bool, the rows that count (None: all; a
    filler row's distractors are all -inf, so they never count). Divide the first by the rows
    and the next two by the distractor count for means. On the log(K+1) plateau the context is
    as close to its distractors as to its positive; a target-to-distractor cosine near 1 says
    the targets themselves are alike.
    """
    cosine = logits.float() * temperature  # (M, 1 + K)
    counted = torch.isfinite(cosine[:, 1:])  # (M, K)
    zero = cosine.new_zeros(())
    t = F.normalize(targets.float(), dim=-1, eps=1e-8)  # (M, F)
    if t.shape[0] <= _GATHER_ABOVE:  # (M, K) through the (M, M) matrix, as for the logits
        between_sum = torch.where(counted, (t @ t.T).gather(1, negatives), zero).sum()
    else:  # too many frames for the matrix: not measured (reads 0)
        between_sum = zero
    # sums of the counted entries by torch.where, not x[counted] (a size read back from the device)
    positive = cosine[:, 0] if rows is None else torch.where(rows, cosine[:, 0], zero)  # (M,)
    num_rows = cosine.new_full((), float(cosine.shape[0])) if rows is None else rows.sum().float()
    return torch.stack([
        positive.sum(),
        torch.where(counted, cosine[:, 1:], zero).sum(),
        between_sum,
        counted.sum().float(),
        num_rows,
    ])
