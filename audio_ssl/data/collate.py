"""Stack variable-length rows into one zero-padded batch, with their lengths; decode a list of
files into such a batch (:func:`load_batch`, the one decode-and-pad loop of training, fine-tuning,
extraction and transcription)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from audio_ssl.data.audio import AudioError, load_audio


def pad_batch(rows: Sequence[torch.Tensor], width: int | None = None,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D rows (S_i,) -> (padded (B, S) of ``dtype``, zeros after each row; lengths (B,) int64).

    ``width`` is S (default: the longest row; 0 for no rows); a row longer than it raises.
    """
    lengths = torch.tensor([r.numel() for r in rows], dtype=torch.int64)  # (B,)
    longest = int(lengths.max()) if len(rows) else 0
    if width is None:
        width = longest
    elif longest > width:
        raise ValueError(f"a row of {longest} values does not fit a batch of width {width}")
    padded = torch.zeros(len(rows), width, dtype=dtype)  # (B, S)
    for i, row in enumerate(rows):
        padded[i, : row.numel()] = row
    return padded, lengths


@dataclass
class DecodedFiles:
    """The files of a request that decoded, as one padded batch, and why the others did not.

    Attributes:
        waveforms: (B, S) float32, zero padded at the end; B = len(kept).
        lengths: (B,) int64 real samples of each row.
        kept: the position in the request of each row, in order.
        failures: (position in the request, reason) of each file left out.
    """

    waveforms: torch.Tensor
    lengths: torch.Tensor
    kept: list[int]
    failures: list[tuple[int, str]]


def load_batch(paths: Sequence[str | os.PathLike], *, sample_rate: int, normalize: bool,
               spans: Sequence[tuple[int, int]] | None = None,
               expected: Sequence[int] | None = None, width: int | None = None,
               data: Sequence[bytes | memoryview] | None = None) -> DecodedFiles:
    """Decode ``paths`` with :func:`~audio_ssl.data.audio.load_audio` and pad them into a batch.

    A file that fails is left out with its reason (an :class:`AudioError`'s own, or ``cannot
    load: ...`` for anything else): one bad file never stops a run.

    Args:
        sample_rate, normalize: as :func:`~audio_ssl.data.audio.load_audio` (``normalize``: per
            row, over the samples read).
        spans: ``(start, num_samples)`` of each file: decode only that crop (training). A crop
            that comes back shorter is a failure.
        expected: whole-file lengths from the headers: a file that decodes to another length is a
            failure (it changed since it was scanned).
        width: S (default: the longest row), as :func:`pad_batch`.
        data: each file's bytes (shard members): decoded instead of reading ``paths``, which
            then only name them.
    """
    rows: list[torch.Tensor] = []
    kept: list[int] = []
    failures: list[tuple[int, str]] = []
    for k, path in enumerate(paths):
        start, num_samples = spans[k] if spans is not None else (0, None)
        want = num_samples if spans is not None else (None if expected is None else expected[k])
        try:
            wav = load_audio(path, sample_rate=sample_rate, normalize=normalize, start=start,
                             num_samples=num_samples,
                             data=None if data is None else data[k])  # (S_k,)
        except AudioError as e:
            failures.append((k, e.reason))
            continue
        except Exception as e:  # never let one file stop a run
            failures.append((k, f"cannot load: {type(e).__name__}: {e}"))
            continue
        if want is not None and wav.numel() != want:
            where = f" from sample {start}" if spans is not None else ""
            failures.append((k, f"decoded {wav.numel()} samples{where}, expected {want} "
                                f"(has the file changed since it was scanned?)"))
            continue
        rows.append(wav)
        kept.append(k)
    waveforms, lengths = pad_batch(rows, width)  # (B, S), (B,)
    return DecodedFiles(waveforms, lengths, kept, failures)


__all__ = ["pad_batch", "DecodedFiles", "load_batch"]
