"""Reading transcribed audio (JSONL, LibriSpeech folder, TSV) and loading CTC batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_ssl.data.labelled import (
    LabelledBatchDataset,
    NoLabelledDataError,
    length_batches,
    make_labelled_loader,
    read_labelled,
)


def _wav(path: Path, seconds: float, sr: int = 16_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * sr))).astype(np.float32), sr)
    return path


def test_jsonl_manifest_with_split_and_bad_rows(tmp_path):
    _wav(tmp_path / "a.wav", 0.5)
    _wav(tmp_path / "b.wav", 0.3, sr=8000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not audio")
    rows = [
        {"audio": "a.wav", "text": "hello", "split": "train"},
        {"audio": "b.wav", "text": "two", "split": "train"},
        {"audio": "a.wav", "text": None, "split": "train"},
        {"audio": "b.wav", "text": "   ", "split": "train"},
        {"audio": "broken.wav", "text": "x", "split": "train"},
        {"audio": "missing.wav", "text": "x", "split": "train"},
        {"audio": "a.wav", "text": "held out", "split": "test"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items, rejected = read_labelled(manifest, split="train")
    assert [(Path(i.path).name, i.text, i.samples) for i in items] == [
        ("a.wav", "hello", 8000), ("b.wav", "two", 4800)]  # 8 kHz counted at 16 kHz
    reasons = [r.reason for r in rejected]
    assert reasons[:2] == ["no transcript", "empty transcript"]
    assert reasons[2].startswith("unreadable") and reasons[3].startswith("unreadable")
    assert reasons[3] == "unreadable: no such file"
    # two bad rows name the same clip: the manifest line tells them apart
    assert [r.line for r in rejected] == [f"{manifest}:{n}" for n in (3, 4, 5, 6)]
    items, _ = read_labelled(manifest, split="test")
    assert [i.text for i in items] == ["held out"]
    with pytest.raises(NoLabelledDataError, match="split 'dev'"):
        read_labelled(manifest, split="dev")


def test_length_limits(tmp_path):
    _wav(tmp_path / "short.wav", 0.01)
    _wav(tmp_path / "long.wav", 2.0)
    _wav(tmp_path / "ok.wav", 1.0)
    (tmp_path / "m.tsv").write_text("path\ttext\nshort.wav\ta\nlong.wav\tb\nok.wav\tc\n")
    items, rejected = read_labelled(tmp_path / "m.tsv", min_samples=400, max_samples=20_000)
    assert [i.text for i in items] == ["c"]
    assert [r.reason.split(":")[0] for r in rejected] == ["too short", "too long"]


def test_librispeech_folder(tmp_path):
    chapter = tmp_path / "19" / "198"
    _wav(chapter / "19-198-0000.flac", 0.4)
    _wav(chapter / "19-198-0001.wav", 0.6)
    (chapter / "19-198.trans.txt").write_text("19-198-0000 NORTHANGER ABBEY\n"
                                              "19-198-0001 CHAPTER ONE\n19-198-0002 GONE\n")
    items, rejected = read_labelled(tmp_path)
    assert [(i.id, i.text) for i in items] == [("19-198-0000", "NORTHANGER ABBEY"),
                                               ("19-198-0001", "CHAPTER ONE")]
    assert len(rejected) == 1 and rejected[0].path.endswith("19-198-0002.flac")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoLabelledDataError, match="trans.txt"):
        read_labelled(tmp_path / "empty")


def test_unknown_source_kinds(tmp_path):
    (tmp_path / "m.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="expected a .jsonl"):
        read_labelled(tmp_path / "m.csv")
    with pytest.raises(FileNotFoundError):
        read_labelled(tmp_path / "nope.jsonl")
    (tmp_path / "bad.tsv").write_text("no tab here\n")
    with pytest.raises(ValueError, match="bad.tsv:1"):
        read_labelled(tmp_path / "bad.tsv")


def test_batches_pad_audio_and_targets_and_report_failures(tmp_path):
    paths = [_wav(tmp_path / f"{i}.wav", s) for i, s in enumerate([0.2, 0.5, 0.3])]
    (tmp_path / "m.tsv").write_text("".join(f"{p.name}\tx\n" for p in paths))
    items, _ = read_labelled(tmp_path / "m.tsv")
    targets = [[2, 3], [4], [5, 6, 7]]
    dataset = LabelledBatchDataset(items, targets, sample_rate=16_000, normalize=False)
    paths[2].write_bytes(b"corrupted after the scan")
    batch = dataset.load([0, 1, 2])
    assert batch.indices == [0, 1]
    assert batch.waveforms.shape == (2, 8000)
    assert batch.lengths.tolist() == [3200, 8000]
    assert bool((batch.waveforms[0, 3200:] == 0).all())
    assert batch.targets.tolist() == [[2, 3], [4, 0]]
    assert batch.target_lengths.tolist() == [2, 1]
    assert len(batch.failures) == 1 and batch.failures[0].path.endswith("2.wav")


def test_length_batches_cover_every_item_once_within_budget():
    lengths = [5, 1, 9, 3, 3, 7, 2]
    groups = length_batches(lengths, max_batch_samples=10)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 10


def test_training_loader_keeps_utterances_whole(tmp_path):
    paths = [_wav(tmp_path / f"{i}.wav", s) for i, s in enumerate([0.2, 0.5, 0.3, 0.25, 0.4])]
    (tmp_path / "m.tsv").write_text("".join(f"{p.name}\tx\n" for p in paths))
    items, _ = read_labelled(tmp_path / "m.tsv")
    dataset = LabelledBatchDataset(items, [[2]] * len(items), sample_rate=16_000, normalize=True)
    loader = make_labelled_loader(dataset, max_batch_samples=16_000, train=True, seed=3,
                                  num_buckets=2)
    seen = []
    for batch, _ in zip(loader, range(6)):
        assert batch.waveforms.shape[1] == int(batch.lengths.max())
        for row, idx in enumerate(batch.indices):
            assert int(batch.lengths[row]) == items[idx].samples  # never cropped
            n = int(batch.lengths[row])
            assert abs(float(batch.waveforms[row, :n].mean())) < 1e-4  # normalised
        seen.extend(batch.indices)
    assert set(seen) == set(range(len(items)))
    assert isinstance(batch.waveforms, torch.Tensor)
