"""Long files in chunks: where each chunk starts and ends, what of its output is kept, and the
whole-file statistics that make a chunk's conv features equal the whole file's.

A file of S samples has ``T = frame_lengths(S)`` frames; frame t reads samples
``[t * hop, t * hop + receptive_field)``. A chunk keeps frames ``[a, b)`` and is computed on the
window of frames ``[a - context, b + context)`` (clipped to the file), i.e. on samples
``[(a - context) * hop, (b + context - 1) * hop + receptive_field)``. Its windows start on a
multiple of the hop, so the conv stack gives exactly the whole file's frames there; the kept
ranges tile ``[0, T)``, so the stitched output has the whole-file frame count.

Two statistics are global to a file and are computed over all of it before its chunks run:

- the waveform's mean and variance, when the model expects normalised audio;
- the group norm of the first conv layer (group-norm encoders: BASE, tiny): each channel is
  normalised over all the file's frames. Its statistics follow from the second moments of the
  conv's input windows, ``s1 = sum_t x_t`` (k,) and ``s2 = sum_t x_t x_t^T`` (k, k): for a
  channel with weights w and bias b, ``mean = w.s1/n + b`` and
  ``E[y^2] = w^T s2 w/n + 2 b w.s1/n + b^2``. The moments need no model and are accumulated span
  by span (bounded memory); normalising the waveform is an affine map of them.

What remains different from the whole file is the context network's reach beyond the window: the
positional convolution (exact when ``context`` covers half its kernel) and global attention.

A stream (:mod:`audio_ssl.asr.streaming`) is the same plan with the future arriving late:
its windows come from :func:`chunk_window` with the frames received so far, and its statistics
from a :class:`MomentAccumulator` fed as the samples arrive (the running statistics of what has
been seen, through the window's right context).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from audio_ssl.config import ConvSpec
from audio_ssl.data.audio import NORMALIZE_EPS
from audio_ssl.models.feature_encoder import frame_lengths, receptive_field


@dataclass(frozen=True)
class Chunk:
    """One window of a file.

    Attributes:
        start: first sample of the window (a multiple of the hop).
        num_samples: window length in samples.
        keep: frames of the window's output that are kept, ``[keep[0], keep[1])``.
        frames: where the kept frames go in the whole file's frames, ``[frames[0], frames[1])``.
    """

    start: int
    num_samples: int
    keep: tuple[int, int]
    frames: tuple[int, int]


def num_frames(num_samples: int, conv_layers: ConvSpec) -> int:
    """Frames of a whole file of ``num_samples`` samples (the model's formula)."""
    return int(frame_lengths(torch.tensor([num_samples]), conv_layers)[0])


def chunk_window(a: int, b: int, total: int, conv_layers: ConvSpec, left_frames: int,
                 right_frames: int) -> Chunk:
    """The window that keeps frames ``[a, b)`` of ``total`` frames, computed with up to
    ``left_frames`` frames of context before and ``right_frames`` after (clipped to the file).

    A stream (:mod:`audio_ssl.asr.streaming`) calls it with the frames received so far as
    ``total``; :func:`plan_chunks` with the whole file's and equal context on both sides.
    """
    field, hop = receptive_field(conv_layers)
    f0, f1 = max(0, a - left_frames), min(total, b + right_frames)
    start, stop = f0 * hop, (f1 - 1) * hop + field  # stop <= num_samples as f1 <= T
    return Chunk(start, stop - start, (a - f0, b - f0), (a, b))


def plan_chunks(num_samples: int, conv_layers: ConvSpec, chunk_frames: int,
                context_frames: int) -> list[Chunk]:
    """The windows of a file of ``num_samples`` samples.

    A file of at most ``chunk_frames + 2 * context_frames`` frames is one window (the whole file,
    nothing dropped); a longer one is cut into ``ceil(T / chunk_frames)`` kept ranges of near
    equal length, each computed with up to ``context_frames`` frames of context either side.
    Returns [] for a file too short for one frame.
    """
    if chunk_frames < 1 or context_frames < 0:
        raise ValueError(f"chunk_frames must be >= 1 and context_frames >= 0, got "
                         f"{chunk_frames}, {context_frames}")
    total = num_frames(num_samples, conv_layers)
    if total <= 0:
        return []
    if total <= chunk_frames + 2 * context_frames:
        return [Chunk(0, num_samples, (0, total), (0, total))]
    count = math.ceil(total / chunk_frames)
    bounds = [round(i * total / count) for i in range(count + 1)]
    return [chunk_window(a, b, total, conv_layers, context_frames, context_frames)
            for a, b in zip(bounds[:-1], bounds[1:])]


# ---------------------------------------------------------------------------------------------
# Whole-file statistics


@dataclass
class FileMoments:
    """Sums over a whole file, in float64.

    Attributes:
        count: samples.
        total, total_sq: sum of samples and of their squares (the waveform's mean and variance).
        windows: windows of the first conv layer (n).
        s1: (k,) sum of the windows; s2: (k, k) sum of their outer products.
    """

    count: int
    total: float
    total_sq: float
    windows: int
    s1: torch.Tensor
    s2: torch.Tensor

    def waveform_stats(self) -> tuple[float, float]:
        """(mean, variance) of the samples (biased variance, as ``F.layer_norm``)."""
        mean = self.total / self.count
        return mean, max(self.total_sq / self.count - mean * mean, 0.0)

    def normalized(self, mean: float, scale: float) -> FileMoments:
        """The moments of ``(x - mean) * scale``."""
        n, ones = self.windows, torch.ones_like(self.s1)
        s1 = (self.s1 - n * mean * ones) * scale
        outer = torch.outer(self.s1, ones)
        s2 = (self.s2 - mean * (outer + outer.T) + n * mean * mean) * scale * scale
        total = (self.total - self.count * mean) * scale
        total_sq = (self.total_sq - 2 * mean * self.total + self.count * mean * mean) * scale ** 2
        return FileMoments(self.count, total, total_sq, n, s1, s2)


class MomentAccumulator:
    """:class:`FileMoments` of a signal that arrives in order, piece by piece.

    Keeps the sums and the last samples that do not yet fill a window of the first conv layer
    (fewer than ``kernel``): its state does not grow with the signal's length. A long file is
    read span by span (:func:`accumulate_moments`); a stream adds what arrives.
    """

    def __init__(self, kernel: int, stride: int):
        self.kernel, self.stride = kernel, stride
        self.count, self.windows = 0, 0
        self.total = self.total_sq = 0.0
        self.s1 = torch.zeros(kernel, dtype=torch.float64)
        self.s2 = torch.zeros(kernel, kernel, dtype=torch.float64)
        self._tail = torch.zeros(0, dtype=torch.float64)  # samples after the last full window

    def add(self, samples: torch.Tensor) -> None:
        """The next samples (n,) of the signal."""
        x = samples.detach().reshape(-1).to("cpu", torch.float64)  # (n,)
        self.count += x.numel()
        self.total += float(x.sum())
        self.total_sq += float((x * x).sum())
        x = torch.cat([self._tail, x])
        n = max((x.numel() - self.kernel) // self.stride + 1, 0)  # windows that now fit
        if n:
            win = x.as_strided((n, self.kernel), (self.stride, 1))  # (n, k) view
            self.s1 += win.sum(0)
            self.s2 += win.T @ win
            self.windows += n
        self._tail = x[n * self.stride:].clone()  # (< kernel,) once a window has fitted

    def moments(self) -> FileMoments:
        """The sums so far (copies: later samples do not change them)."""
        return FileMoments(self.count, self.total, self.total_sq, self.windows, self.s1.clone(),
                           self.s2.clone())


def accumulate_moments(read: Callable[[int, int], torch.Tensor], num_samples: int, kernel: int,
                       stride: int, span_samples: int = 320_000) -> FileMoments:
    """Moments of a file of ``num_samples`` samples read span by span.

    ``read(start, n)`` returns samples ``[start, start + n)`` (fewer only at the end of the
    file).
    """
    acc = MomentAccumulator(kernel, stride)
    for start in range(0, num_samples, span_samples):
        acc.add(read(start, min(span_samples, num_samples - start)))
    if acc.count < num_samples:
        raise RuntimeError(f"read {acc.count} of {num_samples} samples")
    return acc.moments()


def group_norm_stats(moments: FileMoments, weight: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """Per-channel (mean, var) (C, 2) of the first conv layer's output over the whole file.

    weight: (C, k) the conv's kernels; bias: (C,) or None.
    """
    w = weight.to(torch.float64)
    n = max(moments.windows, 1)
    s1, s2 = moments.s1.to(w.device), moments.s2.to(w.device)
    mean = w @ s1 / n  # (C,)
    second = ((w @ s2) * w).sum(-1) / n  # (C,) E[(w.x)^2]
    if bias is not None:
        b = bias.to(torch.float64)
        second = second + 2 * b * mean + b * b
        mean = mean + b
    var = (second - mean * mean).clamp(min=0.0)
    return torch.stack([mean, var], dim=-1).float()  # (C, 2)


# ---------------------------------------------------------------------------------------------
# Reading a long file


Reader = Callable[[int, int], torch.Tensor]  # (start, num_samples) -> (n,) float32 samples


def prepare_file(read: Reader, num_samples: int, kernel: int, stride: int, normalize: bool,
                 need_moments: bool) -> tuple[float, float, FileMoments | None]:
    """One pass over a long file: (mean, scale) that normalise its waveform (0, 1 when
    ``normalize`` is off; ``scale = 1 / sqrt(var + NORMALIZE_EPS)`` as ``load_audio``), and the
    moments of the normalised waveform's conv windows when ``need_moments`` (group norm)."""
    if not normalize and not need_moments:
        return 0.0, 1.0, None
    return statistics(accumulate_moments(read, num_samples, kernel, stride), normalize,
                      need_moments)


def statistics(moments: FileMoments, normalize: bool, need_moments: bool
               ) -> tuple[float, float, FileMoments | None]:
    """(mean, scale, moments of the normalised waveform or None) from the raw waveform's
    moments, as :func:`prepare_file` returns them (a stream's running moments give a stream's
    running statistics)."""
    mean, scale = 0.0, 1.0
    if normalize:
        mean, var = moments.waveform_stats()
        scale = 1.0 / math.sqrt(var + NORMALIZE_EPS)
    return mean, scale, moments.normalized(mean, scale) if need_moments else None


def read_chunk(read: Reader, chunk: Chunk, mean: float, scale: float) -> torch.Tensor:
    """The chunk's window (num_samples,), normalised with the whole file's statistics."""
    x = read(chunk.start, chunk.num_samples)  # (n,)
    if x.numel() != chunk.num_samples:
        raise ValueError(f"read {x.numel()} samples at {chunk.start}, expected "
                         f"{chunk.num_samples} (has the file changed since it was scanned?)")
    if mean == 0.0 and scale == 1.0:
        return x
    return ((x.to(torch.float64) - mean) * scale).float()


def group_chunks(chunks: list[Chunk], max_batch_samples: int) -> list[list[int]]:
    """Consecutive chunk numbers in batches of at most ``max_batch_samples`` padded samples
    (at least one chunk per batch)."""
    groups: list[list[int]] = []
    longest = 0
    for i, chunk in enumerate(chunks):
        size = max(longest, chunk.num_samples)
        if groups and (len(groups[-1]) + 1) * size <= max_batch_samples:
            groups[-1].append(i)
            longest = size
        else:
            groups.append([i])
            longest = chunk.num_samples
    return groups


__all__ = ["Chunk", "num_frames", "chunk_window", "plan_chunks", "FileMoments",
           "MomentAccumulator", "accumulate_moments", "group_norm_stats", "Reader",
           "prepare_file", "statistics", "read_chunk", "group_chunks"]
