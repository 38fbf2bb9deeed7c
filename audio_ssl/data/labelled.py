"""Transcribed audio: read a labelled corpus, and load its batches for CTC training.

:func:`read_labelled` accepts three layouts:

- a JSONL manifest, one object a line with ``audio`` (or ``path``), relative to the manifest's
  folder or absolute, and ``text`` (the shared-data format; ``split`` selects rows);
- a LibriSpeech-style folder: ``*.trans.txt`` files of ``ID TEXT`` lines, audio ``ID.flac`` (or
  any supported extension) beside each;
- a ``.tsv`` file of ``path<TAB>text`` lines (relative paths from the file's folder; an optional
  ``path<TAB>text`` header line).

Every utterance that cannot be used (no or empty transcript, unreadable, empty, too short or too
long audio) is returned as a :class:`~audio_ssl.data.manifest.Rejected` with the reason; the
fine-tuning run adds out-of-vocabulary characters and transcripts too long for CTC.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from audio_ssl.config import TextConfig
from audio_ssl.data.collate import load_batch, pad_batch
from audio_ssl.data.dataset import _worker_init
from audio_ssl.data.manifest import AUDIO_EXTENSIONS, Rejected, _resolve, read_header, too_short
from audio_ssl.data.sampler import BatchRequest, BucketBatchSampler
from audio_ssl.data.text import normalize_text
from audio_ssl.io import iter_jsonl


@dataclass(frozen=True)
class LabelledItem:
    """One transcribed utterance.

    Attributes:
        path: absolute audio path.
        text: the transcript as given (normalised later, by the run's text settings).
        samples: length at the target sample rate.
        id: a name for reports (the LibriSpeech id, else the path).
    """

    path: str
    text: str
    samples: int
    id: str


class NoLabelledDataError(ValueError):
    """A labelled source holds no usable utterance."""


def _entries_jsonl(src: Path, split: str | None) -> Iterable[tuple[str, str | None, str, str]]:
    root = src.parent.absolute()
    for lineno, obj in iter_jsonl(src):
        audio = obj.get("audio", obj.get("path"))
        if audio is None:
            raise ValueError(f"{src}:{lineno}: expected an 'audio' (or 'path') key and a 'text' "
                             f"key, got keys {sorted(obj)}")
        if split is not None and obj.get("split") != split:
            continue
        path = _resolve(str(audio), root)
        text = obj.get("text")
        yield path, None if text is None else str(text), path, f"{src}:{lineno}"


def _entries_tsv(src: Path) -> Iterable[tuple[str, str | None, str, str]]:
    root = src.parent.absolute()
    with open(src, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            if "\t" not in line:
                raise ValueError(f"{src}:{lineno}: expected 'path<TAB>text', got {line!r}")
            path, text = line.split("\t", 1)
            if lineno == 1 and path.strip().lower() in ("path", "audio") and \
                    text.strip().lower() in ("text", "transcript", "sentence"):
                continue  # header
            path = _resolve(path.strip(), root)
            yield path, text, path, f"{src}:{lineno}"


def _entries_librispeech(src: Path) -> Iterable[tuple[str, str | None, str, str]]:
    transcripts = sorted(src.rglob("*.trans.txt"))
    if not transcripts:
        raise NoLabelledDataError(f"no *.trans.txt transcripts under {src} (expected a "
                                  "LibriSpeech-style folder)")
    for trans in transcripts:
        folder = trans.parent
        with open(trans, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                utt, _, text = line.partition(" ")
                path = next((folder / (utt + ext) for ext in AUDIO_EXTENSIONS
                             if (folder / (utt + ext)).exists()), folder / (utt + ".flac"))
                yield str(path.absolute()), text, utt, f"{trans}:{lineno}"


def read_labelled(source: str | os.PathLike, *, split: str | None = None, sample_rate: int = 16_000,
                  min_samples: int = 0, max_samples: int | None = None,
                  num_workers: int = 4) -> tuple[list[LabelledItem], list[Rejected]]:
    """Usable transcribed utterances of ``source`` (see the module docstring) and those left out.

    Args:
        source: JSONL manifest, LibriSpeech-style folder or ``.tsv`` file.
        split: JSONL only: keep the rows whose ``split`` is this (``None``: every row).
        sample_rate: lengths are counted at this rate.
        min_samples, max_samples: shorter / longer audio is rejected.
        num_workers: threads reading headers.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: a malformed file, or a kind of source not listed above.
        NoLabelledDataError: nothing usable was found.
    """
    src = Path(os.path.expanduser(os.fspath(source))).absolute()
    if not src.exists():
        raise FileNotFoundError(f"labelled data {src} does not exist")
    if src.is_dir():
        entries = list(_entries_librispeech(src))
    elif src.suffix.lower() == ".jsonl":
        entries = list(_entries_jsonl(src, split))
    elif src.suffix.lower() == ".tsv":
        entries = list(_entries_tsv(src))
    else:
        raise ValueError(f"labelled data {src}: expected a .jsonl manifest (audio, text), a "
                         "LibriSpeech-style folder (*.trans.txt) or a .tsv of path<TAB>text")
    if split is not None and not src.is_dir() and src.suffix.lower() != ".jsonl":
        raise ValueError(f"split={split!r} applies to JSONL manifests only, not {src}")

    paths = sorted({e[0] for e in entries})
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        headers = dict(zip(paths, pool.map(read_header, paths)))

    items: list[LabelledItem] = []
    rejected: list[Rejected] = []
    for path, text, uid, line in entries:  # line: where the row is, "file:number"
        header = headers[path]
        if text is None or not text.strip():
            rejected.append(Rejected(path, "no transcript" if text is None else "empty transcript",
                                     line))
            continue
        if isinstance(header, Rejected):
            rejected.append(replace(header, line=line))
            continue
        samples = header.samples_at(sample_rate)
        short = too_short(header, min_samples, sample_rate)
        if short is not None:
            rejected.append(replace(short, line=line))
            continue
        if max_samples is not None and samples > max_samples:
            rejected.append(Rejected(path, f"too long: {samples / sample_rate:.2f} s > maximum "
                                           f"{max_samples / sample_rate:.2f} s", line))
            continue
        items.append(LabelledItem(path, text, samples, uid))
    if not items:
        first = "; ".join(f"{r.path}: {r.reason}" for r in rejected[:3])
        what = f" with split {split!r}" if split is not None else ""
        raise NoLabelledDataError(f"no usable transcribed audio in {src}{what}: "
                                  f"{len(entries)} utterances seen" + (f", e.g. {first}" if first else ""))
    return items, rejected


def reference_text(item: LabelledItem, cfg: TextConfig) -> str | Rejected:
    """``item``'s transcript normalised by ``cfg`` (:func:`~audio_ssl.data.text.normalize_text`),
    or a :class:`Rejected` when nothing is left (``'?!'`` with the default settings): the one
    rule for references of fine-tuning and evaluation."""
    text = normalize_text(item.text, cfg)
    if not text:
        return Rejected(item.path, f"empty transcript after normalisation (was {item.text!r})")
    return text


# ---------------------------------------------------------------------------------------------
# Batches


@dataclass
class LabelledBatch:
    """Padded waveforms with their token targets.

    Attributes:
        waveforms: (B, S) float32, zero padded at the end.
        lengths: (B,) int64 real samples.
        targets: (B, L) int64 token ids, padded with 0 (the blank) after each target.
        target_lengths: (B,) int64.
        indices: B indices into the dataset's items.
        failures: utterances of the request that could not be decoded (left out of the rows).
        failed: the dataset index of each of ``failures``.
        position: sampler position of the batch (training), or its index (validation).
    """

    waveforms: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor
    target_lengths: torch.Tensor
    indices: list[int]
    failures: list[Rejected] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    position: int = 0

    def __len__(self) -> int:
        return len(self.indices)

    def pin_memory(self) -> LabelledBatch:
        return replace(self, waveforms=self.waveforms.pin_memory(),
                       lengths=self.lengths.pin_memory(), targets=self.targets.pin_memory(),
                       target_lengths=self.target_lengths.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> LabelledBatch:
        return replace(self, waveforms=self.waveforms.to(device, non_blocking=non_blocking),
                       lengths=self.lengths.to(device, non_blocking=non_blocking),
                       targets=self.targets.to(device, non_blocking=non_blocking),
                       target_lengths=self.target_lengths.to(device, non_blocking=non_blocking))


class LabelledBatchDataset(Dataset):
    """Map-style dataset indexed by :class:`BatchRequest` (whole utterances, never cropped).

    Args:
        items: the utterances.
        targets: token ids of each item's normalised transcript.
        sample_rate, normalize: as :func:`~audio_ssl.data.audio.load_audio`.

    Attributes:
        excluded: indices the loaders of :func:`make_labelled_loader` leave out of every later
            batch: the files that failed to decode here (in this process: a loader's workers
            hold copies) and those given to :meth:`exclude`.
    """

    def __init__(self, items: Sequence[LabelledItem], targets: Sequence[Sequence[int]], *,
                 sample_rate: int, normalize: bool) -> None:
        if len(items) != len(targets):
            raise ValueError(f"{len(items)} items but {len(targets)} targets")
        self.items, self.targets = list(items), [list(t) for t in targets]
        self.sample_rate, self.normalize = int(sample_rate), bool(normalize)
        self.excluded: set[int] = set()

    def exclude(self, indices: Iterable[int]) -> None:
        """Leave ``indices`` out of the batches requested from now on. Call it in the main
        process, where the loader's sampler runs, with the failures of batches that workers
        loaded."""
        self.excluded.update(indices)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, indices: Sequence[int], position: int = 0) -> LabelledBatch:
        decoded = load_batch([self.items[i].path for i in indices], sample_rate=self.sample_rate,
                             normalize=self.normalize)  # (B, S), (B,)
        kept = [indices[k] for k in decoded.kept]
        failed = [indices[k] for k, _ in decoded.failures]
        failures = [Rejected(self.items[indices[k]].path, reason) for k, reason in decoded.failures]
        self.excluded.update(failed)
        targets, target_lengths = pad_batch(
            [torch.tensor(self.targets[i], dtype=torch.int64) for i in kept],
            dtype=torch.int64)  # (B, L), (B,)
        return LabelledBatch(
            waveforms=decoded.waveforms, lengths=decoded.lengths, targets=targets,
            target_lengths=target_lengths, indices=kept, failures=failures, failed=failed,
            position=position,
        )

    def __getitem__(self, request: BatchRequest | int) -> LabelledBatch:
        if isinstance(request, BatchRequest):
            return self.load(request.indices, request.position)
        raise TypeError("index a LabelledBatchDataset with a BatchRequest, or call load()")


class _WithoutExcluded(Sampler[BatchRequest]):
    """The requests of ``sampler`` less the dataset's excluded items, read as each request is
    made (a request left empty still comes, so that stream positions keep counting batches)."""

    def __init__(self, sampler: BucketBatchSampler, dataset: LabelledBatchDataset):
        self.sampler, self.dataset = sampler, dataset

    def __iter__(self) -> Iterator[BatchRequest]:
        for request in self.sampler:
            excluded = self.dataset.excluded
            if excluded and not excluded.isdisjoint(request.indices):
                keep = [k for k, i in enumerate(request.indices) if i not in excluded]
                request = replace(request, indices=tuple(request.indices[k] for k in keep),
                                  starts=tuple(request.starts[k] for k in keep),
                                  lengths=tuple(request.lengths[k] for k in keep))
            yield request


class _FixedBatches(Dataset):
    """A fixed list of index groups (validation): batch ``k`` is ``groups[k]`` less the
    dataset's excluded items (read in the main process: no workers)."""

    def __init__(self, dataset: LabelledBatchDataset, groups: list[list[int]]):
        self.dataset, self.groups = dataset, groups

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, k: int) -> LabelledBatch:
        excluded = self.dataset.excluded
        return self.dataset.load([i for i in self.groups[k] if i not in excluded], position=k)


