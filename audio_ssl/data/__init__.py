"""Data pipeline: scan a corpus, decode audio, bucket batches by length, load them.

``scan`` -> ``AudioItem`` list; ``BucketBatchSampler`` -> ``BatchRequest`` stream;
``AudioBatchDataset`` -> ``Batch`` (waveforms (B, S), lengths (B,)); ``make_dataloader`` wires
them for one rank.
"""

from audio_ssl.data.audio import AudioError, audio_info, load_audio, resampled_length
from audio_ssl.data.dataset import AudioBatchDataset, Batch, make_dataloader
from audio_ssl.data.manifest import (
    AUDIO_EXTENSIONS,
    AudioItem,
    NoAudioError,
    Rejected,
    read_manifest,
    scan,
    write_manifest,
    write_rejected,
)
from audio_ssl.data.sampler import BatchRequest, BucketBatchSampler

__all__ = [
    "AUDIO_EXTENSIONS", "AudioItem", "Rejected", "NoAudioError", "scan", "write_manifest",
    "read_manifest", "write_rejected", "AudioError", "load_audio", "audio_info",
    "resampled_length", "BatchRequest", "BucketBatchSampler", "Batch", "AudioBatchDataset",
    "make_dataloader",
]
