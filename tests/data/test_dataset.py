"""AudioBatchDataset and make_dataloader: crops, padding, bad files, the loader."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_ssl.config import DataConfig
from audio_ssl.data import (
    AudioBatchDataset,
    AudioItem,
    Batch,
    BatchRequest,
    Rejected,
    load_audio,
    make_dataloader,
    scan,
)


@pytest.fixture
def items(tmp_path) -> list[AudioItem]:
    """Three good files (8, 16 and 44.1 kHz; 1.0-1.5 s) and one that stops decoding."""
    rng = np.random.default_rng(0)
    out = []
    for name, sr, sec, ch in [("a.flac", 8000, 1.0, 1), ("b.wav", 16000, 1.5, 2),
                              ("c.flac", 44100, 1.2, 1)]:
        x = (0.1 * rng.standard_normal((int(sr * sec), ch))).astype(np.float32)
        sf.write(tmp_path / name, x, sr)
        out.append(AudioItem(str(tmp_path / name), len(x), sr, ch))
    # scanned while good, corrupted since: the header is still plausible to the sampler
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"fLaC" + bytes(100))
    out.append(AudioItem(str(bad), 16000, 16000, 1))
    return out


def _request(indices, starts, num, lengths=None, position=7) -> BatchRequest:
    lengths = lengths or (num,) * len(indices)
    return BatchRequest(tuple(indices), tuple(starts), num, tuple(lengths), 0, position)


def test_crops_match_load_audio(items):
    ds = AudioBatchDataset(items, sample_rate=16000, normalize=False)
    batch = ds[_request([0, 1, 2], [100, 3000, 0], 12000)]
    assert batch.waveforms.shape == (3, 12000) and batch.waveforms.dtype == torch.float32
    assert batch.lengths.tolist() == [12000] * 3 and batch.lengths.dtype == torch.int64
    assert batch.paths == [items[i].path for i in (0, 1, 2)] and batch.starts == [100, 3000, 0]
    assert batch.failures == [] and batch.position == 7
    for row, (i, s) in zip(batch.waveforms, [(0, 100), (1, 3000), (2, 0)]):
        assert torch.equal(row, load_audio(items[i].path, start=s, num_samples=12000))


def test_padding_when_not_cropped_to_shortest(items):
    ds = AudioBatchDataset(items, sample_rate=16000, normalize=True)
    # a: 16000 samples at 16 kHz, b: 24000; S = 24000, a padded
    batch = ds[_request([0, 1], [0, 0], 24000, lengths=(16000, 24000))]
    assert batch.lengths.tolist() == [16000, 24000]
    assert torch.equal(batch.waveforms[0, 16000:], torch.zeros(8000))
    real = batch.waveforms[0, :16000]
    assert abs(real.mean().item()) < 1e-4 and real.std().item() == pytest.approx(1, abs=1e-2)


def test_bad_file_is_dropped_and_reported(items):
    ds = AudioBatchDataset(items, sample_rate=16000, normalize=False)
    batch = ds[_request([3, 0, 1], [5, 6, 7], 8000)]
    assert batch.waveforms.shape == (2, 8000)
    assert batch.paths == [items[0].path, items[1].path] and batch.starts == [6, 7]
    assert len(batch.failures) == 1 and isinstance(batch.failures[0], Rejected)
    assert batch.failures[0].path == items[3].path
    assert batch.failures[0].reason.startswith("cannot decode")


def test_a_failed_file_is_not_decoded_again(items, monkeypatch):
    """The next epoch's request leaves the bad file out without another decode or report."""
    from audio_ssl.data import collate

    calls: list[str] = []
    real = collate.load_audio
    monkeypatch.setattr(collate, "load_audio",
                        lambda path, **kw: calls.append(str(path)) or real(path, **kw))
    ds = AudioBatchDataset(items, sample_rate=16000, normalize=False)
    first = ds[_request([3, 0], [0, 0], 8000)]
    again = ds[_request([0, 3], [0, 0], 8000, position=8)]
    assert [f.path for f in first.failures] == [items[3].path] and again.failures == []
    assert again.paths == [items[0].path]
    assert calls.count(items[3].path) == 1 and calls.count(items[0].path) == 2


