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


@pytest.mark.slow
def test_layer_targets_come_from_the_extraction_path(tmp_path, capsys):
    """Labels of a checkpoint's layer: the frames the extractor gives (with the checkpoint's own
    normalisation), one label per encoder frame; a layer the checkpoint lacks is one line."""
    import soundfile as sf

    from audio_ssl.extract.extractor import FeatureExtractor
    from audio_ssl.interop.export import save_native
    from audio_ssl.models import Wav2Vec2ForPretraining
    from tests.conftest import small_model_config

    torch.manual_seed(0)
    ckpt = save_native(Wav2Vec2ForPretraining(small_model_config()).eval(), tmp_path / "m.ckpt",
                       run_config={"data": {"normalize": True}})
    corpus = tmp_path / "audio"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        sf.write(corpus / f"{k}.wav", (0.3 * rng.standard_normal(20_000 + 4_000 * k))
                 .astype(np.float32), 16_000)
    out = tmp_path / "t"
    assert main(["targets", str(corpus), "--output", str(out), "--kind", "layer",
                 "--checkpoint", str(ckpt), "--layer", "1", "--clusters", "3",
                 "--no-progress"]) == 0
    store = LabelStore(out)
    extractor = FeatureExtractor.from_checkpoint(ckpt, layers=1, precision="32")
    assert extractor.normalize  # the checkpoint's setting, asked of LoadedModel
    centers = np.load(out / "centers.npy")
    for k in range(4):
        frames = extractor(str(corpus / f"{k}.wav")).numpy()  # (T, D)
        labels = store.crop(str(corpus / f"{k}.wav"), 0, len(frames)).numpy()
        nearest = ((frames[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
        assert len(labels) == len(frames)
        assert (np.asarray(labels) == nearest).mean() > 0.95
    capsys.readouterr()
    assert main(["targets", str(corpus), "--output", str(tmp_path / "t2"), "--kind", "layer",
                 "--checkpoint", str(ckpt), "--layer", "9", "--no-progress"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "layer 9" in errors[0] and "Traceback" not in err
