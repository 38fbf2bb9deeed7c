"""`audio-ssl pretrain --objective reconstruct` end to end on ../shared/data/tiny: the loss falls,
the metrics are the reconstruction's, and the checkpoint's backbone extracts features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from audio_ssl.cli import main

CONFIG = """
train: {log_every: 1, checkpoint_every: 80}
data: {num_workers: 0}
"""


@pytest.mark.slow
def test_reconstruct_pretrains_lowers_its_loss_and_extracts(tmp_path, data_dir, capsys):
    from audio_ssl.interop import load_model
    from audio_ssl.models import ReconstructForPretraining, Wav2Vec2Model

    cfg = tmp_path / "log_every_step.yaml"
    cfg.write_text(CONFIG)
    run = tmp_path / "run"
    assert main(["pretrain", str(data_dir / "tiny"), "--preset", "tiny", "--objective",
                 "reconstruct", "--max-steps", "80", "--config", str(cfg), "--output", str(run),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "pretrained 80 steps" in printed and "l1_masked" in printed
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(80))
    for key in ("train/loss", "train/l1_masked", "train/l1_unmasked", "train/masked_fraction",
                "train/lr", "train/grad_norm", "train/grad_norm_heads"):
        assert np.isfinite(rows[-1][key]), key
    for key in ("train/contrastive", "train/accuracy", "train/code_perplexity",
                "train/gumbel_temperature", "train/code_churn"):
        assert key not in rows[-1], key  # wav2vec 2.0's and the classifiers' metrics
    losses = [r["train/loss"] for r in rows]
    assert np.mean(losses[-20:]) <= 0.9 * losses[0], (losses[0], np.mean(losses[-20:]))
    assert 0.3 < rows[-1]["train/masked_fraction"] < 0.6  # tiny: spans of 5 from p = 0.1

    checkpoint = run / "checkpoints" / "last.ckpt"
    loaded = load_model(checkpoint)
    assert isinstance(loaded.model, ReconstructForPretraining)
    assert isinstance(loaded.backbone, Wav2Vec2Model) and loaded.config.objective == "reconstruct"
    out = tmp_path / "features"
    assert main(["extract", str(checkpoint), str(data_dir / "tiny"), str(out), "--layer", "last",
                 "--workers", "0", "--no-progress"]) == 0
    assert "failures: none" in capsys.readouterr().out
    arrays = [np.load(p) for p in sorted(out.rglob("*.npy"))]
    assert len(arrays) == 23
    assert all(a.ndim == 2 and a.shape[1] == 256 and np.isfinite(a).all() for a in arrays)
