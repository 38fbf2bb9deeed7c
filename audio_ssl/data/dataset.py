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

from audio_ssl.config import DataConfig
from audio_ssl.data.audio import AudioError, load_audio
from audio_ssl.data.collate import pad_batch
from audio_ssl.data.manifest import AudioItem, Rejected
from audio_ssl.data.sampler import BatchRequest, BucketBatchSampler


@dataclass
class Batch:
    """A collated batch of raw waveforms.

    Attributes:
        waveforms: (B, S) float32; rows shorter than S are zero padded at the end.
        lengths: (B,) int64 real samples per row.
        paths: B file paths, row order.
        failures: files of the request that could not be loaded (left out of the rows).
        position: the sampler position of this batch (resume at ``position + 1``).

    B may be 0 when every file of the request failed: the trainer should skip such a batch.
    """

    waveforms: torch.Tensor
    lengths: torch.Tensor
    paths: list[str]
    failures: list[Rejected] = field(default_factory=list)
    position: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    def pin_memory(self) -> Batch:
        """The batch with its tensors in pinned memory (called by DataLoader(pin_memory=True))."""
        return replace(self, waveforms=self.waveforms.pin_memory(),
                       lengths=self.lengths.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return replace(self, waveforms=self.waveforms.to(device, non_blocking=non_blocking),
                       lengths=self.lengths.to(device, non_blocking=non_blocking))


class AudioBatchDataset(Dataset):
    """Map-style dataset indexed by :class:`BatchRequest` (use with ``batch_size=None``).

    Args:
        items: the scanned files; request indices point into this list.
        sample_rate: target rate of the waveforms.
        normalize: zero mean, unit variance per row, over its real samples.
    """

    def __init__(self, items: Sequence[AudioItem], *, sample_rate: int, normalize: bool) -> None:
        self.items = list(items)
        self.sample_rate = int(sample_rate)
        self.normalize = bool(normalize)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, request: BatchRequest) -> Batch:
        """Decode every crop of ``request`` -> Batch with waveforms (B, num_samples)."""
        rows: list[torch.Tensor] = []
        paths: list[str] = []
        failures: list[Rejected] = []
        for idx, start, length in zip(request.indices, request.starts, request.lengths):
            item = self.items[idx]
            try:
                wav = load_audio(item.path, sample_rate=self.sample_rate,
                                 normalize=self.normalize, start=start, num_samples=length)  # (L,)
            except AudioError as e:
                failures.append(Rejected(item.path, e.reason))
                continue
            except Exception as e:  # never let one file stop training
                failures.append(Rejected(item.path, f"cannot load: {type(e).__name__}: {e}"))
                continue
            if wav.numel() != length:
                failures.append(Rejected(
                    item.path,
                    f"decoded {wav.numel()} samples from sample {start}, expected {length} "
                    f"(has the file changed since it was scanned?)",
                ))
                continue
            rows.append(wav)
            paths.append(item.path)

        waveforms, lengths = pad_batch(rows, request.num_samples)  # (B, S), (B,)
        return Batch(
            waveforms=waveforms,
            lengths=lengths,
            paths=paths,
            failures=failures,
            position=request.position,
        )


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
        num_buckets=cfg.num_buckets,
        seed=seed,
        rank=rank,
        world_size=world_size,
        crop_to_shortest=cfg.crop_to_shortest,
    )
    sampler.set_position(position)
    dataset = AudioBatchDataset(items, sample_rate=cfg.sample_rate, normalize=cfg.normalize)
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
