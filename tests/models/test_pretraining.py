import math

import pytest
import torch
import torch.nn.functional as F

from audio_ssl.models import Wav2Vec2ForPretraining
from audio_ssl.models.masking import compute_span_mask, sample_negatives
from tests.conftest import small_model_config


def _batch(seed=0, batch=3, samples=16_000):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16_000
    # a little structure: sums of tones whose pitch changes every 100 ms, plus noise
    f0 = 100 + 300 * torch.rand(batch, samples // 1600 + 1, generator=g)
    f = f0.repeat_interleave(1600, dim=1)[:, :samples]
    x = torch.sin(2 * math.pi * torch.cumsum(f, 1) / 16_000) + 0.1 * torch.randn(batch, samples, generator=g)
    return x * (0.5 + t)


def test_loss_terms_against_a_direct_computation():
    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(small_model_config()).eval()
    x = _batch()
    g = torch.Generator().manual_seed(1)
    frames = model.backbone.frame_lengths(torch.tensor([x.shape[1]] * 3))
    mask = compute_span_mask(frames, int(frames[0]), model.cfg.mask, g)
    negatives = sample_negatives(mask, 100, g)
    with torch.no_grad():
        out = model(x, mask=mask, negatives=negatives)
        # direct: eval-mode quantizer is the argmax codevector
        bb = model.backbone(x, mask=mask)
        q = model.quantizer(bb.features[mask], 1.0)
        y = model.project_q(q.quantized)
        c = model.final_proj(bb.context[mask])
        idx, valid = negatives
        cand = torch.cat([y[:, None], y[idx]], 1)  # (M, 1 + K, F)
        logits = F.cosine_similarity(c[:, None].float(), cand.float(), dim=-1) / 0.1
        same = (q.codes[idx] == q.codes[:, None]).all(-1)
        logits[:, 1:][same] = float("-inf")
        ce = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
    torch.testing.assert_close(out.logits, logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.contrastive, ce, atol=1e-5, rtol=1e-5)
    G, V = 2, 16
    assert out.diversity.item() == pytest.approx((G * V - out.prob_perplexity.item()) / (G * V), rel=1e-5)
    penalty = bb.raw_features.pow(2).mean()
    torch.testing.assert_close(out.feature_penalty, penalty)
    w = model.cfg.loss
    torch.testing.assert_close(out.total, ce + w.diversity_weight * out.diversity
                               + w.feature_penalty_weight * penalty)
    assert out.num_masked.item() == mask.sum().item()


def test_distractor_equal_to_the_positive_gets_minus_infinity():
    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(small_model_config()).eval()
    with torch.no_grad():  # one code per group for every frame: every distractor is the positive
        model.quantizer.weight_proj.weight.zero_()
        model.quantizer.weight_proj.bias.zero_()
        model.quantizer.weight_proj.bias[0] = 10.0
        model.quantizer.weight_proj.bias[16] = 10.0
        out = model(_batch(), generator=torch.Generator().manual_seed(0))
    assert torch.isinf(out.logits[:, 1:]).all() and torch.isfinite(out.logits[:, 0]).all()
    assert out.contrastive.item() == pytest.approx(0.0, abs=1e-6)
    assert out.code_perplexity.item() == pytest.approx(2.0)
    assert out.accuracy.item() == 1.0


@pytest.mark.slow
def test_loss_decreases_when_overfitting_one_batch():
    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(small_model_config()).train()
    x = _batch(batch=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses, accuracy = [], []
    for step in range(100):
        g = torch.Generator().manual_seed(step % 4)  # a few fixed masks, as an epoch would
        out = model(x, step=step * 100, generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.contrastive.item())
        accuracy.append(out.accuracy.item())
    assert sum(losses[-8:]) / 8 < 0.6 * sum(losses[:4]) / 4
    assert sum(accuracy[-8:]) / 8 > 0.3
