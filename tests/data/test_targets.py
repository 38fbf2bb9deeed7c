"""HuBERT targets: frames aligned with the encoder, k-means labels stable, resumable, cropped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_ssl.cli import main
from audio_ssl.data import scan
from audio_ssl.data.dataset import AudioBatchDataset
from audio_ssl.data.sampler import BatchRequest
from audio_ssl.data.targets import CONV_LAYERS, LabelStore, TargetsConfig, make_targets, mfcc_frames
from audio_ssl.models.feature_encoder import frame_lengths


@pytest.mark.parametrize("samples", [400, 719, 720, 1039, 8_000, 16_000, 16_123, 31_999])
def test_one_mfcc_frame_per_encoder_frame(samples):
    wav = torch.randn(samples, generator=torch.Generator().manual_seed(samples))
    frames = mfcc_frames(wav)
    assert frames.shape == (int(frame_lengths(torch.tensor([samples]), CONV_LAYERS)[0]), 39)
    assert torch.isfinite(frames).all()


def _corpus(tmp_path: Path, count: int = 6) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = np.random.default_rng(0)
    t = np.arange(16_000 * 2) / 16_000
    for i in range(count):
        tone = np.sin(2 * np.pi * (200 + 150 * i) * t) * (t < 1.0) + 0.3 * rng.standard_normal(len(t)) * (t >= 1.0)
        sf.write(folder / f"f{i}.flac", (0.3 * tone).astype(np.float32)[: 16_000 + 4_000 * i], 16_000)
    return folder


def _labels(folder: Path) -> dict[str, np.ndarray]:
    store = LabelStore(folder)
    return {path: np.load(folder / name) for path, name in store.files.items()}


def test_labels_are_stable_for_a_seed_and_resume_after_a_stop(tmp_path):
    items, _ = scan(_corpus(tmp_path), progress=False)
    cfg = TargetsConfig(clusters=8, seed=3)
    count, rejected = make_targets(items, cfg, tmp_path / "a")
    assert count == 6 and not rejected
    make_targets(items, cfg, tmp_path / "b")
    a, b = _labels(tmp_path / "a"), _labels(tmp_path / "b")
    assert a.keys() == b.keys()
    for path in a:
        assert np.array_equal(a[path], b[path])
        samples = sf.info(path).frames
        assert len(a[path]) == int(frame_lengths(torch.tensor([samples]), CONV_LAYERS)[0])
    assert len(np.unique(np.concatenate(list(a.values())))) > 3
    # a stopped run: two label files and the index lost; the rerun rebuilds them identically
    for name in sorted((tmp_path / "a" / "labels").iterdir())[:2]:
        name.unlink()
    (tmp_path / "a" / "index.jsonl").unlink()
    make_targets(items, cfg, tmp_path / "a")
    again = _labels(tmp_path / "a")
    for path in a:
        assert np.array_equal(a[path], again[path])
    assert not list((tmp_path / "a" / "labels").glob("*.tmp*"))
    # other options into the same folder are refused, not mixed
    with pytest.raises(FileExistsError):
        make_targets(items, TargetsConfig(clusters=9, seed=3), tmp_path / "a")


def test_dataset_cuts_the_labels_of_each_crop(tmp_path):
    items, _ = scan(_corpus(tmp_path), progress=False)
    make_targets(items, TargetsConfig(clusters=8), tmp_path / "t")
    store = LabelStore(tmp_path / "t")
    dataset = AudioBatchDataset(items, sample_rate=16_000, normalize=False, labels=store,
                                conv_layers=CONV_LAYERS)
    full = {p: np.load(tmp_path / "t" / n) for p, n in store.files.items()}
    request = BatchRequest(indices=(0, 3), starts=(640, 1_000), num_samples=8_000,
                           lengths=(8_000, 8_000), epoch=0, position=0)
    batch = dataset[request]
    frames = int(frame_lengths(torch.tensor([8_000]), CONV_LAYERS)[0])
    assert batch.labels.shape == (2, frames)
    import os

    for row, (index, start) in enumerate(zip(request.indices, request.starts)):
        first = round(start / 320)
        expected = full[os.path.realpath(items[index].path)][first : first + frames]
        assert np.array_equal(batch.labels[row].numpy(), expected)


@pytest.mark.slow
def test_targets_command_then_hubert_pretraining(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    assert main(["targets", str(corpus), "--output", str(tmp_path / "t"), "--clusters", "6",
                 "--no-progress"]) == 0
    assert "labelled 6 files with 6 mfcc clusters" in capsys.readouterr().out
    config = tmp_path / "fast.yaml"
    config.write_text("train: {log_every: 1, checkpoint_every: 3}\n"
                      "data: {num_workers: 0, max_batch_samples: 48000, max_crop_samples: 16000, "
                      "min_samples: 8000}\n")
    run = tmp_path / "run"
    assert main(["pretrain", str(corpus), "--objective", "hubert", "--targets", str(tmp_path / "t"),
                 "--output", str(run), "--max-steps", "3", "--config", str(config),
                 "--no-progress"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(np.isfinite(r["train/masked_loss"]) for r in rows)
    assert "clusters: 6" in (run / "config.yaml").read_text()
    # the objective without its labels, or labels without the objective: one clear line, exit 2
    assert main(["pretrain", str(corpus), "--objective", "hubert", "--output", str(tmp_path / "x"),
                 "--no-progress"]) == 2
    assert "needs --targets" in capsys.readouterr().err
    assert main(["targets", str(corpus), "--output", str(tmp_path / "t2"), "--kind", "layer",
                 "--no-progress"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
