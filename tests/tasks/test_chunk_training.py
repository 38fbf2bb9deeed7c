"""Dynamic chunk training (finetune --chunk-train): the attention mask against a construction by
hand, what a chunk-masked frame can see, the per-step draw, and a few updates on tiny data."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from audio_ssl import config
from audio_ssl.cli import main
from audio_ssl.models import Wav2Vec2ForCTC
from audio_ssl.models.masking import chunk_attention_mask, draw_chunk
from audio_ssl.tasks.finetune import FinetuneTask
from tests.conftest import small_model_config
from tests.tasks.test_finetune import FAST, VOCAB, _batch, _cfg, _pretrained


def _by_hand(num_frames: int, chunk: int, left: int) -> torch.Tensor:
    mask = torch.zeros(num_frames, num_frames, dtype=torch.bool)
    for i in range(num_frames):
        first = 0 if left < 0 else max(0, (i // chunk - left) * chunk)
        last = min((i // chunk + 1) * chunk, num_frames)  # WeNet's subsequent_chunk_mask
        for j in range(first, last):
            mask[i, j] = True
    return mask


@pytest.mark.parametrize("frames,chunk,left", [(17, 4, 1), (17, 4, -1), (10, 1, 0), (9, 20, 2),
                                               (25, 5, 0), (25, 3, 3)])
def test_chunk_mask_matches_a_construction_by_hand(frames, chunk, left):
    assert torch.equal(chunk_attention_mask(frames, chunk, left), _by_hand(frames, chunk, left))


def test_a_frame_sees_nothing_beyond_its_chunk_but_the_positional_reach():
    cfg = small_model_config()  # positional convolution of 16 frames: it reads 8 ahead
    model = Wav2Vec2ForCTC(cfg, len(VOCAB)).eval()
    x = torch.randn(1, 60, cfg.context.dim)  # the context network's input
    later = x.clone()
    later[:, 30:] += torch.randn(1, 30, cfg.context.dim)  # change everything from frame 30
    mask = chunk_attention_mask(60, 10, 1)
    with torch.no_grad():
        a, _ = model.backbone.context(x, chunk_mask=mask)
        b, _ = model.backbone.context(later, chunk_mask=mask)
        full_a, _ = model.backbone.context(x)
        full_b, _ = model.backbone.context(later)
    reach = cfg.context.pos_conv_kernel // 2
    # chunks [0, 10) and [10, 20): their keys read up to frame 19 + reach < 30 through the
    # positional convolution, so the change does not reach them; chunk [20, 30)'s keys do
    assert 19 + reach < 30
    torch.testing.assert_close(a[:, :20], b[:, :20], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 20:30], b[:, 20:30], atol=1e-3)
    assert not torch.allclose(full_a[:, :10], full_b[:, :10], atol=1e-3)  # full attention sees it


def test_chunk_sizes_are_a_function_of_the_step_and_padding_stays_finite():
    ctc = replace(config.CTCConfig(), chunk_train=True, chunk_frames=(3, 7), chunk_full_prob=0.25)
    draws = [draw_chunk(ctc, torch.Generator().manual_seed(s)) for s in range(400)]
    sizes = [d for d in draws if d is not None]
    assert set(sizes) == set(range(3, 8))
    assert 0.15 < draws.count(None) / len(draws) < 0.35
    task = FinetuneTask(_cfg(chunk_train=True, chunk_frames=(2, 4), chunk_left=0,
                             chunk_full_prob=0.0), VOCAB)
    assert torch.equal(task.chunk_mask(24, step=5), task.chunk_mask(24, step=5))
    batch = _batch()  # the second row padded: its padded frames see themselves only
    _, _, loss = task.forward_ctc(batch, train=True, step=1,
                                  generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss.loss)
    loss.loss.backward()
    grads = [p.grad for p in task.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.slow
def test_finetune_chunk_train_runs_a_few_steps_on_tiny(tmp_path, data_dir, capsys):
    pretrained = _pretrained(tmp_path)
    manifest = data_dir / "tiny" / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    local = tmp_path / "tiny.jsonl"
    local.write_text("".join(json.dumps({**r, "audio": str(data_dir / "tiny" / r["audio"])}) + "\n"
                             for r in rows))
    (tmp_path / "fast.yaml").write_text(FAST.replace("ctc: {", "ctc: {chunk_full_prob: 0.0, "))
    run = tmp_path / "run"
    assert main(["finetune", str(pretrained), "--train", str(local), "--valid", str(local),
                 "--train-split", "train", "--valid-split", "test", "--output", str(run),
                 "--max-steps", "2", "--config", str(tmp_path / "fast.yaml"), "--chunk-train",
                 "--no-progress"]) == 0
    assert "fine-tuned 2 steps with CTC" in capsys.readouterr().out
    saved = (run / "config.yaml").read_text()
    assert "chunk_train: true" in saved
    losses = [json.loads(line)["train/loss"] for line in (run / "metrics.jsonl").read_text()
              .splitlines() if "train/loss" in line]
    assert len(losses) == 2 and all(loss == loss for loss in losses)
