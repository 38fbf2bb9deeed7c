"""CTC loss in fp32, with the alignment-length check that keeps it finite."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def frames_needed(targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Fewest frames a CTC alignment of each target needs: its length plus one blank between
    each pair of equal neighbours.

    targets: (B, L) padded token ids; target_lengths: (B,) -> (B,) int64.
    """
    L = targets.shape[1]
    if L < 2:
        return target_lengths.long()
    repeats = targets[:, 1:] == targets[:, :-1]  # (B, L - 1)
    inside = torch.arange(1, L, device=targets.device)[None, :] < target_lengths[:, None]  # (B, L-1)
    return target_lengths.long() + (repeats & inside).sum(-1)


@dataclass
class CTCLossOutput:
    loss: torch.Tensor  # () sum over the kept utterances / their number (fairseq sentence_avg)
    per_utterance: torch.Tensor  # (B,) negative log-likelihood, 0 for skipped rows
    kept: torch.Tensor  # (B,) bool: False where the target cannot be aligned to the frames


def ctc_loss(logits: torch.Tensor, frame_lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor, blank: int = 0) -> CTCLossOutput:
    """CTC negative log-likelihood, computed in fp32 whatever the autocast state.

    logits: (B, T, V); frame_lengths: (B,); targets: (B, L) padded; target_lengths: (B,).
    Rows whose target needs more frames than they have (or is empty) are left out of the loss
    (``kept`` False); ``zero_infinity`` guards anything the check cannot see.
    """
    kept = (frames_needed(targets, target_lengths) <= frame_lengths) & (target_lengths > 0)  # (B,)
    per_utt = logits.new_zeros(logits.shape[0], dtype=torch.float32)  # (B,)
    if not bool(kept.any()):
        return CTCLossOutput(logits.sum() * 0.0, per_utt, kept)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        log_probs = logits[kept].float().log_softmax(-1).transpose(0, 1)  # (T, B', V)
        losses = F.ctc_loss(log_probs, targets[kept], frame_lengths[kept], target_lengths[kept],
                            blank=blank, reduction="none", zero_infinity=True)  # (B',)
    per_utt = per_utt.masked_scatter(kept, losses.detach())
    return CTCLossOutput(losses.sum() / losses.shape[0], per_utt, kept)


__all__ = ["frames_needed", "CTCLossOutput", "ctc_loss"]
