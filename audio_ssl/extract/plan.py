"""What ``audio-ssl extract`` will do with each input, and the worker side that decodes it.

The plan is made in the main process from the files' headers (no audio is read): each input is
an :class:`InputFile` with its output name and its chunks (one chunk = the whole file). Files
short enough to run whole are sorted by length and cut into :class:`FileGroup` batches of at
most ``max_batch_samples`` padded samples; each long file is a group of its own. Worker
processes (:class:`ChunkBatchStream`) decode the groups into padded :class:`ChunkBatch` es for
the model.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import IterableDataset, get_worker_info

from audio_ssl.data import AudioError, load_audio
from audio_ssl.data.collate import load_batch
from audio_ssl.extract.chunking import (
    Chunk,
    FileMoments,
    group_chunks,
    prepare_file,
    read_chunk,
)
from audio_ssl.extract.extractor import SAMPLE_RATE, collate


@dataclass(frozen=True)
class InputFile:
    """One input: where its output goes and how it is cut.

    Attributes:
        path: the audio file.
        num_samples: its length at 16 kHz, from the header.
        key: its path relative to the input root.
        output: its output path relative to the output folder (per-file formats).
        chunks: its windows, in order; one chunk is the whole file.
    """

    path: str
    num_samples: int
    key: str
    output: str
    chunks: tuple[Chunk, ...]

    @property
    def long(self) -> bool:
        return len(self.chunks) > 1

    @property
    def num_frames(self) -> int:
        return self.chunks[-1].frames[1]


@dataclass(frozen=True)
class FileGroup:
    """Inputs a worker decodes in one step: whole files batched together (``long`` False), or
    one long file, whose chunks become one or more batches (``long`` True).

    Attributes:
        files: indices into the plan's :class:`InputFile` list.
        long: whether this is one long file.
    """

    files: tuple[int, ...]
    long: bool


def output_keys(paths: list[str], source: Path) -> list[str]:
    """Each input's path relative to the source folder (or to the inputs' common folder)."""
    if source.is_dir():
        root = str(source)
    else:
        root = os.path.commonpath([os.path.dirname(p) for p in paths])
    return [os.path.relpath(p, root) for p in paths]


def output_names(keys: list[str], suffix: str) -> list[str]:
    """``a/b.flac`` -> ``a/b.npy``; inputs that would collide (``b.wav`` and ``b.flac``) keep
    their extension (``b.wav.npy``)."""
    stems = [os.path.splitext(k)[0] + suffix for k in keys]
    counts = Counter(stems)
    return [s if counts[s] == 1 else k + suffix for s, k in zip(stems, keys)]


def plan_groups(files: list[InputFile], todo: list[int], max_batch_samples: int,
                max_batch_size: int) -> list[FileGroup]:
    """Whole files sorted by length into batches of at most ``max_batch_samples`` padded
    samples and ``max_batch_size`` files; one group per long file. Longest first, so a batch too
    large for the device fails at once."""
    whole = sorted((i for i in todo if not files[i].long), key=lambda i: files[i].num_samples)
    batches: list[list[int]] = []
    for i in whole:  # ascending: the newcomer is the batch's longest
        current = batches[-1] if batches else None
        if (current is not None and len(current) < max_batch_size
                and (len(current) + 1) * files[i].num_samples <= max_batch_samples):
            current.append(i)
        else:
            batches.append([i])
    groups = [FileGroup(tuple(b), False) for b in reversed(batches)]
    longs = sorted((i for i in todo if files[i].long), key=lambda i: -files[i].num_samples)
    return [FileGroup((i,), True) for i in longs] + groups


# ---------------------------------------------------------------------------------------------
# Decoding (in worker processes)


@dataclass
class ChunkBatch:
    """A padded batch of chunks ready for the model (a whole file is one chunk).

    Attributes:
        waveforms: (B, S) float32, zero padded at the end; lengths: (B,) int64.
        rows: (file index, chunk number) of each row.
        stats: a long file's (mean, scale, moments or None), for its chunks.
        failures: (file index, reason) of inputs that could not be read.
    """

    waveforms: torch.Tensor
    lengths: torch.Tensor
    rows: list[tuple[int, int]]
    stats: tuple[float, float, FileMoments | None] | None = None
    failures: list[tuple[int, str]] = field(default_factory=list)

    def pin_memory(self) -> ChunkBatch:
        """Called by DataLoader(pin_memory=True): page-locked waveforms copy to the GPU
        asynchronously."""
        self.waveforms = self.waveforms.pin_memory()
        return self


def _reason(e: Exception) -> str:
    return e.reason if isinstance(e, AudioError) else f"{type(e).__name__}: {e}"


class ChunkBatchStream(IterableDataset):
    """Decodes file groups into :class:`ChunkBatch`; worker w of n takes groups w, w + n, ..."""

    def __init__(self, files: list[InputFile], groups: list[FileGroup], *, normalize: bool,
                 kernel: int, stride: int, group_norm: bool, max_batch_samples: int):
        super().__init__()
        self.files, self.groups = files, groups
        self.normalize, self.kernel, self.stride = normalize, kernel, stride
        self.group_norm, self.max_batch_samples = group_norm, max_batch_samples

    def __iter__(self) -> Iterator[ChunkBatch]:
        info = get_worker_info()
        groups = self.groups if info is None else self.groups[info.id::info.num_workers]
        for group in groups:
            if group.long:
                yield from self._long(group.files[0])
            else:
                yield self._whole(group.files)

    def _whole(self, indices: tuple[int, ...]) -> ChunkBatch:
        files = [self.files[i] for i in indices]
        decoded = load_batch([f.path for f in files], sample_rate=SAMPLE_RATE,
                             normalize=self.normalize, expected=[f.num_samples for f in files])
        return ChunkBatch(decoded.waveforms, decoded.lengths,
                          [(indices[k], 0) for k in decoded.kept], None,
                          [(indices[k], reason) for k, reason in decoded.failures])

    def _long(self, i: int) -> Iterator[ChunkBatch]:
        # read span by span with the whole file's statistics (bounded memory), so not through
        # data.collate.load_batch, which decodes whole files or independent crops
        file = self.files[i]
        read = partial(_read_span, file.path)
        try:
            stats = prepare_file(read, file.num_samples, self.kernel, self.stride, self.normalize,
                                 self.group_norm)
            for group in group_chunks(list(file.chunks), self.max_batch_samples):
                rows = [read_chunk(read, file.chunks[c], stats[0], stats[1]) for c in group]
                waveforms, lengths = collate(rows)
                yield ChunkBatch(waveforms, lengths, [(i, c) for c in group], stats)
        except Exception as e:
            yield ChunkBatch(torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), [], None,
                             [(i, _reason(e))])


def _read_span(path: str, start: int, num_samples: int) -> torch.Tensor:
    return load_audio(path, sample_rate=SAMPLE_RATE, start=start, num_samples=num_samples)


__all__ = ["InputFile", "FileGroup", "ChunkBatch", "ChunkBatchStream", "plan_groups",
           "output_keys", "output_names"]
