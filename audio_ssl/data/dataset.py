"""Load the batches a :class:`BucketBatchSampler` asks for; build the training DataLoader.

The dataset makes no random choice: it decodes each requested crop and stacks the rows. A file
that fails to decode is left out of its batch and reported in ``Batch.failures``; it never
stops training.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch.utils.data import DataLoader, Dataset

from audio_ssl.config import ConvSpec, DataConfig
from audio_ssl.data.collate import load_batch
from audio_ssl.data.manifest import AudioItem, Rejected
from audio_ssl.data.sampler import BatchRequest, BucketBatchSampler
from audio_ssl.data.targets import LabelStore
from audio_ssl.frames import frame_lengths


@dataclass
class Batch:
    """A collated batch of raw waveforms.

    Attributes:
        waveforms: (B, S) float32; rows shorter than S are zero padded at the end.
        lengths: (B,) int64 real samples per row.
        paths: B file paths, row order.
        starts: B crop offsets (target-rate samples into each file), row order.
        failures: files of the request that could not be loaded (left out of the rows).
        position: the sampler position of this batch (resume at ``position + 1``).
        labels: (B, T) int64 frame labels of each crop (HuBERT targets), -1 where there is
            none (padding), or None when the dataset has no label store.
        shard_failures: shards (of a shard folder) found missing or unreadable at this batch,
            each named once; their batches come back empty.
        padded: some row is shorter than S (known on the host, so the model need not read the
            lengths back from the device to find out).

    B may be 0 when every file of the request failed: the trainer should skip such a batch.
    """

    waveforms: torch.Tensor
    lengths: torch.Tensor
    paths: list[str]
    failures: list[Rejected] = field(default_factory=list)
    position: int = 0
    labels: torch.Tensor | None = None
    shard_failures: list[Rejected] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    padded: bool = False

    def __len__(self) -> int:
        return len(self.paths)

    def pin_memory(self) -> Batch:
        """The batch with its tensors in pinned memory (called by DataLoader(pin_memory=True))."""
        labels = None if self.labels is None else self.labels.pin_memory()
        return replace(self, waveforms=self.waveforms.pin_memory(),
                       lengths=self.lengths.pin_memory(), labels=labels)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        labels = None if self.labels is None else self.labels.to(device, non_blocking=non_blocking)
        return replace(self, waveforms=self.waveforms.to(device, non_blocking=non_blocking),
                       lengths=self.lengths.to(device, non_blocking=non_blocking), labels=labels)


class AudioBatchDataset(Dataset):
    """Map-style dataset indexed by :class:`BatchRequest` (use with ``batch_size=None``).

    Args:
        items: the scanned files; request indices point into this list.
        sample_rate: target rate of the waveforms.
        normalize: zero mean, unit variance per row, over its real samples.
        labels: a HuBERT label store; each row's labels are cut to its crop (files it has no
            labels for are failures of the batch).
        conv_layers: the feature encoder's stack (frames per crop), with ``labels``.
    """

    def __init__(self, items: Sequence[AudioItem], *, sample_rate: int, normalize: bool,
                 labels: LabelStore | None = None, conv_layers: ConvSpec | None = None) -> None:
        self.labels, self.conv_layers = labels, conv_layers
        self.items = list(items)
        self.sample_rate = int(sample_rate)
        self.normalize = bool(normalize)
        # files that failed to decode: left out of later requests without another try (each
        # loader worker keeps its own, so a file is tried at most once per worker)
        self.failed: set[str] = set()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, request: BatchRequest) -> Batch:
        """Decode every crop of ``request`` -> Batch with waveforms (B, num_samples)."""
        every = [self.items[i].path for i in request.indices]
        reasons: dict[int, str] = {}  # position in the request -> why it is left out
        if self.labels is not None:
            reasons = {k: f"no labels in {self.labels.folder}" for k, path in enumerate(every)
                       if path not in self.labels}
        # positions to decode: a file that failed before is dropped without a report (it was
        # reported the first time)
        asked = [k for k in range(len(every)) if k not in reasons and every[k] not in self.failed]
        decoded = load_batch([every[k] for k in asked], sample_rate=self.sample_rate,
                             normalize=self.normalize,
                             spans=[(request.starts[k], request.lengths[k]) for k in asked],
                             width=request.num_samples)  # (B, S), (B,)
        reasons.update((asked[j], reason) for j, reason in decoded.failures)
        self.failed.update(every[asked[j]] for j, _ in decoded.failures)
        rows = [asked[j] for j in decoded.kept]  # request position of each row
        paths, starts = [every[k] for k in rows], [request.starts[k] for k in rows]
        return Batch(
            waveforms=decoded.waveforms,
            lengths=decoded.lengths,
            paths=paths,
            failures=[Rejected(every[k], reasons[k]) for k in sorted(reasons)],
            position=request.position,
            labels=self._labels(paths, starts, decoded.lengths, request.num_samples),
            starts=starts,
            padded=bool((decoded.lengths < decoded.waveforms.shape[1]).any()),
        )

    def _labels(self, paths: list[str], starts: list[int], lengths: torch.Tensor,
                num_samples: int) -> torch.Tensor | None:
        """(B, T) labels of the rows' crops, -1 on padding frames."""
        if self.labels is None:
            return None
        total = int(frame_lengths(torch.tensor([num_samples]), self.conv_layers)[0])
        frames = frame_lengths(lengths, self.conv_layers)  # (B,)
        out = torch.full((len(paths), total), -1, dtype=torch.long)
        for row, (path, start) in enumerate(zip(paths, starts)):
            n = int(frames[row])
            out[row, :n] = self.labels.crop(path, start, n)
        return out


def _worker_init(worker_id: int) -> None:
    """One intra-op thread per loader worker: the workers are the parallelism."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def make_dataloader(
    items: Sequence[AudioItem],
    cfg: DataConfig,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    position: int = 0,
    labels: LabelStore | None = None,
    conv_layers: ConvSpec | None = None,
) -> tuple[DataLoader, BucketBatchSampler]:
    """Infinite DataLoader of :class:`Batch` for one rank, and its sampler.

    ``position`` is where this rank's stream starts (a checkpoint's ``batch.position + 1``).
    The sampler runs in the main process and is ahead of the consumed batches by the prefetch
    depth, so checkpoint ``Batch.position``, not ``sampler.state_dict()``.
    """
    lengths = [it.samples_at(cfg.sample_rate) for it in items]
    sampler = BucketBatchSampler(
        lengths,
        max_batch_samples=cfg.max_batch_samples,
        max_crop_samples=cfg.max_crop_samples,
        min_samples=cfg.min_samples,
        pad_min_samples=cfg.pad_min_samples,
        num_buckets=cfg.num_buckets,
        seed=seed,
        rank=rank,
        world_size=world_size,
        crop_to_shortest=cfg.crop_to_shortest,
        crop_multiple=cfg.crop_multiple,
        batch_multiple=cfg.batch_multiple,
    )
    sampler.set_position(position)
    dataset = AudioBatchDataset(items, sample_rate=cfg.sample_rate, normalize=cfg.normalize,
                                labels=labels, conv_layers=conv_layers)
    workers = int(cfg.num_workers)
    loader = DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=_worker_init if workers > 0 else None,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    return loader, sampler


__all__ = ["Batch", "AudioBatchDataset", "make_dataloader"]
