"""CPC / wav2vec (v1): InfoNCE of each future step k against distractors of the same utterance.

The context vector c_t's prediction for step k, p_{t,k} (C,), is scored by the scaled dot
product p . z / sqrt(C) (CPC's bilinear score, scaled as attention is so that a fresh model
starts near log(N + 1) whatever the width) against z_{t+k} (the positive) and against the distractors drawn for the target frame t + k (shared by
every step that predicts that frame, as wav2vec does). The loss of a pair (t, k) is
-log softmax(scores)[positive]; a pair counts when t + k is a real frame of the utterance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange


def sample_distractors(frame_lengths: torch.Tensor, num_frames: int, num: int,
                       generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` distractors for every target frame u, uniform over the other real frames of its
    utterance (never u itself, never a padded frame).

    frame_lengths: (B,) real frames per utterance; num_frames: T. Returns ``indices`` (B, T, N)
    frame indices into the same utterance and ``valid`` (B, T) bool, False where u is padding
    or its utterance has no other frame (then the indices are 0 and must be ignored). Drawn on
    the device of ``frame_lengths`` from ``generator``: one draw from the n - 1 others, and
    indices at or after u shifted by one.
    """
    device = frame_lengths.device
    lengths = frame_lengths.long().clamp(max=num_frames)  # (B,)
    batch = lengths.shape[0]
    frames = torch.arange(num_frames, device=device)  # (T,)
    others = (lengths - 1).clamp(min=0)[:, None, None]  # (B, 1, 1) candidates per target
    draw = torch.rand(batch, num_frames, num, generator=generator, device=device)  # (B, T, N)
    pick = torch.floor(draw * others).long()  # (B, T, N) in [0, others]: float rounding may
    pick = torch.minimum(pick, (others - 1).clamp(min=0))  # reach ``others``; keep it below
    pick = pick + (pick >= frames[None, :, None]).long()  # skip the target frame itself
    valid = (others[:, :, 0] > 0) & (frames[None, :] < lengths[:, None])  # (B, T)
    return torch.where(valid[..., None], pick, 0), valid


@dataclass
class CpcStepSums:
    """Per-step sums over this rank's (t, k) pairs; k = 1..K is index k - 1."""

    ce_sum: torch.Tensor  # (K,) sum of -log p(positive), with gradient
    correct: torch.Tensor  # (K,) pairs whose positive scores strictly above every distractor
    count: torch.Tensor  # (K,) pairs with t + k a real frame


def step_logits(predictions: torch.Tensor, candidates: torch.Tensor,
                allowed: torch.Tensor, step: int) -> torch.Tensor:
    """Scores p_{t,k} . z / sqrt(C) of the (t, k = step) pairs, t = 0..T-1-step:
    (B, T - step, 1 + N) fp32, column 0 the positive, disallowed distractors -inf.

    predictions: (B, T, K, C); candidates: (B, T, 1 + N, C), the positive then the distractors
    of each target frame; allowed: (B, T, 1 + N) bool.
    """
    num_frames = predictions.shape[1]
    p = predictions[:, : num_frames - step, step - 1].float()  # (B, T-k, C)
    logits = torch.einsum("btc,btjc->btj", p, candidates[:, step:].float())  # (B, T-k, 1+N)
    logits = logits / predictions.shape[-1] ** 0.5
    return logits.masked_fill(~allowed[:, step:], float("-inf"))


def cpc_step_sums(predictions: torch.Tensor, targets: torch.Tensor, frame_lengths: torch.Tensor,
                  distractors: torch.Tensor, distractor_valid: torch.Tensor) -> CpcStepSums:
    """InfoNCE sums of every step.

    predictions: (B, T, K, C) p_{t,k} (index k - 1); targets: (B, T, C) z; frame_lengths: (B,);
    distractors: (B, T, N) and distractor_valid: (B, T) from :func:`sample_distractors`.
    Computed in fp32 (outside autocast). No host sync: shapes come from the inputs.
    """
    with torch.autocast(device_type=predictions.device.type, enabled=False):
        batch, num_frames, steps, channels = predictions.shape
        num = distractors.shape[-1]
        z = targets.float()
        flat = rearrange(distractors, "b t n -> b (t n)")[..., None].expand(-1, -1, channels)
        negatives = rearrange(z.gather(1, flat), "b (t n) c -> b t n c", n=num)  # (B, T, N, C)
        candidates = torch.cat([z[:, :, None], negatives], dim=2)  # (B, T, 1+N, C)
        allowed = torch.cat([distractor_valid.new_ones(batch, num_frames, 1),
                             distractor_valid[..., None].expand(-1, -1, num)], dim=2)  # (B,T,1+N)
        lengths = frame_lengths.to(predictions.device)[:, None]  # (B, 1)
        frames = torch.arange(num_frames, device=predictions.device)[None, :]  # (1, T)
        zero = predictions.new_zeros((), dtype=torch.float32)
        ce, correct, count = [], [], []
        for k in range(1, steps + 1):  # K slices of host-known shape, not a per-sample loop
            if k >= num_frames:
                ce.append(zero * predictions.sum())  # keeps the graph; no pair at this step
                correct.append(zero)
                count.append(zero)
                continue
            logits = step_logits(predictions, candidates, allowed, k)  # (B, T-k, 1+N)
            pair = frames[:, : num_frames - k] + k < lengths  # (B, T-k) the target is real
            nll = -logits.log_softmax(-1)[..., 0]  # (B, T-k)
            ce.append(torch.where(pair, nll, 0.0).sum())
            best_other = logits[..., 1:].detach().amax(-1) if num else logits[..., 0] - 1
            correct.append(((logits[..., 0].detach() > best_other) & pair).sum().float())
            count.append(pair.sum().float())
        return CpcStepSums(torch.stack(ce), torch.stack(correct), torch.stack(count))


__all__ = ["sample_distractors", "CpcStepSums", "step_logits", "cpc_step_sums"]
