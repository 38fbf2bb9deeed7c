"""Short clips (data.pad_min_samples): kept whole in padded batches of their own, from a folder
and from shards; skipped without it, as before."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf

from audio_ssl.cli import main
from audio_ssl.tasks import pretrain as pretrain_module

CONFIG = """
train: {log_every: 1, checkpoint_every: 100}
data: {num_workers: 0, max_batch_samples: 32000, max_crop_samples: 16000, min_samples: 8000,
       crop_multiple: 3200, batch_multiple: 1, num_buckets: 2%s}
"""


@pytest.fixture
def corpus(tmp_path):
    """6 clips of 1.5 s and 10 of 0.15-0.45 s (the spoken-digit range), noise."""
    folder = tmp_path / "audio"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        sf.write(folder / f"long{i}.flac", 0.1 * rng.standard_normal(24_000), 16_000)
    for i, n in enumerate(np.linspace(2_400, 7_200, 10).astype(int)):
        sf.write(folder / f"short{i}.flac", 0.1 * rng.standard_normal(n), 16_000)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("source", ["folder", "shards"])
def test_short_clips_train_whole_in_padded_batches(corpus, tmp_path, monkeypatch, capsys,
                                                   source):
    seen = []  # (padded, lengths, S) of every training batch
    step = pretrain_module.PretrainTask.training_step

    def record(self, batch, batch_idx):
        seen.append((batch.padded, batch.lengths.tolist(), batch.waveforms.shape[1]))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(pretrain_module.PretrainTask, "training_step", record)
    data = str(corpus)
    if source == "shards":
        assert main(["shard", str(corpus), str(tmp_path / "shards"), "--shard-size", "4",
                     "--no-progress"]) == 0
        data = str(tmp_path / "shards")
    config = tmp_path / "run.yaml"
    config.write_text(CONFIG % ", pad_min_samples: 1600")
    run = tmp_path / "run"
    assert main(["pretrain", data, "-o", str(run), "--max-steps", "12", "--config", str(config),
                 "--no-progress", "--accelerator", "cpu", "--precision", "32"]) == 0
    assert "on 16 files (0.00 h of audio)" in capsys.readouterr().out
    padded = [(lengths, s) for flag, lengths, s in seen if flag]
    cropped = [(lengths, s) for flag, lengths, s in seen if not flag]
    assert padded and cropped
    for lengths, s in padded:  # whole short clips, rows rounded up to a multiple of 3200
        assert max(lengths) < 8_000 and s % 3_200 == 0 and s - max(lengths) < 3_200
    for lengths, s in cropped:  # long clips cropped to the batch's shortest, unpadded
        assert all(n == s for n in lengths) and s >= 8_000
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(math.isfinite(r["train/loss"]) for r in rows)

    seen.clear()  # without it, the short clips are skipped as before
    config.write_text(CONFIG % "")
    assert main(["pretrain", data, "-o", str(tmp_path / "plain"), "--max-steps", "2",
                 "--config", str(config), "--no-progress", "--accelerator", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "on 6 files" in out and "10 file(s) skipped" in out
    assert not any(flag for flag, _, _ in seen)
