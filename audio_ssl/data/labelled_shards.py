"""Transcribed audio in a shard folder (:mod:`audio_ssl.data.shards`), for CTC fine-tuning.

A shard folder written from a manifest with transcripts keeps each cut's text in its
``supervisions`` (the Lhotse Shar cuts files). :func:`read_labelled_shards` reads the index and
the cuts files (never the audio) into the same :class:`~audio_ssl.data.labelled.LabelledItem`
list a manifest gives; each item's path is ``{recording tar}#{cut id}``, as messages name a cut
of a shard.

:class:`ShardLabelledDataset` then streams them as a folder of files would be read:

- training: the pretraining stream (:class:`~audio_ssl.data.shard_stream.ShardPlan`: shards split
  across ranks and loader workers, a bounded read-ahead, every choice from the index and
  ``(seed, epoch)``, resumed at a position), planned with whole utterances (padded, never
  cropped), each batch given its token targets;
- validation: one pass over the cuts in shard order, batches cut by length within each shard, so
  that each shard is fetched once per pass; each rank takes its share.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from audio_ssl.config import DataConfig
from audio_ssl.data import storage
from audio_ssl.data.collate import load_batch, pad_batch
from audio_ssl.data.dataset import Batch, _worker_init
from audio_ssl.data.labelled import LabelledBatch, LabelledItem, NoLabelledDataError, \
    length_batches
from audio_ssl.data.manifest import Rejected, too_short
from audio_ssl.data.shard_stream import ShardPlan, ShardStreamDataset, ShardUnreadable, \
    fetch_shard
from audio_ssl.data.shards import ShardCut, ShardIndex, cuts_name, read_index


def _texts(index: ShardIndex) -> dict[str, str | None]:
    """{cut id: its transcript (the supervisions' texts joined), or None} from the cuts files."""
    texts: dict[str, str | None] = {}
    for shard in sorted({c.shard for c in index.cuts}):
        raw = storage.read_bytes(storage.join(index.url, cuts_name(shard)))  # with retries
        for line in gzip.decompress(raw).decode("utf-8").splitlines():
            if line.strip():
                cut = json.loads(line)
                parts = [s["text"] for s in cut.get("supervisions", []) if s.get("text")]
                texts[cut["id"]] = " ".join(parts) if parts else None
    return texts


def cut_path(index: ShardIndex, cut: ShardCut) -> str:
    """How messages name a cut: ``{recording tar}#{cut id}``."""
    return f"{index.shard_url(cut.shard)}#{cut.id}"


def _cut_id(path: str) -> str:
    """The cut id of a :func:`cut_path` (as failures name their cut)."""
    return path.rsplit("#", 1)[-1]


def read_labelled_shards(url: str, *, sample_rate: int = 16_000, min_samples: int = 0,
                         max_samples: int | None = None
                         ) -> tuple[list[LabelledItem], list[Rejected], ShardIndex]:
    """The usable transcribed cuts of the shard folder ``url``, those left out (no or empty
    transcript, too short, too long), and the folder's index."""
    index = read_index(url)
    texts = _texts(index)
    items: list[LabelledItem] = []
    rejected: list[Rejected] = []
    for cut in index.cuts:
        path, samples = cut_path(index, cut), cut.samples_at(sample_rate)
        text = texts.get(cut.id)
        if text is None or not text.strip():
            rejected.append(Rejected(path, "no transcript" if text is None else
                                     "empty transcript"))
        elif (short := too_short(cut, min_samples, sample_rate)) is not None:
            rejected.append(replace(short, path=path))  # the one rule for short audio
        elif max_samples is not None and samples > max_samples:
            rejected.append(Rejected(path, f"too long: {samples / sample_rate:.2f} s > maximum "
                                           f"{max_samples / sample_rate:.2f} s"))
        else:
            items.append(LabelledItem(path, text, samples, cut.id))
    if not items:
        raise NoLabelledDataError(f"no usable transcribed audio in the shard folder {url}: "
                                  f"{len(index.cuts)} cuts seen (shard it from a manifest with a "
                                  "text field to keep the transcripts)")
    return items, rejected, index


class ShardLabelledDataset:
    """Labelled cuts of a shard folder with their token targets: what
    :class:`~audio_ssl.data.labelled.LabelledBatchDataset` is for files (the same ``items``,
    ``targets``, ``excluded`` and :meth:`exclude`), with loaders that stream the shards.

    Args:
        index: the shard folder's index (only the cuts of ``items`` are read).
        items, targets: the usable cuts (their ``id`` is the cut id) and their token ids.
        sample_rate, normalize: as for files.
    """

    def __init__(self, index: ShardIndex, items: Sequence[LabelledItem],
                 targets: Sequence[Sequence[int]], *, sample_rate: int, normalize: bool) -> None:
        if len(items) != len(targets):
            raise ValueError(f"{len(items)} items but {len(targets)} targets")
        self.items, self.targets = list(items), [list(t) for t in targets]
        self.sample_rate, self.normalize = int(sample_rate), bool(normalize)
        self.position = {it.id: i for i, it in enumerate(self.items)}  # cut id -> item
        self.index = replace(index, cuts=tuple(c for c in index.cuts if c.id in self.position))
        self.excluded: set[int] = set()

    def __len__(self) -> int:
        return len(self.items)

    def exclude(self, indices: Iterable[int]) -> None:
        """Leave ``indices`` out of the batches this process hands on from now on."""
        self.excluded.update(indices)

    def padded_targets(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) token ids of ``indices``, padded with 0 (the blank), and their (B,) lengths."""
        return pad_batch([torch.tensor(self.targets[i], dtype=torch.int64) for i in indices],
                         dtype=torch.int64)

    def labelled(self, batch: Batch) -> LabelledBatch:
        """A stream's batch with the targets of its cuts (``batch.paths`` are cut ids)."""
        indices = [self.position[cid] for cid in batch.paths]
        failed = [self.position[_cut_id(f.path)] for f in batch.failures
                  if _cut_id(f.path) in self.position]
        targets, target_lengths = self.padded_targets(indices)  # (B, L), (B,)
        return LabelledBatch(waveforms=batch.waveforms, lengths=batch.lengths, targets=targets,
                             target_lengths=target_lengths, indices=indices,
                             failures=list(batch.failures), failed=failed,
                             position=batch.position)

    # -- loaders --------------------------------------------------------------------------------

    def train_loader(self, *, max_batch_samples: int, num_buckets: int, seed: int, rank: int,
                     world_size: int, position: int, num_workers: int) -> Iterable[LabelledBatch]:
        """This rank's endless stream of whole, padded utterances from ``position`` on."""
        longest = max(it.samples for it in self.items)
        cfg = DataConfig(sample_rate=self.sample_rate, normalize=self.normalize,
                         max_batch_samples=max_batch_samples, max_crop_samples=longest,
                         min_samples=1, num_buckets=num_buckets, num_workers=num_workers,
                         crop_to_shortest=False)  # padded to the longest: never cropped
        plan = ShardPlan(self.index, cfg, seed=seed, rank=rank, world_size=world_size,
                         streams=max(1, num_workers))
        stream = _LabelledStream(self, ShardStreamDataset(
            plan, sample_rate=self.sample_rate, normalize=self.normalize, start=position))
        loader = DataLoader(stream, batch_size=None, num_workers=num_workers,
                            worker_init_fn=_worker_init if num_workers > 0 else None,
                            persistent_workers=num_workers > 0,
                            pin_memory=torch.cuda.is_available())
        return _Excluding(loader, self)

    def valid_loader(self, *, max_batch_samples: int, rank: int,
                     world_size: int) -> DataLoader:
        """One pass, in shard order and by length within each shard; this rank's share (every
        rank gets as many batches, the last ones perhaps empty)."""
        by_shard: dict[int, list[int]] = {}
        shard_of = {c.id: c.shard for c in self.index.cuts}
        for i, it in enumerate(self.items):
            by_shard.setdefault(shard_of[it.id], []).append(i)
        groups: list[list[int]] = []
        for shard in sorted(by_shard):
            members = by_shard[shard]
            groups += [[members[k] for k in g] for g in length_batches(
                [self.items[i].samples for i in members], max_batch_samples)]
        groups += [[] for _ in range(-len(groups) % world_size)]
        return DataLoader(_ShardBatches(self, groups[rank::world_size], shard_of),
                          batch_size=None, shuffle=False, num_workers=0,
                          pin_memory=torch.cuda.is_available())


class _LabelledStream(IterableDataset):
    """The shard stream's batches with their targets (in the loader's workers)."""

    def __init__(self, data: ShardLabelledDataset, stream: ShardStreamDataset):
        self.data, self.stream = data, stream

    def __iter__(self) -> Iterator[LabelledBatch]:
        for batch in self.stream:
            yield self.data.labelled(batch)


class _Excluding:
    """The loader's batches less the items excluded since (in the main process, where
    :meth:`ShardLabelledDataset.exclude` is called); a batch left empty still comes, so that
    positions keep counting batches."""

    def __init__(self, loader: DataLoader, data: ShardLabelledDataset):
        self.loader, self.data = loader, data

    def __iter__(self) -> Iterator[LabelledBatch]:
        for batch in self.loader:
            excluded = self.data.excluded
            if excluded and not excluded.isdisjoint(batch.indices):
                keep = [r for r, i in enumerate(batch.indices) if i not in excluded]
                rows = torch.tensor(keep, dtype=torch.long)
                batch = replace(batch, waveforms=batch.waveforms[rows],
                                lengths=batch.lengths[rows], targets=batch.targets[rows],
                                target_lengths=batch.target_lengths[rows],
                                indices=[batch.indices[r] for r in keep])
            yield batch


class _ShardBatches(Dataset):
    """Validation batches, each within one shard; the shard last read is kept for the next."""

    def __init__(self, data: ShardLabelledDataset, groups: list[list[int]],
                 shard_of: dict[str, int]):
        self.data, self.groups, self.shard_of = data, groups, shard_of
        self._held: tuple[int, dict[str, memoryview]] | None = None

    def __len__(self) -> int:
        return len(self.groups)

    def _members(self, shard: int) -> dict[str, memoryview]:
        if self._held is None or self._held[0] != shard:
            self._held = None  # free the last shard before fetching the next
            index = self.data.index
            self._held = (shard, fetch_shard(index.shard_url(shard), index.shard_format(shard)))
        return self._held[1]

    def __getitem__(self, k: int) -> LabelledBatch:
        data = self.data
        group = [i for i in self.groups[k] if i not in data.excluded]
        failures: list[Rejected] = []
        members: dict[str, memoryview] = {}
        if group:
            shard = self.shard_of[data.items[group[0]].id]
            try:
                members = self._members(shard)
            except ShardUnreadable as e:
                failures = [Rejected(data.items[i].path, str(e)) for i in group]
        asked = [i for i in group if data.items[i].id in members]
        failures += [Rejected(data.items[i].path, "not in its shard") for i in group
                     if data.items[i].id not in members and not failures]
        decoded = load_batch([data.items[i].path for i in asked], sample_rate=data.sample_rate,
                             normalize=data.normalize,
                             expected=[data.items[i].samples for i in asked],
                             data=[members[data.items[i].id] for i in asked])  # (B, S)
        kept = [asked[j] for j in decoded.kept]
        failures += [Rejected(data.items[asked[j]].path, reason)
                     for j, reason in decoded.failures]
        failed = [data.position[_cut_id(f.path)] for f in failures]
        targets, target_lengths = data.padded_targets(kept)  # (B, L), (B,)
        return LabelledBatch(waveforms=decoded.waveforms, lengths=decoded.lengths,
                             targets=targets, target_lengths=target_lengths, indices=kept,
                             failures=failures, failed=failed, position=k)


__all__ = ["read_labelled_shards", "ShardLabelledDataset", "cut_path"]