def length_batches(lengths: Sequence[int], max_batch_samples: int) -> list[list[int]]:
    """Indices sorted by length, cut into padded batches of at most ``max_batch_samples``
    (B * longest); every batch holds at least one item. Deterministic: for evaluation."""
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable").tolist()
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * int(lengths[i]) > max_batch_samples:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def make_labelled_loader(dataset: LabelledBatchDataset, *, max_batch_samples: int,
                         train: bool, seed: int = 0, num_buckets: int = 8, rank: int = 0,
                         world_size: int = 1, position: int = 0,
                         num_workers: int = 0) -> DataLoader:
    """Training: an infinite, shuffled stream of length-bucketed padded batches for one rank,
    starting at ``position`` (resumable). Evaluation (``train=False``): one pass in length order,
    this rank's share of the batches; every rank gets as many (the last ones may be empty), so
    that collective calls at the end of an evaluation meet. Both leave out the dataset's
    ``excluded`` items from the next request on (workers fetch a few requests ahead); evaluation
    loads in the main process (``num_workers`` is for training)."""
    kw = dict(batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
              pin_memory=torch.cuda.is_available(),
              worker_init_fn=_worker_init if num_workers > 0 else None)
    if train:
        lengths = [it.samples for it in dataset.items]
        sampler = BucketBatchSampler(
            lengths, max_batch_samples=max_batch_samples, max_crop_samples=max(lengths),
            min_samples=1, num_buckets=num_buckets, seed=seed, rank=rank, world_size=world_size,
            crop_to_shortest=False,
        )
        sampler.set_position(position)
        return DataLoader(dataset, sampler=_WithoutExcluded(sampler, dataset), **kw)
    groups = length_batches([it.samples for it in dataset.items], max_batch_samples)
    groups += [[] for _ in range(-len(groups) % world_size)]
    kw.update(num_workers=0, persistent_workers=False, worker_init_fn=None)
    return DataLoader(_FixedBatches(dataset, groups[rank::world_size]), shuffle=False, **kw)


__all__ = ["LabelledItem", "NoLabelledDataError", "read_labelled", "reference_text",
           "LabelledBatch",
           "LabelledBatchDataset", "length_batches", "make_labelled_loader"]
