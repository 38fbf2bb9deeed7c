"""Span masking of latent frames and distractor sampling, vectorised on the device."""

from __future__ import annotations

import torch

from audio_ssl.config import MaskConfig


def compute_span_mask(frame_lengths: torch.Tensor, num_frames: int, cfg: MaskConfig,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Span mask (B, T) bool, True = masked, with the paper's semantics.

    Each valid frame starts a span with probability ``cfg.prob`` (the number of spans is
    ``floor(prob * T_b + u)``, u ~ U(0, 1), at least ``cfg.min_masks``); starts are distinct and
    drawn uniformly from positions where a whole span fits; spans of ``cfg.length`` frames may
    overlap, so about 1 - (1 - prob)^length of the frames end up masked (49% by default).
    Padding (frames at or beyond ``frame_lengths``) is never masked.
    """
    device = frame_lengths.device
    lengths = frame_lengths.long()  # (B,)
    batch = lengths.shape[0]
    span = cfg.length
    positions = torch.arange(num_frames, device=device)  # (T,)
    # where a span may start: the whole span inside the utterance (or position 0 if it is shorter)
    last_start = (lengths - span).clamp(min=0)  # (B,)
    can_start = positions[None, :] <= last_start[:, None]  # (B, T)
    can_start &= positions[None, :] < lengths[:, None]
    available = can_start.sum(-1)  # (B,)
    u = torch.rand(batch, generator=generator, device=device)
    num_spans = torch.floor(cfg.prob * lengths.float() + u).long()
    num_spans = num_spans.clamp(min=cfg.min_masks).minimum(available)  # (B,)
    # choose num_spans distinct starts uniformly: rank random scores among allowed positions
    scores = torch.rand(batch, num_frames, generator=generator, device=device)
    scores = scores.masked_fill(~can_start, 2.0)
    ranks = scores.argsort(-1).argsort(-1)  # (B, T): rank of each position's score
    starts = ranks < num_spans[:, None]  # (B, T)
    # a frame is masked when a span started in the previous `span` frames (itself included)
    started = starts.long().cumsum(-1)  # (B, T)
    before = torch.nn.functional.pad(started, (span, 0))[:, :num_frames]
    mask = (started - before) > 0
    return mask & (positions[None, :] < lengths[:, None])


def sample_negatives(mask: torch.Tensor, num_negatives: int,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Distractors for every masked frame, drawn uniformly from the other masked frames of the
    same utterance.

    mask: (B, T) bool. Masked frames are numbered 0..M-1 in row-major order (as ``x[mask]``).
    Returns ``indices`` (M, K) into that numbering, never the frame itself, and ``valid`` (M, K)
    bool, False where the utterance has no other masked frame to draw from.
    """
    counts = mask.sum(-1)  # (B,)
    utt = torch.repeat_interleave(torch.arange(mask.shape[0], device=mask.device), counts)  # (M,)
    offsets = torch.cumsum(counts, 0) - counts  # (B,) first masked index of each utterance
    local = torch.arange(utt.shape[0], device=mask.device) - offsets[utt]  # (M,) index in utt
    others = (counts[utt] - 1).clamp(min=0)  # (M,) how many candidates each frame has
    draw = torch.rand(utt.shape[0], num_negatives, generator=generator, device=mask.device)
    pick = torch.floor(draw * others[:, None]).long()  # (M, K) in [0, others)
    pick = pick + (pick >= local[:, None]).long()  # skip the positive itself
    valid = (others > 0)[:, None].expand_as(pick)
    indices = torch.where(valid, offsets[utt][:, None] + pick, utt.new_zeros(()).expand_as(pick))
    return indices, valid
