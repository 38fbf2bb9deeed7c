"""Span masking of latent frames and distractor sampling, vectorised on the device."""

from __future__ import annotations

import numpy as np
import torch

from audio_ssl.config import CTCConfig, MaskConfig


def chunk_attention_mask(num_frames: int, chunk: int, left_chunks: int,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """(T, T) bool, True = query i may attend to key j: j's chunk is i's own or one of the
    ``left_chunks`` chunks before it (all chunks before it when ``left_chunks < 0``), chunks
    being ``[k * chunk, (k + 1) * chunk)`` (WeNet's ``subsequent_chunk_mask``)."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 frame, got {chunk}")
    block = torch.arange(num_frames, device=device) // chunk  # (T,) chunk of each frame
    behind = block[:, None] - block[None, :]  # (T, T) query's chunk - key's chunk
    mask = behind >= 0
    if left_chunks >= 0:
        mask &= behind <= left_chunks
    return mask


def draw_chunk(cfg: CTCConfig, generator: torch.Generator) -> int | None:
    """One batch's chunk size in frames, or None for full attention; drawn on the host from
    ``generator`` (a CPU generator: the size decides the mask's shape of work, not a value)."""
    low, high = cfg.chunk_frames
    full, size = torch.rand(2, generator=generator).tolist()
    if full < cfg.chunk_full_prob:
        return None
    return low + min(int(size * (high - low + 1)), high - low)


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


def max_masked_frames(num_frames: int, cfg: MaskConfig) -> int:
    """The most frames :func:`compute_span_mask` can mask in one utterance of at most
    ``num_frames`` frames, from host-side numbers only (no device value is read).

    The span count is ``floor(prob * T_b + u)`` computed in float32 with u < 1, so at most
    ``floor(fl(fl(prob * T) + (1 - 2**-24)))`` (float32 rounding is monotone; computed here in
    float32 as the device does; u may round the sum up to the next integer), at least
    ``min_masks``; each span covers at most ``length`` frames.
    """
    f32 = np.float32
    spans = int(np.floor(f32(f32(f32(cfg.prob) * f32(num_frames)) + f32(1.0 - 2.0**-24))))
    return min(num_frames, max(spans, cfg.min_masks) * cfg.length)


def masked_rows(mask: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked frames as a fixed number of rows, for shapes the host knows beforehand.

    mask: (B, T) bool with at most ``rows`` True. Returns ``positions`` (rows,) int64 flat
    indices b * T + t of the masked frames in row-major order (as ``x[mask]``), then 0 for the
    rows left over, and ``valid`` (rows,) bool, True for the M rows that are masked frames.
    ``x.flatten(0, 1).index_select(0, positions)`` is ``x[mask]`` followed by filler rows: no
    host sync, unlike ``x[mask]``, whose size M the host must first read back from the device.
    """
    flat = mask.reshape(-1)  # (B*T,)
    count = flat.sum()  # () M, left on the device
    torch._assert_async(count <= rows, "more masked frames than rows")  # internal invariant
    positions = torch.nonzero_static(flat, size=rows, fill_value=0)[:, 0]  # (rows,)
    valid = torch.arange(rows, device=mask.device) < count  # (rows,)
    return positions, valid


def sample_negatives(mask: torch.Tensor, num_negatives: int,
                     generator: torch.Generator | None = None,
                     rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Distractors for every masked frame, drawn uniformly from the other masked frames of the
    same utterance.

    mask: (B, T) bool. Masked frames are numbered 0..M-1 in row-major order (as ``x[mask]``).
    Returns ``indices`` (M, K) into that numbering, never the frame itself, and ``valid`` (M, K)
    bool, False where the utterance has no other masked frame to draw from. With ``rows`` (at
    least M, as for :func:`masked_rows`) both are (rows, K): the first M rows as without it (on
    the CPU the same draws), the rest filler (index 0, not valid), and the host never waits for
    the device; without it the host reads M back.
    """
    counts = mask.sum(-1)  # (B,)
    if rows is None:
        rows = int(counts.sum())  # a host sync on an accelerator
    ends = torch.cumsum(counts, 0)  # (B,)
    offsets = ends - counts  # (B,) first masked index of each utterance
    row = torch.arange(rows, device=mask.device)  # (R,)
    # (R,) utterance of each row (filler: the last), as repeat_interleave(arange(B), counts)
    utt = torch.searchsorted(ends, row, right=True).clamp(max=mask.shape[0] - 1)
    local = row - offsets[utt]  # (R,) index in its utterance
    others = (counts[utt] - 1).clamp(min=0) * (row < ends[-1])  # (R,) candidates; filler: 0
    draw = torch.rand(rows, num_negatives, generator=generator, device=mask.device)
    pick = torch.floor(draw * others[:, None]).long()  # (R, K) in [0, others)
    pick = pick + (pick >= local[:, None]).long()  # skip the positive itself
    valid = (others > 0)[:, None].expand_as(pick)
    indices = torch.where(valid, offsets[utt][:, None] + pick, utt.new_zeros(()).expand_as(pick))
    return indices, valid