def test_pretraining_logs_a_failure_once_and_keeps_it_across_a_resume(tmp_path):
    from types import SimpleNamespace

    from audio_ssl import config
    from audio_ssl.tasks.pretrain import PretrainTask, pretrain_log

    task = PretrainTask(config.preset("tiny"), pretrain_log(tmp_path))
    task._trainer = SimpleNamespace(global_step=3)
    for _ in range(3):  # the same file failing in three loader workers
        task._record_failure(Rejected("/x/bad.flac", "cannot decode: corrupt"))
    task._record_failure(Rejected("/x/other.flac", "cannot decode: corrupt"))
    rows = (tmp_path / "decode_failures.jsonl").read_text().splitlines()
    assert [json.loads(row) for row in rows] == [
        {"step": 3, "path": path, "reason": "cannot decode: corrupt"}
        for path in ("/x/bad.flac", "/x/other.flac")]
    checkpoint: dict = {"global_step": 4}
    task.run_log.on_save_checkpoint(None, task, checkpoint)
    resumed = PretrainTask(config.preset("tiny"))
    resumed.run_log.on_load_checkpoint(None, resumed, checkpoint)
    assert resumed.run_log.reported["failed_files"] == {"/x/bad.flac", "/x/other.flac"}


def test_file_shorter_than_scanned_is_reported(items):
    stale = replace(items[0], frames=items[0].frames * 3)  # the file shrank since the scan
    ds = AudioBatchDataset([stale], sample_rate=16000, normalize=False)
    batch = ds[_request([0], [10000], 20000)]
    assert len(batch) == 0 and "expected 20000" in batch.failures[0].reason


def test_all_failed_gives_empty_batch(items):
    ds = AudioBatchDataset(items, sample_rate=16000, normalize=False)
    batch = ds[_request([3], [0], 8000)]
    assert batch.waveforms.shape == (0, 8000) and batch.lengths.shape == (0,)
    assert batch.paths == [] and len(batch.failures) == 1


def _cfg(**kw) -> DataConfig:
    args = dict(sample_rate=16000, normalize=True, max_batch_samples=40_000,
                max_crop_samples=16_000, min_samples=8_000, num_buckets=2, num_workers=0)
    args.update(kw)
    return DataConfig(**args)


def test_make_dataloader_in_process(items):
    loader, sampler = make_dataloader(items, _cfg(), seed=1)
    batches = list(itertools.islice(loader, 6))
    assert all(isinstance(b, Batch) for b in batches)
    assert [b.position for b in batches] == list(range(6))
    for b in batches:
        assert b.waveforms.shape[0] == len(b.paths) == b.lengths.shape[0]
        B, S = b.waveforms.shape
        assert B * S <= 40_000 or len(b.paths) + len(b.failures) == 1
    assert any(f.path == items[3].path for b in batches for f in b.failures)
    # resume: a loader built at position 3 yields what the first one yielded from there
    loader2, _ = make_dataloader(items, _cfg(), seed=1, position=3)
    for a, b in zip(batches[3:], itertools.islice(loader2, 3)):
        assert a.position == b.position and a.paths == b.paths
        assert torch.equal(a.waveforms, b.waveforms)


def test_make_dataloader_with_worker_on_real_data(data_dir, tmp_path):
    items, _ = scan(data_dir / "tiny" / "manifest.jsonl", cache_dir=tmp_path, progress=False)
    loader, sampler = make_dataloader(items, _cfg(num_workers=1, max_crop_samples=32_000,
                                                  max_batch_samples=64_000), seed=0)
    batches = list(itertools.islice(loader, 3))
    assert [b.position for b in batches] == [0, 1, 2]
    for b in batches:
        B, S = b.waveforms.shape
        assert b.failures == [] and S <= 32_000 and (B * S <= 64_000 or B == 1)
        assert torch.isfinite(b.waveforms).all()
    assert sampler.position >= 3  # the sampler runs ahead by the prefetch depth


def test_batch_to_keeps_everything():
    """Lightning moves a batch by calling its ``to`` (so the frozen Rejected inside is fine)."""
    batch = Batch(torch.zeros(1, 4), torch.tensor([4]), ["/a"], [Rejected("/b", "x")], 3)
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and moved.failures == batch.failures and moved.position == 3
    assert torch.equal(moved.waveforms, batch.waveforms) and moved.paths == ["/a"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pin_memory needs CUDA")
def test_pin_memory():
    batch = Batch(torch.zeros(2, 4), torch.tensor([4, 4]), ["/a", "/b"], [], 0).pin_memory()
    assert batch.waveforms.is_pinned() and batch.lengths.is_pinned()
